"""The worker through Kafka failures: transactions whose outcome the worker never learns, and
a broker that stops answering mid-stream, then resumes."""

from __future__ import annotations

import asyncio
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer
from aiokafka.structs import TopicPartition as AioTopicPartition
from confluent_kafka import TopicPartition

from devstack.kafka import local_broker
from devstack.proc import free_port
from devstack.topics import ensure_topics
from ingest_worker.core.config import Settings
from ingest_worker.core.metrics import WorkerMetrics
from ingest_worker.worker.loop import running
from ingest_worker.worker.sink import Sink, TransactionFailed
from tests.integration.apiserver import running_api
from tests.integration.broker_faults import frozen
from tests.integration.conftest import RUN_ID
from tests.integration.kafka_read import partitions_of
from tests.integration.pipeline_env import fresh_settings
from tests.integration.worker_env import (
    TEMPLATE_SCHEMA,
    event_body,
    import_events,
    integration_with_type,
    outputs_by_id,
    until_logged,
    until_some_output,
    worker_process,
)


async def _imported(own: Settings, bootstrap: str, database_url: str, count: int) -> list[str]:
    """Fresh one-partition topics (each batch follows the last) and `count` templated events
    imported through the API: their ids."""
    await ensure_topics(bootstrap, own, partitions=1)
    async with running_api(own, bootstrap, database_url) as api, api.client() as client:
        integration_id, type_id = await integration_with_type(
            client, TEMPLATE_SCHEMA, "store-{store}"
        )
        events = [event_body(type_id, {"store": f"u{i % 20}", "n": i}) for i in range(count)]
        return await import_events(client, integration_id, events)


async def _outputs_through(
    own: Settings, bootstrap: str, database_url: str, sink_class: type[Sink], ids: list[str]
) -> tuple[dict[bytes, list[Any]], Sink, Sink]:
    """An in-process worker with `sink_class` until every id has an output: the outputs,
    the worker's first sink and its last."""
    metrics, stop = WorkerMetrics(), asyncio.Event()
    async with running(own, bootstrap, database_url, metrics, sink_class=sink_class) as worker:
        first = worker.sink
        task = asyncio.create_task(worker.run(stop))
        try:
            found = await outputs_by_id(bootstrap, own, ids, timeout_s=90)
        finally:
            stop.set()
            await task
        return found, first, worker.sink


