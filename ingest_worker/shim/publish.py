"""The shim's Kafka edge: an `acks=all` librdkafka producer that sends each record once, with a
bounded wait per publish. The producer is polled on the event loop's own thread, so its
delivery reports settle their futures directly (measured: cheaper than a polling thread handing
them over).

Once, not idempotent: librdkafka's idempotent producer retries by itself, and after a record
times out it bumps its epoch and sends again, under new sequence numbers, records of other
partitions whose first send may already be in the log (librdkafka#4953). The chaos soak caught
it writing one record twice, from one try of one request answered 202. A record sent once is in
the log once at most. What the broker refused without appending it (no leader, too few
replicas) is sent again here, as a new record, while the publish has time; any other failure
is the caller's 503, and its retry (with an Idempotency-Key) the way to try again."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, cast

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from ingest_worker.core import limits, rdkafka
from ingest_worker.core.errors import DependencyUnavailable
from ingest_worker.core.raw import RawRecord
from ingest_worker.shim.deliveries import UNASSIGNED, Deliveries

log = logging.getLogger(__name__)

# The producer's buffer per partition, when the topic's record limit is larger.
MAX_BATCH_BYTES = 512 * 1024
# librdkafka refuses a smaller `message.max.bytes`.
MIN_MESSAGE_MAX_BYTES = 1000
# How often the producer is polled while records are in flight, and otherwise.
PUMP_S = 0.001
IDLE_POLL_S = 1.0
# How long `ready()` waits for the broker's metadata.
READY_TIMEOUT_S = 2.0
# Pause before retrying a record that found librdkafka's local queue full.
QUEUE_FULL_PAUSE_S = 0.005
# Pause before sending again records the broker did not append.
RESEND_PAUSE_S = 0.1
# Errors with which the broker refused a record before appending it: sending it again cannot
# make a second copy.
NOT_APPENDED = frozenset(
    {
        KafkaError.NOT_LEADER_FOR_PARTITION,
        KafkaError.LEADER_NOT_AVAILABLE,
        KafkaError.UNKNOWN_TOPIC_OR_PART,
        KafkaError.NOT_ENOUGH_REPLICAS,
    }
)
# A partition whose deliveries have all failed this long gets a new producer (deliveries.py);
# while failures go on, each further replacement waits twice as long, up to MAX_REPLACE_S.
STUCK_AFTER_S = 15.0
MAX_REPLACE_S = 300.0
# A replaced producer's records in flight get this long beyond the publish timeout to settle
# before it is purged and freed.
RETIRE_GRACE_S = 2.0
# The same publish failure is logged again after this.
FAILURE_LOG_S = 10.0

_Headers = list[tuple[str, str | bytes | None]]
# What a record acknowledged only after its publish timed out counts as for its partition.
LATE = KafkaError(KafkaError._TIMED_OUT, "acknowledged after the publish timed out")


def producer_config(*, max_record_bytes: int, timeout_s: float, linger_ms: int) -> dict[str, Any]:
    """The librdkafka settings of the shim's producer, beside those all our clients share."""
    return {
        "acks": "all",
        # Each record goes out in one produce request, never again (see above).
        "enable.idempotence": False,
        "retries": 0,
        "max.in.flight.requests.per.connection": 5,
        # Kafka's Java default for keyed records (murmur2 of the key), so that a device hint
        # goes to the partition a gateway's Java client picks; librdkafka's own default is CRC32.
        "partitioner": "murmur2_random",
        "linger.ms": linger_ms,
        "batch.size": min(MAX_BATCH_BYTES, max_record_bytes),
        "message.max.bytes": max(MIN_MESSAGE_MAX_BYTES, max_record_bytes),
        # A record still unacknowledged when its publish gave up fails instead of lingering.
        "message.timeout.ms": max(1000, int(timeout_s * 1000)),
        "retry.backoff.ms": 100,
    }


class PublishFailed(DependencyUnavailable):
    """Kafka did not take the records: `written` False when surely none of them is in the
    log (each was refused before it was appended, or never sent), None when that is not
    known."""

    def __init__(self, message: str, written: bool | None) -> None:
        super().__init__(message)
        self.written = written


@dataclass
class Sent:
    """What a publish has sent so far: whether a record was acknowledged, and whether records
    are on their way (a publish that gives up then cannot tell whether they were written)."""

    acknowledged: bool = False
    in_flight: bool = False

    def written(self) -> bool | None:
        return None if self.acknowledged or self.in_flight else False


