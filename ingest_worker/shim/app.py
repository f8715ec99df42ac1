"""The ASGI application: routes, problem answers, metrics, and the resources' lifecycle."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

from psycopg_pool import AsyncConnectionPool
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ingest_worker.core import collector, supervise, tracing
from ingest_worker.core.config import Settings
from ingest_worker.core.errors import DependencyUnavailable
from ingest_worker.core.metrics import CONTENT_TYPE, ApiMetrics
from ingest_worker.shim import (
    auth,
    devices,
    event_types,
    events,
    ingest,
    integrations,
    openapi,
    tokens,
)
from ingest_worker.shim.catalog import Catalog, PgSource, follow_changes
from ingest_worker.shim.checks import OwnWrites
from ingest_worker.shim.common import Deps, deps, json_response
from ingest_worker.shim.problems import MEDIA_TYPE, Problem
from ingest_worker.shim.publish import publisher
from ingest_worker.shim.ratelimit import RateLimiter
from ingest_worker.shim.store import Store, pool
from ingest_worker.shim.traced import TraceRequests

log = logging.getLogger(__name__)


async def healthz(_: Request) -> Response:
    """The process is alive."""
    return json_response({"status": "ok"})


async def readyz(request: Request) -> Response:
    """Kafka and PostgreSQL both answer now, and every background task works."""
    d = deps(request)
    kafka_ok, db_ok = await asyncio.gather(d.publisher.ready(), d.store.ready())
    tasks = supervise.board(d.metrics.registry).states()
    ready = kafka_ok and db_ok and d.auth.loaded and all(tasks.values())
    return json_response(
        {"kafka": kafka_ok, "postgres": db_ok, "tasks": tasks}, 200 if ready else 503
    )


async def metrics(request: Request) -> Response:
    return Response(deps(request).metrics.render(), media_type=CONTENT_TYPE)


async def openapi_json(_: Request) -> Response:
    return json_response(openapi.document())


ROUTES = [
    *events.ROUTES,  # first: its `.../events` route also takes ingest's POST
    *ingest.ROUTES,
    *integrations.ROUTES,
    *event_types.ROUTES,
    *devices.ROUTES,
    *tokens.ROUTES,
    Route("/healthz", healthz, methods=["GET"]),
    Route("/readyz", readyz, methods=["GET"]),
    Route("/metrics", metrics, methods=["GET"]),
    Route("/openapi.json", openapi_json, methods=["GET"]),
]


def problem_response(problem: Problem) -> Response:
    return Response(problem.body(), problem.status, problem.headers(), MEDIA_TYPE)


async def _on_problem(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, Problem)
    return problem_response(exc)


async def _on_unavailable(_: Request, exc: Exception) -> Response:
    log.warning("dependency unavailable", extra={"error": str(exc)})
    return problem_response(
        Problem(503, "unavailable", "a dependency is unavailable; retry", retry_after_s=2)
    )


async def _on_crash(_: Request, exc: Exception) -> Response:
    log.error("unhandled error", exc_info=exc)
    return problem_response(Problem(500, "internal_error", "unexpected error"))


async def _on_http(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    response = problem_response(Problem(exc.status_code, code, str(exc.detail)))
    response.headers.update(exc.headers or {})
    return response


class MetricsMiddleware:
    """Counts every answer by route template and status; tracks requests in flight."""

    def __init__(self, app: ASGIApp, registry: ApiMetrics) -> None:
        self.app, self.metrics = app, registry
        self._counters: dict[tuple[str, str, int], Any] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = [500]

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            self.metrics.in_flight.dec()
            self._counter(
                getattr(scope.get("route"), "path", "unmatched"), scope["method"], status[0]
            ).inc()

    def _counter(self, template: str, method: str, status: int) -> Any:
        """The labelled child counter, looked up once per (route, method, status)."""
        key = (template, method, status)
        child = self._counters.get(key)
        if child is None:
            child = self._counters[key] = self.metrics.requests.labels(
                template, method, str(status)
            )
        return child


def build(settings: Settings, endpoints: tuple[str, str] | None = None) -> ASGIApp:
    """The app for these settings; `endpoints` (bootstrap, database URL) override them."""
    bootstrap, database_url = endpoints or (
        settings.kafka_bootstrap_servers,
        settings.database_url,
    )
    if not bootstrap or not database_url:
        raise ValueError("the API needs KAFKA_BOOTSTRAP_SERVERS and DATABASE_URL")
    registry = ApiMetrics()
    traces = tracing.start(settings.tracing, "ingest-worker-api")

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            async with _resources(settings, bootstrap, database_url, registry) as found:
                app.state.deps = found
                collector.settle_after_start()
                yield
        finally:
            if traces is not None:
                traces.shutdown()

    app = Starlette(
        routes=ROUTES,
        lifespan=lifespan,
        exception_handlers={
            Problem: _on_problem,
            DependencyUnavailable: _on_unavailable,
            HTTPException: _on_http,
            ingest.ClientDisconnect: ingest.client_gone,
            Exception: _on_crash,
        },
    )
    served = ingest.FastIngest(app, MetricsMiddleware(OwnWrites(app), registry), registry)
    return served if traces is None else TraceRequests(served, traces)


@asynccontextmanager
async def _resources(
    settings: Settings, bootstrap: str, database_url: str, registry: ApiMetrics
) -> AsyncIterator[Deps]:
    async with AsyncExitStack() as stack:
        db = pool(database_url, settings.db_pool_max)
        await db.open(wait=True, timeout=30)
        stack.push_async_callback(db.close)
        cache = auth.AuthCache(settings.admin_token)
        await _first_load(cache, database_url)
        refresher = supervise.board(registry.registry).start(
            "auth_refresh",
            lambda beat: auth.keep_fresh(cache, database_url, settings.auth_refresh_s, beat),
        )
        stack.push_async_callback(_cancel, refresher)
        checks = await stack.enter_async_context(_checks(settings, db, database_url, registry))
        pub = await stack.enter_async_context(
            publisher(
                bootstrap,
                settings.raw_topic,
                timeout_s=settings.publish_timeout_s,
                linger_ms=settings.producer_linger_ms,
            )
        )
        limiter = RateLimiter(settings.rate_limit_per_s, settings.rate_limit_burst)
        yield Deps(settings, cache, pub, Store(db), limiter, registry, catalog=checks)


@asynccontextmanager
async def _checks(
    settings: Settings, db: AsyncConnectionPool[Any], database_url: str, registry: ApiMetrics
) -> AsyncIterator[Catalog | None]:
    """In sync mode, the synchronous checks' catalog, its change follower supervised."""
    if settings.api_validation != "sync":
        yield None
        return
    found = Catalog(PgSource(db), settings.catalog_max_age_s, registry)
    follower = supervise.board(registry.registry).start(
        "catalog_follower", lambda beat: follow_changes(found, database_url, on_listening=beat)
    )
    try:
        yield found
    finally:
        await _cancel(follower)


async def _first_load(cache: auth.AuthCache, database_url: str) -> None:
    import psycopg

    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        cache.replace(*await auth.load(conn))


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
