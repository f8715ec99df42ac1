"""`/v1/integrations/{id}/tokens`: a token is shown once, stored hashed, revoked by DELETE."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from ingest_worker.core import tokens
from ingest_worker.shim import store
from ingest_worker.shim.common import (
    admin,
    deps,
    item_ids,
    json_body,
    json_response,
    list_response,
    path_id,
    refresh_auth,
    route,
    row_response,
)
from ingest_worker.shim.store import TOKEN_COLUMNS

BASE = "/v1/integrations/{integration_id:id}/tokens"
KEY = "integration_token"


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
    return json_response({KEY: {**row, "token": secret}})


async def list_all(request: Request) -> Response:
    admin(request)
    return await list_response(request, "integration_tokens", TOKEN_COLUMNS, "api_tokens")


async def revoke(request: Request) -> Response:
    """Revoke a token: every API process stops accepting it within moments."""
    admin(request)
    answer = await row_response(
        request,
        KEY,
        "UPDATE api_tokens SET revoked = COALESCE(revoked, now()) "
        f"WHERE integration_id = %s AND id = %s RETURNING {TOKEN_COLUMNS}",
        item_ids(request, "token_id", "token"),
        "token",
    )
    await refresh_auth(request)
    return answer


ROUTES = [
    route(BASE, post=create, get=list_all),
    route(BASE + "/{token_id:id}", delete=revoke),
]
