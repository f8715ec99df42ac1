"""Group commit: one transactional producer publishing many requests' records per Kafka
transaction, one transaction at a time, each taking every request queued since the last began.

A request's records become visible to `read_committed` readers (the worker) only if its
transaction commits. When one is aborted none of its records ever will be, so the API's 503
then means "not written", and a retry cannot make a duplicate. An idempotent producer cannot
promise that: after a record times out it bumps its epoch and sends again, under new sequence
numbers, records of other partitions whose first send may already be in the log (librdkafka
issue #4953; the chaos soak caught one such duplicate).

Every call into the producer runs on the committer's own daemon thread, delivery reports
included (they are served inside commit, abort and the idle polls), so nothing blocks the
event loop and no callback runs anywhere else."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, cast

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from ingest_worker.core import rdkafka
from ingest_worker.core.raw import RawRecord
from ingest_worker.core.threads import DaemonThread
from ingest_worker.shim.deliveries import UNASSIGNED

log = logging.getLogger(__name__)

# How often an idle producer is polled (its error reports).
IDLE_POLL_S = 1.0
# Pause before producing again when librdkafka's local queue is full.
QUEUE_FULL_PAUSE_S = 0.005
# At most this many records in one transaction; the rest wait for the next.
MAX_TXN_RECORDS = 20_000
# A request aborted with time left goes into the next transaction only if this much is left.
RETRY_MIN_S = 0.5
# A retired producer is given this long to leave its broker connections.
RETIRE_S = 5.0

_Headers = list[tuple[str, str | bytes | None]]
# What became of a transaction: committed, aborted (none of its records will ever be read), or
# unknown (the commit may still complete: the producer is replaced).
Fate = Literal["committed", "aborted", "unknown"]


@dataclass(frozen=True, slots=True)
class Outcome:
    """A request's answer: `written` True once committed, False when surely not (aborted, or
    never sent), None when unknown; `error` says why it was not committed."""

    written: bool | None
    error: KafkaError | None = None


COMMITTED = Outcome(True)
CLOSED = Outcome(False, KafkaError(KafkaError._DESTROY, "the API is shutting down"))


@dataclass(eq=False, slots=True)
class Request:
    """Records to publish together, all or none, before `deadline` (monotonic)."""

    records: Sequence[RawRecord]
    deadline: float
    future: asyncio.Future[Outcome]
    abandoned: bool = False  # its caller answered 503 before the outcome


@dataclass(slots=True)
class Report:
    """One delivery report: which request's record, its partition, its error."""

    request: int
    partition: int
    error: KafkaError | None


@dataclass(slots=True)
class Txn:
    """What one transaction came to, and the delivery reports its records got."""

    fate: Fate = "committed"
    error: KafkaError | None = None
    reports: list[Report] = field(default_factory=list)
    begun: bool = True  # False: the producer could not begin one (it is replaced)


def transactional_id(prefix: str, serial: int) -> str:
    """Unique per producer: nothing is resumed across producers (a request's transaction
    either finished or was abandoned with its producer), so none fences another."""
    return f"{prefix}-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}-{serial}"


def _noted(reports: list[Report], request: int, error: KafkaError | None, msg: Message) -> None:
    partition = msg.partition()  # None (or -1) for a record never placed on one
    reports.append(Report(request, UNASSIGNED if partition is None else partition, error))


def _produce(producer: Producer, topic: str, record: RawRecord, on_delivery: Any) -> None:
    """Queue one record; when librdkafka's queue is full, serve reports until there is room."""
    headers = cast("_Headers", record.headers)
    while True:
        try:
            producer.produce(
                topic, record.value, record.key, headers=headers, on_delivery=on_delivery
            )
            return
        except BufferError:
            producer.poll(QUEUE_FULL_PAUSE_S)


