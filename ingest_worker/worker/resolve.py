"""Device resolution's SQL, one batched round: which device each event names is decided
before (core/plan.py: `integration_device_id`, then `device_external_id`, then the event
type's template, with no fallback between steps). External ids of a batch are
de-duplicated, then found or created in one statement: the missing ones are inserted in
sorted order (so concurrent batches lock rows in the same order) with `ON CONFLICT DO
NOTHING`, and one made meanwhile by another replica is read back: however many replicas
race, one row per id.

The batch's arrays are sent in PostgreSQL's binary format (`%b`): psycopg dumps a list of
2,000 ints, strings or UUID strings 3-8 times faster than as text.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import psycopg
from psycopg.rows import tuple_row

from ingest_worker.worker.decode import RawEvent

MAX_DEVICE_NAME_CHARS = 40


class Device(NamedTuple):
    """A resolved device and whether this event's processing created it."""

    id: int
    external_id: str | None
    created_by_event: str | None


def auto_name(external_id: str) -> str:
    """The name of an auto-created device: its external id, shortened to fit 40 characters."""
    if len(external_id) <= MAX_DEVICE_NAME_CHARS:
        return external_id
    return external_id[: MAX_DEVICE_NAME_CHARS - 1] + "…"


# --- SQL: one statement per kind, all inside the caller's transaction ---------------------------

Conn = psycopg.AsyncConnection[Any]


async def direct_devices(conn: Conn, device_ids: set[int]) -> dict[int, tuple[Device, int]]:
    """{device id: (device, its integration id)} of the ids that exist."""
    if not device_ids:
        return {}
    async with conn.cursor(row_factory=tuple_row) as cur:
        await cur.execute(
            "SELECT id, integration_id, external_id, created_by_event::text FROM devices "
            "WHERE id = ANY(%b)",
            (sorted(device_ids),),
        )
        return {row[0]: (Device(row[0], row[2], row[3]), row[1]) for row in await cur.fetchall()}


class Found(NamedTuple):
    """Devices found or created per (integration id, external id), and the keys refused a
    new device because their integration reached INGEST_MAX_AUTO_DEVICES."""

    devices: dict[tuple[int, str], Device]
    refused: set[tuple[int, str]]


async def external_devices(
    conn: Conn, wanted: dict[tuple[int, str], str], max_auto: int = 0
) -> Found:
    """Find or create a device per (integration id, external id); `wanted` maps each to the
    event that creates it if missing. Integrations deleted meanwhile get no device. With
    `max_auto`, an integration gets new devices only up to that many auto-created ones.

    Existing devices are read and only the missing ones inserted, in one round trip: once
    an integration's devices exist, a batch writes nothing for them (an upsert of a row that
    exists still costs an index probe, a speculative insertion and a lock per row)."""
    if not wanted:
        return Found({}, set())
    if max_auto > 0:
        return await _capped(conn, wanted, max_auto)
    return Found(await _find_or_create(conn, wanted), set())


async def _capped(conn: Conn, wanted: dict[tuple[int, str], str], max_auto: int) -> Found:
    found = await _read_external(conn, sorted(wanted))
    missing = {k: v for k, v in wanted.items() if k not in found}
    if not missing:
        return Found(found, set())
    refused = await _over_cap(conn, missing, max_auto)
    found.update(
        await _find_or_create(conn, {k: v for k, v in missing.items() if k not in refused})
    )
    if refused:
        found.update(await _read_external(conn, sorted(refused)))
    return Found(found, refused)


_FIND_OR_CREATE = """
    WITH w AS (
        SELECT * FROM unnest(%b::int[], %b::text[], %b::text[], %b::uuid[])
            AS w (integration_id, external_id, name, creator)
    ), found AS (
        SELECT d.integration_id, d.external_id, d.id, d.created_by_event
        FROM devices d JOIN w USING (integration_id, external_id)
    ), made AS (
        INSERT INTO devices (integration_id, external_id, name, auto_created, created_by_event)
        SELECT w.integration_id, w.external_id, w.name, true, w.creator
        FROM w JOIN integrations i ON i.id = w.integration_id
        WHERE NOT EXISTS (SELECT FROM found f WHERE f.integration_id = w.integration_id
                                                AND f.external_id = w.external_id)
        ORDER BY w.integration_id, w.external_id
        ON CONFLICT (integration_id, external_id) DO NOTHING
        RETURNING integration_id, external_id, id, created_by_event
    )
    SELECT integration_id, external_id, id, created_by_event::text FROM found
    UNION ALL
    SELECT integration_id, external_id, id, created_by_event::text FROM made
"""


async def _find_or_create(
    conn: Conn, wanted: dict[tuple[int, str], str]
) -> dict[tuple[int, str], Device]:
    """The devices of `wanted`, those missing inserted in key order (concurrent batches lock
    rows in the same order); a row another replica made meanwhile is left as it is."""
    if not wanted:
        return {}
    keys = sorted(wanted)
    async with conn.cursor(row_factory=tuple_row) as cur:
        await cur.execute(
            _FIND_OR_CREATE,
            (
                [k[0] for k in keys],
                [k[1] for k in keys],
                [auto_name(k[1]) for k in keys],
                [wanted[k] for k in keys],
            ),
        )
        found = {(row[0], row[1]): Device(row[2], row[1], row[3]) for row in await cur.fetchall()}
    # A device another replica committed after the statement began: not inserted here (a
    # conflict), and not in its snapshot either.
    unseen = [k for k in keys if k not in found]
    if unseen:
        found.update(await _read_external(conn, unseen))
    return found


