"""Prometheus metrics of the API process: counters for every outcome, no per-request logs."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


@dataclass
class ApiMetrics:
    """One registry per app, so several apps (tests) never share counters."""

    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        self.requests = Counter(
            "ingest_http_requests_total",
            "HTTP requests by route template, method and status.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "ingest_http_requests_in_flight", "HTTP requests being served.", registry=self.registry
        )
        self.publish_seconds = Histogram(
            "ingest_publish_seconds",
            "Time from publish to broker acknowledgement (acks=all).",
            buckets=_LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self.events = Counter(
            "ingest_events_total",
            "Events answered, by outcome (published, invalid, unavailable).",
            ["outcome"],
            registry=self.registry,
        )
        self.published = self.events.labels("published")
        self.invalid = self.events.labels("invalid")
        self.unavailable = self.events.labels("unavailable")
        self.refused = Counter(
            "ingest_refused_events_total",
            "Events refused by the synchronous checks (INGEST_API_VALIDATION=sync), by code; "
            "also counted as invalid.",
            ["code"],
            registry=self.registry,
        )
        self.unchecked = Counter(
            "ingest_unchecked_events_total",
            "Events that passed on without the synchronous checks because the catalog could "
            "not reach PostgreSQL (the worker decides them).",
            registry=self.registry,
        )
        self.catalog_loads = Counter(
            "ingest_catalog_loads_total",
            "Loads of the synchronous checks' catalog from PostgreSQL, by kind (event_types, "
            "devices) and result (ok, failed).",
            ["kind", "result"],
            registry=self.registry,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)


_BATCH_BUCKETS = (1, 10, 50, 100, 250, 500, 1000, 2000, 5000)


@dataclass
class WorkerMetrics:
    """Counters of the worker: records by outcome and code, batches, lag, retries."""

    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        self.records = Counter(
            "ingest_worker_records_total",
            "Raw records emitted, by outcome (accepted, rejected) and code or resolution.",
            ["outcome", "code"],
            registry=self.registry,
        )
        self.batch_records = Histogram(
            "ingest_worker_batch_records",
            "Records per batch.",
            buckets=_BATCH_BUCKETS,
            registry=self.registry,
        )
        self.batch_seconds = Histogram(
            "ingest_worker_batch_seconds",
            "Time to process one poll batch, from its records to its outputs queued.",
            buckets=_LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self.lag = Gauge(
            "ingest_worker_consumer_lag",
            "Records behind the end of each raw partition.",
            ["partition"],
            registry=self.registry,
        )
        self.retries = Counter(
            "ingest_worker_retries_total",
            "Work since the last commit put back for a retry, by reason.",
            ["reason"],
            registry=self.registry,
        )
        self.dependencies = Gauge(
            "ingest_worker_dependencies_up",
            "1 while Kafka and PostgreSQL serve the worker; 0 while it backs off from them.",
            registry=self.registry,
        )
        self.set_dependencies_up(True)
        self.commit_seconds = Histogram(
            "ingest_worker_commit_seconds",
            "Time to commit one Kafka transaction (outputs and offsets).",
            buckets=_LATENCY_BUCKETS_S,
            registry=self.registry,
        )

    def set_dependencies_up(self, up: bool) -> None:
        """Record whether the last batch (or fetch) could reach Kafka and PostgreSQL."""
        self.dependencies_up = up
        self.dependencies.set(1 if up else 0)

    def render(self) -> bytes:
        return generate_latest(self.registry)
