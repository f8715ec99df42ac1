"""Transactions on the broker version we ship, with the worker's client (librdkafka): commit,
abort, offsets in the transaction with the group's metadata (KIP-447), and fencing, both by
transactional id and by group generation."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import pytest
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

from ingest_worker.core.encode import OutRecord
from ingest_worker.worker.offsets import Partition
from ingest_worker.worker.sink import Sink, TransactionFailed, producer_config
from tests.integration.conftest import RUN_ID, NewTopicFactory


def _read_all(bootstrap: str, topic: str, isolation: str, expect: int) -> list[bytes]:
    """Every value of the topic (one partition) as the isolation level shows it."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"read-{uuid.uuid4().hex}",
            "isolation.level": isolation,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.assign([TopicPartition(topic, 0, 0)])
    values: list[bytes] = []
    try:
        deadline = time.monotonic() + 20
        while len(values) < expect and time.monotonic() < deadline:
            values += [m.value() or b"" for m in consumer.consume(100, 0.5) if not m.error()]
        # One more short poll: anything beyond `expect` must show up too.
        values += [m.value() or b"" for m in consumer.consume(100, 1.0) if not m.error()]
    finally:
        consumer.close()
    return values


def _producer(bootstrap: str, transactional_id: str) -> Producer:
    producer = Producer({"bootstrap.servers": bootstrap, "transactional.id": transactional_id})
    producer.init_transactions(30)
    return producer


@pytest.fixture
def producer(kafka_bootstrap: str) -> Producer:
    """A transactional producer with an id unique to the test."""
    return _producer(kafka_bootstrap, f"tx-{RUN_ID}-{uuid.uuid4().hex}")


def _commit_with_offsets(producer: Producer, offsets: list[TopicPartition], group: Any) -> None:
    producer.send_offsets_to_transaction(offsets, group, 30)
    producer.commit_transaction(30)


