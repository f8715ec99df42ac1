"""The worker's poll against the real broker: it returns what has come as soon as anything has,
instead of waiting out its timeout for a full batch (which would hold every record of a
moderate stream back by up to the timeout)."""

from __future__ import annotations

import asyncio
import time
import uuid

from confluent_kafka import Consumer, Producer, TopicPartition

from ingest_worker.worker.loop import consume
from ingest_worker.worker.offsets import Partition
from tests.integration.conftest import RUN_ID, NewTopicFactory

LONG_WAIT_S = 60.0


def _produce(bootstrap: str, topic: str, values: list[bytes]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap})
    for value in values:
        producer.produce(topic, value, partition=0)
    assert producer.flush(30) == 0


def _timed_consume(
    consumer: Consumer, count: int, timeout_s: float
) -> tuple[list[bytes], dict[Partition, int], float]:
    started = time.monotonic()
    messages, positions = consume(consumer, count, timeout_s)
    values = [m.value() or b"" for m in messages if m.error() is None]
    return values, positions, time.monotonic() - started


async def test_a_poll_returns_what_has_come_without_waiting_for_a_full_batch(
    kafka_bootstrap: str, new_topic: NewTopicFactory
) -> None:
    topic = await new_topic(partitions=1)
    await asyncio.to_thread(_produce, kafka_bootstrap, topic, [b"a", b"b", b"c"])
    consumer = Consumer(
        {
            "bootstrap.servers": kafka_bootstrap,
            "group.id": f"poll-{RUN_ID}-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
        }
    )
    consumer.assign([TopicPartition(topic, 0, 0)])
    try:
        values, positions, took = await asyncio.to_thread(
            _timed_consume, consumer, 2000, LONG_WAIT_S
        )
        assert values == [b"a", b"b", b"c"]
        assert positions == {Partition(topic, 0): 3}
        assert took < LONG_WAIT_S / 2, "the poll waited for a full batch"

        empty, none, _ = await asyncio.to_thread(_timed_consume, consumer, 2000, 0.2)
        assert (empty, none) == ([], {})

        await asyncio.to_thread(_produce, kafka_bootstrap, topic, [b"d", b"e"])
        one, _, _ = await asyncio.to_thread(_timed_consume, consumer, 1, LONG_WAIT_S)
        rest, positions, _ = await asyncio.to_thread(_timed_consume, consumer, 2000, LONG_WAIT_S)
        assert (one, rest) == ([b"d"], [b"e"])
        assert positions == {Partition(topic, 0): 5}
    finally:
        await asyncio.to_thread(consumer.close)
