"""The event store's SQL, inside the batch's transaction: load the events a batch changes,
write its revisions, and keep the day partitions (migration 0007)."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import psycopg
from psycopg import postgres
from psycopg.adapt import AdaptersMap, Dumper, PyFormat
from psycopg.pq import Format
from psycopg.rows import tuple_row

from ingest_worker.core.rejections import Source
from ingest_worker.worker.revise import EventKey, Revision, superseded

Conn = psycopg.AsyncConnection[Any]

_LOAD = """
    SELECT e.integration_id, e.id::text, e.revision, e.received_at_ms, e.op,
           e.event_type_id, e.event_type_version, e.device_id, e.device_external_id,
           e.device_resolution, e.timestamp_us, e.duration_ms, e.buffer_ms, e.attributes::text,
           e.revision_received_at_ms, e.idempotency_key, e.traceparent, e.raw_key,
           e.source_partition, e.source_offset, e.error::text, e.created_ms
    FROM events e
    JOIN unnest(%b::int[], %b::uuid[]) AS w (integration_id, id)
      ON e.integration_id = w.integration_id AND e.id = w.id
    WHERE e.revision > 0
"""


# One lock per changed event until the batch commits: two workers never build on the same
# revision (changes of one event keyed to two raw partitions by a gateway). Taken in key
# order, so replicas never deadlock; the one-bigint key space is the events' alone.
_LOCK = """
    SELECT pg_advisory_xact_lock(k) FROM (
        SELECT DISTINCT hashtextextended(w.i::text || '/' || w.id, 0) AS k
        FROM unnest(%b::int[], %b::text[]) AS w (i, id) ORDER BY 1) AS s
"""


async def load(conn: Conn, keys: set[EventKey], raw_topic: str) -> dict[EventKey, list[Revision]]:
    """Every accepted revision of these events (created, updated, deleted), each event
    locked until the transaction ends."""
    found: dict[EventKey, list[Revision]] = defaultdict(list)
    if not keys:
        return found
    ordered = sorted(keys)
    columns = ([k[0] for k in ordered], [k[1] for k in ordered])
    async with conn.cursor(row_factory=tuple_row) as cur:
        await cur.execute(_LOCK, columns)
        await cur.execute(_LOAD, columns)
        for row in await cur.fetchall():
            source = Source(raw_topic, row[18], row[19])
            rev = Revision._make([*row[:18], source, row[20], row[21]])
            found[rev.key].append(rev)
    return found


# The batch's rows go in with one binary COPY, as the worker holds them (times are epoch
# integers in the table). Measured per row, the write of 2,000-row batches took 4.0-4.5 µs
# of the worker's CPU against 5.1-6.3 in text format (formatting alone: 1.3 against 2.0,
# the binary dumpers being chosen once per column, not per value); an INSERT over
# unnest()ed arrays ~35; and COPY takes half the server's work of an INSERT ... SELECT
# from a staging table. A replayed batch, whose rows are partly stored, fails that COPY on
# the primary key: it goes again through a staging table and an INSERT that keeps the rows
# already there.
# The columns come in `Revision`'s order, then what `_row` adds: a row is a slice of the
# revision and six values (test_store_columns.py keeps the two in step).
_REVISION_COLUMNS = (
    ("integration_id", "int4"),
    ("id", "uuid"),  # the event id's text as its 16 bytes (`_UuidText`)
    ("revision", "int4"),
    ("received_at_ms", "int8"),
    ("op", "text"),
    ("event_type_id", "int4"),
    ("event_type_version", "int4"),
    ("device_id", "int4"),
    ("device_external_id", "text"),
    ("device_resolution", "text"),
    ("timestamp_us", "int8"),
    ("duration_ms", "int8"),
    ("buffer_ms", "int8"),
    ("attributes", "text"),  # a json column takes its text (json_recv)
    ("revision_received_at_ms", "int8"),
    ("idempotency_key", "text"),
    ("traceparent", "text"),
    ("raw_key", "bytea"),
)
_ADDED_COLUMNS = (
    ("current", "bool"),
    ("source_partition", "int4"),
    ("source_offset", "int8"),
    ("error", "text"),
    ("created_ms", "int8"),
    ("updated_ms", "int8"),
)
# Every int4 value is an id PostgreSQL or Kafka gave, or one checked to be an int32 on the
# way in: psycopg's binary int4 dumper would wrap a larger one.
COLUMN_NAMES = tuple(name for name, _ in _REVISION_COLUMNS + _ADDED_COLUMNS)
_TYPES = tuple(kind for _, kind in _REVISION_COLUMNS + _ADDED_COLUMNS)
_COPY = f"COPY {{table}} ({', '.join(COLUMN_NAMES)}) FROM STDIN (FORMAT BINARY)"
_STAGE = "CREATE TEMP TABLE events_in (LIKE events INCLUDING DEFAULTS) ON COMMIT DROP"
_FROM_STAGE = "INSERT INTO events SELECT * FROM events_in ON CONFLICT DO NOTHING"  # LIKE events
_SUPERSEDE = """
    UPDATE events e SET current = false,
                        updated_ms = (extract(epoch FROM now()) * 1000)::bigint
    FROM unnest(%b::int[], %b::uuid[], %b::bigint[], %b::int[]) AS n (i, id, rcv, rev)
    WHERE e.integration_id = n.i AND e.id = n.id AND e.received_at_ms = n.rcv
      AND e.current AND e.revision < n.rev
