"""`POST .../events` and `.../events/import`: check the shape, publish, answer 202 once durable."""

from __future__ import annotations

import time
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ingest_worker import raw
from ingest_worker.api.common import (
    caller,
    decode,
    deps,
    json_response,
    path_id,
    rate_limit,
    read_body,
    require_json,
)
from ingest_worker.errors import DependencyUnavailable
from ingest_worker.problems import Problem, invalid
from ingest_worker.raw import RawRecord
from ingest_worker.shape import FieldError, check_event, check_import

RETRY_AFTER_UNAVAILABLE_S = 2


async def ingest(request: Request) -> Response:
    """One event: 202 {"event_id"} after Kafka acknowledged it."""
    integration_id, key, trace = _preflight(request)
    body = await read_body(request, deps(request).settings.max_body_bytes)
    event = decode(body)
    errors = check_event(event)
    if errors:
        deps(request).metrics.events.labels("invalid").inc()
        raise invalid(errors)
    record = raw.build(
        integration_id, event, body, received_at_ms=_now_ms(), idempotency_key=key, trace=trace
    )
    await _publish(request, [record])
    return json_response({"event_id": record.event_id}, 202)


async def import_events(request: Request) -> Response:
    """Many events: valid ones are published together; one result per item, in order."""
    integration_id, key, trace = _preflight(request)
    document = decode(await read_body(request, deps(request).settings.max_import_bytes))
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
    deps(request).metrics.events.labels("invalid").inc(len(results) - len(records))
    await _publish(request, records)
    return json_response({"results": results}, 202)


def _preflight(request: Request) -> tuple[int, str | None, str]:
    """Auth, rate limit and headers, all before the body is read."""
    integration_id = path_id(request, "integration_id", "integration")
    principal = caller(request, integration_id)
    rate_limit(request, principal)
    require_json(request)
    return (
        integration_id,
        _idempotency_key(request),
        raw.traceparent(request.headers.get("traceparent")),
    )


def _idempotency_key(request: Request) -> str | None:
    key = request.headers.get("idempotency-key")
    if key is not None and not 1 <= len(key) <= 255:
        raise invalid([FieldError("Idempotency-Key", "must be 1..255 characters")])
    return key


async def _publish(request: Request, records: list[RawRecord]) -> None:
    if not records:
        return
    d = deps(request)
    started = time.perf_counter()
    try:
        await d.publisher.publish(records)
    except DependencyUnavailable as exc:
        d.metrics.events.labels("unavailable").inc(len(records))
        raise Problem(
            503,
            "kafka_unavailable",
            "the event could not be made durable; retry",
            retry_after_s=RETRY_AFTER_UNAVAILABLE_S,
        ) from exc
    d.metrics.publish_seconds.observe(time.perf_counter() - started)
    d.metrics.events.labels("published").inc(len(records))


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


ROUTES = [
    Route("/v1/integrations/{integration_id:int}/events", ingest, methods=["POST"]),
    Route("/v1/integrations/{integration_id:int}/events/import", import_events, methods=["POST"]),
]
