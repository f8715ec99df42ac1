"""The worker's pure helpers: backoff, the catalog's change handling, transactional ids."""

from __future__ import annotations

from aiokafka.structs import TopicPartition

from ingest_worker.catalog import Catalog
from ingest_worker.resolve import auto_name
from ingest_worker.sink import transactional_id
from ingest_worker.worker import backoff_s


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


def test_transactional_id_names_group_topic_and_partition() -> None:
    """One transactional id per input partition, so the next owner fences the last."""
    assert transactional_id("iw", "g", TopicPartition("raw", 3)) == "iw-g-raw-3"


def test_auto_created_device_names_fit_40_characters() -> None:
    """Auto-created devices are named after their external id, shortened to 40 characters."""
    assert auto_name("S1:3") == "S1:3"
    assert len(auto_name("x" * 255)) == 40


def test_api_partitioner_matches_kafkas_default() -> None:
    """The memoised partitioner sends every key where Kafka's default partitioner would."""
    from aiokafka.partitioner import DefaultPartitioner

    from ingest_worker.publish import partitioner

    partitions = list(range(6))
    for n in range(2000):
        key = f"{n % 7}:device-{n}".encode()
        assert partitioner(key, partitions, partitions) == DefaultPartitioner()(
            key, partitions, partitions
        )
    assert partitioner(None, partitions, [3]) == 3
