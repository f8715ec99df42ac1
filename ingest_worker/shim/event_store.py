"""The stored events' queries (table `events`, migration 0007): Spot's filtered list, the
fate of one event, and the raw key its changes are published under.

The list is keyset-paged on (timestamp, id). One device is a plain ordered scan of its
index (`events_by_device`); several (or the devices of some cameras) are merged from one
such scan each (a lateral join), so a page never sorts more than `limit + 1` rows per key;
without a device filter, `events_by_time` is scanned in order (an event type filter reads
it too: one index fewer on every insert). Times are stored as epoch integers
(`timestamp_us`: microseconds; `created_ms`, `updated_ms`: milliseconds): the time filters
and the cursor's position are bound as microseconds against the bare `timestamp_us` (no
expression on it, so those indexes still serve), and rows are printed in RFC 3339 here. Query
building and row shaping are pure; the two `async` functions only run them.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, NamedTuple

import orjson

from ingest_worker.core.shape import FieldError
from ingest_worker.shim.problems import invalid
from ingest_worker.shim.store import (
    Conn,
    Page,
    Row,
    bad_cursor,
    decode_position,
    encode_position,
    iso,
)

Direction = Literal["next", "prev"]
Query = tuple[str, list[Any]]

COLUMNS = (
    "id, integration_id, event_type_id, device_id, timestamp_us, duration_ms, buffer_ms, "
    "attributes::text AS attributes, created_ms, updated_ms"
)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_MILLISECOND = timedelta(milliseconds=1)
# Epoch microseconds of the times a cursor may hold (those of Python's years 1..9999).
_CURSOR_US = range(
    (datetime(1, 1, 1, tzinfo=UTC) - _EPOCH) // _MICROSECOND,
    (datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC) - _EPOCH) // _MICROSECOND + 1,
)
# RFC 3339 date-time; a space stands for the `+` an unencoded query string turns into one.
_RFC3339 = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?"
    r"([Zz]|[+\- ][0-9]{2}:[0-9]{2})"
)


@dataclass(frozen=True, slots=True)
class EventFilter:
    """Spot's list filters, each list deduplicated and sorted (empty: no filter)."""

    integration_id: int
    type_ids: tuple[int, ...] = ()
    device_ids: tuple[int, ...] = ()
    camera_ids: tuple[int, ...] = ()
    start: datetime | None = None
    end: datetime | None = None


@dataclass(frozen=True, slots=True)
class Position:
    """Where a page starts: after (`next`) or before (`prev`) this (timestamp, id), the
    timestamp in epoch microseconds, as stored."""

    timestamp_us: int
    event_id: uuid.UUID
    direction: Direction


# --- filters and cursors ----------------------------------------------------------------------


def ids(values: list[int]) -> tuple[int, ...]:
    return tuple(sorted(set(values)))


def parse_time(name: str, text: str | None) -> datetime | None:
    """An RFC 3339 query value as an aware datetime, or a 400 problem naming it."""
    if text is None:
        return None
    if _RFC3339.fullmatch(text):
        normal = text.upper()
        normal = normal[:-6] + "+" + normal[-5:] if normal[-6] == " " else normal
        try:
            return datetime.fromisoformat(normal)
        except ValueError:
            pass
    message = "must be an RFC 3339 date-time, such as 2024-06-01T12:00:00Z"
    raise invalid([FieldError(name, message, text[:100])])


def epoch_us(moment: datetime) -> int:
    """An aware time in epoch microseconds, as `timestamp_us` holds it."""
    return (moment - _EPOCH) // _MICROSECOND


def encode_cursor(row: Row, direction: Direction) -> str:
    """The cursor of the page after (or before) a row: its epoch microseconds and id."""
    return encode_position({"t": row["timestamp_us"], "id": str(row["id"]), "d": direction})


def decode_cursor(cursor: str | None) -> Position | None:
    """The position an opaque cursor names; a 400 problem if it is not one of ours."""
    data = decode_position(cursor)
    if data is None:
        return None
    if not isinstance(data, dict) or set(data) != {"t", "id", "d"}:
        raise bad_cursor()
    micros, event_id, direction = data["t"], data["id"], data["d"]
    if type(micros) is not int or micros not in _CURSOR_US or direction not in ("next", "prev"):
        raise bad_cursor()
    try:
        parsed = uuid.UUID(event_id)
    except (TypeError, ValueError, AttributeError) as exc:
        raise bad_cursor() from exc
    return Position(micros, parsed, direction)