class OutcomeLostSink(Sink):
    """The first transaction commits and the second is left open with a record written, and
    the worker is told both failed with their outcome unknown: what the sink reports when
    librdkafka still calls a commit retriable at the deadline (a connection lost at the last
    moment, when only the broker knows how the transaction ended)."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.attempts = 0

    def _commit_blocking(
        self, offsets: list[TopicPartition], group: object, serial: int | None
    ) -> None:
        self.attempts += 1
        if self.attempts == 1:
            super()._commit_blocking(offsets, group, serial)
            self._lost("injected: committed, but the answer was lost")
        if self.attempts == 2:
            self._lost("injected: lost in the middle of the transaction")
        super()._commit_blocking(offsets, group, serial)

    def _lost(self, why: str) -> None:
        """Fail the way a timeout would: late (the consumer has fetched what follows), and
        with the producer given up, as the sink does when an outcome is unknown."""
        time.sleep(0.5)
        with self._lock:
            self._drop()
        raise TransactionFailed(why)


async def test_transactions_of_unknown_outcome_are_neither_lost_nor_repeated(
    settings: Settings, kafka_bootstrap: str, api_database: str
) -> None:
    """A transaction reported failed may have committed (then its batch must not run again)
    or may still be open (then it must be aborted, not left to hold back read_committed
    readers): the worker takes the partition again and resumes from the committed offset,
    never from records it fetched before that, so every event comes out exactly once."""
    own = fresh_settings(
        settings, worker_batch_max_records=50, worker_commit_interval_ms=0, backoff_max_s=0.5
    )
    ids = await _imported(own, kafka_bootstrap, api_database, 400)
    found, _, last = await _outputs_through(
        own, kafka_bootstrap, api_database, OutcomeLostSink, ids
    )
    assert isinstance(last, OutcomeLostSink)
    assert last.attempts >= 3  # both faults, then commits
    counts = Counter(len(found.get(i.encode(), [])) for i in ids)
    assert counts == {1: len(ids)}, counts


class StuckSink(Sink):
    """The first commit commits, then holds the sink's thread far past every bound before
    failing: a librdkafka call that does not return on time (seen with a frozen broker)."""

    stuck_once = False

    def _commit_blocking(
        self, offsets: list[TopicPartition], group: object, serial: int | None
    ) -> None:
        super()._commit_blocking(offsets, group, serial)
        if not StuckSink.stuck_once:
            StuckSink.stuck_once = True
            time.sleep(12)
            raise TransactionFailed("injected: returned far too late")


async def test_a_commit_stuck_past_its_bound_gets_a_new_producer(
    settings: Settings, kafka_bootstrap: str, api_database: str
) -> None:
    """A commit that does not return within its bound (3 x INGEST_KAFKA_TIMEOUT_S + 5 s) is
    given up: a fresh sink and producer take over (fencing the stuck one) and resume from the
    committed offsets, so every event still comes out exactly once."""
    own = fresh_settings(
        settings, worker_batch_max_records=50, kafka_timeout_s=1.0, backoff_max_s=0.5
    )
    ids = await _imported(own, kafka_bootstrap, api_database, 300)
    found, first, last = await _outputs_through(own, kafka_bootstrap, api_database, StuckSink, ids)
    assert last is not first  # replaced
    assert StuckSink.stuck_once
    counts = Counter(len(found.get(i.encode(), [])) for i in ids)
    assert counts == {1: len(ids)}, counts


# A lone node (broker and controller in one JVM) frozen past the controller's broker session
# timeout (9 s) fences itself on waking: for a moment no partition has a leader. A transaction
# the coordinator aborts for its timeout in that moment gets no abort markers (the coordinator
# takes a partition without a leader for a deleted one and skips it), so its records stay open
# on the output partitions, and the next commit of the same producer id commits them (seen in
# this test's segments: epoch-0 batches with no marker, closed by an epoch-2 COMMIT). That is
# Kafka's, and needs every replica of a partition away at once; the README says so. This
# test is about the worker, so its broker outlives the freeze in its own controller's eyes.
ALONE_WITHOUT_SELF_FENCING = {"broker.session.timeout.ms": "600000"}


async def _stable_offsets(bootstrap: str, topics: list[str]) -> dict[str, tuple[int, int]]:
    """Per partition, (last stable offset, high watermark): a gap that stays means a
    transaction left open."""
    ends: dict[str, list[int]] = {}
    for isolation in ("read_committed", "read_uncommitted"):
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, isolation_level=isolation)
        await consumer.start()
        try:
            tps = [
                AioTopicPartition(t, p) for t in topics for p in await partitions_of(bootstrap, t)
            ]
            for tp, offset in (await consumer.end_offsets(tps)).items():
                ends.setdefault(f"{tp.topic}-{tp.partition}", []).append(offset)
        finally:
            await consumer.stop()
    return {name: (lso, hw) for name, (lso, hw) in ends.items()}


async def test_kafka_outage_mid_stream_loses_and_duplicates_nothing(
    settings: Settings, api_database: str, tmp_path: Path
) -> None:
    """The broker stops answering while a worker is mid-stream (transactions time out, some
    perhaps already committed by the broker), stays away while the worker retries, then
    resumes: the worker recovers without a restart and every event comes out exactly once.
    The test runs a broker of its own, whatever serves the rest of the session."""
    work = (settings.stack_dir / "test-runs" / RUN_ID / f"kafka-outage-{free_port()}").resolve()
    own = fresh_settings(settings, worker_batch_max_records=200)  # mid-stream when frozen
    log = tmp_path / "worker.log"
    cache = (settings.stack_dir / "cache").resolve()
    with local_broker(work, cache, overrides=ALONE_WITHOUT_SELF_FENCING) as bootstrap:
        await ensure_topics(bootstrap, own, partitions=3)
        async with running_api(own, bootstrap, api_database) as api, api.client() as client:
            integration_id, type_id = await integration_with_type(
                client, TEMPLATE_SCHEMA, "store-{store}"
            )
            # Enough that the stream is still running when the freeze lands, on a fast machine
            events = [event_body(type_id, {"store": f"o{i % 50}", "n": i}) for i in range(24_000)]
            ids = await import_events(client, integration_id, events)
        with worker_process(own, bootstrap, api_database, log) as worker:
            await until_some_output(bootstrap, own, at_least=300)
            with frozen(work):
                await until_logged(log, "batch put back")
                await until_logged(log, "cannot resume from the committed offsets yet")
            found = await outputs_by_id(bootstrap, own, ids, timeout_s=180)
            offsets = await _stable_offsets(bootstrap, [own.accepted_topic, own.rejected_topic])
            assert worker.poll() is None  # it recovered in place
            worker.send_signal(signal.SIGTERM)
            assert await asyncio.to_thread(worker.wait, 60) == 0
    counts = {i: len(found.get(i.encode(), [])) for i in ids}
    assert sorted(set(counts.values())) == [1], (offsets, Counter(counts.values()), _story(log))
    assert {r.topic for rs in found.values() for r in rs} == {own.accepted_topic}


def _story(log: Path) -> list[str]:
    """The worker's log lines that tell where it resumed from and why, for a failure's
    message."""
    marks = ("resuming", "partitions", "transaction", "put back", "FATAL", "commit")
    return [line[:400] for line in log.read_text().splitlines() if any(m in line for m in marks)]
