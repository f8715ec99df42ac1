"""What every route shares: its dependencies, body reading, auth and JSON answers."""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import islice
from typing import Any, LiteralString

import orjson
from psycopg import sql
from starlette.convertors import Convertor, register_url_convertor
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ingest_worker.core.config import Settings
from ingest_worker.core.metrics import ApiMetrics
from ingest_worker.core.shape import MAX_DETAILS, BadJsonError, FieldError, check, parse_json
from ingest_worker.shim import store
from ingest_worker.shim.auth import AuthCache, Principal
from ingest_worker.shim.auth import load as load_auth
from ingest_worker.shim.catalog import Catalog
from ingest_worker.shim.problems import Problem, invalid, not_found
from ingest_worker.shim.publish import Publisher
from ingest_worker.shim.ratelimit import RateLimiter
from ingest_worker.shim.store import Store

INT32_MAX = 2**31 - 1
Handler = Callable[[Request], Awaitable[Response]]
MANAGEMENT_SCHEMA = "management.schema.json"
# Digits of the largest int32, and of the largest query integer we ever parse.
INT32_DIGITS = 10
_ASCII_DIGITS = re.compile(r"[0-9]{1,18}")


def parse_id(digits: str) -> int:
    """ASCII digits as an id; one with more significant digits than any int32 maps above
    INT32_MAX (a 404), without converting thousands of digits."""
    significant = digits.lstrip("0")
    return int(significant or "0") if len(significant) <= INT32_DIGITS else INT32_MAX + 1


class IdConvertor(Convertor[int]):
    """`{name:id}` path parameters: ASCII digits of any length, as `parse_id` reads them."""

    regex = "[0-9]+"

    def convert(self, value: str) -> int:
        return parse_id(value)

    def to_string(self, value: int) -> str:
        return str(int(value))


register_url_convertor("id", IdConvertor())


@dataclass
class Deps:
    """The API process's resources, built by the lifespan and read by handlers."""

    settings: Settings
    auth: AuthCache
    publisher: Publisher
    store: Store
    limiter: RateLimiter
    metrics: ApiMetrics
    clock: Callable[[], float] = field(default=time.monotonic)
    catalog: Catalog | None = None  # None: INGEST_API_VALIDATION=async, no synchronous checks


async def refresh_auth(request: Request) -> None:
    """Reload tokens and integrations now, so this process sees its own writes at once
    (other processes follow on the change notification)."""
    d = deps(request)
    async with d.store.tx() as conn:
        d.auth.replace(*await load_auth(conn))


def route(path: str, **handlers: Handler) -> Route:
    """One route per path whatever its methods, so a wrong method gets 405 with the full
    `Allow` list."""

    async def dispatch(request: Request) -> Response:
        method = request.method.lower()
        return await handlers["get" if method == "head" else method](request)

    return Route(path, dispatch, methods=[m.upper() for m in handlers], name=path)


def deps(request: Request) -> Deps:
    found: Deps = request.app.state.deps
    return found


def json_response(document: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(document), status, media_type="application/json")


def path_id(request: Request, name: str, what: str) -> int:
    """An int32 path parameter; anything larger cannot exist, so it is a 404."""
    value: int = request.path_params[name]
    if value > INT32_MAX:
        raise not_found(what)
    return value


def item_ids(request: Request, name: str, what: str) -> tuple[int, int]:
    """(integration id, item id) from a `/v1/integrations/{integration_id}/.../{name}` path."""
    return path_id(request, "integration_id", "integration"), path_id(request, name, what)


def caller(request: Request, integration_id: int | None = None) -> Principal:
    """Authenticate, then (with an integration) authorize; 401 or 404 problems."""
    auth = deps(request).auth
    principal = auth.authenticate(request.headers.get("authorization"))
    if integration_id is not None:
        auth.authorize(principal, integration_id)
    return principal


def admin(request: Request) -> Principal:
    """Management routes take an admin token; an integration token gets 404, as if absent."""
    principal = caller(request)
    if not principal.is_admin:
        raise not_found("resource")
    return principal


def rate_limit(d: Deps, principal: Principal) -> None:
    """429 with Retry-After when the caller's token bucket is empty."""
    _limited(d.limiter.check(_bucket(principal), d.clock()))


def rate_limit_rest(d: Deps, principal: Principal, weight: int) -> None:
    """Charge the rest of a request that weighs `weight` tokens (one already spent by
    `rate_limit`); 429 with Retry-After when the bucket cannot pay."""
    _limited(d.limiter.check_rest(_bucket(principal), d.clock(), weight))


def _bucket(principal: Principal) -> object:
    return principal.token_id if principal.token_id is not None else "bootstrap-admin"


def _limited(wait_s: int) -> None:
    if wait_s:
        raise Problem(429, "rate_limited", "too many requests", retry_after_s=wait_s)


def require_json(content_type: str | None) -> None:
    """415 unless the body is declared as JSON."""
    media_type = (content_type or "").split(";", 1)[0].strip().lower()
    if media_type != "application/json":
        raise Problem(415, "unsupported_media_type", "send the body as application/json")


async def read_body(request: Request, limit_bytes: int) -> bytes:
    """The whole body, or a 413 as soon as it exceeds the limit (declared or streamed)."""
    return await read_limited(request.stream(), request.headers.get("content-length"), limit_bytes)


async def read_limited(
    chunks: AsyncIterator[bytes], declared: str | None, limit_bytes: int
) -> bytes:
    """Join body chunks, failing with 413 early when the declared or read size is too big."""
    if declared is not None and _declared_over(declared, limit_bytes):
        raise _too_large(limit_bytes)
    parts, size = [], 0
    async for chunk in chunks:
        size += len(chunk)
        if size > limit_bytes:
            raise _too_large(limit_bytes)
        parts.append(chunk)
    return b"".join(parts)


