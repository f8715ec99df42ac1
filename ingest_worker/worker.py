"""`ingest-worker worker`: the consumer-group loop around the pipeline and the sinks.

Per poll batch: process (decode, validate, resolve in one PostgreSQL transaction, encode),
then per partition emit and commit offsets in one Kafka transaction. A broken dependency puts
the batch back (seek) and backs off; nothing is committed or skipped. SIGTERM finishes the
batch in hand, then leaves the group.
"""

from __future__ import annotations

import asyncio
import logging
import random
import signal
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager, suppress
from typing import Any

import psycopg
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener
from aiokafka.errors import CorruptRecordException, IllegalStateError, KafkaError
from aiokafka.structs import TopicPartition
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from ingest_worker import pipeline, resolve, supervise
from ingest_worker.catalog import Catalog, follow_changes
from ingest_worker.config import Settings
from ingest_worker.decode import Source
from ingest_worker.errors import ConfigError, DependencyUnavailable
from ingest_worker.limits import max_message_bytes
from ingest_worker.metrics import CONTENT_TYPE, WorkerMetrics
from ingest_worker.pipeline import InRecord, Policy, Topics
from ingest_worker.sink import PartitionLost, PartitionSinks

log = logging.getLogger(__name__)

Batch = dict[TopicPartition, list[Any]]
MIN_OUTPUT_RECORD_BYTES = 4096
PURGE_INTERVAL_S = 60.0


def backoff_s(attempt: int, cap_s: float, jitter: float) -> float:
    """Exponential backoff from 0.1 s, capped, with `jitter` in [0, 1) spreading replicas."""
    return min(cap_s, 0.1 * 2.0 ** min(attempt, 16)) * (0.5 + jitter / 2)


class Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    """Producers follow partition ownership; a revocation waits for the batch in hand."""

    def __init__(self, worker: Worker) -> None:
        self._worker = worker

    async def on_partitions_revoked(self, revoked: Sequence[TopicPartition]) -> None:
        async with self._worker.lock:
            await self._worker.sinks.close(revoked)
        log.info("partitions revoked", extra={"partitions": sorted(str(tp) for tp in revoked)})

    async def on_partitions_assigned(self, assigned: Sequence[TopicPartition]) -> None:
        log.info("partitions assigned", extra={"partitions": sorted(str(tp) for tp in assigned)})
        async with self._worker.lock:
            await self._worker.take_over()


