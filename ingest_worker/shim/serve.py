"""Run the API under uvicorn (httptools parser, uvloop) until SIGTERM/SIGINT."""

from __future__ import annotations

import uvicorn

from ingest_worker.core.config import Settings
from ingest_worker.shim.app import build


def server(settings: Settings, app_endpoints: tuple[str, str] | None = None) -> uvicorn.Server:
    """A configured server; `app_endpoints` overrides the settings' Kafka and database."""
    config = uvicorn.Config(
        build(settings, app_endpoints),
        host=settings.api_host,
        port=settings.api_port,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        access_log=False,
        log_config=None,
        server_header=False,
        proxy_headers=False,
        timeout_graceful_shutdown=10,
        backlog=4096,
    )
    return uvicorn.Server(config)


def serve(settings: Settings) -> None:
    """Serve until SIGTERM/SIGINT, on uvloop (`Server.run` installs the configured loop)."""
    server(settings).run()
