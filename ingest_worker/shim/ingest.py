"""`POST .../events` and `.../events/import`: check the shape, publish, answer 202 once durable.

Ingest is the hot route, so it is a plain ASGI endpoint that `FastIngest` calls before the
framework's routing and middleware (measured: about a quarter of the CPU per request); every
other route, import included, goes through Starlette.
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import orjson
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect as ClientDisconnect
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from ingest_worker.core import raw
from ingest_worker.core.errors import DependencyUnavailable
from ingest_worker.core.metrics import ApiMetrics
from ingest_worker.core.raw import RawRecord
from ingest_worker.core.shape import FieldError, check_event, check_import
from ingest_worker.shim import checks
from ingest_worker.shim.auth import Principal
from ingest_worker.shim.common import (
    INT32_MAX,
    Deps,
    decode,
    deps,
    json_response,
    parse_id,
    path_id,
    rate_limit,
    rate_limit_rest,
    read_body,
    read_limited,
    require_json,
)
from ingest_worker.shim.problems import (
    MEDIA_TYPE,
    Problem,
    invalid,
    not_found,
    record_too_large,
    record_too_large_message,
)
from ingest_worker.shim.publish import PublishFailed

RETRY_AFTER_UNAVAILABLE_S = 2
# Status counted (never sent) for a request whose client left before its body arrived.
CLIENT_CLOSED = 499
EVENTS_PATH = "/v1/integrations/{integration_id:id}/events"
_EVENTS = re.compile(r"^/v1/integrations/([0-9]+)/events$")

Header = Callable[[str], str | None]


async def ingest_event(
    d: Deps, integration_id: int, header: Header, body: Callable[[int], Awaitable[bytes]]
) -> str:
    """One event, framework-free: checks, publishes, returns its event id (or raises Problem;
    ClientDisconnect when the client leaves before its body arrived)."""
    _, key, trace = _preflight(d, integration_id, header)
    payload = await body(d.settings.max_body_bytes)
    event = decode(payload)
    errors = check_event(event)
    if errors:
        d.metrics.invalid.inc()
        raise invalid(errors)
    if d.catalog is not None:
        await checks.check_now(d.catalog, d.metrics, integration_id, event, len(payload))
    record = raw.build(
        integration_id, event, payload, received_at_ms=now_ms(), idempotency_key=key, trace=trace
    )
    size = d.publisher.oversize(record)
    if size is not None:
        raise record_too_large(size, d.publisher.max_record_bytes)
    await publish(d, [record])
    return record.event_id


class IngestEndpoint:
    """The ingest route as a bare ASGI app: headers read once, no request object."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.respond(scope, receive, send)

    async def respond(self, scope: Scope, receive: Receive, send: Send) -> int:
        """Answer one request; return the status sent."""
        headers = {name: value for name, value in scope["headers"]}

        def header(name: str) -> str | None:
            value = headers.get(name.encode())
            return None if value is None else value.decode("latin-1")

        try:
            integration_id = _integration_id(scope["path"])
            event_id = await ingest_event(
                scope["app"].state.deps,
                integration_id,
                header,
                lambda limit: read_limited(_chunks(receive), header("content-length"), limit),
            )
        except ClientDisconnect:
            return CLIENT_CLOSED
        except Problem as problem:
            extra = [(k.lower().encode(), v.encode()) for k, v in problem.headers().items()]
            await _answer(send, problem.status, problem.body(), MEDIA_TYPE, extra)
            return problem.status
        await _answer(send, 202, orjson.dumps({"event_id": event_id}), "application/json")
        return 202


class FastIngest:
    """Sends `POST /v1/integrations/{id}/events` straight to the ingest endpoint, counting it
    as the metrics middleware would; everything else goes to `app` through `rest`."""

    def __init__(self, app: Starlette, rest: ASGIApp, metrics: ApiMetrics) -> None:
        self._app, self._rest, self._metrics = app, rest, metrics
        self._counters: dict[int, Any] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and scope["method"] == "POST"
            and _EVENTS.fullmatch(scope["path"])
        ):
            scope["app"], scope["route"] = self._app, EVENTS_ROUTE  # as Starlette would set them
            self._metrics.in_flight.inc()
            status = 500
            try:
                status = await INGEST.respond(scope, receive, send)
            finally:
                self._metrics.in_flight.dec()
                self._counter(status).inc()
            return
        await self._rest(scope, receive, send)

    def _counter(self, status: int) -> Any:
        child = self._counters.get(status)
        if child is None:
            child = self._metrics.requests.labels(EVENTS_PATH, "POST", str(status))
            self._counters[status] = child
        return child


def _integration_id(path: str) -> int:
    match = _EVENTS.fullmatch(path)
    value = parse_id(match[1]) if match else INT32_MAX + 1
    if value > INT32_MAX:
        raise not_found()
    return value


async def _chunks(receive: Receive) -> AsyncIterator[bytes]:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        yield message.get("body", b"")
        if not message.get("more_body", False):
            return


