"""OpenTelemetry traces (INGEST_TRACING=otlp), exported over OTLP/HTTP to a collector run by
the test: the caller's trace continues through the API's span, the raw record, the worker's
span and the accepted record."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from devstack.proc import free_port
from ingest_worker.core.config import Settings
from tests.integration.kafka_read import header, read_topic
from tests.integration.pipeline_env import pipeline
from tests.integration.worker_env import TEMPLATE_SCHEMA, event_body, integration_with_type

CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"


class Collector:
    """Spans received by a minimal OTLP/HTTP trace endpoint: {span id (hex): span}."""

    def __init__(self) -> None:
        self.spans: dict[str, Any] = {}
        self.lock = threading.Lock()

    def take(self, body: bytes) -> None:
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        with self.lock:
            for resource in request.resource_spans:
                service = next(
                    a.value.string_value
                    for a in resource.resource.attributes
                    if a.key == "service.name"
                )
                for scope in resource.scope_spans:
                    for span in scope.spans:
                        self.spans[span.span_id.hex()] = (service, span)


@contextmanager
def collector() -> Iterator[tuple[str, Collector]]:
    found = Collector()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("content-length", "0"))
            found.take(self.rfile.read(length))
            self.send_response(200)
            self.send_header("content-type", "application/x-protobuf")
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *_: Any) -> None:
            return

    server = HTTPServer(("127.0.0.1", free_port()), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", found
    finally:
        server.shutdown()
        server.server_close()


async def _record(bootstrap: str, topic: str, event_id: bytes) -> Any:
    records = await read_topic(
        bootstrap,
        topic,
        until=lambda rs: any(header(r, "event-id") == event_id for r in rs),
        timeout_s=60,
    )
    (found,) = [r for r in records if header(r, "event-id") == event_id]
    return found


def _ids(traceparent: bytes | None) -> tuple[str, str]:
    assert traceparent is not None
    _, trace_id, span_id, _ = traceparent.decode().split("-")
    return trace_id, span_id


async def test_a_trace_runs_from_the_request_to_the_accepted_record(
    settings: Settings,
    kafka_bootstrap: str,
    api_database: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with collector() as (endpoint, spans):
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
        monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")
        async with pipeline(settings, kafka_bootstrap, api_database, tracing="otlp") as env:
            integration_id, type_id = await integration_with_type(env.client, TEMPLATE_SCHEMA, None)
            answer = await env.client.post(
                f"/v1/integrations/{integration_id}/events",
                json=event_body(type_id, {"store": "s1"}, device_external_id="d1"),
                headers={"traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"},
            )
            assert answer.status_code == 202, answer.text
            event_id = answer.json()["event_id"].encode()
            assert (await env.client.get("/healthz")).status_code == 200  # probes: no span
            raw_record = await _record(env.bootstrap, env.settings.raw_topic, event_id)
            out_record = await _record(env.bootstrap, env.settings.accepted_topic, event_id)
        # Both processes' providers are shut down (their spans exported) when the block ends.
    raw_trace, api_span_id = _ids(header(raw_record, "traceparent"))
    out_trace, worker_span_id = _ids(header(out_record, "traceparent"))
    assert raw_trace == out_trace == CALLER_TRACE

    api_service, api_span = spans.spans[api_span_id]
    assert api_service == "ingest-worker-api"
    assert api_span.name == "POST /v1/integrations/{id}/events"
    assert (api_span.trace_id.hex(), api_span.parent_span_id.hex()) == (CALLER_TRACE, CALLER_SPAN)
    status = {a.key: a.value.int_value for a in api_span.attributes}["http.response.status_code"]
    assert status == 202

    assert not [s for _, s in spans.spans.values() if s.name == "GET /healthz"]

    worker_service, worker_span = spans.spans[worker_span_id]
    assert worker_service == "ingest-worker-worker"
    assert worker_span.name == "ingest-worker process"
    assert (worker_span.trace_id.hex(), worker_span.parent_span_id.hex()) == (
        CALLER_TRACE,
        api_span_id,
    )