def _declared_over(declared: str, limit_bytes: int) -> bool:
    """Whether a Content-Length of ASCII digits says more than the limit (the server has
    refused any other form before we see it)."""
    digits = declared.strip().lstrip("0")
    return digits.isascii() and digits.isdigit() and (len(digits) > 18 or int(digits) > limit_bytes)


def _too_large(limit_bytes: int) -> Problem:
    return Problem(413, "body_too_large", f"the body exceeds {limit_bytes} bytes")


def decode(body: bytes) -> Any:
    """The body as JSON, or a 400 `invalid_json` with the decoder's reason."""
    try:
        return parse_json(body)
    except BadJsonError as exc:
        raise Problem(400, "invalid_json", f"the body is not valid JSON: {exc}") from exc


async def json_body(request: Request, definition: str) -> dict[str, Any]:
    """A management request body, checked against its `$defs` entry."""
    require_json(request.headers.get("content-type"))
    document = decode(await read_body(request, deps(request).settings.max_body_bytes))
    errors = check(MANAGEMENT_SCHEMA, definition, document) or list(
        islice(nul_characters(document), MAX_DETAILS)
    )
    if errors:
        raise invalid(errors)
    found: dict[str, Any] = {
        k: as_ints(v) if k in _INTEGER_FIELDS else v for k, v in document.items()
    }
    return found


def nul_characters(value: Any, path: str = "") -> Iterator[FieldError]:
    """PostgreSQL text and jsonb cannot hold U+0000: name every string that contains it."""
    if isinstance(value, str) and "\x00" in value:
        yield FieldError(path or "(body)", "must not contain the NUL character (U+0000)")
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from nul_characters(key, path)
            yield from nul_characters(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from nul_characters(item, f"{path}.{index}")


# JSON Schema's "integer" admits 3.0; the database wants 3.
_INTEGER_FIELDS = frozenset({"duration", "buffer", "camera_ids"})


def as_ints(value: Any) -> Any:
    """Integral numbers (or lists of them) as Python ints."""
    if isinstance(value, list):
        return [as_ints(v) for v in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


async def list_response(
    request: Request,
    key: str,
    columns: LiteralString,
    table: LiteralString,
    *,
    scoped: bool = True,
    unpaged_by_default: bool = False,
    overlaps: Sequence[sql.Composable] = (),
    **equals: Any,
) -> Response:
    """One page of a table in Spot's list envelope `{key: [...], "prev", "next"}`; `scoped`
    lists the rows of the path's integration (404 if it does not exist); `unpaged_by_default`
    answers every row when neither `limit` nor `cursor` is given. The caller has checked the
    token."""
    limit = limit_param(request)
    integration_id = path_id(request, "integration_id", "integration") if scoped else None
    async with deps(request).store.tx() as conn:
        filters = store.everything()
        if integration_id is not None:
            await store.integration_exists(conn, integration_id)
            filters = store.by_integration(integration_id, overlaps, **equals)
        cursor = query_value(request, "cursor")
        if unpaged_by_default and cursor is None and "limit" not in request.query_params:
            found = await store.unpaged(conn, columns, table, filters)
        else:
            found = await store.page(conn, columns, table, filters, cursor, limit)
    return json_response({key: found.items, "prev": found.prev, "next": found.next})


async def row_response(
    request: Request, key: str, query: LiteralString, params: tuple[Any, ...], what: str
) -> Response:
    """Run a one-row statement and answer `{key: row}`, or 404 naming `what`. The caller has
    checked the token."""
    async with deps(request).store.tx() as conn:
        row = await store.one(conn, query, params, what)
    return json_response({key: row})


def limit_param(request: Request) -> int:
    """`limit` query parameter: 1..100, default 50."""
    raw = query_value(request, "limit")
    if raw is None:
        return 50
    value = query_int(raw)
    if value is None or not 1 <= value <= 100:
        raise invalid([FieldError("limit", "must be an integer from 1 to 100", raw[:100])])
    return value


def query_int(raw: str) -> int | None:
    """A query value of 1..18 ASCII digits as an int; None for anything else."""
    return int(raw) if _ASCII_DIGITS.fullmatch(raw) else None


def query_list(request: Request, name: str) -> list[str]:
    """A list parameter as Spot takes it: repeated keys, comma lists, or both; empty items
    dropped; a 400 naming it when a value holds NUL."""
    values = []
    for raw in request.query_params.getlist(name):
        if "\x00" in raw:
            raise invalid([FieldError(name, "must not contain the NUL character (U+0000)")])
        values += [item.strip() for item in raw.split(",") if item.strip()]
    return values


def query_ids(request: Request, name: str) -> list[int]:
    """A list parameter of int32 ids (repeated keys or comma lists), or a 400 naming it."""
    raw = query_list(request, name)
    ids = [query_int(item) for item in raw]
    if any(i is None or i > INT32_MAX for i in ids):
        raise invalid([FieldError(name, "must be integer ids", ",".join(raw)[:100])])
    return [i for i in ids if i is not None]


def query_value(request: Request, name: str) -> str | None:
    """A query parameter's (last) value; a 400 naming it when it holds NUL, which no id,
    number or PostgreSQL text can."""
    value = request.query_params.get(name)
    if value is not None and "\x00" in value:
        raise invalid([FieldError(name, "must not contain the NUL character (U+0000)")])
    return value
