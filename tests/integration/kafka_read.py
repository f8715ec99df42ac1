"""Read a topic from the beginning, for checking what the services published."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient
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


async def partitions_of(bootstrap: str, topic: str) -> list[int]:
    """The partition numbers of a topic, from the broker."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        (described,) = await admin.describe_topics([topic])
    finally:
        await admin.close()
    return [int(p["partition"]) for p in described["partitions"]]


def header(record: Any, name: str) -> bytes | None:
    """A record header's value, or None."""
    for key, value in record.headers:
        if key == name:
            return bytes(value)
    return None
