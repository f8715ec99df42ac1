"""The worker benchmark's peer: the worker's job written with Quix Streams, as a user would
write it with that library instead of `ingest-worker worker`. Run by bench/peer.py with the
interpreter of its own venv (.local/quix-venv: Quix Streams pins confluent-kafka < 2.13, the
project needs >= 2.16), where ingest_worker is installed without its dependencies, so only
its pure `core` functions (and `auto_name`) are used here.

    KAFKA_BOOTSTRAP_SERVERS=host:port DATABASE_URL=... INGEST_GROUP_ID=g \\
        .local/quix-venv/bin/python bench/quix_peer.py

Per raw record, one at a time (Quix Streams calls a function per message):

1. JSON body (orjson), the `integration-id` header required, `event-id` from its header or
   derived from the record's position as the worker derives it;
2. the event type, read from PostgreSQL on first sight and cached (compiled once with the
   project's `compile_type`, jsonschema-rs), the attributes validated and the device named
   (`plan.plan`: direct id, external id, or the type's template);
3. the device, cached per (integration, external id) or id; on a miss: SELECT, then
   `INSERT ... ON CONFLICT DO NOTHING` (named, `auto_created`, remembering the creating
   event as the worker does) and SELECT again, each statement its own transaction
   (autocommit), so `device_created` is true for exactly the creating event, on a replay too;
4. the accepted record Avro-encoded with fastavro (schemaless_writer, the project's schema
   and single-object header), keyed by device id, to `<INGEST_ACCEPTED_TOPIC>.quix`; a
   rejection as JSON (event id, code, message, where it was read) keyed by event id to
   `<INGEST_REJECTED_TOPIC>.quix`.

Quix Streams runs it with `processing_guarantee="exactly-once"` (one Kafka transaction per
checkpoint: produced records and consumed offsets commit together) and `commit_interval` the
worker's INGEST_WORKER_COMMIT_INTERVAL_MS (100 ms by default). Its producer gets the worker's
retry backoff and metadata refresh (QUIX_PEER_RETRY_BACKOFF_MS and
QUIX_PEER_METADATA_REFRESH_MS, set by bench/peer.py from ingest_worker/worker/sink.py), as the
passthrough baseline's does: with librdkafka's 100 ms default a transaction begun right after
a commit waits 100 ms. Quix Streams stops on SIGTERM after the message in hand, committing
its checkpoint.
"""

from __future__ import annotations

import importlib
import io
import os
import tempfile
from typing import Any, NamedTuple

import fastavro
import orjson
import psycopg
from psycopg.rows import dict_row

from ingest_worker.core import encode, plan, times
from ingest_worker.core.config import Settings
from ingest_worker.core.rejections import Source
from ingest_worker.core.validate import EventType, compile_type
from ingest_worker.worker.decode import fallback_event_id
from ingest_worker.worker.resolve import auto_name

OUTPUT_SUFFIX = ".quix"
REQUIRED = ("integration_event_type_id", "timestamp", "attributes")

# Quix Streams ships no type information that mypy --strict can use (and it is installed in
# its own venv only), so it is reached through `importlib` as `Any`, here and nowhere else.
quix: Any = importlib.import_module("quixstreams")
serializers: Any = importlib.import_module("quixstreams.models.serializers")
quix_context: Any = importlib.import_module("quixstreams.context")


class Out(NamedTuple):
    """One output record: to the accepted topic or the rejected one, its key and value."""

    accepted: bool
    key: bytes
    value: bytes


class Device(NamedTuple):
    id: int
    external_id: str | None
    created_by_event: str | None