class Worker:
    """One consumer-group member: its consumer, sinks, database pool and catalog."""

    def __init__(
        self,
        settings: Settings,
        consumer: AIOKafkaConsumer,
        sinks: PartitionSinks,
        pool: AsyncConnectionPool[Any],
        catalog: Catalog,
        metrics: WorkerMetrics,
        topics: Topics | None = None,
    ) -> None:
        self.settings, self.consumer, self.sinks = settings, consumer, sinks
        self.pool, self.catalog, self.metrics = pool, catalog, metrics
        self.lock = asyncio.Lock()
        self.topics = topics or Topics(settings.accepted_topic, settings.rejected_topic)
        self.policy = Policy(settings.idempotency_ttl_s, settings.max_auto_devices)
        self._failures = self._takeover_failures = 0
        # Per owned partition, the first offset not yet committed: anything fetched below it
        # (a replay after a rewind) is dropped, never processed twice.
        self._next: dict[TopicPartition, int] = {}
        self._taken: set[TopicPartition] = set()  # taken over since the last fetch
        self._purge_due = 0.0

    async def run(self, stop: asyncio.Event) -> None:
        """Poll and handle batches until `stop` is set."""
        while not stop.is_set():
            try:
                batch = await self.consumer.getmany(
                    timeout_ms=self.settings.worker_poll_timeout_ms,
                    max_records=self.settings.worker_batch_max_records,
                )
            except Exception as exc:  # the client could not read what it fetched
                await self._fetch_failed(exc)
                continue
            async with self.lock:
                if await self.take_over():
                    self._takeover_failures = 0
                else:
                    self._takeover_failures += 1
                    self.metrics.set_dependencies_up(False)
                    await asyncio.sleep(self._backoff_s(self._takeover_failures))
                await self.handle(self._fresh(batch))
            await self._purge_claims(time.monotonic())

    async def _fetch_failed(self, exc: Exception) -> None:
        """The Kafka client failed to hand over fetched records (aiokafka cannot read a
        record whose header key is not UTF-8, and fails the whole fetch). It may have moved
        other partitions past records it never handed over, so every owned partition goes
        back to its first uncommitted offset; then the partition that fails is found and
        paused, so the others go on. It stays paused while this worker owns it."""
        self.metrics.retries.labels("fetch").inc()
        self.metrics.set_dependencies_up(False)
        self._failures += 1
        log.error("fetched records unreadable", extra={"error": repr(exc)[:500]})
        self._rewind_all()
        for tp in await self._unreadable_partitions():
            log.error(
                "partition paused: a record in it cannot be read", extra={"partition": str(tp)}
            )
            self._pause([tp])
        self.metrics.unreadable.set(len(self.consumer.paused()))
        self._rewind_all()
        await asyncio.sleep(self._backoff_s(self._failures))

    def _rewind_all(self) -> None:
        for tp, offset in list(self._next.items()):
            if self.sinks.owns(tp):
                self._seek(tp, offset)

    async def _unreadable_partitions(self) -> list[TopicPartition]:
        """Fetch each owned partition alone (the others paused) and return those that fail."""
        owned = [tp for tp in self._next if self.sinks.owns(tp)]
        already = self.consumer.paused()
        failing = []
        for tp in owned:
            if tp in already:
                continue
            self._pause(owned)
            self._resume([tp])
            try:
                await self.consumer.getmany(tp, timeout_ms=self.settings.worker_poll_timeout_ms * 5)
            except (UnicodeError, CorruptRecordException):  # its data, not a passing fault
                failing.append(tp)
            except KafkaError as exc:
                log.warning(
                    "partition probe failed", extra={"partition": str(tp), "error": repr(exc)}
                )
        self._resume([tp for tp in owned if tp not in already and tp not in failing])
        return failing

    def _pause(self, partitions: list[TopicPartition]) -> None:
        """Pause those still assigned (a rebalance can land during any await)."""
        assigned = self.consumer.assignment()
        self.consumer.pause(*(tp for tp in partitions if tp in assigned))

    def _resume(self, partitions: list[TopicPartition]) -> None:
        assigned = self.consumer.assignment()
        self.consumer.resume(*(tp for tp in partitions if tp in assigned))

    async def _purge_claims(self, now: float) -> None:
        """Now and then, delete expired Idempotency-Key claims (any replica may; a failure
        waits for the next turn)."""
        if now < self._purge_due:
            return
        self._purge_due = now + min(PURGE_INTERVAL_S, self.settings.idempotency_ttl_s / 2)
        try:
            async with self.pool.connection() as conn:
                purged = await resolve.purge_claims(conn, self.settings.idempotency_ttl_s)
        except (psycopg.Error, PoolTimeout) as exc:
            log.warning("expired claims not purged", extra={"error": str(exc)})
            return
        if purged:
            log.info("expired claims purged", extra={"count": purged})

    def _backoff_s(self, failures: int) -> float:
        return backoff_s(failures, self.settings.backoff_max_s, random.random())  # noqa: S311

    def _fresh(self, batch: Batch) -> Batch:
        """The part of a fetched batch that is ours and not yet committed. A partition taken
        over since the fetch gives nothing: its records may predate the seek to the committed
        offset (then keeping those above it would skip the gap), so it is sought there again
        and fetched anew."""
        fresh: Batch = {}
        for tp, records in batch.items():
            if not self.sinks.owns(tp) or tp not in self._next:
                continue
            if tp in self._taken:
                self._seek(tp, self._next[tp])
                continue
            kept = [r for r in records if r.offset >= self._next[tp]]
            if kept:
                fresh[tp] = kept
        self._taken.clear()
        return fresh

    async def take_over(self) -> bool:
        """For each assigned partition without a producer: start one (which fences the previous
        owner and ends its open transaction), then re-read the committed offset, which is only
        now final, and resume from it. False if some partition could not be taken yet."""
        done = True
        for tp in sorted(self.consumer.assignment() - self.sinks.owned()):
            try:
                await self.sinks.open([tp])
                async with asyncio.timeout(self.settings.kafka_timeout_s):
                    committed = await self.consumer.committed(tp)
                    if committed is None:
                        committed = (await self.consumer.beginning_offsets([tp]))[tp]
            except (DependencyUnavailable, KafkaError, TimeoutError) as exc:
                log.warning(
                    "cannot take partition yet", extra={"partition": str(tp), "error": repr(exc)}
                )
                await self.sinks.close([tp])
                done = False
                continue
            if not self._seek(tp, committed):
                await self.sinks.close([tp])  # revoked while we were taking it
                continue
            self._next[tp] = committed
            self._taken.add(tp)
        for tp in set(self._next) - self.sinks.owned():
            del self._next[tp]
        return done

    async def handle(self, batch: Batch) -> None:
        """Process and commit one batch; on a broken dependency, put it back and back off."""
        if not batch:
            return
        started = time.perf_counter()
        records = [_in_record(r) for rs in batch.values() for r in rs]
        try:
            outcome = await self.process(records)
        except DependencyUnavailable as exc:
            await self._retry_later(batch, "postgres", exc)
            return
        failed = await self._commit(batch, outcome.records)
        if failed:
            await self._retry_later(failed, "kafka", None)
            return
        self._failures = 0
        self.metrics.set_dependencies_up(True)
        self._observe(batch, outcome, time.perf_counter() - started)

    async def process(self, records: list[InRecord]) -> pipeline.Outcome:
        """One output record per input record, in order (the benchmark's baseline overrides
        this to measure everything else)."""
        return await pipeline.process(records, self.pool, self.catalog, self.topics, self.policy)

    async def _commit(self, batch: Batch, outputs: list[Any]) -> Batch:
        """Commit each partition's share; return the partitions that must be retried."""
        shares, start = {}, 0
        for tp, rs in batch.items():
            shares[tp] = outputs[start : start + len(rs)]
            start += len(rs)
        results = await asyncio.gather(
            *(self.sinks.commit(tp, shares[tp], batch[tp][-1].offset + 1) for tp in batch),
            return_exceptions=True,
        )
        failed: Batch = {}
        for tp, result in zip(batch, results, strict=True):
            if result is None:
                self._next[tp] = batch[tp][-1].offset + 1
            elif isinstance(result, PartitionLost):
                log.info("partition lost to another worker", extra={"partition": str(tp)})
            elif isinstance(result, BaseException):
                log.warning("commit failed", extra={"partition": str(tp), "error": repr(result)})
                failed[tp] = batch[tp]
        return failed

    async def _retry_later(self, failed: Batch, reason: str, exc: Exception | None) -> None:
        """Seek the failed partitions back to the batch's first offsets; pause, then go on. A
        partition whose transaction failed is no longer owned: taking it over again finds
        where to resume."""
        for tp, rs in failed.items():
            if self.sinks.owns(tp) and self._seek(tp, rs[0].offset):
                self._next[tp] = rs[0].offset
        self.metrics.retries.labels(reason).inc()
        self.metrics.set_dependencies_up(False)
        self._failures += 1
        pause = self._backoff_s(self._failures)
        log.warning(
            "batch put back",
            extra={"reason": reason, "error": str(exc or ""), "retry_in_s": round(pause, 2)},
        )
        await asyncio.sleep(pause)

    def _seek(self, tp: TopicPartition, offset: int) -> bool:
        """Move the consumer's position; False if `tp` was revoked meanwhile (a rebalance can
        land during any await)."""
        try:
            self.consumer.seek(tp, offset)
        except IllegalStateError:
            return False
        return True

    def _observe(self, batch: Batch, outcome: pipeline.Outcome, elapsed_s: float) -> None:
        for (kind, code), count in outcome.counts.items():
            self.metrics.records.labels(kind, code).inc(count)
        self.metrics.batch_records.observe(len(outcome.records))
        self.metrics.batch_seconds.observe(elapsed_s)
        assigned = self.consumer.assignment()
        for tp, rs in batch.items():
            highwater = self.consumer.highwater(tp) if tp in assigned else None
            if highwater is not None:
                self.metrics.lag.labels(str(tp.partition)).set(
                    max(0, highwater - rs[-1].offset - 1)
                )


