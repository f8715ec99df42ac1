"""`ingest-worker worker`: the consumer-group loop around the pipeline and the sink.

Per poll batch: process (decode, validate, resolve in one PostgreSQL transaction, encode) and
queue the outputs in the open Kafka transaction; every commit interval, the transaction
commits with the consumed offsets (KIP-447) on the sink's thread while the next batch is
polled and processed. A broken dependency aborts the open transaction and puts everything
since the last commit back (seek to the committed offsets), then backs off; nothing is
committed or skipped. SIGTERM finishes and commits the batch in hand, then leaves the group.
librdkafka's blocking consumer calls run on one thread of their own.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import operator
import os
import random
import signal
import socket
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager, suppress
from typing import Any, TypeVar, cast

import psycopg
from confluent_kafka import Consumer, KafkaException, Message, TopicPartition
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from ingest_worker.core import collector, rdkafka, supervise, tracing
from ingest_worker.core.config import Settings
from ingest_worker.core.encode import OutRecord
from ingest_worker.core.errors import ConfigError, DependencyUnavailable
from ingest_worker.core.limits import max_message_bytes
from ingest_worker.core.metrics import CONTENT_TYPE, WorkerMetrics
from ingest_worker.core.rejections import Source
from ingest_worker.worker import pipeline, resolve, store
from ingest_worker.worker.catalog import Catalog, follow_changes
from ingest_worker.worker.decode import Headers
from ingest_worker.worker.offsets import Offsets, Partition, Unsettled
from ingest_worker.worker.pipeline import InRecord, Policy, Topics
from ingest_worker.worker.sink import Sink, producer_config
from ingest_worker.worker.threads import DaemonThread

log = logging.getLogger(__name__)

T = TypeVar("T")
MIN_OUTPUT_RECORD_BYTES = 4096
PURGE_INTERVAL_S = 60.0
PARTITIONS_INTERVAL_S = 3600.0  # the coming days' partitions exist days ahead


def consume(
    consumer: Consumer, count: int, timeout_s: float
) -> tuple[list[Message], dict[Partition, int]]:
    """Up to `count` messages, and the consumer's position right after them in each of their
    partitions: the next offset it would return, past the transaction markers and aborted
    records it skipped (librdkafka moves its position over them). Every message returned is
    processed before the next poll, so the position is safe to commit with them.

    Returns as soon as anything is there, as Kafka's own consumer does: librdkafka's batch
    call waits out its whole timeout unless `count` messages come, which would hold every
    record of a moderate stream back by up to the timeout. While a batch is processed and
    committed, the next one gathers in the consumer's queue, so batches grow with the rate."""
    messages = ready(consumer, count, timeout_s)
    polled = {(m.topic(), m.partition()) for m in messages if m.error() is None}
    if not polled:
        return messages, {}
    try:
        found = consumer.position([TopicPartition(t, p) for t, p in polled if t and p is not None])
    except KafkaException:  # positions unknown: the partitions resume after their last record
        return messages, {}
    return messages, {
        Partition(tp.topic, tp.partition): tp.offset
        for tp in found
        if tp.error is None and tp.offset >= 0
    }


def ready(consumer: Consumer, count: int, timeout_s: float) -> list[Message]:
    """Up to `count` messages already fetched; if there are none, the first to come within
    `timeout_s` and whatever came with it."""
    messages = consumer.consume(count, 0)
    if messages:
        return messages
    first = consumer.consume(1, timeout_s)
    return first + consumer.consume(count - 1, 0) if first and count > 1 else first


def traced(traces: tracing.Tracing, records: list[InRecord], outputs: list[OutRecord]) -> None:
    """A span per record (outputs are in input order), the child of its raw record's
    `traceparent`; an accepted record carries its span's `traceparent` instead."""
    for record, output in zip(records, outputs, strict=True):
        span = traces.start(
            "ingest-worker process",
            _traceparent(output.headers) or _traceparent(record.headers),
            server=False,
            attributes={
                "messaging.destination.name": output.topic,
                "messaging.kafka.partition": record.source.partition,
                "messaging.kafka.offset": record.source.offset,
            },
        )
        own = traces.traceparent(span).encode()
        output.headers[:] = [(n, own if n == "traceparent" else v) for n, v in output.headers]
        span.end()


def _traceparent(headers: Headers | None) -> str | None:
    """The headers' traceparent: an output's is the decoder's checked value; a raw record's
    name may be in any case (the tracer ignores one that is not well formed)."""
    for name, value in headers or ():
        if name.lower() == "traceparent" and value is not None:
            return value.decode("latin-1")
    return None


