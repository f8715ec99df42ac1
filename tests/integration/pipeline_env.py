"""An API and worker pair on fresh topics, and a reader of what the worker emitted."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import orjson

from devstack.topics import ensure_topics
from ingest_worker.core.config import Settings
from ingest_worker.core.encode import read_accepted
from ingest_worker.core.metrics import WorkerMetrics
from ingest_worker.worker.loop import running
from tests.integration.apiserver import RunningApi, running_api
from tests.integration.kafka_read import header, read_topics


@dataclass(frozen=True)
class Pipeline:
    """A served API, the settings its workers use, and the admin client."""

    api: RunningApi
    settings: Settings
    client: httpx.AsyncClient

    @property
    def bootstrap(self) -> str:
        return self.api.bootstrap

    async def outputs(self, event_ids: Iterable[str], timeout_s: float = 60) -> dict[str, Any]:
        """{event id: [("accepted", Avro record) | ("rejected", JSON), ...]} once every id
        has an output (plus a moment, so a duplicate would show)."""
        wanted = {e.encode() for e in event_ids}
        records = await read_topics(
            self.bootstrap,
            [self.settings.accepted_topic, self.settings.rejected_topic],
            until=lambda rs: wanted <= {header(r, "event-id") for r in rs},
            timeout_s=timeout_s,
            grace_s=0.5,
        )
        return collect(records, self.settings.accepted_topic)


def collect(records: list[Any], accepted_topic: str) -> dict[str, Any]:
    """Output records by event id, decoded."""
    found: dict[str, Any] = {}
    for record in records:
        event_id = (header(record, "event-id") or b"").decode()
        if record.topic == accepted_topic:
            found.setdefault(event_id, []).append(("accepted", read_accepted(record.value)))
        else:
            found.setdefault(event_id, []).append(("rejected", orjson.loads(record.value)))
    return found


def fresh_settings(base: Settings, **overrides: Any) -> Settings:
    """Settings with topics and a consumer group of their own, and no rate limit (these
    pipelines are loaded with thousands of events at once)."""
    suffix = uuid.uuid4().hex[:10]
    values: dict[str, Any] = {
        "raw_topic": f"t.{suffix}.raw",
        "accepted_topic": f"t.{suffix}.accepted",
        "rejected_topic": f"t.{suffix}.rejected",
        "group_id": f"g.{suffix}",
        "worker_http_port": 0,
        "rate_limit_per_s": 0.0,
    }
    return dataclasses.replace(base, **{**values, **overrides})


@asynccontextmanager
async def running_worker(
    settings: Settings, bootstrap: str, database_url: str
) -> AsyncIterator[WorkerMetrics]:
    """A worker in this event loop until the block ends (then it finishes its batch)."""
    metrics = WorkerMetrics()
    stop = asyncio.Event()
    async with running(settings, bootstrap, database_url, metrics) as worker:
        task = asyncio.create_task(worker.run(stop))
        try:
            yield metrics
        finally:
            stop.set()
            await task


@asynccontextmanager
async def pipeline(
    base: Settings,
    bootstrap: str,
    database_url: str,
    *,
    workers: int = 1,
    partitions: int = 3,
    **overrides: Any,
) -> AsyncIterator[Pipeline]:
    """Fresh topics, an API publishing to them, and `workers` in-process workers; `overrides`
    change their settings (`api_validation="async"` lets every event reach the worker)."""
    settings = fresh_settings(base, **overrides)
    await ensure_topics(bootstrap, settings, partitions=partitions)
    async with (
        running_api(settings, bootstrap, database_url) as api,
        api.client() as client,
        _workers(settings, bootstrap, database_url, workers),
    ):
        yield Pipeline(api, settings, client)


@asynccontextmanager
async def _workers(
    settings: Settings, bootstrap: str, database_url: str, count: int
) -> AsyncIterator[None]:
    if count == 0:
        yield
        return
    async with (
        running_worker(settings, bootstrap, database_url),
        _workers(settings, bootstrap, database_url, count - 1),
    ):
        yield