"""


async def write(conn: Conn, revisions: Sequence[Revision]) -> None:
    """Store the batch's revisions (a row already there, from a replay, is kept): the newest
    of each event is its current one, and the stored revisions that changes follow are
    retired."""
    # Only a change (revision 2 on) retires a stored revision or another of the batch's: in
    # a batch of new events alone, every accepted row is current (`_row`'s default).
    changing = any(rev.revision > 1 for rev in revisions)
    newest = superseded(revisions) if changing else {}
    await _supersede(conn, newest)
    if not revisions:
        return
    now_ms = int(time.time() * 1000)
    rows = [_row(rev, newest, now_ms) for rev in revisions]
    try:
        async with conn.transaction():  # a savepoint: a replay's conflict undoes only this
            await _copy(conn, "events", rows)
    except psycopg.errors.UniqueViolation:
        async with conn.cursor() as cur:
            await cur.execute(_STAGE)
            await _copy(conn, "events_in", rows)
            await cur.execute(_FROM_STAGE)
            await cur.execute("DROP TABLE events_in")


async def _copy(conn: Conn, table: str, rows: list[tuple[Any, ...]]) -> None:
    async with conn.cursor() as cur:
        binary_dumpers(cur.adapters)
        async with cur.copy(_COPY.format(table=table)) as copy:
            copy.set_types(_TYPES)
            try:
                for row in rows:
                    await copy.write_row(row)
            except (TypeError, ValueError, OverflowError, AttributeError) as exc:
                # a value the column's dumper does not take: the record at fault is isolated
                raise psycopg.DataError(f"a row the COPY cannot send: {exc}") from exc


def binary_dumpers(adapters: AdaptersMap) -> None:
    """Register, by oid only, in these adapters (a cursor's own), the dumpers `_TYPES` needs
    beyond psycopg's: an id's text to uuid, and psycopg's C dumper of bytes for bytea."""
    adapters.register_dumper(None, _UuidText)
    adapters.register_dumper(None, _BYTEA)


# psycopg's C dumper of bytes (by oid, the bytea dumper is the Python one of `Binary`).
_BYTEA = psycopg.adapters.get_dumper(bytes, PyFormat.BINARY)


class _UuidText(Dumper):
    """An event id, held as its canonical text, as the 16 bytes of a binary uuid."""

    format = Format.BINARY
    oid = postgres.types["uuid"].oid

    def dump(self, obj: str) -> bytes:
        try:
            canonical = len(obj) == 36 and obj[8] == obj[13] == obj[18] == obj[23] == "-"
            value = bytes.fromhex(obj.replace("-", "")) if canonical else b""
        except (TypeError, ValueError):
            value = b""
        if len(value) != 16:  # short, the server would call it a protocol violation
            raise psycopg.DataError(f"not a uuid: {str(obj)[:40]!r}")
        return value


async def _supersede(conn: Conn, newest: Mapping[EventKey, tuple[int, int]]) -> None:
    """Retire the stored revisions of the events given newer ones (those changed)."""
    changed = sorted(k for k, (_, revision) in newest.items() if revision > 1)
    if not changed:
        return
    async with conn.cursor() as cur:
        await cur.execute(
            _SUPERSEDE,
            (
                [k[0] for k in changed],
                [k[1] for k in changed],
                [newest[k][0] for k in changed],
                [newest[k][1] for k in changed],
            ),
        )


def _row(rev: Revision, newest: Mapping[EventKey, tuple[int, int]], now_ms: int) -> tuple[Any, ...]:
    """One row for `_COPY`: `current` for the newest accepted revision of its event."""
    current = rev.op in ("created", "updated") and (
        not newest
        or newest.get((rev.integration_id, rev.event_id), (0, rev.revision))[1] == rev.revision
    )
    source, created_ms = rev[18], rev[20]
    # concatenated, not unpacked: 0.36 µs a row against 0.43 (and 0.69 with every column
    # placed by name)
    return rev[:18] + (  # noqa: RUF005
        current,
        source[1],
        source[2],
        rev[19],
        now_ms if created_ms is None else created_ms,
        now_ms,  # one clock for both: a new event's `updated` is its `created`
    )


async def keep_partitions(conn: Conn, retention_days: int, lock_timeout_ms: int = 2000) -> None:
    """Make the coming days' partitions and drop those past the retention; give up (until
    the next turn) rather than wait long for a lock a reader holds."""
    async with conn.transaction(), conn.cursor() as cur:
        await cur.execute(f"SET LOCAL lock_timeout = {int(lock_timeout_ms)}")
        await cur.execute("SELECT ingest_event_partitions(%s)", (retention_days,))