def backoff_s(attempt: int, cap_s: float, jitter: float) -> float:
    """Exponential backoff from 0.1 s, capped, with `jitter` in [0, 1) spreading replicas."""
    return min(cap_s, 0.1 * 2.0 ** min(attempt, 16)) * (0.5 + jitter / 2)


def transactional_id(settings: Settings, hostname: str, pid: int) -> str:
    """The configured id, else one unique per live process (host and pid)."""
    if settings.transactional_id:
        return settings.transactional_id
    return f"{settings.transactional_id_prefix}-{settings.group_id}-{hostname}-{pid}"


def consumer_config(settings: Settings, bootstrap: str) -> dict[str, Any]:
    """read_committed, offsets only ever committed in the sink's transactions, and the eager
    protocol: a rebalance takes every partition back, so the open transaction is simply
    aborted and each partition resumes from its committed offset."""
    return {
        **rdkafka.config(bootstrap, "ingest-worker", rdkafka.ErrorLog(log)),
        "group.id": settings.group_id,
        "isolation.level": "read_committed",
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "partition.assignment.strategy": "range",
        "session.timeout.ms": 10_000,
        "heartbeat.interval.ms": 3_000,
        "max.partition.fetch.bytes": 4 * 1024 * 1024,
    }


# Through a C call path that checks the result: a plain `message.headers()` call, once the
# interpreter has specialised it, can return with an exception still pending.
_headers_of = operator.methodcaller("headers")


def in_record(message: Message, topic: str) -> InRecord:
    """What the pipeline needs of a consumed record (of `topic`: one string for all). The
    client cannot turn a header name that is not UTF-8 into text: reading the headers fails
    and leaves them unusable, so they are replaced by none and the record is read as one
    with unreadable headers."""
    headers: Headers | None
    try:
        headers = cast(Headers, _headers_of(message) or [])
    except (SystemError, UnicodeError):
        message.set_headers([])
        headers = None
    _, timestamp_ms = message.timestamp()
    return InRecord(
        Source(topic, cast(int, message.partition()), cast(int, message.offset())),
        message.value(),
        headers,
        timestamp_ms,
        message.key(),
    )


class StoreUnsettledError(DependencyUnavailable):
    """A transaction's store writes failed: its Kafka commit was not tried."""