class Catalog:
    """Event types read once per (integration, id), compiled, kept (None: there is none)."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self._conn = conn
        self._types: dict[tuple[int, int], EventType | None] = {}

    def get(self, integration_id: int, type_id: int) -> EventType | None:
        key = (integration_id, type_id)
        if key not in self._types:
            with self._conn.cursor(row_factory=dict_row) as cur:
                row = cur.execute(
                    "SELECT * FROM event_types WHERE integration_id = %s AND id = %s", key
                ).fetchone()
            self._types[key] = None if row is None else compile_type(row)
        return self._types[key]


class Devices:
    """Devices found or created per record, cached."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self._conn = conn
        self._external: dict[tuple[int, str], Device] = {}
        self._direct: dict[int, tuple[Device, int]] = {}

    def external(self, integration_id: int, external_id: str, event_id: str) -> Device | None:
        key = (integration_id, external_id)
        found = self._external.get(key)
        if found is None:
            found = self._read(key)
            if found is None:
                self._conn.execute(
                    "INSERT INTO devices (integration_id, external_id, name, auto_created, "
                    "created_by_event) VALUES (%s, %s, %s, true, %s) "
                    "ON CONFLICT (integration_id, external_id) DO NOTHING",
                    (integration_id, external_id, auto_name(external_id), event_id),
                )
                found = self._read(key)
            if found is not None:
                self._external[key] = found
        return found

    def _read(self, key: tuple[int, str]) -> Device | None:
        row = self._conn.execute(
            "SELECT id, created_by_event::text FROM devices "
            "WHERE integration_id = %s AND external_id = %s",
            key,
        ).fetchone()
        return None if row is None else Device(row[0], key[1], row[1])

    def direct(self, integration_id: int, device_id: int) -> Device | None:
        found = self._direct.get(device_id)
        if found is None:
            row = self._conn.execute(
                "SELECT integration_id, external_id, created_by_event::text FROM devices "
                "WHERE id = %s",
                (device_id,),
            ).fetchone()
            if row is None:
                return None
            found = self._direct[device_id] = (Device(device_id, row[1], row[2]), row[0])
        device, owner = found
        return device if owner == integration_id else None


