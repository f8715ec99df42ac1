"""OpenTelemetry traces from the HTTP request through the raw record to the accepted record.

Off by default (`INGEST_TRACING=off`): nothing is imported or created, and the records carry
the caller's `traceparent` unchanged (a fresh one when it sent none). On (`otlp`), the API
opens a server span per request, a child of the caller's `traceparent`, and its context goes
on the raw record; the worker opens one span per record, a child of the raw record's
`traceparent`, and its context goes on the accepted record. Spans are exported in batches with
OTLP over HTTP; the SDK's own settings apply (`OTEL_EXPORTER_OTLP_ENDPOINT`,
`OTEL_SERVICE_NAME`, `OTEL_TRACES_SAMPLER`, `OTEL_BSP_SCHEDULE_DELAY`, ...). A caller whose
`traceparent` says "not sampled" gets its decision kept (parent-based sampling).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING

from ingest_worker.core.errors import ConfigError
from ingest_worker.core.raw import is_traceparent

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Span

_TRACEPARENT = "traceparent"
SHUTDOWN_S = 5.0


class Tracing:
    """One process's tracer and the provider that exports its spans."""

    def __init__(self, provider: TracerProvider, service: str) -> None:
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self._provider = provider
        self._tracer = provider.get_tracer(service)
        self._propagator = TraceContextTextMapPropagator()

    def start(
        self,
        name: str,
        parent: str | None,
        *,
        server: bool,
        attributes: Mapping[str, str | int] | None = None,
    ) -> Span:
        """A span, the child of the W3C `parent` when it is well formed (else a new trace)."""
        from opentelemetry.trace import SpanKind

        well_formed = parent is not None and is_traceparent(parent)  # also bounds its length
        context = self._propagator.extract({_TRACEPARENT: parent}) if well_formed else None
        kind = SpanKind.SERVER if server else SpanKind.CONSUMER
        return self._tracer.start_span(name, context, kind, attributes=attributes)

    @staticmethod
    def traceparent(span: Span) -> str:
        """The span's context as a W3C traceparent, for the record it produces."""
        found = span.get_span_context()
        return f"00-{found.trace_id:032x}-{found.span_id:016x}-{int(found.trace_flags):02x}"

    def shutdown(self) -> None:
        """Export what is buffered, then stop; give up after SHUTDOWN_S (an unreachable
        collector must not hold a stopping process past its grace period)."""
        done = threading.Thread(target=self._provider.shutdown, daemon=True)
        done.start()
        done.join(SHUTDOWN_S)


def start(mode: str, service: str) -> Tracing | None:
    """The process's tracing for `INGEST_TRACING` (None when off). `service` names it unless
    `OTEL_SERVICE_NAME` does."""
    if mode == "off":
        return None
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError as exc:
        raise ConfigError(
            "INGEST_TRACING=otlp needs the OpenTelemetry SDK: pip install 'ingest-worker[otel]'"
        ) from exc
    name = os.environ.get("OTEL_SERVICE_NAME") or service
    provider = TracerProvider(resource=Resource.create({"service.name": name}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    return Tracing(provider, service)
