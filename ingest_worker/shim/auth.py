"""Who is calling: bearer tokens checked against an in-memory copy of the token table.

The copy is reloaded when PostgreSQL announces a change (LISTEN/NOTIFY) and at least every
`refresh_s` seconds, so a revoked token stops working within moments, without a database round
trip per request. If PostgreSQL is down, the last copy keeps serving.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.rows import tuple_row

from ingest_worker.core import tokens
from ingest_worker.core.changes import CHANNEL
from ingest_worker.core.supervise import Beat
from ingest_worker.shim.problems import Problem, not_found

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller: an admin (integration None) or one integration's token."""

    token_id: int | None
    integration_id: int | None

    @property
    def is_admin(self) -> bool:
        return self.integration_id is None


BOOTSTRAP_ADMIN = Principal(token_id=None, integration_id=None)


class AuthCache:
    """Token digests and known integration ids, swapped whole on every reload."""

    def __init__(self, admin_token: str | None) -> None:
        self._admin_digest = tokens.digest(admin_token) if admin_token else None
        self._tokens: dict[bytes, Principal] = {}
        self._integrations: frozenset[int] = frozenset()
        self.loaded = False

    def replace(self, found: dict[bytes, Principal], integrations: frozenset[int]) -> None:
        self._tokens, self._integrations, self.loaded = found, integrations, True

    def authenticate(self, authorization: str | None) -> Principal:
        """The caller behind an `Authorization` header, or a 401 problem."""
        scheme, _, token = (authorization or "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise Problem(401, "unauthorized", "missing bearer token")
        digest = tokens.digest(token)
        if self._admin_digest is not None and hmac.compare_digest(digest, self._admin_digest):
            return BOOTSTRAP_ADMIN
        principal = self._tokens.get(digest)
        if principal is None:
            raise Problem(401, "unauthorized", "unknown or revoked token")
        return principal

    def authorize(self, principal: Principal, integration_id: int) -> None:
        """404 unless the integration exists and the caller may use it."""
        if integration_id not in self._integrations:
            raise not_found()
        if not principal.is_admin and principal.integration_id != integration_id:
            raise not_found()


async def load(conn: psycopg.AsyncConnection[Any]) -> tuple[dict[bytes, Principal], frozenset[int]]:
    """Active tokens and integration ids, read in one snapshot."""
    async with conn.transaction(), conn.cursor(row_factory=tuple_row) as cur:
        await cur.execute(
            "SELECT token_sha256, id, integration_id FROM api_tokens WHERE revoked IS NULL"
        )
        found = {bytes(digest): Principal(tid, iid) for digest, tid, iid in await cur.fetchall()}
        await cur.execute("SELECT id FROM integrations")
        integrations = frozenset(int(iid) for (iid,) in await cur.fetchall())
    return found, integrations


async def keep_fresh(
    cache: AuthCache, database_url: str, refresh_s: float, on_loaded: Beat | None = None
) -> None:
    """Reload on every change notification and every refresh_s; reconnect on failure.
    `on_loaded` is called after each successful load."""
    while True:
        try:
            await _listen_and_reload(cache, database_url, refresh_s, on_loaded)
        except psycopg.OperationalError as exc:
            log.warning("auth cache: database unavailable, retrying", extra={"error": str(exc)})
            await asyncio.sleep(min(refresh_s, 2.0))


async def _listen_and_reload(
    cache: AuthCache, database_url: str, refresh_s: float, on_loaded: Beat | None
) -> None:
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        await conn.execute(f"LISTEN {CHANNEL}")
        while True:
            cache.replace(*await load(conn))
            if on_loaded is not None:
                on_loaded()
            await _next_change(conn, refresh_s)


async def _next_change(conn: psycopg.AsyncConnection[Any], timeout_s: float) -> None:
    """Return at the first change notification (draining any burst), or after timeout_s."""
    async for _ in conn.notifies(timeout=timeout_s, stop_after=1):
        await asyncio.sleep(0.05)  # let a burst of changes land, then reload once
        return
