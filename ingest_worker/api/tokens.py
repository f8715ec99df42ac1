"""`/v1/integrations/{id}/tokens`: a token is shown once, stored hashed, revoked by DELETE."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from ingest_worker import store, tokens
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
from ingest_worker.store import TOKEN_COLUMNS

BASE = "/v1/integrations/{integration_id:int}/tokens"


async def create(request: Request) -> Response:
    """A new token for this integration; the secret is in this answer and nowhere else."""
    admin(request)
    integration_id = path_id(request, "integration_id", "integration")
    body = await json_body(request, "token_input")
    secret = tokens.generate()
    async with deps(request).store.tx() as conn:
        await store.integration_exists(conn, integration_id)
        row = await store.one(
            conn,
            "INSERT INTO api_tokens (integration_id, name, token_sha256, token_prefix) "
            f"VALUES (%s, %s, %s, %s) RETURNING {TOKEN_COLUMNS}",
            (
                integration_id,
                body.get("name", ""),
                tokens.digest(secret),
                tokens.display_prefix(secret),
            ),
            "token",
        )
    await refresh_auth(request)
    return json_response({"integration_token": {**row, "token": secret}})


async def list_all(request: Request) -> Response:
    admin(request)
    integration_id = path_id(request, "integration_id", "integration")
    limit = limit_param(request)
    async with deps(request).store.tx() as conn:
        await store.integration_exists(conn, integration_id)
        found = await store.page(
            conn,
            TOKEN_COLUMNS,
            "api_tokens",
            store.by_integration(integration_id),
            request.query_params.get("cursor"),
            limit,
        )
    return json_response(
        {"integration_tokens": found.items, "prev": found.prev, "next": found.next}
    )


async def revoke(request: Request) -> Response:
    """Revoke a token: every API process stops accepting it within moments."""
    admin(request)
    ids = (
        path_id(request, "integration_id", "integration"),
        path_id(request, "token_id", "token"),
    )
    async with deps(request).store.tx() as conn:
        row = await store.one(
            conn,
            "UPDATE api_tokens SET revoked = COALESCE(revoked, now()) "
            f"WHERE integration_id = %s AND id = %s RETURNING {TOKEN_COLUMNS}",
            ids,
            "token",
        )
    await refresh_auth(request)
    return json_response({"integration_token": row})


ROUTES = [
    route(BASE, post=create, get=list_all),
    route(BASE + "/{token_id:int}", delete=revoke),
]
