"""`/v1/integrations`: create, list, read, rename, delete (admin token)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from ingest_worker.shim import store
from ingest_worker.shim.common import (
    admin,
    deps,
    json_body,
    json_response,
    list_response,
    path_id,
    refresh_auth,
    route,
    row_response,
)
from ingest_worker.shim.store import INTEGRATION_COLUMNS

KEY = "integration"
# Spot's integration types and their ids.
TYPE_IDS = {"custom": 1, "pos": 2}


async def create(request: Request) -> Response:
    admin(request)
    body = await json_body(request, "integration_input")
    answer = await row_response(
        request,
        KEY,
        "INSERT INTO integrations (name, integration_type_id) VALUES (%s, %s) "
        f"RETURNING {INTEGRATION_COLUMNS}",
        (body["name"], TYPE_IDS[body.get("integration_type", "custom")]),
        "integration",
    )
    await refresh_auth(request)
    return answer


async def list_all(request: Request) -> Response:
    """Every integration, as Spot answers it; paged when `limit` or `cursor` is given."""
    admin(request)
    return await list_response(
        request,
        "integrations",
        INTEGRATION_COLUMNS,
        "integrations",
        scoped=False,
        unpaged_by_default=True,
    )


async def read(request: Request) -> Response:
    admin(request)
    return await row_response(
        request,
        KEY,
        f"SELECT {INTEGRATION_COLUMNS} FROM integrations WHERE id = %s",
        (path_id(request, "integration_id", "integration"),),
        "integration",
    )


async def update(request: Request) -> Response:
    admin(request)
    integration_id = path_id(request, "integration_id", "integration")
    body = await json_body(request, "integration_input")
    return await row_response(
        request,
        KEY,
        "UPDATE integrations SET name = %s, "
        "integration_type_id = coalesce(%s, integration_type_id) "
        f"WHERE id = %s RETURNING {INTEGRATION_COLUMNS}",
        (body["name"], TYPE_IDS.get(body.get("integration_type", "")), integration_id),
        "integration",
    )


async def delete(request: Request) -> Response:
    """The integration (its devices, types and tokens by foreign key) and, in the same
    transaction, its stored events (Spot's cascade)."""
    admin(request)
    integration_id = path_id(request, "integration_id", "integration")
    async with deps(request).store.tx() as conn:
        row = await store.delete_owning_events(
            conn,
            f"DELETE FROM integrations WHERE id = %s RETURNING {INTEGRATION_COLUMNS}",
            (integration_id,),
            "integration",
            "integration_id = %s",
        )
    await refresh_auth(request)
    return json_response({KEY: row})


ROUTES = [
    route("/v1/integrations", post=create, get=list_all),
    route("/v1/integrations/{integration_id:id}", get=read, put=update, delete=delete),
]
