"""The shim's record of partition deliveries: when a producer counts as stuck, and when the API
is not ready."""

from __future__ import annotations

from confluent_kafka import KafkaError

from ingest_worker.shim.deliveries import UNASSIGNED, Deliveries

TIMED_OUT = KafkaError(KafkaError._MSG_TIMED_OUT)
TOO_LARGE = KafkaError(KafkaError.MSG_SIZE_TOO_LARGE)


def test_a_success_clears_a_partitions_failures() -> None:
    d = Deliveries(stale_s=10)
    d.delivered(1, TIMED_OUT, 0.0)
    d.delivered(1, None, 1.0)
    assert d.failing(1.0) == []
    assert d.stuck(100.0, 15) == []


def test_a_partition_failing_without_a_break_is_stuck_after_the_bound() -> None:
    d = Deliveries(stale_s=10)
    for t in range(0, 16):
        d.delivered(2, TIMED_OUT, float(t))
        d.delivered(3, None, float(t))
    assert d.failing(15.0) == [2]
    assert d.stuck(14.0, 15) == []
    assert d.stuck(15.0, 15) == [2]


def test_a_failure_nobody_followed_up_is_forgotten() -> None:
    """No record went to the partition since: nothing is known, so it neither holds the API
    unready nor gets the producer replaced."""
    d = Deliveries(stale_s=10)
    d.delivered(0, TIMED_OUT, 0.0)
    assert d.failing(10.0) == [0]
    assert d.failing(10.1) == []
    assert d.stuck(40.0, 15) == []


def test_a_failure_long_after_the_last_starts_a_new_run() -> None:
    """Two failures an hour apart are not an hour of failing."""
    d = Deliveries(stale_s=10)
    d.delivered(3, TIMED_OUT, 0.0)
    d.delivered(3, TIMED_OUT, 3600.0)
    assert d.stuck(3600.0, 15) == []
    d.delivered(3, TIMED_OUT, 3608.0)
    d.delivered(3, TIMED_OUT, 3615.0)
    assert d.stuck(3615.0, 15) == [3]


def test_a_records_own_fault_says_nothing_of_its_partition() -> None:
    d = Deliveries(stale_s=10)
    d.delivered(4, TOO_LARGE, 0.0)
    assert d.failing(0.0) == []


def test_any_success_settles_records_never_placed_on_a_partition() -> None:
    """Records that failed before the topic's metadata was known report partition -1; once
    any partition takes a record, the topic is known again."""
    d = Deliveries(stale_s=10)
    d.delivered(UNASSIGNED, TIMED_OUT, 0.0)
    d.delivered(0, None, 1.0)
    assert d.failing(1.0) == []


def test_a_new_producer_inherits_what_fails_but_gets_the_whole_bound() -> None:
    d = Deliveries(stale_s=10)
    for t in range(0, 16, 2):
        d.delivered(5, TIMED_OUT, float(t))
    assert d.stuck(15.0, 15) == [5]
    d.restarted(15.0)
    assert d.failing(15.0) == [5]  # still not ready
    assert d.stuck(16.0, 15) == []
    for t in range(16, 32, 2):
        d.delivered(5, TIMED_OUT, float(t))
    assert d.stuck(30.0, 15) == [5]


def test_partitions_are_judged_apart() -> None:
    d = Deliveries(stale_s=10)
    d.delivered(0, TIMED_OUT, 0.0)
    d.delivered(1, TIMED_OUT, 10.0)
    d.delivered(0, TIMED_OUT, 8.0)
    d.delivered(0, TIMED_OUT, 15.0)
    d.delivered(1, TIMED_OUT, 15.0)
    assert d.stuck(15.0, 15) == [0]