class _Client:
    """One librdkafka producer, polled on the event loop: every PUMP_S while records are in
    flight (each delivery report settles its record's future), else every IDLE_POLL_S for
    librdkafka's error reports. Nothing else polls it, so no callback runs on another thread."""

    def __init__(self, bootstrap: str, config: dict[str, Any], deliveries: Deliveries) -> None:
        self.errors = rdkafka.ErrorLog(log)
        options = rdkafka.config(bootstrap, "ingest-worker-api", self.errors)
        self.producer = Producer({**options, **config})
        self.deliveries = deliveries  # the publisher's, across its producers
        self.current = True  # a retired one's late reports are of records sent before
        self._loop = asyncio.get_running_loop()
        self._pump: asyncio.Task[None] | None = None
        self._idle = self._loop.create_task(self._poll_idle())

    def send(self, topic: str, record: RawRecord) -> asyncio.Future[KafkaError | None]:
        """Queue one record; its future gets the delivery error, None once acknowledged.
        Raises BufferError when librdkafka's queue is full, KafkaException when it refuses."""
        future: asyncio.Future[KafkaError | None] = self._loop.create_future()
        deliveries = self.deliveries

        def delivered(error: KafkaError | None, message: Message) -> None:
            if self.current:  # acknowledged after its publish gave up: failed, to the caller
                late = error or (LATE if future.done() else None)
                partition = message.partition()  # None for a record never placed
                placed = UNASSIGNED if partition is None else partition
                deliveries.delivered(placed, late, time.monotonic())
            if not future.done():  # else its publish gave up
                future.set_result(error)

        headers = cast("_Headers", record.headers)  # the same list; librdkafka takes str too
        self.producer.produce(
            topic, record.value, record.key, headers=headers, on_delivery=delivered
        )
        if self._pump is None:
            self._pump = self._loop.create_task(self._pump_reports())
        return future

    async def _pump_reports(self) -> None:
        try:
            while len(self.producer):  # queued, in flight, or reports not yet served
                await asyncio.sleep(PUMP_S)
                self.producer.poll(0)
        finally:
            self._pump = None

    async def _poll_idle(self) -> None:
        while True:
            await asyncio.sleep(IDLE_POLL_S)
            self.producer.poll(0)

    async def close(self, flush_s: float) -> None:
        """Deliver what the broker takes within `flush_s`, fail the rest, free the producer."""
        if self._pump is not None:  # it runs until nothing is left
            await asyncio.wait([self._pump], timeout=flush_s)
        for task in (self._idle, self._pump):
            if task is not None:
                task.cancel()
        left = len(self.producer)
        if left:
            log.warning("records not acknowledged at shutdown", extra={"count": left})
            self.producer.purge()  # in flight: purged by librdkafka's broker threads, later
            deadline = time.monotonic() + RETIRE_GRACE_S
            while len(self.producer) and time.monotonic() < deadline:
                await asyncio.sleep(PUMP_S)
                self.producer.poll(0)
        if len(self.producer) == 0:  # else close() would wait for them without a bound
            await asyncio.to_thread(self.producer.close)


