"""`POST .../events` and `.../events/import`: check the shape, publish, answer 202 once durable.

Ingest is the hot route, so it is a plain ASGI endpoint that `FastIngest` calls before the
framework's routing and middleware (measured: about a quarter of the CPU per request); every
other route, import included, goes through Starlette.
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from ingest_worker import raw
from ingest_worker.api.common import (
    INT32_MAX,
    Deps,
    decode,
    deps,
    json_response,
    path_id,
    rate_limit,
    read_body,
    read_limited,
    require_json,
)
from ingest_worker.errors import DependencyUnavailable
from ingest_worker.metrics import ApiMetrics
from ingest_worker.problems import MEDIA_TYPE, Problem, invalid, not_found
from ingest_worker.raw import RawRecord
from ingest_worker.shape import FieldError, check_event, check_import

RETRY_AFTER_UNAVAILABLE_S = 2
EVENTS_PATH = "/v1/integrations/{integration_id:int}/events"
_EVENTS = re.compile(r"^/v1/integrations/([0-9]+)/events$")

Header = Callable[[str], str | None]


async def ingest_event(
    d: Deps, integration_id: int, header: Header, body: Callable[[int], Awaitable[bytes]]
) -> str:
    """One event, framework-free: checks, publishes, returns its event id (or raises Problem)."""
    key, trace = _preflight(d, integration_id, header)
    payload = await body(d.settings.max_body_bytes)
    event = decode(payload)
    errors = check_event(event)
    if errors:
        d.metrics.invalid.inc()
        raise invalid(errors)
    record = raw.build(
        integration_id, event, payload, received_at_ms=_now_ms(), idempotency_key=key, trace=trace
    )
    await _publish(d, [record])
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
        if scope["type"] == "http" and scope["method"] == "POST" and _EVENTS.match(scope["path"]):
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
    match = _EVENTS.match(path)
    value = int(match[1]) if match else INT32_MAX + 1
    if value > INT32_MAX:
        raise not_found()
    return value


async def _chunks(receive: Receive) -> AsyncIterator[bytes]:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
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
    """Many events: valid ones are published together; one result per item, in order."""
    d = deps(request)
    integration_id = path_id(request, "integration_id", "integration")
    key, trace = _preflight(d, integration_id, request.headers.get)
    document = decode(await read_body(request, d.settings.max_import_bytes))
    errors = check_import(document)
    if errors:
        raise invalid(errors)
    received_at_ms = _now_ms()
    results: list[dict[str, Any]] = []
    records: list[RawRecord] = []
    for index, item in enumerate(document["integration_events"]):
        item_errors = check_event(item, f"integration_events.{index}")
        if item_errors:
            results.append({"index": index, "errors": [e.as_json() for e in item_errors]})
            continue
        item_key = None if key is None else f"{key}:{index}"
        record = raw.build(
            integration_id,
            item,
            orjson.dumps(item),
            received_at_ms=received_at_ms,
            idempotency_key=item_key,
            trace=trace,
        )
        records.append(record)
        results.append({"index": index, "event_id": record.event_id})
    d.metrics.invalid.inc(len(results) - len(records))
    await _publish(d, records)
    return json_response({"results": results}, 202)


def _preflight(d: Deps, integration_id: int, header: Header) -> tuple[str | None, str]:
    """Auth, rate limit and headers, all before the body is read."""
    principal = d.auth.authenticate(header("authorization"))
    d.auth.authorize(principal, integration_id)
    rate_limit(d, principal)
    require_json(header("content-type"))
    return _idempotency_key(header("idempotency-key")), raw.traceparent(header("traceparent"))


def _idempotency_key(key: str | None) -> str | None:
    if key is not None and not 1 <= len(key) <= 255:
        raise invalid([FieldError("Idempotency-Key", "must be 1..255 characters")])
    return key


async def _publish(d: Deps, records: list[RawRecord]) -> None:
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
            "the event could not be made durable; retry",
            retry_after_s=RETRY_AFTER_UNAVAILABLE_S,
        ) from exc
    d.metrics.publish_seconds.observe(time.perf_counter() - started)
    d.metrics.published.inc(len(records))


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


INGEST = IngestEndpoint()
EVENTS_ROUTE = Route(EVENTS_PATH, INGEST, methods=["POST"])
ROUTES = [
    EVENTS_ROUTE,
    Route("/v1/integrations/{integration_id:int}/events/import", import_events, methods=["POST"]),
]