class Worker:
    """One consumer-group member: its consumer, sink, database pool and catalog."""

    def __init__(
        self,
        settings: Settings,
        consumer: Consumer,
        sink: Sink,
        pool: AsyncConnectionPool[Any],
        catalog: Catalog,
        metrics: WorkerMetrics,
        topics: Topics | None = None,
        traces: tracing.Tracing | None = None,
    ) -> None:
        self.settings, self.consumer, self.sink = settings, consumer, sink
        self.traces = traces
        self.pool, self.catalog, self.metrics = pool, catalog, metrics
        self.topics = topics or Topics(settings.accepted_topic, settings.rejected_topic)
        self.policy = Policy(
            settings.idempotency_ttl_s, settings.max_auto_devices, settings.event_store == "on"
        )
        self.offsets = Offsets()
        self.storing = pipeline.Storing()
        self._thread = DaemonThread("kafka-consumer")
        self._committing: asyncio.Future[None] | None = None
        self._committing_offsets: dict[Partition, int] = {}
        self._rebalanced = self._resume_needed = False
        self._failures = 0
        self._purge_due = 0.0
        self._partitions_due = 0.0
        self._stop = asyncio.Event()
        self._stuck_after_s = 3 * settings.kafka_timeout_s + 5

    # -- the consumer's thread: librdkafka calls, and the rebalance callbacks they run --

    async def on_consumer(self, call: Callable[[], T]) -> T:
        """Run a consumer call on the consumer's own thread."""
        return await asyncio.get_running_loop().run_in_executor(self._thread, call)

    def subscribe(self) -> None:
        self.consumer.subscribe(
            [self.settings.raw_topic],
            on_assign=self._assigned,
            on_revoke=self._revoked,
            on_lost=self._revoked,
        )

    def _assigned(self, _: Consumer, partitions: list[TopicPartition]) -> None:
        """Partitions come (back): each is sought to the broker's committed offset, with
        the guard against answers below what it is known to hold, before anything is
        processed. Where librdkafka's own fetch put them is not trusted: after a frozen
        broker it once answered "no offset" for partitions with commits, and a worker that
        had resumed while it held none would have replayed them from the start."""
        self._rebalanced = True
        log.info("partitions assigned", extra={"partitions": _names(partitions)})

    def _revoked(self, _: Consumer, partitions: list[TopicPartition]) -> None:
        """Partitions change hands: what the open transaction holds is aborted (the next
        owner, or we, start from the committed offsets)."""
        self.sink.settle_blocking()
        self._rebalanced = True
        log.info("partitions revoked", extra={"partitions": _names(partitions)})

    # -- the loop --

    async def run(self, stop: asyncio.Event) -> None:
        """Poll and handle batches until `stop` is set; then commit what is processed."""
        self._stop = stop
        while not stop.is_set():
            await self.step()
            await self._purge_claims(time.monotonic())
            await self._keep_partitions(time.monotonic())
        await self.finish()

    async def step(self) -> None:
        """One poll: process what came, queue it, commit when the interval is up."""
        messages, positions = await self._poll()
        records, last = self._fresh(messages)
        started = time.perf_counter()
        try:
            outcome = await self.process(records) if records else None
        except DependencyUnavailable as exc:
            await self._recover("postgres", exc)
            return
        if not await self._settled():
            return
        if outcome is not None:
            if self.traces is not None:
                traced(self.traces, records, outcome.records)
            if not await self._queue(last, len(records), outcome, positions):
                return
            self._observe(last, outcome, time.perf_counter() - started)
        if self.offsets.due(
            time.monotonic(),
            self.settings.worker_commit_interval_ms / 1000,
            self.settings.worker_txn_max_records,
            caught_up=len(messages) < self.settings.worker_batch_max_records,
        ):
            await self._commit_soon()

    async def _poll(self) -> tuple[list[Message], dict[Partition, int]]:
        """The next messages, and their partitions' positions after them. After a failure or
        a rebalance, every assigned partition is first sought back to its committed offset;
        what is polled until then is dropped (it comes again). The consumer is polled
        meanwhile all the same: it only rejoins its group while it is polled."""
        if self._resume_needed:
            await self._resume()
        messages, positions = await self.on_consumer(
            functools.partial(
                consume,
                self.consumer,
                self.settings.worker_batch_max_records,
                self.settings.worker_poll_timeout_ms / 1000,
            )
        )
        if self._rebalanced:  # the open transaction was aborted; messages fetched before
            self._rebalanced = False  # the rebalance may still come with this poll
            self.offsets.reassigned()
            self._resume_needed = True
        return ([], {}) if self._resume_needed else (messages, positions)

    async def process(self, records: list[InRecord]) -> pipeline.Outcome:
        """One output record per input record, in order."""
        return await pipeline.process(
            records, self.pool, self.catalog, self.topics, self.policy, self.storing
        )

    def _fresh(self, messages: list[Message]) -> tuple[list[InRecord], dict[Partition, int]]:
        """The records to process, and the last offset of each partition among them:
        consumer errors logged, replays below the next offset dropped."""
        records: list[InRecord] = []
        last: dict[Partition, int] = {}
        partitions: dict[int, Partition] = {}
        topic = self.settings.raw_topic
        for message in messages:
            error = message.error()
            if error is not None:
                self._consumer_error(error)
                continue
            record = in_record(message, topic)
            number, offset = record.source.partition, record.source.offset
            tp = partitions.get(number) or partitions.setdefault(number, Partition(topic, number))
            if self.offsets.fresh(tp, offset):
                records.append(record)
                last[tp] = offset
        return records, last

    def _consumer_error(self, error: Any) -> None:
        if error.fatal():
            raise DependencyUnavailable(f"the consumer failed for good: {error}")
        self.metrics.retries.labels("fetch").inc()
        log.warning("kafka consumer error", extra={"error": str(error)})

    async def _queue(
        self,
        last: dict[Partition, int],
        count: int,
        outcome: pipeline.Outcome,
        positions: dict[Partition, int],
    ) -> bool:
        """Put a batch's outputs in the open transaction; False if it had to be put back."""
        try:
            await self._ensure_sink()
            self.sink.send(outcome.records)
        except DependencyUnavailable as exc:
            await self._recover("kafka", exc)
            return False
        self.offsets.processed(last, count, time.monotonic(), positions)
        return True

    async def _commit_soon(self) -> None:
        """Start committing the open transaction; the loop goes on meanwhile (polls and
        processes the next batch, whose outputs wait for this commit). PostgreSQL first: the
        Kafka commit starts once the store writes of the transaction's batches are
        committed (a batch's outputs count only once its rows and devices are, so a replay
        finds them); the loop does not wait for those writes itself."""
        try:
            group = await self.on_consumer(self.consumer.consumer_group_metadata)
        except KafkaException as exc:  # not a member of the group now
            await self._recover("kafka", exc)
            return
        writes = self.storing.pending()  # this transaction's batches' writes, no later ones
        self._committing_offsets = self.offsets.take_pending()
        serial = self.sink.open_transaction()  # never commit another one (a rebalance)
        self._committing = asyncio.ensure_future(
            self._commit_after(writes, self._committing_offsets, group, serial)
        )

    async def _commit_after(
        self,
        writes: list[asyncio.Task[pipeline.Decided]],
        offsets: dict[Partition, int],
        group: object,
        serial: int | None,
    ) -> None:
        """Once these store writes are committed, commit transaction `serial` with
        `offsets`, within the bound of its librdkafka calls."""
        try:
            await self.storing.settled(writes)
        except DependencyUnavailable as exc:
            raise StoreUnsettledError(str(exc)) from exc
        await self._bounded(self.sink.commit_soon(offsets, group, serial), "commit")

    async def _settled(self) -> bool:
        """Wait for the commit in flight; False if it failed (everything since the last
        commit is then put back)."""
        committing, self._committing = self._committing, None
        if committing is None:
            return True
        try:
            await committing
        except DependencyUnavailable as exc:
            await self._recover(
                "postgres" if isinstance(exc, StoreUnsettledError) else "kafka", exc
            )
            return False
        self.offsets.committed(self._committing_offsets)
        self.storing.isolate = False  # past whatever record PostgreSQL refused
        # the commit's own time, not until this check (the next batch ran meanwhile)
        self.metrics.commit_seconds.observe(self.sink.commit_s)
        self._failures = 0
        self.metrics.set_dependencies_up(True)
        return True

    async def _ensure_sink(self) -> None:
        """A producer ready for transactions, started within the same bound."""
        await self._bounded(asyncio.ensure_future(self.sink.ensure()), "producer start")

    async def _bounded(self, call: asyncio.Future[None], what: str) -> None:
        """Wait for a call on the sink's thread within the bound of its librdkafka calls.
        librdkafka has been seen to hold a call past its timeout while a broker was frozen
        or restarting: then the sink is given up (its producer is fenced by the next one,
        which settles the transaction) and a fresh one takes over."""
        try:
            await asyncio.wait_for(asyncio.shield(call), self._stuck_after_s)
        except TimeoutError:
            log.warning("Kafka call stuck past its bound; producer replaced", extra={"call": what})
            self.sink = self.sink.successor()
            raise DependencyUnavailable(f"the {what} did not return") from None

    async def finish(self) -> None:
        """On the way out: settle the commit in flight and commit what is processed."""
        if await self._settled() and self.offsets.pending:
            await self._commit_soon()
            await self._settled()
        await self.storing.drop()

    async def _recover(self, reason: str, exc: Exception) -> None:
        """Abort the open transaction and back off; the next poll resumes (`_resume`)."""
        self.metrics.retries.labels(reason).inc()
        self.metrics.set_dependencies_up(False)
        self._failures += 1
        pause = self._backoff_s(self._failures)
        log.warning(
            "batch put back",
            extra={"reason": reason, "error": str(exc), "retry_in_s": round(pause, 2)},
        )
        if self._committing is not None:  # its outcome shows in the committed offsets
            with suppress(DependencyUnavailable):
                await self._committing
            self._committing = None
        await self.storing.drop()  # its batch is put back with the rest
        await self.sink.abort()
        self.offsets.take_pending()  # aborted: never to be committed, even on the way out
        self._resume_needed = True
        await self._pause(pause)

    async def _resume(self) -> None:
        """Once a producer is back (starting one settles a transaction whose outcome was
        unknown), seek every assigned partition back to the offset the broker holds. On
        failure, back off and let the loop poll again: the consumer only rejoins its group
        while it is polled."""
        try:
            await self._ensure_sink()
            points = await self.on_consumer(self._rewind_blocking)
        except (DependencyUnavailable, KafkaException, Unsettled) as err:
            self._failures += 1
            log.warning("cannot resume from the committed offsets yet", extra={"error": str(err)})
            await self._pause(self._backoff_s(self._failures))
            return
        self.offsets.rewind(points)
        self._resume_needed = False
        log.info(
            "resuming from the committed offsets",
            extra={"offsets": {f"{tp.topic}-{tp.partition}": o for tp, o in points.items()}},
        )

    async def _pause(self, seconds: float) -> None:
        """Sleep, but wake at once when the worker is asked to stop."""
        with suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)

    def _rewind_blocking(self) -> dict[Partition, int]:
        """Seek every assigned partition back to where it resumes (`Offsets.resume_points`,
        from the broker's committed offsets); return those points."""
        assigned = self.consumer.assignment()
        if not assigned:
            return {}
        answers = {}
        for tp in self.consumer.committed(assigned, timeout=self.settings.kafka_timeout_s):
            if tp.error is not None:
                raise DependencyUnavailable(f"no committed offset for {tp}: {tp.error}")
            answers[Partition(tp.topic, tp.partition)] = tp.offset
        points = self.offsets.resume_points(answers)
        for part, offset in points.items():
            with suppress(KafkaException):  # revoked meanwhile: its next owner resumes it
                self.consumer.seek(TopicPartition(part.topic, part.partition, offset))
        return points

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

    async def _keep_partitions(self, now: float) -> None:
        """Now and then, make the event store's coming days and drop those past the
        retention (any replica may; they take turns; a failure waits for the next turn)."""
        if now < self._partitions_due or not self.policy.store_events:
            return
        self._partitions_due = now + PARTITIONS_INTERVAL_S
        try:
            async with self.pool.connection() as conn:
                await store.keep_partitions(conn, self.settings.event_retention_days)
        except (psycopg.Error, PoolTimeout) as exc:
            self._partitions_due = now + PURGE_INTERVAL_S
            log.warning("event store partitions not kept", extra={"error": str(exc)})

    def _backoff_s(self, failures: int) -> float:
        return backoff_s(failures, self.settings.backoff_max_s, random.random())  # noqa: S311

    def _observe(
        self, last: dict[Partition, int], outcome: pipeline.Outcome, elapsed_s: float
    ) -> None:
        for (kind, code), count in outcome.counts.items():
            self.metrics.records.labels(kind, code).inc(count)
        self.metrics.batch_records.observe(len(outcome.records))
        self.metrics.batch_seconds.observe(elapsed_s)
        for tp, offset in last.items():
            resume = self.offsets.next.get(tp, offset + 1)  # past a trailing commit marker
            with suppress(KafkaException):
                _, high = self.consumer.get_watermark_offsets(
                    TopicPartition(tp.topic, tp.partition), cached=True
                )
                if high >= 0:
                    self.metrics.lag.labels(str(tp.partition)).set(max(0, high - resume))

    async def close(self) -> None:
        """Leave the group (within the timeout) and stop the consumer's thread."""
        try:
            await asyncio.wait_for(
                self.on_consumer(self.consumer.close), self.settings.kafka_timeout_s
            )
        except (KafkaException, TimeoutError) as exc:
            log.warning("consumer closed without leaving the group", extra={"error": str(exc)})
        self._thread.shutdown(wait=False)
        await self.sink.close()


