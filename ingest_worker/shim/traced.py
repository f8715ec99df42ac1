"""The API's server span per HTTP request (INGEST_TRACING=otlp; see core/tracing.py)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ingest_worker.core.tracing import Tracing

if TYPE_CHECKING:
    from opentelemetry.trace import Span

_ID_SEGMENT = re.compile(r"/(?:[0-9]+|[0-9a-fA-F-]{16,})(?=/|$)")
# Probes and scrapes: frequent, and nothing to follow through.
UNTRACED = frozenset({"/healthz", "/readyz", "/metrics"})
UNMATCHED = "HTTP 404"


def route_name(method: str, path: str) -> str:
    """A span name that groups requests by route: ids in the path become `{id}`."""
    return f"{method} {_ID_SEGMENT.sub('/{id}', path)}"


class TraceRequests:
    """ASGI middleware: a server span per HTTP request, the child of the caller's
    `traceparent`; the request goes on with the span's own `traceparent` in its place, so
    whatever it publishes continues the trace from this span."""

    def __init__(self, app: ASGIApp, tracing: Tracing) -> None:
        self._app, self._tracing = app, tracing

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in UNTRACED:
            await self._app(scope, receive, send)
            return
        headers = [(k, v) for k, v in scope["headers"] if k != b"traceparent"]
        given = next((v for k, v in scope["headers"] if k == b"traceparent"), None)
        span = self._tracing.start(
            route_name(scope["method"], scope["path"]),
            given.decode("latin-1") if given else None,
            server=True,
            attributes={"http.request.method": scope["method"], "url.path": scope["path"]},
        )
        headers.append((b"traceparent", self._tracing.traceparent(span).encode()))

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                _status(span, int(message["status"]))
            await send(message)

        with _ending(span):
            await self._app({**scope, "headers": headers}, receive, sending)


def _status(span: Span, status: int) -> None:
    from opentelemetry.trace import Status, StatusCode

    span.set_attribute("http.response.status_code", status)
    if status == 404:  # a path no route knows: one name, whatever a scanner sends
        span.update_name(UNMATCHED)
    if status >= 500:
        span.set_status(Status(StatusCode.ERROR))


@contextmanager
def _ending(span: Span) -> Iterator[None]:
    try:
        yield
    except BaseException as exc:
        span.record_exception(exc)
        raise
    finally:
        span.end()