async def _answer(
    send: Send,
    status: int,
    body: bytes,
    media_type: str,
    extra: list[tuple[bytes, bytes]] | None = None,
) -> None:
    headers = [
        (b"content-type", media_type.encode()),
        (b"content-length", str(len(body)).encode()),
        *(extra or []),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def import_events(request: Request) -> Response:
    """Many events: valid ones are published together; one result per item, in order. Each
    item spends one token of the caller's rate limit."""
    d = deps(request)
    integration_id = path_id(request, "integration_id", "integration")
    principal, key, trace = _preflight(d, integration_id, request.headers.get)
    document = decode(await read_body(request, d.settings.max_import_bytes))
    errors = check_import(document)
    if errors:
        raise invalid(errors)
    items: list[Any] = document["integration_events"]
    rate_limit_rest(d, principal, len(items))
    shaped = [_shaped(index, item) for index, item in enumerate(items)]
    refused = await _refused(d, integration_id, items, shaped)
    ids = raw.random_event_ids(len(items)) if key is None else None
    batch = _Import(d, integration_id, key, trace, now_ms(), ids)
    outcomes = [
        refused.get(index) or batch.item(index, item, shaped[index])
        for index, item in enumerate(items)
    ]
    records = [o for o in outcomes if isinstance(o, RawRecord)]
    d.metrics.invalid.inc(len(outcomes) - len(records))
    await publish(d, records)
    results = [_result(index, outcome) for index, outcome in enumerate(outcomes)]
    return json_response({"results": results}, 202)


class ItemError(NamedTuple):
    """Why an import item is not published: the status and code a single ingest of it would
    get, and the item's fields at fault."""

    status: int
    code: str
    errors: list[FieldError]


def _shaped(index: int, item: Any) -> bytes | ItemError:
    """The item as its raw record's value, or its shape errors."""
    errors = check_event(item, _item_field(index))
    return ItemError(400, "invalid_request", errors) if errors else orjson.dumps(item)


async def _refused(
    d: Deps, integration_id: int, items: list[Any], shaped: list[bytes | ItemError]
) -> dict[int, ItemError]:
    """The synchronous checks' refusals of well-shaped items (none in async mode)."""
    if d.catalog is None:
        return {}
    wanted = {i: (items[i], len(v)) for i, v in enumerate(shaped) if isinstance(v, bytes)}
    refused = await checks.check_items(d.catalog, d.metrics, integration_id, wanted)
    return {
        i: ItemError(r.status, r.code, checks.errors(r, items[i], _item_field(i)))
        for i, r in refused.items()
    }


def _item_field(index: int) -> str:
    return f"integration_events.{index}"


@dataclass(frozen=True, slots=True)
class _Import:
    """What every item of one import shares."""

    deps: Deps
    integration_id: int
    key: str | None
    trace: str
    received_at_ms: int
    random_ids: list[str] | None  # one per item, without an Idempotency-Key

    def item(self, index: int, item: Any, shaped: bytes | ItemError) -> RawRecord | ItemError:
        """The item's record, or why it cannot be published (its shape, or its size)."""
        if isinstance(shaped, ItemError):
            return shaped
        record = raw.build(
            self.integration_id,
            item,
            shaped,
            received_at_ms=self.received_at_ms,
            idempotency_key=self.key,
            trace=self.trace,
            index=index,
            random_id=None if self.random_ids is None else self.random_ids[index],
        )
        size = self.deps.publisher.oversize(record)
        if size is None:
            return record
        limit = self.deps.publisher.max_record_bytes
        message = record_too_large_message("the item", size, limit)
        return ItemError(413, "body_too_large", [FieldError(_item_field(index), message)])


def _result(index: int, outcome: RawRecord | ItemError) -> dict[str, Any]:
    if isinstance(outcome, RawRecord):
        return {"index": index, "event_id": outcome.event_id}
    errors = [e.as_json() for e in outcome.errors]
    return {"index": index, "status": outcome.status, "code": outcome.code, "errors": errors}


async def client_gone(_: Request, exc: Exception) -> Response:
    """The client left before its body arrived: nothing was published and nothing is sent
    (the status only counts it)."""
    assert isinstance(exc, ClientDisconnect)
    return Response(status_code=CLIENT_CLOSED)


def _preflight(d: Deps, integration_id: int, header: Header) -> tuple[Principal, str | None, str]:
    """Auth, rate limit (one token) and headers, all before the body is read."""
    principal = d.auth.authenticate(header("authorization"))
    d.auth.authorize(principal, integration_id)
    rate_limit(d, principal)
    require_json(header("content-type"))
    key = _idempotency_key(header("idempotency-key"))
    return principal, key, raw.traceparent(header("traceparent"))


def _idempotency_key(key: str | None) -> str | None:
    if key is not None and not 1 <= len(key) <= 255:
        raise invalid([FieldError("Idempotency-Key", "must be 1..255 characters")])
    return key


async def publish(d: Deps, records: list[RawRecord], what: str = "event") -> None:
    """Publish to the raw topic and count it; 503 (Retry-After) when Kafka does not
    acknowledge. `what`: the record's kind, for the answer."""
    if not records:
        return
    started = time.perf_counter()
    try:
        await d.publisher.publish(records)
    except DependencyUnavailable as exc:
        d.metrics.unavailable.inc(len(records))
        raise Problem(
            503,
            "kafka_unavailable",
            unavailable_detail(what, exc),
            retry_after_s=RETRY_AFTER_UNAVAILABLE_S,
        ) from exc
    d.metrics.publish_seconds.observe(time.perf_counter() - started)
    d.metrics.published.inc(len(records))


def unavailable_detail(what: str, exc: DependencyUnavailable) -> str:
    """What a 503 tells of the records' fate."""
    if isinstance(exc, PublishFailed) and exc.written is False:
        return f"the {what} was not written (Kafka did not take it); retry"
    return (
        f"the {what} may or may not have been written (Kafka did not confirm it); "
        "retry with the same Idempotency-Key"
    )


def now_ms() -> int:
    return time.time_ns() // 1_000_000


INGEST = IngestEndpoint()
EVENTS_ROUTE = Route(EVENTS_PATH, INGEST, methods=["POST"])
ROUTES = [
    EVENTS_ROUTE,
    Route("/v1/integrations/{integration_id:id}/events/import", import_events, methods=["POST"]),
]
