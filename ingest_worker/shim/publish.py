"""The shim's Kafka edge: records are published in Kafka transactions (group commit,
`committer.py`), so a 503 whose transaction was aborted means "not written", and nothing the
API answered 503 or 202 for is ever read twice by the worker (`read_committed`).

Two committers: the main one, and one for requests that touch a partition whose records failed
lately (`deliveries.py`). A transaction is all or nothing, so without the second, one partition
whose leader is gone would fail every request until Kafka moves it; with it, only the requests
for that partition wait on it, and its first success takes it back.

Two records of what partitions answered: `records`, each record's delivery report (the
partition's own health: which committer, and when to replace a producer), and `answers`, what
the last request that went to each partition was answered (readiness: a partition the API last
failed to write to counts as failing until it writes there again, whatever the cause)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from confluent_kafka import KafkaError, KafkaException

from ingest_worker.core import limits, partition
from ingest_worker.core.errors import DependencyUnavailable
from ingest_worker.core.raw import RawRecord
from ingest_worker.shim.committer import Committer, Request, Txn, says_nothing
from ingest_worker.shim.deliveries import UNASSIGNED, Deliveries

log = logging.getLogger(__name__)

# The producer's buffer per partition, when the topic's record limit is larger.
MAX_BATCH_BYTES = 512 * 1024
# librdkafka refuses a smaller `message.max.bytes`.
MIN_MESSAGE_MAX_BYTES = 1000
# A record must be acknowledged within this share of the publish timeout, so that its
# transaction is aborted, and its caller told "not written", before the caller gives up.
MESSAGE_TIMEOUT_SHARE = 0.6
# How long `ready()` waits for the broker's metadata.
READY_TIMEOUT_S = 2.0
# A partition whose deliveries have all failed this long gets the quarantine committer a new
# producer (deliveries.py); while failures go on, each further replacement waits twice as
# long, up to MAX_REPLACE_S.
STUCK_AFTER_S = 15.0
MAX_REPLACE_S = 300.0
# The same publish failure is logged again after this.
FAILURE_LOG_S = 10.0

# What a record acknowledged only after its publish timed out counts as for its partition.
LATE = KafkaError(KafkaError._TIMED_OUT, "acknowledged after the publish timed out")


class PublishFailed(DependencyUnavailable):
    """Kafka did not take the records: `written` False when surely none will be read (the
    transaction was aborted, or never begun), None when that is not known."""

    def __init__(self, message: str, written: bool | None) -> None:
        super().__init__(message)
        self.written = written


def producer_config(*, max_record_bytes: int, timeout_s: float, linger_ms: int) -> dict[str, Any]:
    """The librdkafka settings of the shim's transactional producers (each adds its own
    `transactional.id`), beside those all our clients share."""
    message_timeout_ms = max(1000, int(timeout_s * 1000 * MESSAGE_TIMEOUT_SHARE))
    return {
        "acks": "all",
        "enable.idempotence": True,
        # Kafka's Java default for keyed records (murmur2 of the key), so that a device hint
        # goes to the partition a gateway's Java client picks; librdkafka's own default is CRC32.
        "partitioner": "murmur2_random",
        "linger.ms": linger_ms,
        "batch.size": min(MAX_BATCH_BYTES, max_record_bytes),
        "message.max.bytes": max(MIN_MESSAGE_MAX_BYTES, max_record_bytes),
        # A record not acknowledged in time fails, and its transaction is aborted while its
        # caller still waits; the commit itself may take a second longer. A transaction left
        # open by a killed API process holds back read_committed readers of its partitions
        # until the broker aborts it: after this long, on its next check (every 10 s by
        # default: `transaction.abort.timed.out.transaction.cleanup.interval.ms`).
        "message.timeout.ms": message_timeout_ms,
        "transaction.timeout.ms": max(message_timeout_ms + 1000, int(timeout_s * 1000)),
        "retry.backoff.ms": 100,
    }


class Publisher:
    """Publishes raw records, all of a request or none; returns once they are committed."""

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        config: dict[str, Any],
        timeout_s: float,
        max_record_bytes: int = limits.DEFAULT_MAX_MESSAGE_BYTES,
        stuck_after_s: float = STUCK_AFTER_S,
    ) -> None:
        # Failures count as recent for two publish timeouts: a sender retrying after each
        # 503 brings the next one in time.
        self.records = Deliveries(stale_s=max(2 * timeout_s, 5.0))
        self.answers = Deliveries(stale_s=self.records.stale_s)
        abort_s = max(1.0, timeout_s / 2)
        self.main = Committer("main", bootstrap, topic, config, self._heard, abort_s)
        self.quarantine = Committer("quarantine", bootstrap, topic, config, self._heard, abort_s)
        self._topic, self._timeout_s = topic, timeout_s
        self._stuck_after_s = self._replace_after_s = stuck_after_s
        self.max_record_bytes = max_record_bytes
        self.partitions = 0  # the topic's partition count, as last read
        self._failures_logged: dict[str, float] = {}

    async def start(self, timeout_s: float) -> None:
        """Both committers' producers, and the topic's partitions; DependencyUnavailable when
        the broker does not answer within `timeout_s`."""
        try:
            await asyncio.gather(self.main.start(timeout_s), self.quarantine.start(timeout_s))
            await self._read_partitions(timeout_s)
        except KafkaException as exc:
            raise DependencyUnavailable(f"cannot reach Kafka: {exc.args[0]}") from exc

    def oversize(self, record: RawRecord) -> int | None:
        """The record's size when the topic cannot take it (it would fail on every retry),
        else None."""
        size = limits.record_size(record.key, record.value, record.headers)
        return size if size > self.max_record_bytes else None

    async def publish(self, records: Sequence[RawRecord]) -> None:
        """Publish the records in one transaction; raise PublishFailed when it was not
        committed within the timeout."""
        now = time.monotonic()
        self._replace_if_stuck(now)
        committer = self._committer_for(records, now)
        request = committer.submit(records, now + self._timeout_s)
        try:
            async with asyncio.timeout(self._timeout_s):
                outcome = await asyncio.shield(request.future)
        except TimeoutError as exc:
            request.abandoned = True  # if it commits even so, its partitions count it late
            committer.failed_at = time.monotonic()
            self._refused(records, LATE)
            self._log_failure("TIMED_OUT", f"not committed within {self._timeout_s} s")
            raise PublishFailed(
                f"Kafka did not acknowledge within {self._timeout_s} s", None
            ) from exc
        if outcome.written:
            if not self.records.failing(time.monotonic()):
                self._replace_after_s = self._stuck_after_s  # all well again
            return
        error = outcome.error or KafkaError(KafkaError._FAIL, "not committed")
        self._refused(records, error)
        self._log_failure(error.name(), error.str(), len(records))
        raise PublishFailed(f"Kafka did not acknowledge: {error}", outcome.written)

    def _refused(self, records: Sequence[RawRecord], error: KafkaError) -> None:
        """A request answered 503: each partition it went to failed, as far as its senders
        can tell (and until the API writes there again)."""
        now = time.monotonic()
        for p in {self._partition_of(r) for r in records}:
            self.answers.delivered(p, error, now)

    def _partition_of(self, record: RawRecord) -> int:
        if not self.partitions:
            return UNASSIGNED
        return partition.java_partition(record.key, self.partitions)

    def _committer_for(self, records: Sequence[RawRecord], now: float) -> Committer:
        """The quarantine committer when a record goes to a partition failing lately (or
        where records went unplaced), else the main one."""
        failing = set(self.records.failing(now))
        if not failing:
            return self.main
        if UNASSIGNED in failing or any(self._partition_of(r) in failing for r in records):
            return self.quarantine
        return self.main

    def _heard(self, batch: Sequence[Request], txn: Txn) -> None:
        """What a transaction's delivery reports say of each partition. For its health, a
        record the broker took says it works (whatever became of its transaction), one
        committed only after its caller gave up says it is too slow, one purged by an abort
        says nothing. For the answers, a committed record is a write there (the failures are
        noted as they are answered)."""
        now = time.monotonic()
        for report in txn.reports:
            error = report.error
            late = batch[report.request].abandoned
            if error is None and txn.fate == "committed":
                self.answers.delivered(report.partition, LATE if late else None, now)
                error = LATE if late else None
            elif error is not None and says_nothing(error):
                continue
            self.records.delivered(report.partition, error, now)

    def _log_failure(self, error: str, reason: str, records: int = 0) -> None:
        """Say why records were not committed: once per error every FAILURE_LOG_S."""
        now = time.monotonic()
        last = self._failures_logged.get(error)
        if last is not None and now - last < FAILURE_LOG_S:
            return
        self._failures_logged[error] = now
        log.warning(
            "publish failed",
            extra={
                "error": error,
                "reason": reason,
                "records": records,
                "failing_partitions": self.records.failing(now),
            },
        )

    def _replace_if_stuck(self, now: float) -> None:
        """A partition that keeps failing (`deliveries.py`) gets the quarantine committer,
        whose requests go there, a new producer, so that no process restart is needed."""
        stuck = self.records.stuck(now, self._replace_after_s)
        if not stuck:
            return
        log.warning("partitions keep failing", extra={"partitions": stuck})
        self.quarantine.replace("partitions keep failing")
        self.records.restarted(now)
        self._replace_after_s = min(2 * self._replace_after_s, MAX_REPLACE_S)

    async def close(self) -> None:
        """Finish the transactions under way (within the publish timeout), refuse the rest,
        and free the producers."""
        await asyncio.gather(
            self.main.close(self._timeout_s), self.quarantine.close(self._timeout_s)
        )

    async def ready(self) -> bool:
        """Whether publishing works as far as is known: the main producer exists and is not
        failed for good, no partition's latest record or request failed lately (a new
        producer inherits what still fails until it succeeds there), no committer's latest
        transaction failed lately, and the broker answers a metadata request for the topic
        now. It changes nothing: replacing a producer is for
        publishes."""
        if self.main.producer is None or self.main.errors.fatal is not None:
            return False
        now = time.monotonic()
        if self.answers.failing(now) or self.records.failing(now) or self._failed_lately(now):
            return False
        try:
            async with asyncio.timeout(READY_TIMEOUT_S + 0.5):
                return await self._read_partitions(READY_TIMEOUT_S)
        except (KafkaException, TimeoutError, RuntimeError):  # RuntimeError: retired, freed
            return False

    def _failed_lately(self, now: float) -> bool:
        """Whether a committer's latest transaction failed (or was not over when its caller
        gave up) within the window failures count in, whatever the partitions said."""
        stale_s = self.records.stale_s
        times = (self.main.failed_at, self.quarantine.failed_at)
        return any(at is not None and now - at <= stale_s for at in times)

    async def _read_partitions(self, timeout_s: float) -> bool:
        """Ask the broker for the topic's metadata; note its partition count. Whether the
        topic is there with its partitions."""
        producer = self.main.producer
        if producer is None:
            return False
        metadata = await asyncio.to_thread(producer.list_topics, self._topic, timeout_s)
        found = metadata.topics.get(self._topic)
        if found is None or found.error is not None or not found.partitions:
            return False
        self.partitions = len(found.partitions)
        return True


@asynccontextmanager
async def publisher(
    bootstrap: str,
    topic: str,
    *,
    timeout_s: float,
    linger_ms: int,
    stuck_after_s: float = STUCK_AFTER_S,
) -> AsyncIterator[Publisher]:
    """A started publisher for the life of the API process, sized to the topic's record
    limit (`max.message.bytes`, read once here); fails fast when Kafka does not answer."""
    found = await limits.max_message_bytes(bootstrap, [topic], max(timeout_s, 5.0))
    max_record_bytes = found[topic]
    config = producer_config(
        max_record_bytes=max_record_bytes, timeout_s=timeout_s, linger_ms=linger_ms
    )
    pub = Publisher(bootstrap, topic, config, timeout_s, max_record_bytes, stuck_after_s)
    try:
        await pub.start(max(timeout_s, 5.0))
        log.info("raw topic record limit", extra={"topic": topic, "max_bytes": max_record_bytes})
        yield pub
    finally:
        await pub.close()
