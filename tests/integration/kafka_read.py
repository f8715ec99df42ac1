"""Read a topic from the beginning, for checking what the services published."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import suppress
from typing import Any

from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from aiokafka.structs import TopicPartition


async def read_topic(
    bootstrap: str,
    topic: str,
    *,
    until: Callable[[list[Any]], bool],
    timeout_s: float = 20,
    isolation: str = "read_committed",
) -> list[Any]:
    """Records of every partition, from the start, until `until(records)` or the timeout."""
    return await read_topics(
        bootstrap, [topic], until=until, timeout_s=timeout_s, isolation=isolation
    )


async def read_topics(
    bootstrap: str,
    topics: list[str],
    *,
    until: Callable[[list[Any]], bool],
    timeout_s: float = 20,
    isolation: str = "read_committed",
    grace_s: float = 0.0,
) -> list[Any]:
    """Records of every partition of `topics`, from the start, until `until(records)` (then
    `grace_s` more, to catch anything extra) or the timeout."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, isolation_level=isolation, enable_auto_commit=False
    )
    await consumer.start()
    try:
        consumer.assign(
            [TopicPartition(t, p) for t in topics for p in await partitions_of(bootstrap, t)]
        )
        await consumer.seek_to_beginning()
        records: list[Any] = []
        deadline = asyncio.get_running_loop().time() + timeout_s
        while not until(records) and asyncio.get_running_loop().time() < deadline:
            batch = await consumer.getmany(timeout_ms=200)
            records += [r for rs in batch.values() for r in rs]
        if grace_s:
            batch = await consumer.getmany(timeout_ms=int(grace_s * 1000))
            records += [r for rs in batch.values() for r in rs]
        return records
    finally:
        await consumer.stop()


async def partitions_of(bootstrap: str, topic: str, timeout_s: float = 30) -> list[int]:
    """The partition numbers of a topic, from the broker, once each has a leader (a broker
    just back answers with none, or not at all, for a moment)."""
    async with asyncio.timeout(timeout_s):
        while True:
            with suppress(KafkaError):
                partitions = await _describe(bootstrap, topic)
                if partitions and all(int(p["leader"]) >= 0 for p in partitions):
                    return sorted(int(p["partition"]) for p in partitions)
            await asyncio.sleep(0.2)


async def _describe(bootstrap: str, topic: str) -> list[dict[str, Any]]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        (described,) = await admin.describe_topics([topic])
    finally:
        await admin.close()
    return list(described["partitions"])


def header(record: Any, name: str) -> bytes | None:
    """A record header's value, or None."""
    for key, value in record.headers:
        if key == name:
            return bytes(value)
    return None
