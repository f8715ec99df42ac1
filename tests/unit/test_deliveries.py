"""The shim's record of partition deliveries: when a producer counts as stuck, and when the API
is not ready."""

from __future__ import annotations

from confluent_kafka import KafkaError

from ingest_worker.shim.deliveries import Deliveries

TIMED_OUT = KafkaError(KafkaError._MSG_TIMED_OUT)
OUT_OF_ORDER = KafkaError(KafkaError.OUT_OF_ORDER_SEQUENCE_NUMBER)


def test_a_success_clears_a_partitions_failures() -> None:
    d = Deliveries()
    d.delivered(1, TIMED_OUT, 0.0)
    d.delivered(1, None, 1.0)
    assert d.failing(1.0, 15) == []
    assert d.stuck(100.0, 15) == []


def test_a_partition_failing_without_a_break_is_stuck_after_the_bound() -> None:
    d = Deliveries()
    for t in range(0, 16):
        d.delivered(2, TIMED_OUT, float(t))
        d.delivered(3, None, float(t))
    assert d.failing(15.0, 15) == [2]
    assert d.stuck(14.0, 15) == []
    assert d.stuck(15.0, 15) == [2]


def test_a_failure_nobody_followed_up_is_forgotten() -> None:
    """No record went to the partition since: nothing is known, so it neither holds the API
    unready nor gets the producer replaced."""
    d = Deliveries()
    d.delivered(0, TIMED_OUT, 0.0)
    assert d.failing(15.0, 15) == [0]
    assert d.failing(15.1, 15) == []
    assert d.stuck(40.0, 15) == []


def test_a_sequence_error_makes_the_failing_partitions_stuck_at_once() -> None:
    d = Deliveries()
    d.delivered(4, TIMED_OUT, 10.0)
    d.delivered(5, OUT_OF_ORDER, 10.0)
    assert d.stuck(10.0, 15) == [4, 5]


def test_partitions_are_judged_apart() -> None:
    d = Deliveries()
    d.delivered(0, TIMED_OUT, 0.0)
    d.delivered(1, TIMED_OUT, 10.0)
    d.delivered(0, TIMED_OUT, 15.0)
    d.delivered(1, TIMED_OUT, 15.0)
    assert d.stuck(15.0, 15) == [0]