class Rejected(Exception):  # noqa: N818 - a verdict, not a crash
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class Job:
    """The per-record function Quix Streams calls: raw record in, one output record out."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.catalog = Catalog(conn)
        self.devices = Devices(conn)
        self.schema = encode.avro_schema()
        self.header = encode.avro_header()

    def __call__(self, value: bytes, _key: Any, timestamp_ms: int, headers: Any) -> Out:
        found = {name.lower(): data for name, data in headers or ()}
        event_id = _event_id(found.get("event-id"))
        try:
            return self._accept(value, found, event_id, timestamp_ms)
        except Rejected as rejection:
            return self._reject(value, event_id, rejection)

    def _accept(self, value: bytes, found: dict[str, bytes], event_id: str, now_ms: int) -> Out:
        integration_id, body = _decode(value, found.get("integration-id"))
        event_type = self.catalog.get(integration_id, _int(body["integration_event_type_id"]))
        verdict = plan.plan(body, len(value), event_type)
        if isinstance(verdict, plan.Refusal):
            raise Rejected(verdict.code, verdict.message)
        assert event_type is not None  # plan refuses a missing type
        device = self._device(integration_id, verdict, event_id)
        received = found.get("received-at")
        record = {
            "event_id": event_id,
            "integration_id": integration_id,
            "integration_event_type_id": event_type.id,
            "event_type_version": event_type.version,
            "integration_device_id": device.id,
            "device_external_id": device.external_id,
            "device_resolution": verdict.method,
            "device_created": device.created_by_event == event_id,
            "timestamp": _timestamp_us(body["timestamp"]),
            "duration_ms": int(body.get("duration", event_type.duration_ms)),
            "buffer_ms": int(body.get("buffer", event_type.buffer_ms)),
            "attributes_json": orjson.dumps(body["attributes"]).decode(),
            "received_at": now_ms if received is None else _int(received),
            "idempotency_key": _text(found.get("idempotency-key")),
            "op": "created",
            "revision": 1,
        }
        out = io.BytesIO()
        out.write(self.header)
        fastavro.schemaless_writer(out, self.schema, record)
        return Out(True, str(device.id).encode(), out.getvalue())

    def _device(self, integration_id: int, ref: plan.DeviceRef, event_id: str) -> Device:
        if ref.device_id is not None:
            device = self.devices.direct(integration_id, ref.device_id)
        else:
            assert ref.external_id is not None
            device = self.devices.external(integration_id, ref.external_id, event_id)
        if device is None:
            raise Rejected("device_not_found", "no such device in this integration")
        return device

    def _reject(self, value: bytes, event_id: str, rejection: Rejected) -> Out:
        where = quix_context.message_context()
        document = {
            "event_id": event_id,
            "raw": value.decode(errors="replace"),
            "source": {"topic": where.topic, "partition": where.partition, "offset": where.offset},
            "error": {"code": rejection.code, "message": str(rejection)},
        }
        return Out(False, event_id.encode(), orjson.dumps(document))


def _event_id(header: bytes | None) -> str:
    if header:
        return header.decode()
    where = quix_context.message_context()
    return fallback_event_id(Source(where.topic, where.partition, where.offset))


def _decode(value: bytes, integration: bytes | None) -> tuple[int, dict[str, Any]]:
    if integration is None:
        raise Rejected("missing_integration_id", "no integration-id header")
    try:
        body = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise Rejected("invalid_json", str(exc)) from None
    if not isinstance(body, dict) or any(name not in body for name in REQUIRED):
        raise Rejected("invalid_request", f"the body must be an object with {REQUIRED}")
    if not isinstance(body["attributes"], dict):
        raise Rejected("invalid_request", "attributes must be an object")
    return _int(integration), body


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise Rejected("invalid_request", f"not an integer: {value!r}") from None


def _timestamp_us(text: object) -> int:
    try:
        return times.timestamp_micros(str(text))
    except ValueError as exc:
        raise Rejected("invalid_timestamp", str(exc)) from None


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode(errors="replace")


def _out_value(_self: Any, value: Out, ctx: Any) -> bytes:
    return value.value


def main() -> None:
    settings = Settings.from_env(os.environ)
    if not settings.kafka_bootstrap_servers or not settings.database_url:
        raise SystemExit("KAFKA_BOOTSTRAP_SERVERS and DATABASE_URL are required")
    app = quix.Application(
        broker_address=settings.kafka_bootstrap_servers,
        consumer_group=settings.group_id,
        auto_offset_reset="earliest",
        processing_guarantee="exactly-once",
        commit_interval=settings.worker_commit_interval_ms / 1000,  # the worker's: 100 ms
        producer_extra_config={
            "retry.backoff.ms": int(os.environ.get("QUIX_PEER_RETRY_BACKOFF_MS", "100")),
            "topic.metadata.refresh.fast.interval.ms": int(
                os.environ.get("QUIX_PEER_METADATA_REFRESH_MS", "100")
            ),
        },
        state_dir=tempfile.mkdtemp(prefix="quix-peer-state-"),
        loglevel=os.environ.get("INGEST_LOG_LEVEL", "WARNING"),
    )
    # Quix Streams' Serializer is an ABC with `__call__(value, ctx)`: the output's bytes.
    out_serializer = type("OutValue", (serializers.Serializer,), {"__call__": _out_value})()
    raw = app.topic(settings.raw_topic, key_deserializer="bytes", value_deserializer="bytes")
    accepted = app.topic(
        settings.accepted_topic + OUTPUT_SUFFIX,
        key_serializer="bytes",
        value_serializer=out_serializer,
    )
    rejected = app.topic(
        settings.rejected_topic + OUTPUT_SUFFIX,
        key_serializer="bytes",
        value_serializer=out_serializer,
    )
    with psycopg.connect(str(settings.database_url), autocommit=True) as conn:
        job = Job(conn)
        sdf = app.dataframe(raw).apply(job, metadata=True)
        sdf.to_topic(
            lambda out, *_: accepted if out.accepted else rejected, key=lambda out: out.key
        )
        app.run()


if __name__ == "__main__":
    main()
