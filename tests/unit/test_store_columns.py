"""The event store's binary COPY (worker/store.py): its columns are the table's, with the
binary format of each column's type, in `Revision`'s order; a row puts each value under its
column; an event id's text becomes its 16 bytes, and anything else a data error."""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import psycopg
import pytest

from ingest_worker.core.rejections import Source
from ingest_worker.worker import store
from ingest_worker.worker.revise import Revision

MIGRATION = (
    Path(store.__file__).parents[1] / "core" / "migrations" / "0007_event_store.sql"
).read_text()
# The column names a Revision's fields go to, where they differ.
RENAMED = {"event_id": "id", "attributes_json": "attributes"}
BINARY_OF = {"integer": "int4", "bigint": "int8", "boolean": "bool", "json": "text"}
EVENT_ID = "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b"


def _table_columns() -> dict[str, str]:
    """The `events` table's columns and their types, as migration 0007 creates them."""
    body = MIGRATION.split("CREATE TABLE events (", 1)[1].split("PRIMARY KEY", 1)[0]
    found = re.findall(r"^\s+([a-z_]+)\s+([a-z]+)", body, re.MULTILINE)
    return {name: BINARY_OF.get(kind, kind) for name, kind in found}


def test_the_copy_names_every_column_of_the_table_with_its_binary_type() -> None:
    """Every column of `events` once, each sent in the binary format of its type (a json
    column takes text)."""
    assert len(store.COLUMN_NAMES) == len(set(store.COLUMN_NAMES))
    assert dict(zip(store.COLUMN_NAMES, store._TYPES, strict=True)) == _table_columns()


def test_the_first_columns_are_the_revision_fields_in_order() -> None:
    """A row starts with the revision itself (a slice, no per-field copy): its first fields
    name the first columns, and the rest are the source, the error and the creation time."""
    fields = Revision._fields
    assert [RENAMED.get(f, f) for f in fields[:18]] == list(store.COLUMN_NAMES[:18])
    assert fields[18:] == ("source", "error_json", "created_ms")


def test_a_row_puts_each_value_under_its_column() -> None:
    """Every value of a revision lands in its column, and `_row` adds `current`, the raw
    record's partition and offset, the error, and the times."""
    revision = Revision(
        7, EVENT_ID, 2, 1_000, "updated", 3, 4, 5, "ext", "external_id", 6_000, 700, 80,
        '{"a":1}', 2_000, "key", "00-tp", b"7:ext", Source("raw", 9, 42), None, 1_500,
    )  # fmt: skip
    row = dict(zip(store.COLUMN_NAMES, store._row(revision, {}, 3_000), strict=True))
    assert row == {
        "integration_id": 7,
        "id": EVENT_ID,
        "revision": 2,
        "received_at_ms": 1_000,
        "op": "updated",
        "event_type_id": 3,
        "event_type_version": 4,
        "device_id": 5,
        "device_external_id": "ext",
        "device_resolution": "external_id",
        "timestamp_us": 6_000,
        "duration_ms": 700,
        "buffer_ms": 80,
        "attributes": '{"a":1}',
        "revision_received_at_ms": 2_000,
        "idempotency_key": "key",
        "traceparent": "00-tp",
        "raw_key": b"7:ext",
        "current": True,
        "source_partition": 9,
        "source_offset": 42,
        "error": None,
        "created_ms": 1_500,
        "updated_ms": 3_000,
    }
    new = store._row(revision._replace(created_ms=None), {}, 3_000)
    assert new[store.COLUMN_NAMES.index("created_ms")] == 3_000


def test_an_event_id_is_sent_as_its_sixteen_bytes() -> None:
    """The canonical text of a uuid, in either case, becomes the uuid's own bytes."""
    dumper = store._UuidText(str)
    assert dumper.dump(EVENT_ID) == uuid.UUID(EVENT_ID).bytes
    assert dumper.dump(EVENT_ID.upper()) == uuid.UUID(EVENT_ID).bytes


@pytest.mark.parametrize(
    "text",
    ["", "not-a-uuid", EVENT_ID[:-2], EVENT_ID + "00", "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5g"],
)
def test_anything_else_is_a_data_error(text: str) -> None:
    """Not 16 bytes of hex: a data error (the batch's record at fault is then found and
    rejected alone), never a short value the server would take for a protocol violation."""
    with pytest.raises(psycopg.DataError):
        store._UuidText(str).dump(text)
