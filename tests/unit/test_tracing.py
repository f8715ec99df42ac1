"""Tracing's pure parts: span names by route, and a span's context as a W3C traceparent that
continues its parent's trace (with the real SDK, spans kept in memory)."""

from __future__ import annotations

import logging

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from ingest_worker.core import tracing
from ingest_worker.core.encode import OutRecord
from ingest_worker.core.raw import is_traceparent
from ingest_worker.core.rejections import Source
from ingest_worker.shim.traced import route_name
from ingest_worker.worker.loop import traced
from ingest_worker.worker.pipeline import InRecord

PARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def test_off_creates_nothing() -> None:
    assert tracing.start("off", "ingest-worker-api") is None


def test_span_names_group_requests_by_route() -> None:
    assert route_name("POST", "/v1/integrations/12/events") == "POST /v1/integrations/{id}/events"
    event = "/v1/integrations/7/events/7e908b9e-1234-4abc-8def-0123456789ab"
    assert route_name("PUT", event) == "PUT /v1/integrations/{id}/events/{id}"
    assert route_name("GET", "/v1/integrations") == "GET /v1/integrations"


def _tracing() -> tuple[tracing.Tracing, InMemorySpanExporter]:
    exported = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exported))
    return tracing.Tracing(provider, "test"), exported


def test_a_span_continues_its_parents_trace_and_names_itself() -> None:
    traces, exported = _tracing()
    span = traces.start("child", PARENT, server=True)
    own = traces.traceparent(span)
    span.end()
    (done,) = exported.get_finished_spans()
    assert is_traceparent(own)
    assert own.split("-")[1] == PARENT.split("-")[1]  # the same trace
    assert own.split("-")[2] == f"{done.context.span_id:016x}" != PARENT.split("-")[2]
    assert done.parent is not None
    assert f"{done.parent.span_id:016x}" == PARENT.split("-")[2]


def test_a_malformed_or_missing_parent_starts_a_new_trace() -> None:
    traces, exported = _tracing()
    for parent in (None, "00-nonsense", "00-" + "0" * 32 + "-" + "0" * 16 + "-01"):
        span = traces.start("root", parent, server=False)
        assert is_traceparent(traces.traceparent(span))
        span.end()
    assert all(s.parent is None for s in exported.get_finished_spans())


def test_an_unsampled_caller_keeps_its_decision() -> None:
    traces, exported = _tracing()
    span = traces.start("child", PARENT[:-2] + "00", server=True)
    assert traces.traceparent(span).endswith("-00")
    span.end()
    assert exported.get_finished_spans() == ()


def test_an_oversized_parent_is_ignored_without_a_log_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A hostile `traceparent` (any length, before authentication) starts a new trace and
    costs no log line per request."""
    traces, exported = _tracing()
    span = traces.start("root", PARENT + "-" + "f" * 10_000, server=True)
    span.end()
    assert exported.get_finished_spans()[0].parent is None
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_a_worker_span_continues_the_trace_its_output_carries() -> None:
    """The accepted record's traceparent (the decoder's checked copy of the raw record's,
    whatever the case of its name there) is the parent; the record leaves with its span's."""
    traces, exported = _tracing()
    raw = [InRecord(Source("raw", 0, 7), b"{}", [("Traceparent", PARENT.encode())], 0)]
    accepted = [OutRecord("acc", b"1", b"", [("event-id", b"e"), ("traceparent", PARENT.encode())])]
    rejected = [OutRecord("rej", b"1", b"", [("event-id", b"e")])]
    traced(traces, raw, accepted)
    traced(traces, raw, rejected)
    first, second = exported.get_finished_spans()
    for span in (first, second):
        assert span.parent is not None
        assert f"{span.parent.span_id:016x}" == PARENT.split("-")[2]
    own = dict(accepted[0].headers)["traceparent"].decode()
    assert own.split("-")[1:3] == [PARENT.split("-")[1], f"{first.context.span_id:016x}"]
    assert rejected[0].headers == [("event-id", b"e")]  # a rejection carries no traceparent
