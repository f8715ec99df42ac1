"""Run the real API (uvicorn, real Kafka and PostgreSQL) inside the test session's loop."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx

from devstack.proc import free_port
from ingest_worker.core.config import Settings
from ingest_worker.shim.serve import server

ADMIN_TOKEN = "igw_test-admin-token"


@dataclass(frozen=True)
class RunningApi:
    """A served API and what tests need to talk to it and check its effects."""

    url: str
    settings: Settings
    bootstrap: str
    database_url: str

    def client(self, token: str | None = ADMIN_TOKEN) -> httpx.AsyncClient:
        headers = {"authorization": f"Bearer {token}"} if token else {}
        return httpx.AsyncClient(base_url=self.url, headers=headers, timeout=30)


@asynccontextmanager
async def running_api(
    base: Settings, bootstrap: str, database_url: str, **overrides: Any
) -> AsyncIterator[RunningApi]:
    """Serve the API on a free port until the block ends."""
    settings = dataclasses.replace(base, api_port=free_port(), admin_token=ADMIN_TOKEN, **overrides)
    srv = server(settings, (bootstrap, database_url))
    task = asyncio.create_task(srv.serve())
    while not srv.started:
        if task.done():
            task.result()
            raise RuntimeError("API server stopped during start-up")
        await asyncio.sleep(0.02)
    try:
        yield RunningApi(f"http://127.0.0.1:{settings.api_port}", settings, bootstrap, database_url)
    finally:
        srv.should_exit = True
        await task
