"""PostgreSQL queries of the management API: integrations, event types, devices, tokens
(the stored events' own are in `event_store`).

Library errors are translated here: a lost database becomes DependencyUnavailable (503), a
constraint violation a Problem with the field at fault.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, LiteralString

import orjson
import psycopg
from psycopg import sql
from psycopg.rows import DictRow, dict_row
from psycopg.types.json import Json
from psycopg_pool import AsyncConnectionPool

from ingest_worker.core.errors import DependencyUnavailable
from ingest_worker.core.shape import FieldError
from ingest_worker.shim.problems import Problem, invalid, not_found

Row = dict[str, Any]
# Every listed table's id is a PostgreSQL integer (int32).
MAX_ROW_ID = 2**31 - 1
# Ours are about 30 characters; a longer one is not ours and is not decoded.
MAX_CURSOR_CHARS = 256
Conn = psycopg.AsyncConnection[DictRow]

INTEGRATION_COLUMNS = "id, name, integration_type_id, created, updated"
EVENT_TYPE_COLUMNS = (
    "id, integration_id, name, schema, duration_ms AS duration, buffer_ms AS buffer, "
    "external_device_id_template, version, created, updated"
)
DEVICE_COLUMNS = (
    "id, integration_id, name, external_id, tags, camera_ids, auto_created, created, updated"
)
TOKEN_COLUMNS = "id, integration_id, name, token_prefix AS prefix, created, revoked"  # noqa: S105


@dataclass(frozen=True, slots=True)
class Page:
    """One page of a list and the cursors around it."""

    items: list[Row]
    prev: str | None
    next: str | None


class Store:
    """A connection pool and the queries of every management route."""

    def __init__(self, pool: AsyncConnectionPool[Conn]) -> None:
        self._pool = pool

    @asynccontextmanager
    async def tx(self) -> AsyncIterator[Conn]:
        """A connection in a transaction; database outages become DependencyUnavailable."""
        try:
            async with self._pool.connection() as conn, conn.transaction():
                yield conn
        except psycopg.OperationalError as exc:
            raise DependencyUnavailable(f"PostgreSQL unavailable: {exc}") from exc
        except psycopg.errors.UniqueViolation as exc:
            raise _conflict(exc) from exc
        except psycopg.errors.CheckViolation as exc:
            raise invalid([FieldError("(body)", str(exc.diag.message_primary))]) from exc

    async def ready(self) -> bool:
        try:
            async with self.tx() as conn:
                await conn.execute("SELECT 1")
        except DependencyUnavailable:
            return False
        return True


def _conflict(exc: psycopg.errors.UniqueViolation) -> Problem:
    constraint = exc.diag.constraint_name or ""
    field = "external_id" if "external_id" in constraint else "(body)"
    return Problem(
        409, "conflict", f"{field} already exists", [FieldError(field, "already exists")]
    )


def jsonable(row: Row) -> Row:
    """A row as API JSON: timestamps in RFC 3339 (UTC, milliseconds, `Z`)."""
    return {key: iso(value) if isinstance(value, datetime) else value for key, value in row.items()}


def iso(moment: datetime) -> str:
    """A time as the API prints it: RFC 3339, UTC, milliseconds, `Z`."""
    return (
        moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
    )


# --- cursors -----------------------------------------------------------------------------------


def encode_cursor(row_id: int, direction: str) -> str:
    return encode_position({"id": row_id, "d": direction})


def decode_cursor(cursor: str | None) -> tuple[int, str] | None:
    """(id, "next"|"prev") from an opaque cursor; a 400 problem if it is not one of ours."""
    data = decode_position(cursor)
    if data is None:
        return None
    if not _is_position(data):
        raise bad_cursor()
    return data["id"], data["d"]


def encode_position(position: dict[str, Any]) -> str:
    """A list position (a small JSON object) as an opaque cursor."""
    return base64.urlsafe_b64encode(orjson.dumps(position)).decode()


def decode_position(cursor: str | None) -> Any:
    """The JSON inside an opaque cursor (None when there is none), unchecked beyond being
    JSON; a 400 problem when it is too long or not base64 JSON."""
    if not cursor:
        return None
    if len(cursor) > MAX_CURSOR_CHARS:
        raise bad_cursor()
    try:
        return orjson.loads(base64.urlsafe_b64decode(cursor.encode()))
    except (binascii.Error, ValueError, orjson.JSONDecodeError) as exc:
        raise bad_cursor() from exc


def _is_position(data: Any) -> bool:
    """Whether a decoded cursor is `{"id": <row id>, "d": "next"|"prev"}`, as we write it."""
    if not isinstance(data, dict) or set(data) != {"id", "d"}:
        return False
    row_id = data["id"]
    in_range = type(row_id) is int and 0 <= row_id <= MAX_ROW_ID
    return in_range and data["d"] in ("next", "prev")


def bad_cursor() -> Problem:
    return invalid([FieldError("cursor", "not a valid cursor")])


async def page(
    conn: Conn,
    columns: LiteralString,
    table: LiteralString,
    filters: sql.Composed,
    cursor: str | None,
    limit: int,
) -> Page:
    """Keyset pagination by id over `table` rows matching `filters`."""
    position = decode_cursor(cursor)
    where, order = filters, sql.SQL("id")
    if position is not None:
        op = ">" if position[1] == "next" else "<"
        where = sql.SQL("{} AND id {} {}").format(filters, sql.SQL(op), position[0])
        order = sql.SQL("id" if position[1] == "next" else "id DESC")
    query = sql.SQL("SELECT {} FROM {} WHERE {} ORDER BY {} LIMIT {}").format(
        sql.SQL(columns), sql.SQL(table), where, order, limit + 1
    )
    rows = await (await conn.execute(query)).fetchall()
    more = len(rows) > limit
    rows = rows[:limit]
    if position is not None and position[1] == "prev":
        rows.reverse()
    return await _cursors(conn, table, filters, rows, position, more)


async def unpaged(
    conn: Conn, columns: LiteralString, table: LiteralString, filters: sql.Composed
) -> Page:
    """Every row matching `filters`, by id: one page with no cursors."""
    query = sql.SQL("SELECT {} FROM {} WHERE {} ORDER BY id").format(
        sql.SQL(columns), sql.SQL(table), filters
    )
    rows = await (await conn.execute(query)).fetchall()
    return Page([jsonable(r) for r in rows], None, None)


async def _cursors(
    conn: Conn,
    table: LiteralString,
    filters: sql.Composed,
    rows: list[Row],
    position: tuple[int, str] | None,
    more: bool,
) -> Page:
    if not rows:
        return Page([], None, None)
    backwards = position is not None and position[1] == "prev"
    has_next = more if not backwards else await _exists(conn, table, filters, ">", rows[-1]["id"])
    has_prev = more if backwards else await _exists(conn, table, filters, "<", rows[0]["id"])
    return Page(
        [jsonable(r) for r in rows],
        encode_cursor(rows[0]["id"], "prev") if has_prev else None,
        encode_cursor(rows[-1]["id"], "next") if has_next else None,
    )


async def _exists(
    conn: Conn, table: LiteralString, filters: sql.Composed, op: LiteralString, row_id: int
) -> bool:
    query = sql.SQL("SELECT EXISTS (SELECT 1 FROM {} WHERE {} AND id {} {})").format(
        sql.SQL(table), filters, sql.SQL(op), row_id
    )
    row = await (await conn.execute(query)).fetchone()
    return bool(row and row["exists"])


def by_integration(
    integration_id: int, overlaps: Sequence[sql.Composable] = (), **equals: Any
) -> sql.Composed:
    """`integration_id = X [AND col = value ...] [AND overlap ...]` as a composed filter."""
    parts: list[sql.Composable] = [sql.SQL("integration_id = {}").format(integration_id)]
    parts += [
        sql.SQL("{} = {}").format(sql.Identifier(col), value)
        for col, value in equals.items()
        if value is not None
    ]
    return sql.SQL(" AND ").join([*parts, *overlaps])


def overlap(
    column: LiteralString, values: Sequence[Any], array_type: LiteralString
) -> sql.Composed:
    """`column` holds any of `values` (an array column, `&&`)."""
    return sql.SQL("{} && {}::" + array_type).format(sql.Identifier(column), list(values))


async def one(conn: Conn, query: LiteralString, params: tuple[Any, ...], what: str) -> Row:
    """Exactly one row as API JSON, or a 404 problem naming `what`."""
    row = await (await conn.execute(query, params)).fetchone()
    if row is None:
        raise not_found(what)
    return jsonable(row)


async def delete_owning_events(
    conn: Conn, query: LiteralString, params: tuple[Any, ...], what: str, owner: LiteralString
) -> Row:
    """Run a one-row DELETE (404 naming `what` when nothing matched) and delete the stored
    events it owns, `owner` being their filter on `params` (Spot's cascade; the events
    table has no foreign keys), in the caller's transaction."""
    row = await one(conn, query, params, what)
    await conn.execute(f"DELETE FROM events WHERE {owner}", params)
    return row


async def integration_exists(conn: Conn, integration_id: int) -> None:
    """404 unless the integration exists."""
    await one(conn, "SELECT id FROM integrations WHERE id = %s", (integration_id,), "integration")


def json_value(value: Any) -> Json:
    """A value for a `json` column, stored as written (no jsonb number normalisation)."""
    return Json(value)


def pool(database_url: str, max_size: int) -> AsyncConnectionPool[Conn]:
    """A pool of dict-row connections, opened by the caller."""
    return AsyncConnectionPool(
        database_url,
        min_size=1,
        max_size=max_size,
        open=False,
        kwargs={"row_factory": dict_row, "autocommit": False},
        timeout=5,
    )


def everything() -> sql.Composed:
    """The filter that matches every row."""
    return sql.Composed([sql.SQL("TRUE")])
