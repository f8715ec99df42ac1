"""Exactly-once emit (KIP-447): one transactional producer per worker process.

The outputs of any number of batches, from every assigned partition, and the consumed offsets
commit in one transaction (`send_offsets_to_transaction` with the consumer's group metadata).
The broker fences a member whose group generation is stale, so the transactional id only has
to be unique per live process. librdkafka's blocking calls run on a thread of the sink's own,
never on the event loop; one lock orders the transactional calls between that thread, the
event loop (produce) and the consumer's thread (a rebalance settles the open transaction).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from contextlib import suppress
from typing import Any, Literal

from confluent_kafka import KafkaError, KafkaException, Producer, TopicPartition

from ingest_worker.core import rdkafka
from ingest_worker.core.encode import OutRecord
from ingest_worker.core.errors import DependencyUnavailable
from ingest_worker.worker.offsets import Partition
from ingest_worker.worker.threads import DaemonThread

log = logging.getLogger(__name__)

MAX_BATCH_BYTES = 1024 * 1024
# Longest a transaction may stay open before the broker aborts it: a killed worker's open
# transaction holds back read_committed readers (and its partitions' next owner) this long.
TRANSACTION_TIMEOUT_MS = 30_000
# First retry of a refused request (then doubling up to librdkafka's 1 s cap). Offsets sent
# right after a commit are refused CONCURRENT_TRANSACTIONS until the broker has written the
# last transaction's markers, a few ms; librdkafka retries AddOffsetsToTxn after this backoff,
# and its default 100 ms made every commit cycle last about 115 ms on a local broker, 10 ms
# about 50 ms (Java's client uses 20 ms in this case).
TXN_RETRY_BACKOFF_MS = 10
# librdkafka's fast metadata refresh (while a leader is unknown) defaults to the retry backoff;
# kept at its usual 100 ms, so a leader election does not draw a request every 10 ms.
METADATA_FAST_REFRESH_MS = 100
ErrorClass = Literal["retry", "abort", "fatal"]


class TransactionFailed(DependencyUnavailable):
    """The transaction did not commit, or its outcome is unknown. The sink has settled it
    (aborted, or dropped the producer: the next one fences it): resume from the offsets the
    broker holds."""


def error_class(error: KafkaError) -> ErrorClass:
    """librdkafka's transactional error classes: `retry` the same call, `abort` the
    transaction, or the producer is `fatal` and must be replaced. Anything else aborts."""
    if error.fatal():
        return "fatal"
    if error.txn_requires_abort():
        return "abort"
    return "retry" if error.retriable() else "abort"


def producer_config(
    bootstrap: str, transactional_id: str, timeout_s: float, record_limits: Sequence[int]
) -> dict[str, Any]:
    """The transactional producer: Java's key partitioning (so the accepted topic's order per
    device matches any Java reader's expectation), sized to the output topics' limits."""
    return {
        **rdkafka.config(bootstrap, "ingest-worker", rdkafka.ErrorLog(log)),
        "transactional.id": transactional_id,
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 5,
        "partitioner": "murmur2_random",
        "batch.size": min(MAX_BATCH_BYTES, *record_limits),
        "message.max.bytes": max(record_limits),
        "transaction.timeout.ms": TRANSACTION_TIMEOUT_MS,
        "socket.timeout.ms": max(1000, int(timeout_s * 1000)),
        "delivery.report.only.error": True,
        "retry.backoff.ms": TXN_RETRY_BACKOFF_MS,
        "topic.metadata.refresh.fast.interval.ms": METADATA_FAST_REFRESH_MS,
    }


class Sink:
    """The worker's transactional producer; replaced whenever librdkafka says it is fatal."""

    def __init__(self, config: Mapping[str, Any], timeout_s: float) -> None:
        self._config, self._timeout_s = dict(config), timeout_s
        self._producer: Producer | None = None
        self._open = False
        self._serial = 0  # of the transaction begun last
        self._lock = threading.Lock()
        self._thread = DaemonThread("kafka-producer")
        self._committing: concurrent.futures.Future[None] | None = None
        self.commit_s = 0.0  # how long the last commit that succeeded took in librdkafka

    async def ensure(self) -> None:
        """A producer with its transactions initialised (which fences a previous producer
        with this id and settles its open transaction); DependencyUnavailable if the broker
        does not answer."""
        if self._producer is None:
            await self._run(self._start_blocking)

    def send(self, records: Sequence[OutRecord]) -> None:
        """Add records to the open transaction (beginning one if needed). Called from the
        event loop: produce() only queues. On failure nothing blocks here: the transaction
        is left to `abort()` (or the producer dropped, if librdkafka says it is fatal)."""
        with self._lock:
            producer = self._require()
            try:
                self._begin(producer)
                for record in records:
                    _produce(producer, record)
                producer.poll(0)  # serve its log lines and error callbacks
            except KafkaException as exc:
                error: KafkaError = exc.args[0]
                if error_class(error) == "fatal":
                    self._drop()
                raise TransactionFailed(f"cannot queue the outputs: {error}") from exc

    def open_transaction(self) -> int | None:
        """The serial number of the open transaction (None: none is open): what a commit
        later must name, so that it never commits another one."""
        with self._lock:
            return self._serial if self._open else None

    def commit_soon(
        self, offsets: Mapping[Partition, int], group: object, serial: int | None
    ) -> asyncio.Future[None]:
        """Commit transaction `serial` (see `open_transaction`) with `offsets` on the sink's
        thread; the caller goes on meanwhile. The future raises TransactionFailed if it did
        not commit, and at once if that transaction is no longer the open one (a rebalance
        aborted it meanwhile)."""
        tps = [TopicPartition(tp.topic, tp.partition, offset) for tp, offset in offsets.items()]
        self._committing = self._thread.submit(self._commit_blocking, tps, group, serial)
        return asyncio.wrap_future(self._committing)

    async def abort(self) -> None:
        """Abort the open transaction, if any (dropping the producer if even that fails)."""
        await self._run(self.settle_blocking)

    def settle_blocking(self) -> None:
        """From any thread but the event loop's: wait for a commit in flight, then abort what
        is still open. A rebalance calls this before partitions change hands."""
        committing = self._committing
        if committing is not None:
            concurrent.futures.wait([committing])
        with self._lock:
            if self._open and self._producer is not None:
                self._abort_or_drop(self._producer)
            self._open = False

    def successor(self) -> Sink:
        """A fresh sink with the same settings, for when this one's thread is stuck in a
        librdkafka call: this one drops its producer once the call returns, and the
        successor's producer (same transactional id) fences it meanwhile."""
        self._thread.submit(self._drop_locked)
        self._thread.shutdown(wait=False)
        return type(self)(self._config, self._timeout_s)

    def _drop_locked(self) -> None:
        with self._lock:
            self._drop()

    async def close(self) -> None:
        """Abort anything open and stop the producer, within the timeout."""
        await self.abort()
        await self._run(self._close_blocking)
        self._thread.shutdown(wait=False)

    def _close_blocking(self) -> None:
        with self._lock:
            if self._producer is not None:
                self._producer.flush(self._timeout_s)
                self._drop()

    def _start_blocking(self) -> None:
        with self._lock:
            if self._producer is not None:
                return
            producer = Producer(self._config)
            try:
                producer.init_transactions(self._timeout_s)
            except KafkaException as exc:
                _bury(producer)
                raise DependencyUnavailable(f"cannot start the producer: {exc}") from exc
            self._producer, self._open = producer, False

    def _commit_blocking(
        self, offsets: list[TopicPartition], group: object, serial: int | None
    ) -> None:
        with self._lock:
            producer = self._require()
            if not self._open or serial != self._serial:
                raise TransactionFailed("the transaction to commit was aborted meanwhile")
            started = time.perf_counter()
            try:
                self._retrying(lambda t: producer.send_offsets_to_transaction(offsets, group, t))
                self._retrying(producer.commit_transaction)
            except KafkaException as exc:
                self._fail(producer, exc)
            self._open = False
            self.commit_s = time.perf_counter() - started

    def _fail(self, producer: Producer, exc: KafkaException) -> None:
        """Settle a failed transaction and raise TransactionFailed. Still retriable after the
        timeout means its outcome is unknown: only a new producer can settle it."""
        error: KafkaError = exc.args[0]
        log.warning("transaction failed", extra={"error": str(error), "class": error_class(error)})
        if error_class(error) == "abort":
            self._abort_or_drop(producer)
        else:
            self._drop()
        self._open = False
        raise TransactionFailed(f"transaction failed: {error}") from exc

    def _begin(self, producer: Producer) -> None:
        """Begin a transaction unless one is open (the lock is held)."""
        if not self._open:
            producer.begin_transaction()
            self._open = True
            self._serial += 1

    def _abort_or_drop(self, producer: Producer) -> None:
        """Abort the open transaction; if even that fails, drop the producer (the next one
        fences it and settles the transaction). The lock is held."""
        try:
            self._retrying(producer.abort_transaction)
        except KafkaException as exc:
            log.warning("abort failed; producer replaced", extra={"error": str(exc)})
            self._drop()

    def _retrying(self, call: Callable[[float], object]) -> None:
        """Call with the time left; repeat while librdkafka says the call may be retried."""
        deadline = time.monotonic() + self._timeout_s
        while True:
            try:
                call(max(0.1, deadline - time.monotonic()))
                return
            except KafkaException as exc:
                if error_class(exc.args[0]) != "retry" or time.monotonic() >= deadline:
                    raise
                time.sleep(0.1)

    def _require(self) -> Producer:
        if self._producer is None:
            raise TransactionFailed("no producer: it is being replaced")
        return self._producer

    def _drop(self) -> None:
        """Forget the producer without waiting for anything it holds."""
        if self._producer is not None:
            _bury(self._producer)
        self._producer, self._open = None, False

    async def _run(self, call: Callable[[], None]) -> None:
        await asyncio.get_running_loop().run_in_executor(self._thread, call)


# close() reports an abort it could not do (the producer being buried is past that) as a
# warning on stderr; the failure that got it buried is already logged.
warnings.filterwarnings("ignore", r"Producer .* failed during close", RuntimeWarning)


def _bury(producer: Producer) -> None:
    """Let go of a producer on a thread of its own: destroying one whose requests are stuck
    on an unresponsive broker blocks until they time out, and nobody should wait for that."""
    threading.Thread(
        target=_purge, args=(producer,), name="kafka-producer-exit", daemon=True
    ).start()


def _purge(producer: Producer) -> None:
    """Drop what it holds (purged messages settle at once), then destroy it here: close()
    flushes what is left, which after the purge is nothing."""
    with suppress(KafkaException, RuntimeError):
        producer.purge(in_queue=True, in_flight=True)
        producer.close()


def _produce(producer: Producer, record: OutRecord) -> None:
    headers: list[tuple[str, str | bytes | None]] = list(record.headers)
    while True:
        try:
            producer.produce(record.topic, record.value, record.key, headers=headers)
            return
        except BufferError:  # the local queue is full: let deliveries drain it
            producer.poll(0.05)
