"""The worker's commit metric measures the commit itself, not the poll and batch that the
loop runs before it looks at the commit's outcome."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from confluent_kafka import TopicPartition

from devstack.topics import ensure_topics
from ingest_worker.core.config import Settings
from ingest_worker.core.metrics import WorkerMetrics
from ingest_worker.worker.loop import running
from ingest_worker.worker.sink import Sink
from tests.integration.apiserver import running_api
from tests.integration.pipeline_env import fresh_settings
from tests.integration.worker_env import (
    TEMPLATE_SCHEMA,
    event_body,
    import_events,
    integration_with_type,
    outputs_by_id,
)


class TimedSink(Sink):
    """Records how long each commit call took on the sink's thread."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.took: list[float] = []

    def _commit_blocking(
        self, offsets: list[TopicPartition], group: object, serial: int | None
    ) -> None:
        started = time.perf_counter()
        try:
            super()._commit_blocking(offsets, group, serial)
        finally:
            self.took.append(time.perf_counter() - started)


async def test_a_commit_is_timed_without_the_poll_that_follows_it(
    settings: Settings, kafka_bootstrap: str, api_database: str
) -> None:
    """With a long poll timeout, the loop waits in its next poll once the stream is drained
    before it looks at the commit in flight: what the histogram records stays within what the
    commit calls themselves took."""
    own = fresh_settings(settings, worker_poll_timeout_ms=2000, worker_batch_max_records=100)
    await ensure_topics(kafka_bootstrap, own, partitions=1)
    async with running_api(own, kafka_bootstrap, api_database) as api, api.client() as client:
        integration_id, type_id = await integration_with_type(client, TEMPLATE_SCHEMA, "s-{store}")
        events = [event_body(type_id, {"store": f"m{i % 5}", "n": i}) for i in range(300)]
        ids = await import_events(client, integration_id, events)
    metrics, stop = WorkerMetrics(), asyncio.Event()
    async with running(own, kafka_bootstrap, api_database, metrics, sink_class=TimedSink) as worker:
        task = asyncio.create_task(worker.run(stop))
        try:
            await outputs_by_id(kafka_bootstrap, own, ids, timeout_s=90)
            await asyncio.sleep(3)  # a drained poll or more after the last commit
        finally:
            stop.set()
            await task
        sink = worker.sink
    assert isinstance(sink, TimedSink)
    recorded = next(iter(metrics.commit_seconds.collect())).samples
    count = next(s.value for s in recorded if s.name.endswith("_count"))
    total = next(s.value for s in recorded if s.name.endswith("_sum"))
    assert count == len(sink.took) > 0
    assert total <= sum(sink.took), (total, sink.took)
