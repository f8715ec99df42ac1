"""The worker benchmark's baseline: a librdkafka transactional passthrough, independent of the
worker's code. One consumer and ONE transactional producer (KIP-447: the consumer's group
metadata goes into each transaction). Per poll batch: begin a transaction, re-produce every
record unchanged (key, value, headers) to `<INGEST_ACCEPTED_TOPIC>.baseline`, send the
consumer's positions as the group's offsets, commit. Its producer's retry backoff is the
worker's (a transaction begun right after a commit is refused for a few ms).

    KAFKA_BOOTSTRAP_SERVERS=host:port INGEST_GROUP_ID=g .venv/bin/python bench/baseline_worker.py

Settings are the worker's (`INGEST_RAW_TOPIC`, `INGEST_ACCEPTED_TOPIC`, `INGEST_GROUP_ID`,
`INGEST_WORKER_BATCH_MAX_RECORDS`, `INGEST_WORKER_POLL_TIMEOUT_MS`). The loop is sequential,
and librdkafka runs rebalance callbacks inside `consume()`, so no transaction is ever open
when partitions are revoked: the default assign/unassign is all a rebalance needs. SIGTERM
stops it after the batch in hand.

With `BENCH_PASSTHROUGH_WORK=floor` it is the floor instead: the same loop, doing per record
only the work no worker of this contract can skip, through the same libraries and none of
the worker's own code around them: parse the value (orjson), validate its attributes
(jsonschema-rs, the bench's event type), read the timestamp, and write the accepted record
(the project's Avro encoder, the attributes as JSON). No device, no store, no rejection
path. A reference, not a bound: a worker that overlaps its commits with the next batch
could pass it, but every worker of this contract does at least this work per record.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable
from types import FrameType

import jsonschema_rs
import orjson
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)

from ingest_worker.core import encode
from ingest_worker.core.config import Settings
from ingest_worker.core.times import timestamp_micros
from ingest_worker.worker.sink import METADATA_FAST_REFRESH_MS, TXN_RETRY_BACKOFF_MS

COMMIT_TIMEOUT_S = 30.0
# The bench's event type's schema (bench/workload.py makes the type): the floor validates
# against it. Kept here, where a script that imports nothing of the bench's finds it.
EVENT_SCHEMA = {
    "type": "object",
    "required": ["store", "lane"],
    "properties": {
        "store": {"type": "string"},
        "lane": {"type": "integer"},
        "total": {"type": "number"},
    },
}

Value = Callable[[Message], bytes | None]


def main() -> None:
    settings = Settings.from_env(os.environ)
    if not settings.kafka_bootstrap_servers:
        raise SystemExit("KAFKA_BOOTSTRAP_SERVERS is required")
    stop = threading.Event()

    def on_sigterm(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_sigterm)
    consumer = _consumer(settings.kafka_bootstrap_servers, settings)
    producer = _producer(settings.kafka_bootstrap_servers, settings)
    value = floor_value() if os.environ.get("BENCH_PASSTHROUGH_WORK") == "floor" else _unchanged
    try:
        run(settings, consumer, producer, stop, value)
    finally:
        consumer.close()


def _consumer(bootstrap: str, settings: Settings) -> Consumer:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": settings.group_id,
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    consumer.subscribe([settings.raw_topic])
    return consumer


def _producer(bootstrap: str, settings: Settings) -> Producer:
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "transactional.id": f"baseline-{settings.group_id}",
            "retry.backoff.ms": TXN_RETRY_BACKOFF_MS,  # tuned as the worker's is
            "topic.metadata.refresh.fast.interval.ms": METADATA_FAST_REFRESH_MS,
        }
    )
    producer.init_transactions(COMMIT_TIMEOUT_S)
    return producer


def run(
    settings: Settings,
    consumer: Consumer,
    producer: Producer,
    stop: threading.Event,
    value: Value,
) -> None:
    """Pass poll batches through, one transaction each, until `stop` is set: each record's
    key and headers, and `value` of it."""
    topic = settings.accepted_topic + ".baseline"
    timeout_s = settings.worker_poll_timeout_ms / 1000
    while not stop.is_set():
        batch = consumer.consume(settings.worker_batch_max_records, timeout_s)
        records = [record for record in batch if _usable(record)]
        if records:
            _pass(consumer, producer, (topic, value), records)


def _usable(record: Message) -> bool:
    """A record, not an event (librdkafka reports transient errors in the batch)."""
    error = record.error()
    if error is None:
        return True
    if error.fatal():
        raise KafkaException(error)
    return False


def _pass(
    consumer: Consumer, producer: Producer, out: tuple[str, Value], records: list[Message]
) -> None:
    """One transaction: the records (their values made by `out`'s function) to `out`'s
    topic, and the consumed positions."""
    topic, value = out
    producer.begin_transaction()
    try:
        for record in records:
            _produce(producer, topic, record, value(record))
        positions = [tp for tp in consumer.position(consumer.assignment()) if tp.offset >= 0]
        producer.send_offsets_to_transaction(
            positions, consumer.consumer_group_metadata(), COMMIT_TIMEOUT_S
        )
        _commit(producer)
    except KafkaException as exc:
        if not _error(exc).txn_requires_abort():
            raise
        producer.abort_transaction(COMMIT_TIMEOUT_S)
        _rewind(consumer)


def _unchanged(record: Message) -> bytes | None:
    return record.value()


def floor_value() -> Value:
    """The floor's per-record work (see the module's text); a record it cannot read is
    passed through unchanged (the bench writes none)."""
    valid = jsonschema_rs.validator_for(EVENT_SCHEMA).is_valid

    def value(record: Message) -> bytes | None:
        raw = record.value()
        try:
            body = orjson.loads(raw or b"")
            attributes = body["attributes"]
            headers = dict(record.headers() or ())
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return raw
        return encode.accepted_value(
            {
                "event_id": _text(headers.get("event-id")),
                "integration_id": int(headers.get("integration-id") or 0),
                "integration_event_type_id": body["integration_event_type_id"],
                "event_type_version": 1,
                "integration_device_id": 1 if valid(attributes) else 0,
                "device_external_id": body.get("device_external_id"),
                "device_resolution": "external_id",
                "device_created": False,
                "timestamp": timestamp_micros(body["timestamp"]),
                "duration_ms": 0,
                "buffer_ms": 0,
                "attributes_json": orjson.dumps(attributes).decode(),
                "received_at": int(headers.get("received-at") or 0),
                "idempotency_key": None,
                "traceparent": _text(headers.get("traceparent")) or None,
                "op": "created",
                "revision": 1,
            }
        )

    return value


def _text(value: str | bytes | None) -> str:
    return value.decode() if isinstance(value, bytes) else value or ""


def _produce(producer: Producer, topic: str, record: Message, value: bytes | None) -> None:
    while True:
        try:
            producer.produce(topic, value, record.key(), headers=record.headers())
            return
        except BufferError:  # the local queue is full: let librdkafka send some
            producer.poll(0.01)


def _commit(producer: Producer) -> None:
    while True:
        try:
            producer.commit_transaction(COMMIT_TIMEOUT_S)
            return
        except KafkaException as exc:
            if not _error(exc).retriable():
                raise


def _rewind(consumer: Consumer) -> None:
    """After an abort: back to the group's committed offsets, so nothing is skipped."""
    for tp in consumer.committed(consumer.assignment(), COMMIT_TIMEOUT_S):
        offset = tp.offset if tp.offset >= 0 else OFFSET_BEGINNING
        consumer.seek(TopicPartition(tp.topic, tp.partition, offset))


def _error(exc: KafkaException) -> KafkaError:
    error = exc.args[0]
    assert isinstance(error, KafkaError)
    return error


if __name__ == "__main__":
    main()
