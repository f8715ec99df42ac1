"""The hand-written Avro encoder against fastavro, for any record the schema allows."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import fastavro
import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from ingest_worker.core.encode import accepted_value, avro_header

SCHEMA_FILE = Path(__file__).resolve().parents[2] / "schemas" / "integration_event.avsc"
INT32 = st.integers(min_value=-(2**31), max_value=2**31 - 1)
INT64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
TEXT = st.text(max_size=300)

RECORDS = st.fixed_dictionaries(
    {
        "event_id": st.uuids().map(str),
        "integration_id": INT32,
        "integration_event_type_id": INT32,
        "event_type_version": INT32,
        "integration_device_id": INT32,
        "device_external_id": st.none() | TEXT,
        "device_resolution": st.sampled_from(["direct", "external_id", "template"]),
        "device_created": st.booleans(),
        "timestamp": INT64,
        "duration_ms": INT64,
        "buffer_ms": INT64,
        "attributes_json": TEXT,
        "received_at": INT64,
        "idempotency_key": st.none() | TEXT,
        "op": st.sampled_from(["created", "updated", "deleted"]),
        "revision": INT32,
    }
)


def _plain_document() -> Any:
    """The published schema without logical types: the same bytes, plain values in."""
    document = orjson.loads(SCHEMA_FILE.read_bytes())
    for field in document["fields"]:
        if isinstance(field["type"], dict) and "logicalType" in field["type"]:
            field["type"] = field["type"]["type"]
    return document


PLAIN = fastavro.parse_schema(_plain_document())


@settings(max_examples=500, deadline=None)
@given(RECORDS)
def test_hand_encoder_is_byte_identical_to_fastavro(record: dict[str, Any]) -> None:
    """Header plus body equals fastavro's encoding, for extreme ints and any Unicode."""
    expected = io.BytesIO()
    fastavro.schemaless_writer(expected, PLAIN, record)
    assert accepted_value(record) == avro_header() + expected.getvalue()


# The schema before the changelog fields (`op`, `revision`): what existing readers hold.
PREVIOUS_FIELDS = 14


def _previous_schema() -> Any:
    document = _plain_document()
    document["fields"] = document["fields"][:PREVIOUS_FIELDS]
    return document


@settings(max_examples=100, deadline=None)
@given(RECORDS)
def test_a_reader_of_the_previous_schema_decodes_changelog_records(record: dict[str, Any]) -> None:
    """Avro schema resolution with the previous schema as reader: every earlier field comes
    back as written, the changelog fields are skipped."""
    body = accepted_value(record)[len(avro_header()) :]
    previous = _previous_schema()
    old = fastavro.schemaless_reader(io.BytesIO(body), _plain_document(), previous)
    assert old == {f["name"]: record[f["name"]] for f in previous["fields"]}


def test_a_record_of_the_previous_schema_reads_as_created_revision_1() -> None:
    """A record written before the changelog fields, read with today's schema: `op` and
    `revision` take their defaults."""
    record = {
        "event_id": "6f0b5e4e-7f47-4d1c-9a57-2c1f0e0b7a11",
        "integration_id": 1,
        "integration_event_type_id": 2,
        "event_type_version": 1,
        "integration_device_id": 3,
        "device_external_id": None,
        "device_resolution": "direct",
        "device_created": False,
        "timestamp": 1,
        "duration_ms": 0,
        "buffer_ms": 0,
        "attributes_json": "{}",
        "received_at": 2,
        "idempotency_key": None,
    }
    old = fastavro.parse_schema(_previous_schema())
    out = io.BytesIO()
    fastavro.schemaless_writer(out, old, record)
    new = _plain_document()
    read = fastavro.schemaless_reader(io.BytesIO(out.getvalue()), old, new)
    assert isinstance(read, dict)
    assert (read["op"], read["revision"]) == ("created", 1)
