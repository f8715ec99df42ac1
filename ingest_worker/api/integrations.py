"""`/v1/integrations`: create, list, read, rename, delete (admin token)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from ingest_worker import store
from ingest_worker.api.common import (
    admin,
    deps,
    json_body,
    json_response,
    limit_param,
    path_id,
    refresh_auth,
    route,
)
from ingest_worker.store import INTEGRATION_COLUMNS


async def create(request: Request) -> Response:
    admin(request)
    body = await json_body(request, "integration_input")
    async with deps(request).store.tx() as conn:
        row = await store.one(
            conn,
            f"INSERT INTO integrations (name) VALUES (%s) RETURNING {INTEGRATION_COLUMNS}",
            (body["name"],),
            "integration",
        )
    await refresh_auth(request)
    return json_response({"integration": row})


async def list_all(request: Request) -> Response:
    admin(request)
    limit = limit_param(request)
    async with deps(request).store.tx() as conn:
        found = await store.page(
            conn,
            INTEGRATION_COLUMNS,
            "integrations",
            store.everything(),
            request.query_params.get("cursor"),
            limit,
        )
    return json_response({"integrations": found.items, "prev": found.prev, "next": found.next})


async def read(request: Request) -> Response:
    admin(request)
    integration_id = path_id(request, "integration_id", "integration")
    async with deps(request).store.tx() as conn:
        row = await store.one(
            conn,
            f"SELECT {INTEGRATION_COLUMNS} FROM integrations WHERE id = %s",
            (integration_id,),
            "integration",
        )
    return json_response({"integration": row})


async def update(request: Request) -> Response:
    admin(request)
    integration_id = path_id(request, "integration_id", "integration")
    body = await json_body(request, "integration_input")
    async with deps(request).store.tx() as conn:
        row = await store.one(
            conn,
            f"UPDATE integrations SET name = %s WHERE id = %s RETURNING {INTEGRATION_COLUMNS}",
            (body["name"], integration_id),
            "integration",
        )
    return json_response({"integration": row})


async def delete(request: Request) -> Response:
    admin(request)
    integration_id = path_id(request, "integration_id", "integration")
    async with deps(request).store.tx() as conn:
        row = await store.one(
            conn,
            f"DELETE FROM integrations WHERE id = %s RETURNING {INTEGRATION_COLUMNS}",
            (integration_id,),
            "integration",
        )
    await refresh_auth(request)
    return json_response({"integration": row})


ROUTES = [
    route("/v1/integrations", post=create, get=list_all),
    route("/v1/integrations/{integration_id:int}", get=read, put=update, delete=delete),
]
