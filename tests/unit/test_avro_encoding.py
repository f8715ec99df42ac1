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
    }
)


def _plain_schema() -> Any:
    """The published schema without logical types: the same bytes, plain values in."""
    document = orjson.loads(SCHEMA_FILE.read_bytes())
    for field in document["fields"]:
        if isinstance(field["type"], dict) and "logicalType" in field["type"]:
            field["type"] = field["type"]["type"]
    return fastavro.parse_schema(document)


PLAIN = _plain_schema()


@settings(max_examples=500, deadline=None)
@given(RECORDS)
def test_hand_encoder_is_byte_identical_to_fastavro(record: dict[str, Any]) -> None:
    """Header plus body equals fastavro's encoding, for extreme ints and any Unicode."""
    expected = io.BytesIO()
    fastavro.schemaless_writer(expected, PLAIN, record)
    assert accepted_value(record) == avro_header() + expected.getvalue()
