"""`/v1/integrations/{id}/event-types`: JSON Schema and Device ID Template checked on save.

PUT replaces the type; every change bumps its version and is announced to the workers.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from ingest_worker.core.event_types import check_definition
from ingest_worker.shim import store
from ingest_worker.shim.common import (
    admin,
    deps,
    item_ids,
    json_body,
    json_response,
    list_response,
    path_id,
    route,
    row_response,
)
from ingest_worker.shim.problems import invalid
from ingest_worker.shim.store import EVENT_TYPE_COLUMNS

BASE = "/v1/integrations/{integration_id:id}/event-types"
KEY = "integration_event_type"


async def _definition(request: Request) -> tuple[Any, ...]:
    body = await json_body(request, "event_type_input")
    errors = check_definition(body)
    if errors:
        raise invalid(errors, "the event type is invalid")
    return (
        body["name"],
        store.json_value(body["schema"]),
        body.get("duration", 0),
        body.get("buffer", 0),
        body.get("external_device_id_template"),
    )


async def create(request: Request) -> Response:
    admin(request)
    integration_id = path_id(request, "integration_id", "integration")
    values = await _definition(request)
    async with deps(request).store.tx() as conn:
        await store.integration_exists(conn, integration_id)
        row = await store.one(
            conn,
            "INSERT INTO event_types (integration_id, name, schema, duration_ms, buffer_ms, "
            f"external_device_id_template) VALUES (%s, %s, %s, %s, %s, %s) "
            f"RETURNING {EVENT_TYPE_COLUMNS}",
            (integration_id, *values),
            "event type",
        )
    return json_response({KEY: row})


async def list_all(request: Request) -> Response:
    admin(request)
    return await list_response(
        request, "integration_event_types", EVENT_TYPE_COLUMNS, "event_types"
    )


async def read(request: Request) -> Response:
    admin(request)
    return await row_response(
        request,
        KEY,
        f"SELECT {EVENT_TYPE_COLUMNS} FROM event_types WHERE integration_id = %s AND id = %s",
        item_ids(request, "type_id", "event type"),
        "event type",
    )


async def replace(request: Request) -> Response:
    admin(request)
    ids = item_ids(request, "type_id", "event type")
    values = await _definition(request)
    return await row_response(
        request,
        KEY,
        "UPDATE event_types SET name = %s, schema = %s, duration_ms = %s, buffer_ms = %s, "
        "external_device_id_template = %s WHERE integration_id = %s AND id = %s "
        f"RETURNING {EVENT_TYPE_COLUMNS}",
        (*values, *ids),
        "event type",
    )


async def delete(request: Request) -> Response:
    """The type and, in the same transaction, its stored events (Spot's cascade)."""
    admin(request)
    ids = item_ids(request, "type_id", "event type")
    async with deps(request).store.tx() as conn:
        row = await store.delete_owning_events(
            conn,
            "DELETE FROM event_types WHERE integration_id = %s AND id = %s "
            f"RETURNING {EVENT_TYPE_COLUMNS}",
            ids,
            "event type",
            "integration_id = %s AND event_type_id = %s",
        )
    return json_response({KEY: row})


ROUTES = [
    route(BASE, post=create, get=list_all),
    route(BASE + "/{type_id:id}", get=read, put=replace, delete=delete),
]