def _in_record(record: Any) -> InRecord:
    return InRecord(
        Source(record.topic, record.partition, record.offset),
        record.value,
        record.headers,
        record.timestamp,
    )


@asynccontextmanager
async def running(
    settings: Settings,
    bootstrap: str,
    database_url: str,
    metrics: WorkerMetrics,
    worker_class: type[Worker] = Worker,
    sinks_class: type[PartitionSinks] = PartitionSinks,
) -> AsyncIterator[Worker]:
    """A started worker: pool, catalog listener, sinks and a subscribed consumer (the
    classes are for the benchmark's baseline and the fault-injection tests)."""
    async with AsyncExitStack() as stack:
        pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
            database_url,
            min_size=1,
            max_size=4,
            open=False,
            kwargs={"row_factory": dict_row},
            timeout=10,
        )
        await pool.open(wait=True, timeout=30)
        stack.push_async_callback(pool.close)
        catalog = Catalog(max_age_s=settings.catalog_max_age_s)
        follower = supervise.board(metrics.registry).start(
            "catalog_follower",
            lambda beat: follow_changes(catalog, database_url, on_listening=beat),
        )
        stack.push_async_callback(_cancel, follower)
        topics = await output_topics(settings, bootstrap)
        sinks = sinks_class(
            bootstrap,
            settings.group_id,
            settings.transactional_id_prefix,
            settings.kafka_timeout_s,
            (topics.accepted_max_bytes, topics.rejected_max_bytes),
        )
        stack.push_async_callback(sinks.close_all)
        consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap,
            group_id=settings.group_id,
            isolation_level="read_committed",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_partition_fetch_bytes=4 * 1024 * 1024,
            client_id="ingest-worker",
        )
        worker = worker_class(settings, consumer, sinks, pool, catalog, metrics, topics)
        consumer.subscribe([settings.raw_topic], listener=Rebalance(worker))
        await consumer.start()
        stack.push_async_callback(_stop_consumer, consumer, settings.kafka_timeout_s)
        yield worker