def _member(bootstrap: str, group: str, topic: str) -> Consumer:
    """A member of `group` that owns `topic` (one partition) once this returns."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
            "session.timeout.ms": 6000,
            "heartbeat.interval.ms": 1000,
        }
    )
    assigned: list[Any] = []
    consumer.subscribe([topic], on_assign=lambda _, parts: assigned.extend(parts))
    deadline = time.monotonic() + 30
    while not assigned and time.monotonic() < deadline:
        consumer.consume(1, 0.2)
    assert assigned, "never assigned"
    return consumer


async def test_read_committed_sees_committed_not_aborted(
    kafka_bootstrap: str, new_topic: NewTopicFactory, producer: Producer
) -> None:
    """A read_committed consumer gets committed records only; read_uncommitted gets both."""
    topic = await new_topic(partitions=1)
    for value, commit in ((b"committed-1", True), (b"aborted", False), (b"committed-2", True)):
        producer.begin_transaction()
        producer.produce(topic, value)
        if commit:
            producer.commit_transaction(30)
        else:
            producer.flush(30)
            producer.abort_transaction(30)

    committed = await asyncio.to_thread(_read_all, kafka_bootstrap, topic, "read_committed", 2)
    everything = await asyncio.to_thread(_read_all, kafka_bootstrap, topic, "read_uncommitted", 3)

    assert committed == [b"committed-1", b"committed-2"]
    assert sorted(everything) == [b"aborted", b"committed-1", b"committed-2"]


async def test_offsets_commit_with_the_output(
    kafka_bootstrap: str, new_topic: NewTopicFactory, producer: Producer
) -> None:
    """Offsets sent in a transaction with the group's metadata are committed when it commits,
    and not when it aborts."""
    source, sink = await new_topic(partitions=1), await new_topic(partitions=1)
    member = await asyncio.to_thread(_member, kafka_bootstrap, f"group-{RUN_ID}-{source}", source)
    try:
        group = member.consumer_group_metadata()
        producer.begin_transaction()
        producer.produce(sink, b"lost")
        producer.send_offsets_to_transaction([TopicPartition(source, 0, 7)], group, 30)
        producer.abort_transaction(30)
        producer.begin_transaction()
        producer.produce(sink, b"kept")
        producer.send_offsets_to_transaction([TopicPartition(source, 0, 3)], group, 30)
        producer.commit_transaction(30)
        (committed,) = member.committed([TopicPartition(source, 0)], timeout=30)
    finally:
        member.close()
    assert committed.offset == 3
    assert await asyncio.to_thread(_read_all, kafka_bootstrap, sink, "read_committed", 1) == [
        b"kept"
    ]


async def test_new_producer_with_same_id_fences_the_old(
    kafka_bootstrap: str, new_topic: NewTopicFactory
) -> None:
    """A second producer with the same transactional id fences the first: the zombie's open
    transaction is aborted and its next commit fails."""
    topic = await new_topic(partitions=1)
    tx_id = f"tx-{RUN_ID}-fencing-{uuid.uuid4().hex}"
    zombie = _producer(kafka_bootstrap, tx_id)
    zombie.begin_transaction()
    zombie.produce(topic, b"from-zombie")
    zombie.flush(30)

    successor = _producer(kafka_bootstrap, tx_id)
    successor.begin_transaction()
    successor.produce(topic, b"from-successor")
    successor.commit_transaction(30)

    with pytest.raises(KafkaException):
        zombie.commit_transaction(30)
    assert await asyncio.to_thread(_read_all, kafka_bootstrap, topic, "read_committed", 1) == [
        b"from-successor"
    ]


async def test_a_stale_group_generation_cannot_commit_offsets(
    kafka_bootstrap: str, new_topic: NewTopicFactory, producer: Producer
) -> None:
    """KIP-447: a member that lost its partitions to a rebalance cannot commit offsets with
    its old group metadata; the transaction must abort, so its outputs never show."""
    source, sink = await new_topic(partitions=1), await new_topic(partitions=1)
    group_id = f"group-{RUN_ID}-{source}"
    first = await asyncio.to_thread(_member, kafka_bootstrap, group_id, source)
    stale = first.consumer_group_metadata()
    first.close()  # leaves the group: the next member starts a new generation
    second = await asyncio.to_thread(_member, kafka_bootstrap, group_id, source)
    try:
        producer.begin_transaction()
        producer.produce(sink, b"from-the-old-generation")
        with pytest.raises(KafkaException) as failed:
            _commit_with_offsets(producer, [TopicPartition(source, 0, 5)], stale)
        assert failed.value.args[0].txn_requires_abort() or failed.value.args[0].fatal()
        producer.abort_transaction(30)
        (committed,) = second.committed([TopicPartition(source, 0)], timeout=30)
    finally:
        second.close()
    assert committed.offset < 0
    assert await asyncio.to_thread(_read_all, kafka_bootstrap, sink, "read_committed", 0) == []


async def test_a_commit_of_an_aborted_transaction_commits_nothing(
    kafka_bootstrap: str, new_topic: NewTopicFactory
) -> None:
    """The worker's sink: a commit asked for a transaction that a rebalance aborted
    meanwhile (`settle_blocking`) fails, and never commits its offsets into a fresh
    transaction of its own; the open one still commits."""
    source, out = await new_topic(partitions=1), await new_topic(partitions=1)
    member = await asyncio.to_thread(_member, kafka_bootstrap, f"group-{RUN_ID}-{source}", source)
    config = producer_config(kafka_bootstrap, f"tx-{RUN_ID}-{uuid.uuid4().hex}", 10, [1 << 20])
    sink = Sink(config, 10)
    try:
        await sink.ensure()
        group = member.consumer_group_metadata()
        sink.send([OutRecord(out, b"k", b"aborted", [])])
        aborted = sink.open_transaction()
        await asyncio.to_thread(sink.settle_blocking)  # as a rebalance does
        late = sink.commit_soon({Partition(source, 0): 7}, group, aborted)
        with pytest.raises(TransactionFailed):
            await late
        sink.send([OutRecord(out, b"k", b"kept", [])])
        await sink.commit_soon({Partition(source, 0): 3}, group, sink.open_transaction())
        (committed,) = member.committed([TopicPartition(source, 0)], timeout=30)
    finally:
        await sink.close()
        member.close()
    assert committed.offset == 3
    kept = await asyncio.to_thread(_read_all, kafka_bootstrap, out, "read_committed", 1)
    assert kept == [b"kept"]
