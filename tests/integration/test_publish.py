"""The shim's producer against a real broker: where keyed records land, a producer that
librdkafka declares failed, and a broker that is gone (no hang, no 202, bounded shutdown)."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from contextlib import AsyncExitStack

import pytest
from confluent_kafka import KafkaError

from devstack.kafka import local_broker
from devstack.proc import free_port
from devstack.topics import ensure_topics
from ingest_worker.core.config import Settings
from ingest_worker.core.errors import DependencyUnavailable
from ingest_worker.core.raw import RawRecord
from ingest_worker.shim.publish import Publisher, publisher
from tests.integration.broker_faults import frozen
from tests.integration.conftest import RUN_ID, NewTopicFactory
from tests.integration.kafka_read import read_topic
from tests.partitioning import java_partition

TIMEOUT_S = 2.0


def record(key: bytes) -> RawRecord:
    event_id = str(uuid.uuid4())
    return RawRecord(key, b"{}", [("integration-id", b"7"), ("event-id", event_id.encode())], "")


async def test_keyed_records_land_where_a_java_client_puts_them(
    kafka_bootstrap: str, new_topic: NewTopicFactory
) -> None:
    """Every record is on the partition Kafka's Java default partitioner picks for its key
    (murmur2), so a device hint shares its partition with a gateway's records."""
    topic = await new_topic(partitions=6)
    keys = [f"7:device-{n}".encode() for n in range(60)]
    async with publisher(kafka_bootstrap, topic, timeout_s=5.0, linger_ms=1) as pub:
        await pub.publish([record(key) for key in keys])
    found = await read_topic(kafka_bootstrap, topic, until=lambda rs: len(rs) >= len(keys))
    assert sorted(r.key for r in found) == sorted(keys)
    assert {r.key: r.partition for r in found} == {k: java_partition(k, 6) for k in keys}
    assert len({r.partition for r in found}) == 6


async def test_a_failed_producer_is_replaced_without_a_restart(
    kafka_bootstrap: str, new_topic: NewTopicFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """After librdkafka reports a fatal error, the next publish runs on a new producer, and
    succeeds; the replacement is logged with the error."""
    topic = await new_topic(partitions=1)
    caplog.set_level(logging.WARNING, "ingest_worker.shim.publish")
    async with publisher(kafka_bootstrap, topic, timeout_s=5.0, linger_ms=1) as pub:
        await pub.publish([record(b"7:a")])
        failed = pub._client
        failed.errors(KafkaError(KafkaError.OUT_OF_ORDER_SEQUENCE_NUMBER, "test", fatal=True))
        await pub.publish([record(b"7:b")])
        assert pub._client is not failed
        assert await pub.ready()
    replaced = [r for r in caplog.records if r.getMessage() == "Kafka producer replaced"]
    assert len(replaced) == 1
    assert "OUT_OF_ORDER_SEQUENCE_NUMBER" in replaced[0].__dict__["error"]


async def test_a_partition_that_keeps_failing_gets_a_new_producer(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """While the broker does not answer (its JVM stopped), failed publishes are logged and
    /readyz's Kafka check says no; once the partition has failed without a break for the
    bound, the next publish runs on a new producer, and once the broker answers again it
    publishes and the API is ready again. The broker is this test's own."""
    work = (settings.stack_dir / "test-runs" / RUN_ID / f"publish-stuck-{free_port()}").resolve()
    caplog.set_level(logging.WARNING, "ingest_worker.shim.publish")
    with local_broker(work, (settings.stack_dir / "cache").resolve()) as bootstrap:
        await ensure_topics(bootstrap, settings, partitions=1)
        async with publisher(
            bootstrap, settings.raw_topic, timeout_s=1.0, linger_ms=1, stuck_after_s=2.0
        ) as pub:
            await pub.publish([record(b"7:a")])
            first = pub._client
            with frozen(work):
                deadline = time.monotonic() + 10.0  # the bound is 2 s
                while pub._client is first and time.monotonic() < deadline:
                    with pytest.raises(DependencyUnavailable):
                        await pub.publish([record(b"7:refused")])
                    assert not await pub.ready()
            assert pub._client is not first
            await _until_published(pub)
            assert await _until_ready(pub)
    messages = [r.getMessage() for r in caplog.records]
    assert "publish failed" in messages
    replaced = [r for r in caplog.records if r.getMessage() == "Kafka producer replaced"]
    assert [r.__dict__["error"] for r in replaced] == ["partitions keep failing"]


async def _until_ready(pub: Publisher) -> bool:
    """Ready within a few seconds of publishing again."""
    for _ in range(20):
        if await pub.ready():
            return True
        await asyncio.sleep(0.5)
    return False


async def _until_published(pub: Publisher) -> None:
    """Publish until the broker takes it (a thawed broker takes a moment to answer)."""
    for _ in range(40):
        try:
            await pub.publish([record(b"7:after")])
            return
        except DependencyUnavailable:
            await asyncio.sleep(0.5)
    raise AssertionError("the broker never took records again")


async def test_no_broker_at_start_fails_fast() -> None:
    """With nothing listening at the bootstrap address, starting the publisher raises
    DependencyUnavailable within its bound instead of waiting for a broker."""
    started = time.monotonic()
    with pytest.raises(DependencyUnavailable):
        async with publisher(f"127.0.0.1:{free_port()}", "t", timeout_s=TIMEOUT_S, linger_ms=1):
            pass
    assert time.monotonic() - started < 5.0 + 2.0


async def test_broker_gone_fails_within_the_timeout_and_shutdown_is_bounded(
    settings: Settings,
) -> None:
    """Once the broker is stopped, publish raises DependencyUnavailable within its timeout,
    ready() says no within its bound, and closing the publisher does not wait for a broker
    that will not come back. The broker is this test's own."""
    work = (settings.stack_dir / "test-runs" / RUN_ID / f"publish-gone-{free_port()}").resolve()
    cache = (settings.stack_dir / "cache").resolve()
    async with AsyncExitStack() as stack:
        with local_broker(work, cache) as bootstrap:
            await ensure_topics(bootstrap, settings, partitions=1)
            pub = await stack.enter_async_context(
                publisher(bootstrap, settings.raw_topic, timeout_s=TIMEOUT_S, linger_ms=1)
            )
            await pub.publish([record(b"7:before")])
        started = time.monotonic()
        with pytest.raises(DependencyUnavailable):
            await pub.publish([record(b"7:after")])
        assert time.monotonic() - started < TIMEOUT_S + 1.0
        started = time.monotonic()
        assert not await pub.ready()
        assert time.monotonic() - started < 3.0
        started = time.monotonic()
    assert time.monotonic() - started < TIMEOUT_S + 3.0
