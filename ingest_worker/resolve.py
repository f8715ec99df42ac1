"""Device resolution: which device each event names (pure), then one batched round of SQL.

Order, with no fallback between steps: `integration_device_id`, then `device_external_id`,
then the event type's template, else `device_unresolvable`. External ids of a batch are
de-duplicated, sorted (so concurrent batches lock rows in the same order), inserted with
`ON CONFLICT DO NOTHING` and read back: however many replicas race, one row per id.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import psycopg
from psycopg.rows import tuple_row

from ingest_worker import template
from ingest_worker.decode import RawEvent, Rejection
from ingest_worker.validate import EventType

MAX_DEVICE_NAME_CHARS = 40
Method = Literal["direct", "external_id", "template"]


class DeviceRef(NamedTuple):
    """What an event names: a device id (direct) or an external id (given or templated)."""

    method: Method
    device_id: int | None = None
    external_id: str | None = None


class Device(NamedTuple):
    """A resolved device and whether this event's processing created it."""

    id: int
    external_id: str | None
    created_by_event: str | None


def device_ref(event: RawEvent, event_type: EventType) -> DeviceRef | Rejection:
    """The device an event names, or why it names none."""
    body = event.body
    if "integration_device_id" in body:
        return DeviceRef("direct", device_id=int(body["integration_device_id"]))
    if "device_external_id" in body:
        return DeviceRef("external_id", external_id=str(body["device_external_id"]))
    if event_type.template is None:
        return _reject(event, 400, "device_unresolvable", "no device id, external id or template")
    try:
        external_id = template.evaluate(event_type.template, body["attributes"])
    except template.Unresolvable as exc:
        return _reject(event, 400, "template_unresolvable", str(exc))
    return DeviceRef("template", external_id=external_id)


def auto_name(external_id: str) -> str:
    """The name of an auto-created device: its external id, shortened to fit 40 characters."""
    if len(external_id) <= MAX_DEVICE_NAME_CHARS:
        return external_id
    return external_id[: MAX_DEVICE_NAME_CHARS - 1] + "…"


def _reject(event: RawEvent, status: int, code: str, message: str) -> Rejection:
    return Rejection(
        event.source, event.value, event.event_id, event.integration_id, status, code, message
    )


# --- SQL: one statement per kind, all inside the caller's transaction ---------------------------

Conn = psycopg.AsyncConnection[Any]


async def direct_devices(conn: Conn, device_ids: set[int]) -> dict[int, tuple[Device, int]]:
    """{device id: (device, its integration id)} of the ids that exist."""
    if not device_ids:
        return {}
    async with conn.cursor(row_factory=tuple_row) as cur:
        await cur.execute(
            "SELECT id, integration_id, external_id, created_by_event::text FROM devices "
            "WHERE id = ANY(%s)",
            (sorted(device_ids),),
        )
        return {row[0]: (Device(row[0], row[2], row[3]), row[1]) for row in await cur.fetchall()}


async def external_devices(
    conn: Conn, wanted: dict[tuple[int, str], str]
) -> dict[tuple[int, str], Device]:
    """Find or create a device per (integration id, external id); `wanted` maps each to the
    event that creates it if missing. Integrations deleted meanwhile get no device."""
    if not wanted:
        return {}
    keys = sorted(wanted)
    integration_ids = [k[0] for k in keys]
    external_ids = [k[1] for k in keys]
    async with conn.cursor(row_factory=tuple_row) as cur:
        await cur.execute(
            """
            INSERT INTO devices (integration_id, external_id, name, auto_created, created_by_event)
            SELECT w.integration_id, w.external_id, w.name, true, w.creator
            FROM unnest(%s::int[], %s::text[], %s::text[], %s::uuid[])
                 AS w (integration_id, external_id, name, creator)
            JOIN integrations i ON i.id = w.integration_id
            ORDER BY w.integration_id, w.external_id
            ON CONFLICT (integration_id, external_id) DO NOTHING
            """,
            (
                integration_ids,
                external_ids,
                [auto_name(e) for e in external_ids],
                [wanted[k] for k in keys],
            ),
        )
        await cur.execute(
            """
            SELECT d.integration_id, d.external_id, d.id, d.created_by_event::text
            FROM devices d
            JOIN unnest(%s::int[], %s::text[]) AS w (integration_id, external_id)
              ON d.integration_id = w.integration_id AND d.external_id = w.external_id
            """,
            (integration_ids, external_ids),
        )
        return {(row[0], row[1]): Device(row[2], row[1], row[3]) for row in await cur.fetchall()}


@dataclass(frozen=True, slots=True)
class Claim:
    """An Idempotency-Key claim: which raw record made it."""

    topic: str
    partition: int
    offset: int


async def claim_keys(
    conn: Conn, wanted: list[tuple[int, str, RawEvent]]
) -> dict[tuple[int, str], Claim]:
    """Claim (integration id, key) for each event (earliest record first); return the claim
    now on record for each key, ours or an earlier one."""
    if not wanted:
        return {}
    rows = sorted(wanted, key=lambda w: (w[0], w[1], w[2].source.partition, w[2].source.offset))
    columns = list(
        zip(
            *[
                (i, k, e.event_id, e.source.topic, e.source.partition, e.source.offset)
                for i, k, e in rows
            ],
            strict=True,
        )
    )
    async with conn.cursor(row_factory=tuple_row) as cur:
        await cur.execute(
            """
            INSERT INTO idempotency_claims
                (integration_id, key, event_id, raw_topic, raw_partition, raw_offset)
            SELECT c.* FROM unnest(%s::int[], %s::text[], %s::uuid[], %s::text[], %s::int[],
                                   %s::bigint[]) AS c (integration_id, key, event_id, t, p, o)
            JOIN integrations i ON i.id = c.integration_id
            ORDER BY 1, 2, 5, 6
            ON CONFLICT (integration_id, key) DO NOTHING
            """,
            [list(c) for c in columns],
        )
        await cur.execute(
            """
            SELECT c.integration_id, c.key, c.raw_topic, c.raw_partition, c.raw_offset
            FROM idempotency_claims c
            JOIN unnest(%s::int[], %s::text[]) AS w (integration_id, key)
              ON c.integration_id = w.integration_id AND c.key = w.key
            """,
            (list(columns[0]), list(columns[1])),
        )
        return {(r[0], r[1]): Claim(r[2], r[3], r[4]) for r in await cur.fetchall()}