class Publisher:
    """Publishes raw records; returns only once the broker acknowledged every one."""

    def __init__(
        self,
        new_client: Callable[[Deliveries], _Client],
        topic: str,
        timeout_s: float,
        max_record_bytes: int = limits.DEFAULT_MAX_MESSAGE_BYTES,
        stuck_after_s: float = STUCK_AFTER_S,
    ) -> None:
        # Failures count as recent for two publish timeouts: a sender retrying after each
        # 503 brings the next one in time.
        self.deliveries = Deliveries(stale_s=max(2 * timeout_s, 5.0))
        self._new_client, self._client = new_client, new_client(self.deliveries)
        self._topic, self._timeout_s = topic, timeout_s
        self._stuck_after_s = self._replace_after_s = stuck_after_s
        self.max_record_bytes = max_record_bytes
        self._failures_logged: dict[str, float] = {}
        self._retiring: set[asyncio.Task[None]] = set()

    def oversize(self, record: RawRecord) -> int | None:
        """The record's size when the topic cannot take it (it would fail on every retry),
        else None."""
        size = limits.record_size(record.key, record.value, record.headers)
        return size if size > self.max_record_bytes else None

    async def publish(self, records: Sequence[RawRecord]) -> None:
        """Send all records (batched together), and again those the broker refused without
        appending them, until every one is acknowledged; raise PublishFailed on any other
        failure, or when the timeout is up."""
        client = self._working_client()
        unsent, sent = list(records), Sent()
        try:
            async with asyncio.timeout(self._timeout_s):
                while unsent:
                    errors = await self._send_round(client, unsent, sent)
                    unsent = [r for r, e in zip(unsent, errors, strict=True) if e is not None]
                    if unsent:
                        await asyncio.sleep(RESEND_PAUSE_S)
        except TimeoutError as exc:
            self._log_failure("TIMED_OUT", f"no acknowledgement within {self._timeout_s} s")
            raise PublishFailed(
                f"Kafka did not acknowledge within {self._timeout_s} s", sent.written()
            ) from exc
        except (KafkaException, RuntimeError) as exc:  # RuntimeError: replaced and freed
            raise PublishFailed(f"Kafka refused the record: {exc}", sent.written()) from exc
        if not self.deliveries.failing(time.monotonic()):
            self._replace_after_s = self._stuck_after_s  # all well again

    async def _send_round(
        self, client: _Client, records: Sequence[RawRecord], sent: Sent
    ) -> list[KafkaError | None]:
        """Send the records once; their delivery errors, each None once acknowledged, or
        PublishFailed at the first error that may have left a record in the log."""
        sent.in_flight = True
        pending = await self._send_all(client, records)
        one = len(pending) == 1  # a lone record skips gather's overhead
        errors = [await pending[0]] if one else list(await asyncio.gather(*pending))
        sent.in_flight = False
        sent.acknowledged |= any(error is None for error in errors)
        failed = [e for e in errors if e is not None and e.code() not in NOT_APPENDED]
        if failed:
            self._log_failure(failed[0].name(), failed[0].str(), len(failed))
            raise PublishFailed(f"Kafka did not acknowledge: {failed[0]}", None)
        refused = [e for e in errors if e is not None]
        if refused:
            self._log_failure(refused[0].name(), "not appended: sending again", len(refused))
        return errors

    def _log_failure(self, error: str, reason: str, records: int = 0) -> None:
        """Say why records were not acknowledged: once per error every FAILURE_LOG_S."""
        now = time.monotonic()
        last = self._failures_logged.get(error)
        if last is not None and now - last < FAILURE_LOG_S:
            return
        self._failures_logged[error] = now
        failing = self.deliveries.failing(now)
        log.warning(
            "publish failed",
            extra={
                "error": error,
                "reason": reason,
                "records": records,
                "failing_partitions": failing,
            },
        )

    async def _send_all(
        self, client: _Client, records: Sequence[RawRecord]
    ) -> list[asyncio.Future[KafkaError | None]]:
        """Queue every record; when librdkafka's queue is full, wait for room (the caller's
        timeout bounds the wait)."""
        pending = []
        for record in records:
            while True:
                try:
                    pending.append(client.send(self._topic, record))
                    break
                except BufferError:
                    await asyncio.sleep(QUEUE_FULL_PAUSE_S)
        return pending

    def _working_client(self) -> _Client:
        """The producer, replaced first if librdkafka declared it failed for good, or if a
        partition's deliveries keep failing (`deliveries.py`), so that no process restart is
        needed. The swap is immediate; the old one finishes its records in flight meanwhile."""
        now, client = time.monotonic(), self._client
        if client.errors.fatal is not None:
            self._replace(str(client.errors.fatal), [], now)
        elif stuck := self.deliveries.stuck(now, self._replace_after_s):
            self._replace("partitions keep failing", stuck, now)
            self._replace_after_s = min(2 * self._replace_after_s, MAX_REPLACE_S)
        return self._client

    def _replace(self, why: str, partitions: list[int], now: float) -> None:
        retired, self._client = self._client, self._new_client(self.deliveries)
        retired.current = False
        self.deliveries.restarted(now)
        log.warning("Kafka producer replaced", extra={"error": why, "partitions": partitions})
        task = asyncio.get_running_loop().create_task(retired.close(self._timeout_s))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def close(self) -> None:
        """Deliver what the broker takes within the publish timeout, then free the producers
        (this one and any being retired)."""
        await self._client.close(self._timeout_s)
        if self._retiring:
            await asyncio.wait(self._retiring, timeout=self._timeout_s + RETIRE_GRACE_S)

    async def first_metadata(self, timeout_s: float) -> None:
        """Fail fast when the broker does not answer, and learn the topic's partitions before
        the first request needs them."""
        try:
            await asyncio.to_thread(self._client.producer.list_topics, self._topic, timeout_s)
        except KafkaException as exc:
            raise DependencyUnavailable(f"cannot reach Kafka: {exc.args[0]}") from exc

    async def ready(self) -> bool:
        """Whether publishing works as far as is known: the producer is not failed for good,
        no partition's latest delivery failed lately (a new producer inherits what still
        fails until it succeeds there), and the broker answers a metadata request for the
        topic now. It changes nothing: replacing a producer is for publishes."""
        client = self._client
        if client.errors.fatal is not None:
            return False
        if self.deliveries.failing(time.monotonic()):
            return False
        try:
            async with asyncio.timeout(READY_TIMEOUT_S + 0.5):
                metadata = await asyncio.to_thread(
                    client.producer.list_topics, self._topic, READY_TIMEOUT_S
                )
        except (KafkaException, TimeoutError, RuntimeError):  # RuntimeError: replaced, freed
            return False
        found = metadata.topics.get(self._topic)
        return found is not None and found.error is None and bool(found.partitions)


@asynccontextmanager
async def publisher(
    bootstrap: str,
    topic: str,
    *,
    timeout_s: float,
    linger_ms: int,
    stuck_after_s: float = STUCK_AFTER_S,
) -> AsyncIterator[Publisher]:
    """A started producer for the life of the API process, sized to the topic's record limit
    (`max.message.bytes`, read once here); fails fast when Kafka does not answer."""
    found = await limits.max_message_bytes(bootstrap, [topic], max(timeout_s, 5.0))
    max_record_bytes = found[topic]
    config = producer_config(
        max_record_bytes=max_record_bytes, timeout_s=timeout_s, linger_ms=linger_ms
    )
    new_client = functools.partial(_Client, bootstrap, config)
    pub = Publisher(new_client, topic, timeout_s, max_record_bytes, stuck_after_s)
    try:
        await pub.first_metadata(max(timeout_s, 5.0))
        log.info("raw topic record limit", extra={"topic": topic, "max_bytes": max_record_bytes})
        yield pub
    finally:
        await pub.close()
