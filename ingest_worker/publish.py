"""The shim's Kafka edge: an idempotent `acks=all` producer with a bounded wait per publish."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from functools import lru_cache

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from aiokafka.partitioner import DefaultPartitioner, murmur2

from ingest_worker import limits
from ingest_worker.errors import DependencyUnavailable
from ingest_worker.raw import RawRecord

log = logging.getLogger(__name__)

# The producer's buffer per partition, when the topic's record limit is larger.
MAX_BATCH_BYTES = 512 * 1024


@lru_cache(maxsize=65536)
def _key_hash(key: bytes) -> int:
    return int(murmur2(key)) & 0x7FFFFFFF


def partitioner(key: bytes | None, all_partitions: list[int], available: list[int]) -> int:
    """Kafka's default partitioning (murmur2 of the key, as the Java client does), with the
    pure-Python hash memoised: device hints repeat, and the hash was ~4% of a request."""
    if key is None:
        return int(DefaultPartitioner()(key, all_partitions, available))
    return all_partitions[_key_hash(key) % len(all_partitions)]


class Publisher:
    """Publishes raw records; returns only once the broker acknowledged every one."""

    def __init__(
        self,
        producer: AIOKafkaProducer,
        topic: str,
        timeout_s: float,
        max_record_bytes: int = limits.DEFAULT_MAX_MESSAGE_BYTES,
    ) -> None:
        self._producer, self._topic, self._timeout_s = producer, topic, timeout_s
        self.max_record_bytes = max_record_bytes

    def oversize(self, record: RawRecord) -> int | None:
        """The record's size when the topic cannot take it (it would fail on every retry),
        else None."""
        size = limits.record_size(record.key, record.value, record.headers)
        return size if size > self.max_record_bytes else None

    async def publish(self, records: Sequence[RawRecord]) -> None:
        """Send all records (batched together); raise DependencyUnavailable on any failure or
        when the broker has not acknowledged within the timeout."""
        try:
            async with asyncio.timeout(self._timeout_s):
                pending = [await self._send(record) for record in records]
                if len(pending) == 1:
                    await pending[0]
                else:
                    await asyncio.gather(*pending)
        except (KafkaError, TimeoutError) as exc:
            raise DependencyUnavailable(f"Kafka did not acknowledge: {exc!r}") from exc

    async def _send(self, record: RawRecord) -> asyncio.Future[object]:
        future: asyncio.Future[object] = await self._producer.send(
            self._topic, record.value, key=record.key, headers=record.headers
        )
        return future

    async def ready(self) -> bool:
        """Whether the broker answers a metadata request for our topic now."""
        try:
            async with asyncio.timeout(2):
                partitions = await self._producer.partitions_for(self._topic)
        except (KafkaError, TimeoutError):
            return False
        return bool(partitions)


@asynccontextmanager
async def publisher(
    bootstrap: str, topic: str, *, timeout_s: float, linger_ms: int
) -> AsyncIterator[Publisher]:
    """A started producer for the life of the API process, sized to the topic's record limit
    (`max.message.bytes`, read once here)."""
    found = await limits.max_message_bytes(bootstrap, [topic], max(timeout_s, 5.0))
    max_record_bytes = found[topic]
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        enable_idempotence=True,
        linger_ms=linger_ms,
        max_batch_size=min(MAX_BATCH_BYTES, max_record_bytes),
        max_request_size=max_record_bytes,
        request_timeout_ms=max(1000, int(timeout_s * 1000)),
        retry_backoff_ms=100,
        partitioner=partitioner,
        client_id="ingest-worker-api",
    )
    try:
        await producer.start()
    except KafkaError as exc:
        await producer.stop()
        raise DependencyUnavailable(f"cannot reach Kafka at {bootstrap}: {exc!r}") from exc
    log.info("raw topic record limit", extra={"topic": topic, "max_bytes": max_record_bytes})
    try:
        yield Publisher(producer, topic, timeout_s, max_record_bytes)
    finally:
        await producer.stop()