# --- queries ----------------------------------------------------------------------------------


def list_query(found: EventFilter, position: Position | None, fetch: int) -> Query:
    """The statement and parameters of up to `fetch` listable rows matching `found`, from
    `position`, in its direction's order (`prev`: descending)."""
    direction = position.direction if position is not None else "next"
    where, params = _conditions(found, position)
    order = "timestamp_us, id" if direction == "next" else "timestamp_us DESC, id DESC"
    keys = _keys(found)
    if keys is None:
        query = f"SELECT {COLUMNS} FROM events WHERE {where} ORDER BY {order} LIMIT %s"
        return query, [*params, fetch]
    key_query, key_params, column = keys
    inner = f"SELECT {COLUMNS} FROM events WHERE {column} = k.v AND {where} ORDER BY {order}"
    query = (
        f"SELECT e.* FROM ({key_query}) AS k (v) CROSS JOIN LATERAL ({inner} LIMIT %s) AS e "
        f"ORDER BY {order} LIMIT %s"
    )
    return query, [*key_params, *params, fetch, fetch]


def _conditions(found: EventFilter, position: Position | None) -> tuple[str, list[Any]]:
    """Every condition but the lateral join's key, joined by AND, and their parameters."""
    parts = [("integration_id = %s", [found.integration_id]), ("current", [])]
    parts += _equalities(found) + _bounds(found, position)
    return " AND ".join(p for p, _ in parts), [v for _, values in parts for v in values]


def _equalities(found: EventFilter) -> list[tuple[str, list[Any]]]:
    """The device and type conditions that the lateral join's keys leave over."""
    by_device = bool(found.device_ids or found.camera_ids)
    parts: list[tuple[str, list[Any]]] = []
    if len(found.device_ids) == 1 and not found.camera_ids:
        parts.append(("device_id = %s", [found.device_ids[0]]))
    if len(found.type_ids) == 1:
        parts.append(("event_type_id = %s", [found.type_ids[0]]))
    elif found.type_ids and by_device:
        parts.append(("event_type_id = ANY(%s::integer[])", [list(found.type_ids)]))
    return parts


def _bounds(found: EventFilter, position: Position | None) -> list[tuple[str, list[Any]]]:
    """The time range and the page's start, in epoch microseconds on the bare column."""
    bounds: list[tuple[str, list[Any]]] = []
    if found.start is not None:
        bounds.append(("timestamp_us >= %s", [epoch_us(found.start)]))
    if found.end is not None:
        bounds.append(("timestamp_us < %s", [epoch_us(found.end)]))
    if position is not None:
        op = ">" if position.direction == "next" else "<"
        params = [position.timestamp_us, position.event_id]
        bounds.append((f"(timestamp_us, id) {op} (%s, %s)", params))
    return bounds


def _keys(found: EventFilter) -> tuple[str, list[Any], str] | None:
    """The lateral join's keys (a query of one column), their parameters and the events
    column they match; None when one plain scan serves."""
    if found.camera_ids:
        query = "SELECT id FROM devices WHERE integration_id = %s AND camera_ids && %s::integer[]"
        params: list[Any] = [found.integration_id, list(found.camera_ids)]
        if found.device_ids:
            query += " AND id = ANY(%s::integer[])"
            params.append(list(found.device_ids))
        return query, params, "device_id"
    if len(found.device_ids) > 1:
        return "SELECT unnest(%s::integer[])", [list(found.device_ids)], "device_id"
    if len(found.type_ids) > 1 and not found.device_ids:
        return "SELECT unnest(%s::integer[])", [list(found.type_ids)], "event_type_id"
    return None


FATE_QUERY = (
    f"SELECT {COLUMNS}, op, error FROM events WHERE integration_id = %s AND id = %s "
    "ORDER BY revision DESC LIMIT 1"
)
TARGET_QUERY = (
    "SELECT raw_key, attributes::text AS attributes FROM events "
    "WHERE integration_id = %s AND id = %s AND current LIMIT 1"
)


