"""Raw records to events or rejections, timestamps, and the output encodings."""

from __future__ import annotations

import io
import uuid
from datetime import UTC, datetime

import fastavro
import orjson
import pytest

from ingest_worker.core.encode import (
    SINGLE_OBJECT_MARKER,
    accepted_value,
    avro_schema,
    read_accepted,
    rejected_value,
)
from ingest_worker.core.rejections import Rejection, Source
from ingest_worker.core.times import timestamp_micros
from ingest_worker.worker.decode import RawEvent, decode

SOURCE = Source("raw", 2, 41)
GOOD = orjson.dumps(
    {"integration_event_type_id": 1, "timestamp": "2024-01-01T00:00:00Z", "attributes": {}}
)


def test_a_good_record_decodes_with_its_headers() -> None:
    """Headers give integration, event id, received-at and the idempotency key."""
    event_id = str(uuid.uuid4())
    headers = [
        ("integration-id", b"7"),
        ("event-id", event_id.encode()),
        ("received-at", b"1700000000000"),
        ("idempotency-key", b"k1"),
    ]
    found = decode(SOURCE, GOOD, headers, 5)
    assert isinstance(found, RawEvent)
    assert (found.integration_id, found.event_id, found.received_at_ms) == (
        7,
        event_id,
        1700000000000,
    )
    assert found.idempotency_key == "k1"


@pytest.mark.parametrize(
    ("value", "headers", "code"),
    [
        (GOOD, [], "invalid_request"),
        (GOOD, [("integration-id", b"x")], "invalid_request"),
        (GOOD, [("integration-id", b"2147483648")], "invalid_request"),
        (b"{", [("integration-id", b"1")], "invalid_json"),
        (None, [("integration-id", b"1")], "invalid_json"),
        (b"\xff", [("integration-id", b"1")], "invalid_json"),
        (b"[]", [("integration-id", b"1")], "invalid_request"),
        (GOOD, [("integration-id", b"1"), ("idempotency-key", b"")], "invalid_request"),
        (GOOD, [("integration-id", b"1"), ("idempotency-key", b"a\x00")], "invalid_request"),
    ],
)
def test_bad_records_become_rejections(
    value: bytes | None, headers: list[tuple[str, bytes]], code: str
) -> None:
    """Missing or bad headers, non-JSON and non-events are rejections with a code, never
    exceptions."""
    found = decode(SOURCE, value, headers, 5)
    assert isinstance(found, Rejection)
    assert found.code == code


def test_missing_event_id_is_derived_from_the_position() -> None:
    """Without an event-id header, the id comes from topic, partition and offset: a replay
    of the same record gets the same id."""
    first = decode(SOURCE, GOOD, [("integration-id", b"1")], 5)
    again = decode(SOURCE, GOOD, [("integration-id", b"1"), ("event-id", b"junk")], 5)
    other = decode(Source("raw", 2, 42), GOOD, [("integration-id", b"1")], 5)
    assert first.event_id == again.event_id != other.event_id


@pytest.mark.parametrize(
    ("text", "micros"),
    [
        ("1970-01-01T00:00:00Z", 0),
        ("2024-02-29T12:34:56.789Z", 1709210096789000),
        ("2024-01-01T00:00:00+05:30", 1704047400000000),
        ("2024-01-01t00:00:00.123456789z", 1704067200123456),
        ("2016-12-31T23:59:60Z", 1483228800000000),
        ("0000-01-01T00:00:00Z", -62167219200000000),
    ],
)
def test_rfc3339_to_epoch_micros(text: str, micros: int) -> None:
    """Offsets, fractions, lower-case letters, leap seconds and year 0000 all convert."""
    assert timestamp_micros(text) == micros


def test_accepted_records_are_avro_single_object_encoded() -> None:
    """Marker C3 01, the schema's little-endian CRC-64-AVRO fingerprint, then the body, which
    plain fastavro decodes after the 10-byte header."""
    event = {
        "event_id": str(uuid.uuid4()),
        "integration_id": 1,
        "integration_event_type_id": 2,
        "event_type_version": 3,
        "integration_device_id": 4,
        "device_external_id": "S1:3",
        "device_resolution": "template",
        "device_created": True,
        "timestamp": 1709210096789000,
        "duration_ms": 10,
        "buffer_ms": 20,
        "attributes_json": '{"a":1}',
        "received_at": 1700000000000,
        "idempotency_key": None,
        "op": "updated",
        "revision": 2,
    }
    value = accepted_value(event)
    assert value[:2] == SINGLE_OBJECT_MARKER
    body = fastavro.schemaless_reader(io.BytesIO(value[10:]), avro_schema(), None)
    assert isinstance(body, dict)
    assert body["device_external_id"] == "S1:3"
    assert (body["op"], body["revision"]) == ("updated", 2)
    assert read_accepted(value)["device_resolution"] == "template"
    with pytest.raises(ValueError, match="single-object"):
        read_accepted(b"\xc3\x01" + b"\x00" * 8 + value[10:])


def test_rejected_records_keep_the_raw_value() -> None:
    """The raw value as text when it is UTF-8, else base64, with its source and error."""
    text = Rejection(SOURCE, b'{"a"', "e1", 3, 400, "invalid_json", "bad")
    binary = Rejection(SOURCE, b"\xff\x00", "e2", None, 400, "invalid_json", "bad")
    first, second = orjson.loads(rejected_value(text)), orjson.loads(rejected_value(binary))
    assert (first["raw"], first["raw_encoding"]) == ('{"a"', "utf-8")
    assert (second["raw"], second["raw_encoding"]) == ("/wA=", "base64")
    assert first["source"] == {"topic": "raw", "partition": 2, "offset": 41}
    assert first["truncated"] is False
    assert first["error"] == {
        "status": 400,
        "code": "invalid_json",
        "message": "bad",
        "details": [],
        "details_total": 0,
    }


def test_writer_schema_writes_the_same_bytes_as_the_published_schema() -> None:
    """Encoding without logical-type annotations is byte-identical to encoding with them."""
    event_id = uuid.uuid4()
    fields = {
        "integration_id": 1,
        "integration_event_type_id": 2,
        "event_type_version": 3,
        "integration_device_id": 4,
        "device_external_id": None,
        "device_resolution": "direct",
        "device_created": False,
        "duration_ms": 0,
        "buffer_ms": 0,
        "attributes_json": "{}",
        "idempotency_key": "k",
        "op": "deleted",
        "revision": 7,
    }
    ours = accepted_value(
        {**fields, "event_id": str(event_id), "timestamp": 1_500_000, "received_at": 1_700}
    )
    published = io.BytesIO()
    fastavro.schemaless_writer(
        published,
        avro_schema(),
        {
            **fields,
            "event_id": event_id,
            "timestamp": datetime(1970, 1, 1, 0, 0, 1, 500000, tzinfo=UTC),
            "received_at": datetime(1970, 1, 1, 0, 0, 1, 700000, tzinfo=UTC),
        },
    )
    assert ours[10:] == published.getvalue()
