"""Spot's stored-event endpoints: list (`GET .../events`), fate (`GET .../events/{id}`),
update and delete (`PUT`/`DELETE .../events/{id}`).

Reads answer from the event store; changes are checked, found stored, then published to the
raw topic under the event's own raw key (so they follow it on its partition) for the worker to
apply, and answered 202 once durable, like an ingest. With the store off, all four are 501.
"""

from __future__ import annotations

import uuid
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route, request_response
from starlette.types import Receive, Scope, Send

from ingest_worker.core import raw
from ingest_worker.core.raw import RawRecord
from ingest_worker.core.shape import check_update
from ingest_worker.shim import checks, event_store, ingest
from ingest_worker.shim.auth import Principal
from ingest_worker.shim.common import (
    Deps,
    caller,
    decode,
    deps,
    json_response,
    limit_param,
    path_id,
    query_ids,
    query_value,
    rate_limit,
    read_body,
    require_json,
    route,
)
from ingest_worker.shim.event_store import EventFilter
from ingest_worker.shim.problems import Problem, invalid, not_found, record_too_large

BASE = "/v1/integrations/{integration_id:id}/events"
ITEM = BASE + "/{event_id:uuid}"


def _open(request: Request) -> tuple[Deps, int, Principal]:
    """Auth for the path's integration, then 501 when the event store is off."""
    d = deps(request)
    integration_id = path_id(request, "integration_id", "integration")
    principal = caller(request, integration_id)
    if d.settings.event_store != "on":
        raise Problem(
            501,
            "event_store_disabled",
            "the event store is off (INGEST_EVENT_STORE=off): stored events cannot be "
            "listed, read, updated or deleted",
        )
    return d, integration_id, principal


async def list_events(request: Request) -> Response:
    """Listable events (accepted, not deleted) by Spot's filters, by timestamp then id."""
    d, integration_id, _ = _open(request)
    found = _filter(request, integration_id)
    limit = limit_param(request)
    async with d.store.tx() as conn:
        page = await event_store.list_page(conn, found, query_value(request, "cursor"), limit)
    return json_response({"integration_events": page.items, "prev": page.prev, "next": page.next})


def _filter(request: Request, integration_id: int) -> EventFilter:
    return EventFilter(
        integration_id,
        type_ids=event_store.ids(query_ids(request, "integrationEventTypeIds")),
        device_ids=event_store.ids(query_ids(request, "integrationDeviceIds")),
        camera_ids=event_store.ids(query_ids(request, "cameraIds")),
        start=event_store.parse_time("start", query_value(request, "start")),
        end=event_store.parse_time("end", query_value(request, "end")),
    )


async def read_event(request: Request) -> Response:
    """The event's fate: accepted (its current state) or rejected (with the reason); 404
    while unknown, in flight, or deleted."""
    d, integration_id, _ = _open(request)
    event_id: uuid.UUID = request.path_params["event_id"]
    async with d.store.tx() as conn:
        found = event_store.fate(await event_store.latest(conn, integration_id, event_id))
    if found is None:
        raise not_found("event")
    return json_response(found)


async def update_event(request: Request) -> Response:
    """Spot's update body, published (byte for byte) as an `update` for the worker."""
    d, integration_id, principal = _open(request)
    rate_limit(d, principal)
    require_json(request.headers.get("content-type"))
    body = await read_body(request, d.settings.max_body_bytes)
    update = decode(body)
    errors = check_update(update)
    if errors:
        d.metrics.invalid.inc()
        raise invalid(errors)
    return await _change(request, d, integration_id, "update", (body, update))


async def delete_event(request: Request) -> Response:
    """A `delete` for the worker (empty value)."""
    d, integration_id, principal = _open(request)
    rate_limit(d, principal)
    return await _change(request, d, integration_id, "delete", (b"", None))


async def _change(
    request: Request, d: Deps, integration_id: int, op: str, body: tuple[bytes, Any]
) -> Response:
    """404 unless the event is stored and listable; with synchronous checks, an update that
    cannot apply is refused at once (the worker's codes); else publish the change under the
    event's raw key and answer 202 once Kafka has it. `body`: the value and, for an update,
    its parsed form."""
    event_id: uuid.UUID = request.path_params["event_id"]
    async with d.store.tx() as conn:
        target = await event_store.change_target(conn, integration_id, event_id)
    if target is None:
        raise not_found("event")
    value, update = body
    if update is not None and d.catalog is not None:
        await checks.check_update_now(
            d.catalog, d.metrics, integration_id, update, target.attributes
        )
    record = raw.build_change(
        integration_id,
        str(event_id),
        op,
        value,
        key=target.raw_key,
        received_at_ms=ingest.now_ms(),
        trace=raw.traceparent(request.headers.get("traceparent")),
    )
    await _publish(d, record)
    return json_response({"event_id": record.event_id}, 202)


async def _publish(d: Deps, record: RawRecord) -> None:
    """Publish one change; 413 when the raw topic cannot take it, 503 when Kafka does not
    acknowledge it."""
    size = d.publisher.oversize(record)
    if size is not None:
        raise record_too_large(size, d.publisher.max_record_bytes)
    await ingest.publish(d, [record], "change")


class _Collection:
    """`.../events`: GET lists stored events, POST ingests. `FastIngest` answers POST before
    routing; this keeps both methods on one route, so that a wrong method's 405 lists both."""

    def __init__(self) -> None:
        self._list = request_response(list_events)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        app = ingest.INGEST if scope["method"] == "POST" else self._list
        await app(scope, receive, send)


# Before ingest's routes in the app: the collection route then takes GET and POST both.
ROUTES = [
    Route(BASE, _Collection(), methods=["GET", "POST"], name=BASE),
    route(ITEM, get=read_event, put=update_event, delete=delete_event),
]
