"""The worker's pure helpers: backoff, the catalog's change handling, transactional ids,
librdkafka's error classes, the per-partition offsets, and reading a consumed record."""

from __future__ import annotations

import dataclasses

import confluent_kafka
import pytest
from confluent_kafka import KafkaError, Message

from ingest_worker.core.config import Settings
from ingest_worker.core.rejections import Rejection
from ingest_worker.worker.catalog import Catalog
from ingest_worker.worker.decode import decode
from ingest_worker.worker.loop import backoff_s, in_record, transactional_id
from ingest_worker.worker.offsets import OFFSET_BEGINNING, Offsets, Partition, Unsettled
from ingest_worker.worker.resolve import Device, auto_name
from ingest_worker.worker.sink import error_class


def test_backoff_grows_and_is_capped() -> None:
    """Exponential from 0.1 s, never past the cap, jitter between half and all of it."""
    assert backoff_s(1, 10, 0.999) < backoff_s(4, 10, 0.999)
    assert backoff_s(50, 10, 0.999) <= 10
    assert backoff_s(50, 10, 0.0) == 5


def test_catalog_drops_what_a_notification_names() -> None:
    """A change to an event type drops that type; a deleted integration is forgotten;
    an unreadable notification clears everything."""
    catalog = Catalog(max_age_s=30)
    catalog.integrations = {1: 0.0, 2: 0.0}
    catalog.on_change('{"table": "integrations", "op": "DELETE", "id": 2}')
    assert list(catalog.integrations) == [1]
    catalog.on_change("not json")
    assert not catalog.integrations


def test_catalog_entries_expire() -> None:
    """Entries older than max_age_s are dropped, in case a notification was lost."""
    catalog = Catalog(max_age_s=30)
    catalog.integrations = {1: 0.0, 2: 100.0}
    catalog.expire(now=120.0)
    assert list(catalog.integrations) == [2]


def test_catalog_holds_at_most_max_devices_dropping_those_held_longest() -> None:
    catalog = Catalog(max_age_s=30, max_devices=2)
    for n in (1, 2, 3):
        catalog.remember_device(Device(n, f"ext-{n}", None), 7, float(n))
    assert list(catalog.devices) == [2, 3]
    assert catalog.device_by_key((7, "ext-1")) is None
    assert catalog.device_by_id(1) is None
    catalog.remember_device(Device(2, "ext-2", None), 7, 4.0)  # loaded again: the newest
    catalog.remember_device(Device(4, "ext-4", None), 7, 5.0)
    assert list(catalog.devices) == [2, 4]
    assert sorted(catalog.device_keys) == [(7, "ext-2"), (7, "ext-4")]
    # A device re-created under the same key (its delete's notification lost): dropping
    # the old one keeps the key on the new one.
    catalog.remember_device(Device(9, "ext-2", None), 7, 6.0)
    catalog.forget_device(2)
    assert catalog.device_by_key((7, "ext-2")) == Device(9, "ext-2", None)
    none = Catalog(max_age_s=30, max_devices=0)
    none.remember_device(Device(1, "ext-1", None), 7, 0.0)
    assert not none.devices
    assert not none.device_keys


def test_transactional_id_is_the_configured_one_else_unique_per_process() -> None:
    """A configured id (stable per replica) wins; else host and pid make one per live
    process, so two workers never fence each other."""
    settings = Settings(group_id="g", transactional_id_prefix="iw")
    assert transactional_id(settings, "host", 42) == "iw-g-host-42"
    stable = dataclasses.replace(settings, transactional_id="worker-0")
    assert transactional_id(stable, "host", 42) == "worker-0"


def test_error_classes_follow_librdkafka() -> None:
    """Fatal replaces the producer, abortable aborts, retriable retries; anything else
    aborts the transaction rather than retrying it forever."""
    assert error_class(KafkaError(KafkaError._FENCED, fatal=True)) == "fatal"
    aborting = KafkaError(KafkaError.INVALID_PRODUCER_EPOCH, txn_requires_abort=True)
    assert error_class(aborting) == "abort"
    assert error_class(KafkaError(KafkaError._TIMED_OUT, retriable=True)) == "retry"
    assert error_class(KafkaError(KafkaError._INVALID_ARG)) == "abort"