def transact(producer: Producer, topic: str, batch: Sequence[Request], abort_s: float) -> Txn:
    """Run one transaction over the batch's records (blocking: on the committer's thread).
    The commit takes at most the transaction's remaining time; an abort, `abort_s`."""
    txn = Txn(begun=False)
    try:
        producer.begin_transaction()
        txn.begun = True
        for index, request in enumerate(batch):
            on_delivery = functools.partial(_noted, txn.reports, index)
            for record in request.records:
                _produce(producer, topic, record, on_delivery)
        producer.commit_transaction()  # remaining transaction time, as librdkafka advises
    except KafkaException as exc:
        txn.error = exc.args[0]
        txn.fate = _settle(producer, txn.error, abort_s) if txn.begun else "aborted"
    producer.poll(0)  # reports of records an abort purged
    return txn


def _settle(producer: Producer, error: KafkaError, abort_s: float) -> Fate:
    """After a failed commit: abort, which makes the outcome sure (nothing written), unless
    librdkafka says the producer is done for or the abort fails too (or takes longer than
    `abort_s`: its coordinator does not answer)."""
    if error.fatal():
        return "unknown"
    try:
        producer.abort_transaction(abort_s)
    except KafkaException:
        return "unknown"
    return "aborted"


class Committer:
    """One transactional producer and the loop that runs its transactions. A producer that
    failed for good, or left a transaction in doubt, is retired, and a new one is made for the
    next transaction. `on_txn` hears of every transaction (on the event loop) before its
    requests are answered."""

    def __init__(
        self,
        name: str,
        bootstrap: str,
        topic: str,
        config: dict[str, Any],
        on_txn: Callable[[Sequence[Request], Txn], None],
        abort_s: float,
    ) -> None:
        self.name, self._bootstrap, self._topic = name, bootstrap, topic
        self._config, self._on_txn, self._abort_s = config, on_txn, abort_s
        self._thread = DaemonThread(f"kafka-{name}")
        self._queue: list[Request] = []
        self._wake = asyncio.Event()
        self._producer: Producer | None = None
        self.errors = rdkafka.ErrorLog(log)
        self.serial = 0  # of the producer made last
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.failed_at: float | None = None  # when a transaction failed last, since a commit
        self._replace_why: str | None = None

    async def start(self, timeout_s: float) -> None:
        """Make the first producer (KafkaException when the broker does not answer within
        `timeout_s`), then run transactions until closed."""
        await self._call(functools.partial(self._make_producer, timeout_s))
        self._task = asyncio.get_running_loop().create_task(self._run())

    def submit(self, records: Sequence[RawRecord], deadline: float) -> Request:
        """Queue a request for the next transaction; its future gets the outcome."""
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        request = Request(records, deadline, future)
        if self._closing:
            future.set_result(CLOSED)
            return request
        self._queue.append(request)
        self._wake.set()
        return request

    def replace(self, why: str) -> None:
        """Have the producer retired before the next transaction (never under one that is
        under way), which then runs on a new one."""
        self._replace_why = why

    def _retire_if_due(self) -> None:
        """Retire the producer if asked to, or if librdkafka declared it failed for good."""
        why = self._replace_why
        if why is None and self.errors.fatal is not None and self._producer is not None:
            why = str(self.errors.fatal)
        if why is None:
            return
        self._replace_why = None
        log.warning("Kafka producer replaced", extra={"committer": self.name, "error": why})
        producer, self._producer = self._producer, None
        if producer is not None:
            _retire_in_background(producer)

    @property
    def producer(self) -> Producer | None:
        return self._producer

    async def _call(self, fn: Callable[[], Any]) -> Any:
        return await asyncio.wrap_future(self._thread.submit(fn))

    def _make_producer(self, timeout_s: float) -> None:
        """A new producer with its transactions initialised (blocking)."""
        self.serial += 1
        errors = rdkafka.ErrorLog(log)
        options = rdkafka.config(self._bootstrap, "ingest-worker-api", errors)
        tid = transactional_id(f"ingest-api-{self.name}", self.serial)
        producer = Producer({**options, **self._config, "transactional.id": tid})
        try:
            producer.init_transactions(timeout_s)
        except KafkaException:
            _retire_in_background(producer)
            raise
        self._producer, self.errors = producer, errors

    async def _run(self) -> None:
        while not self._closing:
            try:
                await asyncio.wait_for(self._wake.wait(), IDLE_POLL_S)
            except TimeoutError:
                await self._idle()
                continue
            self._wake.clear()
            batch = self._take(time.monotonic())
            if batch:
                await self._commit(batch)
            if self._queue:
                self._wake.set()

    async def _idle(self) -> None:
        """Serve the producer's error reports; replace it if it failed for good; make one if
        there is none (so that a retired one is back before the next request needs it)."""
        producer = self._producer
        if producer is not None:
            await self._call(functools.partial(producer.poll, 0))
        self._retire_if_due()
        if self._producer is None:
            with contextlib.suppress(KafkaException):  # the broker is still away: next time
                await self._call(functools.partial(self._make_producer, self._abort_s))

    def _take(self, now: float) -> list[Request]:
        """The queued requests whose callers still wait, up to MAX_TXN_RECORDS records (and at
        least one request)."""
        batch: list[Request] = []
        count = 0
        while self._queue:
            request = self._queue[0]
            if batch and count + len(request.records) > MAX_TXN_RECORDS:
                break
            self._queue.pop(0)
            if request.abandoned or request.future.done() or request.deadline <= now:
                continue
            batch.append(request)
            count += len(request.records)
        return batch

    async def _commit(self, batch: list[Request]) -> None:
        """One transaction over the batch, on a producer made first if there is none."""
        self._retire_if_due()
        try:
            if self._producer is None:
                timeout_s = max(0.1, min(r.deadline for r in batch) - time.monotonic())
                await self._call(functools.partial(self._make_producer, timeout_s))
            producer = self._producer
            assert producer is not None
            run = functools.partial(transact, producer, self._topic, batch, self._abort_s)
            txn: Txn = await self._call(run)
        except KafkaException as exc:  # no producer could be made: nothing was sent
            txn = Txn("aborted", exc.args[0], begun=False)
        if txn.fate == "unknown" or (not txn.begun and self._producer is not None):
            self.replace(str(txn.error))
            self._retire_if_due()
        self.failed_at = None if txn.fate == "committed" else time.monotonic()
        self._on_txn(batch, txn)
        self._answer(batch, txn, time.monotonic())

    def _answer(self, batch: Sequence[Request], txn: Txn, now: float) -> None:
        """Settle each request. One aborted only for others' records goes into the next
        transaction, first, while its caller has time to wait for it (not when none could
        begin: the next would most likely fare no better)."""
        failed = {r.request: r.error for r in txn.reports if not says_nothing(r.error)}
        retry = []
        for index, request in enumerate(batch):
            if request.future.done():
                continue
            if txn.fate == "committed":
                request.future.set_result(COMMITTED)
            elif txn.fate == "unknown":
                request.future.set_result(Outcome(None, txn.error))
            elif txn.begun and index not in failed and request.deadline - now > RETRY_MIN_S:
                retry.append(request)
            else:
                request.future.set_result(Outcome(False, failed.get(index) or txn.error))
        self._queue[:0] = retry

    async def close(self, timeout_s: float) -> None:
        """Finish the transaction under way (within `timeout_s`), refuse what is queued, and
        free the producer."""
        self._closing = True
        self._wake.set()
        for request in self._queue:
            if not request.future.done():
                request.future.set_result(CLOSED)
        self._queue.clear()
        if self._task is not None:
            done, _ = await asyncio.wait([self._task], timeout=timeout_s)
            if not done:
                log.warning("a transaction was under way at shutdown", extra={"name": self.name})
                self._task.cancel()
        producer, self._producer = self._producer, None
        if producer is not None:
            _retire_in_background(producer)
        self._thread.shutdown(wait=False)


PURGED = frozenset({KafkaError._PURGE_QUEUE, KafkaError._PURGE_INFLIGHT})


def says_nothing(error: KafkaError | None) -> bool:
    """Whether a delivery report says nothing against its partition: delivered, or purged by
    an abort before its partition answered."""
    return error is None or error.code() in PURGED


def _retire_in_background(producer: Producer) -> None:
    """Purge and free a producer on a thread of its own (freeing it can wait for brokers)."""

    def retire() -> None:
        producer.purge()
        producer.flush(RETIRE_S)

    threading.Thread(target=retire, name="kafka-retire", daemon=True).start()
