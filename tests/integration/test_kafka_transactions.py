"""Transactions on the broker version we ship: commit, abort, offsets in the transaction,
and fencing. aiokafka is not tested upstream against Kafka 4.x; these tests are the proof."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from aiokafka.structs import TopicPartition

from tests.integration.conftest import RUN_ID, NewTopicFactory


async def _read_all(bootstrap: str, topic: str, isolation: str, expect: int) -> list[bytes]:
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        isolation_level=isolation,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    values: list[bytes] = []
    try:
        deadline = asyncio.get_running_loop().time() + 20
        while len(values) < expect and asyncio.get_running_loop().time() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            values += [msg.value for msgs in batch.values() for msg in msgs]
        # One more short poll: anything beyond `expect` must show up too.
        extra = await consumer.getmany(timeout_ms=1000)
        values += [msg.value for msgs in extra.values() for msg in msgs]
    finally:
        await consumer.stop()
    return values


@pytest.fixture
async def producer(kafka_bootstrap: str) -> AsyncIterator[AIOKafkaProducer]:
    """A transactional producer with an id unique to the test."""
    prod = AIOKafkaProducer(
        bootstrap_servers=kafka_bootstrap, transactional_id=f"tx-{RUN_ID}-{id(object())}"
    )
    await prod.start()
    yield prod
    await prod.stop()


async def test_read_committed_sees_committed_not_aborted(
    kafka_bootstrap: str, new_topic: NewTopicFactory, producer: AIOKafkaProducer
) -> None:
    """A read_committed consumer gets committed records only; read_uncommitted gets both."""
    topic = await new_topic(partitions=1)
    async with producer.transaction():
        await producer.send(topic, b"committed-1")
    await producer.begin_transaction()
    await producer.send(topic, b"aborted")
    await producer.abort_transaction()
    async with producer.transaction():
        await producer.send(topic, b"committed-2")

    committed = await _read_all(kafka_bootstrap, topic, "read_committed", 2)
    everything = await _read_all(kafka_bootstrap, topic, "read_uncommitted", 3)

    assert committed == [b"committed-1", b"committed-2"]
    assert sorted(everything) == [b"aborted", b"committed-1", b"committed-2"]


async def test_offsets_commit_with_the_output(
    kafka_bootstrap: str, new_topic: NewTopicFactory, producer: AIOKafkaProducer
) -> None:
    """Offsets sent in a transaction are committed when it commits, and not when it aborts."""
    source, sink = await new_topic(partitions=1), await new_topic(partitions=1)
    group = f"group-{RUN_ID}-offsets"
    tp = TopicPartition(source, 0)

    await producer.begin_transaction()
    await producer.send(sink, b"lost")
    await producer.send_offsets_to_transaction({tp: 7}, group)
    await producer.abort_transaction()
    async with producer.transaction():
        await producer.send(sink, b"kept")
        await producer.send_offsets_to_transaction({tp: 3}, group)

    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()
    assert offsets[tp].offset == 3
    assert await _read_all(kafka_bootstrap, sink, "read_committed", 1) == [b"kept"]


async def test_new_producer_with_same_id_fences_the_old(
    kafka_bootstrap: str, new_topic: NewTopicFactory
) -> None:
    """A second producer with the same transactional id fences the first: the zombie's open
    transaction is aborted and its next commit fails."""
    topic = await new_topic(partitions=1)
    tx_id = f"tx-{RUN_ID}-fencing"
    zombie = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, transactional_id=tx_id)
    await zombie.start()
    await zombie.begin_transaction()
    await zombie.send_and_wait(topic, b"from-zombie")

    successor = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, transactional_id=tx_id)
    await successor.start()
    async with successor.transaction():
        await successor.send(topic, b"from-successor")

    with pytest.raises(KafkaError):
        await zombie.commit_transaction()
    await asyncio.gather(zombie.stop(), successor.stop(), return_exceptions=True)

    assert await _read_all(kafka_bootstrap, topic, "read_committed", 1) == [b"from-successor"]