async def _read_external(conn: Conn, keys: list[tuple[int, str]]) -> dict[tuple[int, str], Device]:
    async with conn.cursor(row_factory=tuple_row) as cur:
        await cur.execute(
            """
            SELECT d.integration_id, d.external_id, d.id, d.created_by_event::text
            FROM devices d
            JOIN unnest(%b::int[], %b::text[]) AS w (integration_id, external_id)
              ON d.integration_id = w.integration_id AND d.external_id = w.external_id
            """,
            ([k[0] for k in keys], [k[1] for k in keys]),
        )
        return {(row[0], row[1]): Device(row[2], row[1], row[3]) for row in await cur.fetchall()}


# Advisory lock class of "auto-created devices of integration N" (the second key is N).
_DEVICE_CAP_LOCK = 0x1D5C


async def _over_cap(
    conn: Conn, wanted: dict[tuple[int, str], str], max_auto: int
) -> set[tuple[int, str]]:
    """The missing keys that would take an integration past `max_auto` auto-created devices.
    The batch's integrations are locked (in id order, so replicas never deadlock) until it
    commits, and only then are existing devices read and counted, so racing replicas see
    each other's devices."""
    integrations = sorted({k[0] for k in wanted})
    async with conn.cursor(row_factory=tuple_row) as cur:
        await cur.execute(
            "SELECT pg_advisory_xact_lock(%s, s.i) FROM "
            "(SELECT i FROM unnest(%b::int[]) AS i ORDER BY i) AS s",
            (_DEVICE_CAP_LOCK, integrations),
        )
    existing = await _read_external(conn, sorted(wanted))
    missing = sorted(k for k in wanted if k not in existing)
    async with conn.cursor(row_factory=tuple_row) as cur:
        await cur.execute(
            "SELECT integration_id, count(*) FROM devices "
            "WHERE auto_created AND integration_id = ANY(%b) GROUP BY integration_id",
            (integrations,),
        )
        room = {i: max_auto for i in integrations}
        room.update({row[0]: max_auto - row[1] for row in await cur.fetchall()})
    refused = set()
    for key in missing:  # sorted: the same keys win on every replay
        room[key[0]] -= 1
        if room[key[0]] < 0:
            refused.add(key)
    return refused


@dataclass(frozen=True, slots=True)
class Claim:
    """An Idempotency-Key claim: which raw record made it."""

    topic: str
    partition: int
    offset: int


ClaimKey = tuple[int, str, int]  # integration id, key, import item index (-1: none)


def claim_key(event: RawEvent) -> ClaimKey:
    index = -1 if event.idempotency_index is None else event.idempotency_index
    return (event.integration_id, str(event.idempotency_key), index)


async def claim_keys(conn: Conn, wanted: list[RawEvent], ttl_s: float) -> dict[ClaimKey, Claim]:
    """Claim each event's key for the batch's earliest record bearing it; a claim older than
    `ttl_s` has expired and is taken over. Return the claim now on record for each key, ours
    or an earlier one."""
    if not wanted:
        return {}
    first: dict[ClaimKey, RawEvent] = {}
    for event in sorted(wanted, key=lambda e: (e.source.partition, e.source.offset)):
        first.setdefault(claim_key(event), event)
    keys = sorted(first)
    rows = [(*k, first[k].event_id, *first[k].source) for k in keys]
    columns = [list(c) for c in zip(*rows, strict=True)]
    async with conn.cursor(row_factory=tuple_row) as cur:
        await cur.execute(
            """
            INSERT INTO idempotency_claims
                (integration_id, key, item_index, event_id, raw_topic, raw_partition, raw_offset)
            SELECT c.* FROM unnest(%b::int[], %b::text[], %b::int[], %b::uuid[], %b::text[],
                                   %b::int[], %b::bigint[]) AS c (i, k, x, e, t, p, o)
            JOIN integrations ON integrations.id = c.i
            ORDER BY 1, 2, 3
            ON CONFLICT (integration_id, key, item_index) DO UPDATE SET
                event_id = excluded.event_id, raw_topic = excluded.raw_topic,
                raw_partition = excluded.raw_partition, raw_offset = excluded.raw_offset,
                claimed = now()
            WHERE idempotency_claims.claimed < now() - make_interval(secs => %s)
            """,
            [*columns, ttl_s],
        )
        await cur.execute(
            """
            SELECT c.integration_id, c.key, c.item_index, c.raw_topic, c.raw_partition,
                   c.raw_offset
            FROM idempotency_claims c
            JOIN unnest(%b::int[], %b::text[], %b::int[]) AS w (i, k, x)
              ON c.integration_id = w.i AND c.key = w.k AND c.item_index = w.x
            """,
            columns[:3],
        )
        return {(r[0], r[1], r[2]): Claim(r[3], r[4], r[5]) for r in await cur.fetchall()}


async def purge_claims(conn: Conn, ttl_s: float, limit: int = 10_000) -> int:
    """Delete up to `limit` expired claims; return how many went."""
    async with conn.cursor(row_factory=tuple_row) as cur:
        await cur.execute(
            """
            DELETE FROM idempotency_claims WHERE ctid IN (
                SELECT ctid FROM idempotency_claims
                WHERE claimed < now() - make_interval(secs => %s) LIMIT %s)
            """,
            (ttl_s, limit),
        )
        return cur.rowcount
