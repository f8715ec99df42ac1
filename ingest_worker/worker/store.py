"""The event store's SQL, inside the batch's transaction: load the events a batch changes,
write its revisions, and keep the day partitions (migration 0007)."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import psycopg
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


# The batch's rows go in with one COPY, as the worker holds them (times are epoch integers
# in the table): measured per row, ~6 µs of worker CPU (an INSERT over unnest()ed arrays:
# ~35 µs) and half the server's work of an INSERT ... SELECT from a staging table. A replayed
# batch, whose rows are partly stored, fails that COPY on the primary key: it goes again
# through a staging table and an INSERT that keeps the rows already there.
_COLUMNS = (
    "integration_id, id, revision, received_at_ms, op, current, event_type_id, "
    "event_type_version, device_id, device_external_id, device_resolution, timestamp_us, "
    "duration_ms, buffer_ms, attributes, revision_received_at_ms, idempotency_key, "
    "traceparent, raw_key, source_partition, source_offset, error, created_ms, updated_ms"
)
_COPY = f"COPY {{table}} ({_COLUMNS}) FROM STDIN"
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
    async with conn.cursor() as cur, cur.copy(_COPY.format(table=table)) as copy:
        for row in rows:
            await copy.write_row(row)


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
    latest = newest.get((rev.integration_id, rev.event_id), (0, rev.revision))[1] == rev.revision
    current = latest and rev.op in ("created", "updated")
    return (
        *rev[:5],
        current,
        *rev[5:18],
        rev.source.partition,
        rev.source.offset,
        rev.error_json,
        now_ms if rev.created_ms is None else rev.created_ms,
        now_ms,  # one clock for both: a new event's `updated` is its `created`
    )


async def keep_partitions(conn: Conn, retention_days: int, lock_timeout_ms: int = 2000) -> None:
    """Make the coming days' partitions and drop those past the retention; give up (until
    the next turn) rather than wait long for a lock a reader holds."""
    async with conn.transaction(), conn.cursor() as cur:
        await cur.execute(f"SET LOCAL lock_timeout = {int(lock_timeout_ms)}")
        await cur.execute("SELECT ingest_event_partitions(%s)", (retention_days,))