def _names(partitions: list[TopicPartition]) -> list[str]:
    return sorted(f"{tp.topic}-{tp.partition}" for tp in partitions)


@asynccontextmanager
async def running(
    settings: Settings,
    bootstrap: str,
    database_url: str,
    metrics: WorkerMetrics,
    sink_class: type[Sink] = Sink,
) -> AsyncIterator[Worker]:
    """A started worker: pool, catalog listener, sink and a subscribed consumer (the sink
    class is for the fault-injection tests)."""
    async with AsyncExitStack() as stack:
        traces = tracing.start(settings.tracing, "ingest-worker-worker")  # before any resource
        if traces is not None:
            stack.callback(traces.shutdown)
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
        catalog = Catalog(settings.catalog_max_age_s, settings.device_cache_size)
        follower = supervise.board(metrics.registry).start(
            "catalog_follower",
            lambda beat: follow_changes(catalog, database_url, on_listening=beat),
        )
        stack.push_async_callback(_cancel, follower)
        topics = await output_topics(settings, bootstrap)
        txn_id = transactional_id(settings, socket.gethostname(), os.getpid())
        sink = sink_class(
            producer_config(
                bootstrap,
                txn_id,
                settings.kafka_timeout_s,
                (topics.accepted_max_bytes, topics.rejected_max_bytes),
            ),
            settings.kafka_timeout_s,
        )
        await sink.ensure()
        consumer = Consumer(consumer_config(settings, bootstrap))
        worker = Worker(settings, consumer, sink, pool, catalog, metrics, topics, traces)
        stack.push_async_callback(worker.close)  # the consumer, then whichever sink is current
        await worker.on_consumer(worker.subscribe)
        log.info("transactional producer ready", extra={"transactional_id": txn_id})
        collector.settle_after_start()
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
    metrics.set_dependencies_up(False)  # not ready until its consumer and producer are up
    async with AsyncExitStack() as stack:
        if settings.worker_http_port:
            await stack.enter_async_context(_side_server(settings, metrics))
        worker = await stack.enter_async_context(
            running(settings, settings.kafka_bootstrap_servers, settings.database_url, metrics)
        )
        metrics.set_dependencies_up(True)
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