async def output_topics(settings: Settings, bootstrap: str) -> Topics:
    """The output topics with their record size limits, read from the broker; a limit too
    small for the smallest rejection stops the start."""
    names = [settings.accepted_topic, settings.rejected_topic]
    limits = await max_message_bytes(bootstrap, names, settings.kafka_timeout_s)
    for name, limit in limits.items():
        if limit < MIN_OUTPUT_RECORD_BYTES:
            raise ConfigError(
                f"topic {name} takes records of at most {limit} bytes; the worker needs "
                f"{MIN_OUTPUT_RECORD_BYTES} (max.message.bytes)"
            )
    accepted, rejected = names
    return Topics(accepted, rejected, limits[accepted], limits[rejected])


async def _stop_consumer(consumer: AIOKafkaConsumer, timeout_s: float) -> None:
    """Leave the group if the broker answers; never hang or crash the shutdown if not."""
    try:
        async with asyncio.timeout(timeout_s):
            await consumer.stop()
    except (KafkaError, TimeoutError) as exc:
        log.warning("consumer stopped without leaving the group", extra={"error": repr(exc)})
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise
        # aiokafka's fetcher, closing with the broker gone, re-raises its own fetch task's
        # cancellation; the consumer is stopped all the same.


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with suppress(asyncio.CancelledError):
        await task


async def serve(settings: Settings, stop: asyncio.Event | None = None) -> None:
    """The worker process: run until SIGTERM/SIGINT (or `stop`), with /healthz and /metrics
    on the side port."""
    if not settings.kafka_bootstrap_servers or not settings.database_url:
        raise DependencyUnavailable("the worker needs KAFKA_BOOTSTRAP_SERVERS and DATABASE_URL")
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    metrics = WorkerMetrics()
    async with AsyncExitStack() as stack:
        if settings.worker_http_port:
            await stack.enter_async_context(_side_server(settings, metrics))
        worker = await stack.enter_async_context(
            running(settings, settings.kafka_bootstrap_servers, settings.database_url, metrics)
        )
        log.info("worker running", extra={"group": settings.group_id, "topic": settings.raw_topic})
        await worker.run(stop)
    log.info("worker stopped")


@asynccontextmanager
async def _side_server(settings: Settings, metrics: WorkerMetrics) -> AsyncIterator[None]:
    """/healthz, /readyz (503 naming the background task while one is down) and /metrics on
    INGEST_WORKER_HTTP_PORT."""
    import orjson
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    async def healthz(_: Request) -> Response:
        return Response(b'{"status":"ok"}', media_type="application/json")

    async def readyz(_: Request) -> Response:
        tasks = supervise.board(metrics.registry).states()
        up = metrics.dependencies_up
        status = 200 if up and all(tasks.values()) else 503
        body = orjson.dumps({"dependencies": up, "tasks": tasks})
        return Response(body, status, media_type="application/json")

    async def metrics_route(_: Request) -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    app = Starlette(
        routes=[
            Route("/healthz", healthz),
            Route("/readyz", readyz),
            Route("/metrics", metrics_route),
        ]
    )
    config = uvicorn.Config(
        app,
        host=settings.api_host,
        port=settings.worker_http_port,
        access_log=False,
        log_config=None,
        lifespan="off",
    )
    config.load()
    server = uvicorn.Server(config)
    # startup/shutdown rather than serve(): serve() would take over SIGTERM and SIGINT,
    # which belong to the worker loop. serve() sets `lifespan` itself; here lifespan is off.
    server.lifespan = config.lifespan_class(config)
    await server.startup()
    try:
        yield
    finally:
        await server.shutdown()