# --- rows as API JSON -------------------------------------------------------------------------


def item(row: Row) -> dict[str, Any]:
    """A stored event in Spot's shape; its attributes embedded as stored, never re-parsed."""
    attributes = row["attributes"]
    return {
        "id": str(row["id"]),
        "integration_id": row["integration_id"],
        "integration_event_type_id": row["event_type_id"],
        "integration_device_id": row["device_id"],
        "timestamp": _time(row["timestamp_us"], _MICROSECOND),
        "duration": row["duration_ms"],
        "buffer": row["buffer_ms"],
        "attributes": None if attributes is None else orjson.Fragment(attributes),
        "created": _time(row["created_ms"], _MILLISECOND),
        "updated": _time(row["updated_ms"], _MILLISECOND),
    }


def _time(epoch: int | None, unit: timedelta) -> str | None:
    """An epoch integer (in `unit`s) as the API prints times (`iso`: UTC, milliseconds)."""
    return None if epoch is None else iso(_EPOCH + epoch * unit)


def fate(row: Row | None) -> dict[str, Any] | None:
    """`{"integration_event", "status", "error"?}` of an event's latest revision; None when
    there is none or it is a delete."""
    if row is None or row["op"] == "deleted":
        return None
    if row["op"] != "rejected":
        return {"integration_event": item(row), "status": "accepted"}
    error = row["error"] or {}
    reason = {k: error.get(k) for k in ("status", "code", "message")}
    if error.get("details"):
        reason["details"] = error["details"]
    return {"integration_event": item(row), "status": "rejected", "error": reason}


def page(rows: list[Row], limit: int, position: Position | None, beyond: bool) -> Page:
    """A page from up to `limit + 1` rows fetched in the position's direction; `beyond` says
    whether rows exist on the other side of them (unknown to the fetch itself)."""
    backwards = position is not None and position.direction == "prev"
    more = len(rows) > limit
    rows = rows[:limit]
    if backwards:
        rows.reverse()
    if not rows:
        return Page([], None, None)
    has_prev, has_next = (more, beyond) if backwards else (beyond, more)
    return Page(
        [item(r) for r in rows],
        encode_cursor(rows[0], "prev") if has_prev else None,
        encode_cursor(rows[-1], "next") if has_next else None,
    )


def turned(rows: list[Row], position: Position) -> Position:
    """Looking back from the first row fetched (the one nearest the cursor): whether rows
    exist on the page's other side."""
    back: Direction = "prev" if position.direction == "next" else "next"
    return Position(rows[0]["timestamp_us"], rows[0]["id"], back)


# --- running them -----------------------------------------------------------------------------


async def list_page(conn: Conn, found: EventFilter, cursor: str | None, limit: int) -> Page:
    """One page of the listable events matching `found`, with its cursors."""
    position = decode_cursor(cursor)
    rows = await _fetch(conn, *list_query(found, position, limit + 1))
    beyond = False
    if position is not None and rows:
        beyond = bool(await _fetch(conn, *list_query(found, turned(rows, position), 1)))
    return page(rows, limit, position, beyond)


async def latest(conn: Conn, integration_id: int, event_id: uuid.UUID) -> Row | None:
    """The event's latest revision, if any."""
    return await (await conn.execute(FATE_QUERY, (integration_id, event_id))).fetchone()


class Target(NamedTuple):
    """A listable event a change names: the raw key its changes are published under, and
    its stored attributes (JSON text)."""

    raw_key: bytes
    attributes: str


async def change_target(conn: Conn, integration_id: int, event_id: uuid.UUID) -> Target | None:
    """The listable event (accepted, not deleted) a change names; None when there is none."""
    row = await (await conn.execute(TARGET_QUERY, (integration_id, event_id))).fetchone()
    if row is None:
        return None
    key = row["raw_key"]
    return Target(bytes(key) if key is not None else str(event_id).encode(), row["attributes"])


async def _fetch(conn: Conn, query: str, params: list[Any]) -> list[Row]:
    return await (await conn.execute(query, params)).fetchall()
