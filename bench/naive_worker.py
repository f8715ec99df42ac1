"""The worker benchmark's naive loop: the worker's job done the obvious way, one record at a
time, as bench/worker.py compares it with `ingest-worker worker`.

    KAFKA_BOOTSTRAP_SERVERS=host:port DATABASE_URL=... INGEST_GROUP_ID=g \\
        .venv/bin/python bench/naive_worker.py

For each raw record, in turn:

1. decode, validate and plan it with the worker's own pure functions (`pipeline.decode_record`,
   `pipeline.plan`), event types read from PostgreSQL on first sight and kept compiled;
2. one PostgreSQL transaction resolving its device: SELECT it (by id, or by integration and
   external id); a missing external id is inserted (`ON CONFLICT DO NOTHING`, named and
   remembering the creating event as the worker does) and read again;
3. its one output record (`pipeline.verdict` and `pipeline.output`: the worker's Avro
   encoding, or its rejection) produced to `<INGEST_ACCEPTED_TOPIC>.naive` (or the rejected
   topic's `.naive`) with `acks=all`, waiting for its delivery report;
4. the consumer's offset committed, synchronously.

No Kafka transactions (so at least once, not exactly once) and no event store: both would
only slow it. Updates and deletes of stored events are rejected. SIGTERM stops it after the
record in hand.
"""

from __future__ import annotations

import os
import signal
import threading
from types import FrameType
from typing import Any

import psycopg
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer
from psycopg.rows import dict_row

from ingest_worker.core.config import Settings
from ingest_worker.core.encode import OutRecord
from ingest_worker.core.plan import DeviceRef
from ingest_worker.core.rejections import Rejection
from ingest_worker.core.validate import EventType, compile_type
from ingest_worker.worker import pipeline
from ingest_worker.worker.decode import RawEvent
from ingest_worker.worker.loop import in_record
from ingest_worker.worker.resolve import Device, auto_name
from ingest_worker.worker.revise import reject

OUTPUT_SUFFIX = ".naive"
DELIVERY_TIMEOUT_S = 30.0
POLL_S = 0.1


class Catalog:
    """Integrations and their compiled event types, read once per integration."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self._conn = conn
        self.known: set[int] = set()
        self.types: dict[tuple[int, int], EventType] = {}
        self._seen: set[int] = set()

    def load(self, integration_id: int) -> None:
        if integration_id in self._seen:
            return
        with self._conn.transaction(), self._conn.cursor(row_factory=dict_row) as cur:
            if cur.execute(
                "SELECT 1 FROM integrations WHERE id = %s", (integration_id,)
            ).fetchone():
                self.known.add(integration_id)
            rows = cur.execute(
                "SELECT * FROM event_types WHERE integration_id = %s", (integration_id,)
            ).fetchall()
        self.types.update({(r["integration_id"], r["id"]): compile_type(r) for r in rows})
        self._seen.add(integration_id)


def resolve(conn: psycopg.Connection[Any], event: RawEvent, ref: DeviceRef) -> pipeline.Devices:
    """The one device `ref` names, in a transaction of its own (created when missing)."""
    with conn.transaction():
        if ref.device_id is not None:
            row = conn.execute(
                "SELECT integration_id, external_id, created_by_event::text FROM devices "
                "WHERE id = %s",
                (ref.device_id,),
            ).fetchone()
            direct = (
                {} if row is None else {ref.device_id: (Device(ref.device_id, *row[1:]), row[0])}
            )
            return pipeline.Devices(direct, {}, set(), [])
        key = (event.integration_id, str(ref.external_id))
        device = _external(conn, key)
        if device is None:
            conn.execute(
                "INSERT INTO devices (integration_id, external_id, name, auto_created, "
                "created_by_event) VALUES (%s, %s, %s, true, %s) "
                "ON CONFLICT (integration_id, external_id) DO NOTHING",
                (*key, auto_name(key[1]), event.event_id),
            )
            device = _external(conn, key)
    return pipeline.Devices({}, {} if device is None else {key: device}, set(), [])


def _external(conn: psycopg.Connection[Any], key: tuple[int, str]) -> Device | None:
    row = conn.execute(
        "SELECT id, created_by_event::text FROM devices "
        "WHERE integration_id = %s AND external_id = %s",
        key,
    ).fetchone()
    return None if row is None else Device(row[0], key[1], row[1])


def decide(
    conn: psycopg.Connection[Any], catalog: Catalog, record: pipeline.InRecord
) -> pipeline.Verdict:
    """The record's fate: accepted with its device, or rejected with a code."""
    decoded = pipeline.decode_record(record)
    if isinstance(decoded, Rejection):
        return decoded
    if not isinstance(decoded, RawEvent):
        return reject(decoded, 422, "unsupported", "the naive loop only takes new events")
    catalog.load(decoded.integration_id)
    ref = pipeline.plan(decoded, catalog.known, catalog.types)
    if isinstance(ref, Rejection):
        return ref
    return pipeline.verdict(decoded, ref, resolve(conn, decoded, ref), catalog.types)


def send(producer: Producer, out: OutRecord) -> None:
    """Produce one record and wait for its delivery report."""
    failed: list[KafkaError] = []

    def delivered(error: KafkaError | None, _record: Message) -> None:
        if error is not None:
            failed.append(error)

    headers: list[tuple[str, str | bytes | None]] = list(out.headers)
    producer.produce(out.topic, out.value, out.key, headers=headers, on_delivery=delivered)
    if producer.flush(DELIVERY_TIMEOUT_S) or failed:
        raise KafkaException(failed[0] if failed else KafkaError(KafkaError._TIMED_OUT))


def main() -> None:
    settings = Settings.from_env(os.environ)
    if not settings.kafka_bootstrap_servers or not settings.database_url:
        raise SystemExit("KAFKA_BOOTSTRAP_SERVERS and DATABASE_URL are required")
    stop = threading.Event()

    def on_sigterm(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_sigterm)
    bootstrap = settings.kafka_bootstrap_servers
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": settings.group_id,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    consumer.subscribe([settings.raw_topic])
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 0})
    topics = pipeline.Topics(
        settings.accepted_topic + OUTPUT_SUFFIX, settings.rejected_topic + OUTPUT_SUFFIX
    )
    try:
        with psycopg.connect(str(settings.database_url), autocommit=True) as conn:
            run(settings.raw_topic, consumer, producer, conn, topics, stop)
    finally:
        consumer.close()


def run(
    raw_topic: str,
    consumer: Consumer,
    producer: Producer,
    conn: psycopg.Connection[Any],
    topics: pipeline.Topics,
    stop: threading.Event,
) -> None:
    """One record at a time until `stop` is set."""
    catalog = Catalog(conn)
    while not stop.is_set():
        message = consumer.poll(POLL_S)
        if message is None or message.error() is not None:
            continue
        out, _ = pipeline.output(decide(conn, catalog, in_record(message, raw_topic)), topics)
        send(producer, out)
        consumer.commit(message=message, asynchronous=False)


if __name__ == "__main__":
    main()
