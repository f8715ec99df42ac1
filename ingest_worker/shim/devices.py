"""`/v1/integrations/{id}/devices`: external ids are unique per integration and immutable."""

from __future__ import annotations

from psycopg import sql
from starlette.requests import Request
from starlette.responses import Response

from ingest_worker.core.shape import FieldError
from ingest_worker.shim import store
from ingest_worker.shim.common import (
    admin,
    deps,
    item_ids,
    json_body,
    json_response,
    list_response,
    path_id,
    query_ids,
    query_list,
    query_value,
    route,
    row_response,
)
from ingest_worker.shim.problems import invalid
from ingest_worker.shim.store import DEVICE_COLUMNS

BASE = "/v1/integrations/{integration_id:id}/devices"
KEY = "integration_device"


async def create(request: Request) -> Response:
    admin(request)
    integration_id = path_id(request, "integration_id", "integration")
    body = await json_body(request, "device_input")
    async with deps(request).store.tx() as conn:
        await store.integration_exists(conn, integration_id)
        row = await store.one(
            conn,
            "INSERT INTO devices (integration_id, name, external_id, tags, camera_ids) "
            f"VALUES (%s, %s, %s, %s, %s) RETURNING {DEVICE_COLUMNS}",
            (
                integration_id,
                body["name"],
                body.get("external_id"),
                body.get("tags", []),
                body.get("camera_ids", []),
            ),
            "device",
        )
    return json_response({KEY: row})


async def list_all(request: Request) -> Response:
    """Devices of the integration; `external_id` names one; `tags` and `camera_ids` (Spot's
    filters, repeated keys or comma lists) keep those with any of the given tags and any of
    the given cameras."""
    admin(request)
    external_id = query_value(request, "external_id")
    if external_id is not None and not 1 <= len(external_id) <= 255:
        raise invalid([FieldError("external_id", "must be 1..255 characters")])
    return await list_response(
        request,
        "integration_devices",
        DEVICE_COLUMNS,
        "devices",
        overlaps=_filters(query_list(request, "tags"), query_ids(request, "camera_ids")),
        external_id=external_id,
    )


def _filters(tags: list[str], ids: list[int]) -> list[sql.Composed]:
    """The `&&` filters of the given tags and camera ids."""
    found = []
    if tags:
        found.append(store.overlap("tags", tags, "text[]"))
    if ids:
        found.append(store.overlap("camera_ids", ids, "integer[]"))
    return found


async def read(request: Request) -> Response:
    admin(request)
    return await row_response(
        request,
        KEY,
        f"SELECT {DEVICE_COLUMNS} FROM devices WHERE integration_id = %s AND id = %s",
        item_ids(request, "device_id", "device"),
        "device",
    )


async def update(request: Request) -> Response:
    """Name and tags; fields left out keep their value. The external id never changes."""
    admin(request)
    ids = item_ids(request, "device_id", "device")
    body = await json_body(request, "device_update")
    return await row_response(
        request,
        KEY,
        "UPDATE devices SET name = COALESCE(%s, name), tags = COALESCE(%s, tags) "
        f"WHERE integration_id = %s AND id = %s RETURNING {DEVICE_COLUMNS}",
        (body.get("name"), body.get("tags"), *ids),
        "device",
    )


async def update_cameras(request: Request) -> Response:
    admin(request)
    ids = item_ids(request, "device_id", "device")
    body = await json_body(request, "device_cameras")
    return await row_response(
        request,
        KEY,
        "UPDATE devices SET camera_ids = %s WHERE integration_id = %s AND id = %s "
        f"RETURNING {DEVICE_COLUMNS}",
        (body["camera_ids"], *ids),
        "device",
    )


async def delete(request: Request) -> Response:
    """The device and, in the same transaction, its stored events (Spot's cascade)."""
    admin(request)
    ids = item_ids(request, "device_id", "device")
    async with deps(request).store.tx() as conn:
        row = await store.delete_owning_events(
            conn,
            f"DELETE FROM devices WHERE integration_id = %s AND id = %s RETURNING {DEVICE_COLUMNS}",
            ids,
            "device",
            "integration_id = %s AND device_id = %s",
        )
    return json_response({KEY: row})


ROUTES = [
    route(BASE, post=create, get=list_all),
    route(BASE + "/{device_id:id}", get=read, put=update, delete=delete),
    route(BASE + "/{device_id:id}/cameras", put=update_cameras),
]