def test_offsets_drop_replays_and_commit_by_time_or_size() -> None:
    """A record below a partition's next offset is a replay; the open transaction is due
    after the interval, at the record cap, or once a poll comes back short; a rewind resumes
    from the broker's offsets."""
    offsets, tp = Offsets(), Partition("raw", 0)
    assert offsets.fresh(tp, 0)
    offsets.processed({tp: 9}, 10, now=100.0)
    assert not offsets.fresh(tp, 9)
    assert offsets.fresh(tp, 10)
    assert not offsets.due(100.05, interval_s=0.1, max_records=50)
    assert offsets.due(100.2, interval_s=0.1, max_records=50)
    assert offsets.due(100.0, interval_s=10, max_records=10)
    assert offsets.due(100.0, interval_s=10, max_records=50, caught_up=True)
    assert offsets.take_pending() == {tp: 10}
    assert not offsets.due(1e9, interval_s=0.1, max_records=1)
    offsets.processed({tp: 19}, 10, now=101.0)
    offsets.rewind({tp: 10})
    assert offsets.fresh(tp, 10)
    assert offsets.pending == {}


def test_offsets_resume_past_what_the_consumer_skipped() -> None:
    """A consumer position beyond a partition's last record (a commit marker or an aborted
    transaction skipped after it) is where the partition resumes and what is committed, so a
    transactional producer upstream leaves no lag of 1; a position not beyond it changes
    nothing, nor does one of a partition without records in the batch."""
    offsets, a, b, c = Offsets(), Partition("raw", 0), Partition("raw", 1), Partition("raw", 2)
    offsets.processed({a: 9, b: 4}, 15, now=100.0, positions={a: 11, b: 3, c: 50})
    assert offsets.take_pending() == {a: 11, b: 5}
    assert not offsets.fresh(a, 10)
    assert offsets.fresh(a, 11)
    assert c not in offsets.next


def test_resume_points_never_believe_a_broker_behind_what_it_holds() -> None:
    """After a failed transaction every partition resumes from the broker's committed offset,
    or from the beginning where it holds none (as a new group would); an answer below an
    offset this worker committed or read back is asked again, even after a rebalance."""
    offsets, a, b = Offsets(), Partition("raw", 0), Partition("raw", 1)
    assert OFFSET_BEGINNING == confluent_kafka.OFFSET_BEGINNING
    offsets.committed({a: 40})
    points = offsets.resume_points({a: 55, b: -1001})
    assert points == {a: 55, b: OFFSET_BEGINNING}
    offsets.rewind(points)
    assert offsets.fresh(b, 0)
    assert not offsets.fresh(a, 54)
    offsets.reassigned()
    for stale in ({a: -1001}, {a: 54}):
        with pytest.raises(Unsettled):
            offsets.resume_points(stale)
    assert offsets.resume_points({b: -1001}) == {b: OFFSET_BEGINNING}


def test_a_record_whose_headers_cannot_be_read_is_rejected_not_fatal() -> None:
    """Headers the client cannot read (a header name that is not UTF-8) make the record an
    `invalid_request` rejection that names them; it never stops the partition."""
    message = Message(topic="raw", partition=2, offset=7, value=b"{}", timestamp=(1, 5))
    record = in_record(message, "raw")
    assert record.headers == []
    verdict = decode(record.source, record.value, None, record.timestamp_ms)
    assert isinstance(verdict, Rejection)
    assert verdict.code == "invalid_request"
    assert verdict.details[0].field == "headers"


def test_auto_created_device_names_fit_40_characters() -> None:
    """Auto-created devices are named after their external id, shortened to 40 characters."""
    assert auto_name("S1:3") == "S1:3"
    assert len(auto_name("x" * 255)) == 40
