"""What the raw topic's partitions answered the shim's producer lately. Pure: the producer's
delivery reports feed it, the publisher asks it whether to replace the producer and whether the
API is ready.

librdkafka's idempotent producer can get stuck on a partition after a broker dies with
records in flight: its sequence state for that partition no longer matches the broker's, and
every record sent there fails from then on while the other partitions work (the producer is
not declared failed, so nothing else would notice). Only a new producer (a new producer id)
gets that partition going again, so a partition failing without a break for long enough is
the signal to make one."""

from __future__ import annotations

from dataclasses import dataclass, field

from confluent_kafka import KafkaError

# Errors after which the idempotent producer's state for the partition is known not to come
# right by itself: replace the producer at once.
STUCK_CODES = frozenset(
    {
        KafkaError.OUT_OF_ORDER_SEQUENCE_NUMBER,
        KafkaError.UNKNOWN_PRODUCER_ID,
        KafkaError.INVALID_PRODUCER_EPOCH,
        KafkaError._INCONSISTENT,
    }
)


@dataclass
class Deliveries:
    """Per partition, since when its deliveries have failed without a success between (absent:
    the last one succeeded), and when the last failure came."""

    failing_since: dict[int, float] = field(default_factory=dict)
    last_failure: dict[int, float] = field(default_factory=dict)
    stuck_code: int | None = None

    def delivered(self, partition: int, error: KafkaError | None, now: float) -> None:
        """One delivery report (partition -1: the record never got one)."""
        if error is None:
            self.failing_since.pop(partition, None)
            self.last_failure.pop(partition, None)
            return
        self.failing_since.setdefault(partition, now)
        self.last_failure[partition] = now
        if error.code() in STUCK_CODES:
            self.stuck_code = error.code()

    def failing(self, now: float, recent_s: float) -> list[int]:
        """Partitions whose last delivery failed, within `recent_s` (older: nothing was sent
        there since, and nothing is known)."""
        return sorted(p for p, at in self.last_failure.items() if now - at <= recent_s)

    def stuck(self, now: float, after_s: float) -> list[int]:
        """Partitions failing without a break for `after_s` and still failing lately, or all
        that are failing once an error said the producer's state is broken."""
        failing = self.failing(now, after_s)
        if self.stuck_code is not None:
            return failing
        return [p for p in failing if now - self.failing_since[p] >= after_s]
