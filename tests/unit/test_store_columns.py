"""The event store's binary COPY (worker/store.py): its columns are the table's, with the
binary format of each column's type, in `Revision`'s order; a row puts each value under its
column; an event id's text becomes its 16 bytes, and anything else a data error."""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import psycopg
import pytest
from psycopg import postgres
from psycopg._copy_base import BinaryFormatter
from psycopg.adapt import AdaptersMap, Transformer
from psycopg.pq import Format

from ingest_worker.core.rejections import Source
from ingest_worker.worker import store
from ingest_worker.worker.revise import Revision

MIGRATION_DIR = Path(store.__file__).parents[1] / "core" / "migrations"
MIGRATION = (MIGRATION_DIR / "0007_event_store.sql").read_text()
# The column names a Revision's fields go to, where they differ.
RENAMED = {"event_id": "id", "attributes_json": "attributes"}
BINARY_OF = {"integer": "int4", "bigint": "int8", "boolean": "bool", "json": "text"}
EVENT_ID = "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b"


def _table_columns() -> dict[str, str]:
    """The `events` table's columns and their types, as migration 0007 creates them."""
    body = MIGRATION.split("CREATE TABLE events (", 1)[1].split("PRIMARY KEY", 1)[0]
    found = re.findall(r"^\s+([a-z_]+)\s+([a-z]+)", body, re.MULTILINE)
    return {name: BINARY_OF.get(kind, kind) for name, kind in found}


def test_no_later_migration_changes_the_columns() -> None:
    """The binary COPY's types are the table's as migration 0007 made them: a migration that
    alters `events` must change `_TYPES` too (and this test)."""
    for migration in sorted(MIGRATION_DIR.glob("*.sql")):
        if migration.name <= "0007_event_store.sql":
            continue
        text = re.sub(r"ALTER TABLE events (ATTACH|DETACH) PARTITION", "", migration.read_text())
        assert not re.search(r"ALTER TABLE (IF EXISTS )?(ONLY )?events\b", text), migration.name


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


class _Context:
    """What a Transformer adapts with: a cursor's own adapters, no connection."""

    def __init__(self, adapters: AdaptersMap) -> None:
        self.adapters = adapters
        self.connection = None


def test_a_row_is_formatted_with_the_copy_s_own_dumpers() -> None:
    """With the dumpers `_copy` registers, a row's id goes as its 16 bytes and its raw key as
    the bytes themselves (psycopg's own dumpers would refuse a str id); without them, the id
    cannot be sent at all."""
    revision = Revision(
        7, EVENT_ID, 1, 1_000, "created", 3, 4, 5, None, "direct", 6_000, 700, 80,
        "{}", 1_000, None, None, b"raw-key", Source("raw", 9, 42), None, None,
    )  # fmt: skip
    row = store._row(revision, {}, 3_000)
    oids = [postgres.types[name].oid for name in store._TYPES]
    adapters = AdaptersMap(psycopg.adapters)
    store.binary_dumpers(adapters)
    transformer = Transformer(_Context(adapters))
    transformer.set_dumper_types(oids, Format.BINARY)
    formatter = BinaryFormatter(transformer)
    formatter.write_row(row)
    sent = bytes(formatter.end())
    assert b"\x00\x00\x00\x10" + uuid.UUID(EVENT_ID).bytes in sent
    assert b"\x00\x00\x00\x07raw-key" in sent
    plain = Transformer(_Context(AdaptersMap(psycopg.adapters)))
    plain.set_dumper_types(oids, Format.BINARY)
    with pytest.raises((TypeError, AttributeError)):
        BinaryFormatter(plain).write_row(row)


def test_an_event_id_is_sent_as_its_sixteen_bytes() -> None:
    """The canonical text of a uuid, in either case, becomes the uuid's own bytes."""
    dumper = store._UuidText(str)
    assert dumper.dump(EVENT_ID) == uuid.UUID(EVENT_ID).bytes
    assert dumper.dump(EVENT_ID.upper()) == uuid.UUID(EVENT_ID).bytes


@pytest.mark.parametrize(
    "text",
    [
        "",
        "not-a-uuid",
        EVENT_ID[:-2],
        EVENT_ID + "00",
        "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5g",
        EVENT_ID.replace("-", ""),
        EVENT_ID.replace("-", " "),
        EVENT_ID[:-1] + " ",
        12345,
    ],
)
def test_anything_else_is_a_data_error(text: str) -> None:
    """Not a uuid's canonical text (36 characters, dashes in their places, hex digits
    between): a data error (the batch's record at fault is then found and rejected alone),
    never a short value the server would take for a protocol violation."""
    with pytest.raises(psycopg.DataError):
        store._UuidText(str).dump(text)
