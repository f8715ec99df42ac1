"""What the raw topic's partitions answered the shim's producer lately. Pure: the producer's
delivery reports feed it; the publisher asks it whether to replace the producer and whether
the API is ready.

A partition that keeps failing while the broker should take its records calls for a new
producer: librdkafka recovers from almost everything by itself, and declares what it cannot
fatal, but the cost of missing a state it cannot leave is an API that needs a restart. So a
partition failing without a break for long enough gets one, whatever the reason, with a
growing pause between replacements (`Publisher`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from confluent_kafka import KafkaError

# A failure of the record itself, not of its partition: the partition is no less healthy.
RECORD_CODES = frozenset(
    {
        KafkaError.MSG_SIZE_TOO_LARGE,
        KafkaError.INVALID_MSG_SIZE,
        KafkaError.INVALID_MSG,
        KafkaError.INVALID_RECORD,
        KafkaError.RECORD_LIST_TOO_LARGE,
    }
)
# A record librdkafka never placed on a partition (its topic's metadata unknown).
UNASSIGNED = -1


@dataclass
class Deliveries:
    """Per partition, since when its deliveries have failed without a success between (absent:
    the last one succeeded), and when the last failure came. A failure more than `stale_s`
    after the one before starts a new run of failures: nothing was known in between."""

    stale_s: float
    failing_since: dict[int, float] = field(default_factory=dict)
    last_failure: dict[int, float] = field(default_factory=dict)

    def delivered(self, partition: int, error: KafkaError | None, now: float) -> None:
        """One delivery report (partition -1: the record was never placed on one)."""
        if error is None:
            for settled in (partition, UNASSIGNED):  # the topic's metadata is known again
                self.failing_since.pop(settled, None)
                self.last_failure.pop(settled, None)
            return
        if error.code() in RECORD_CODES:
            return
        previous = self.last_failure.get(partition)
        if previous is None or now - previous > self.stale_s:
            self.failing_since[partition] = now
        self.last_failure[partition] = now

    def failing(self, now: float) -> list[int]:
        """Partitions whose last delivery failed, within `stale_s` (older: nothing was sent
        there since, and nothing is known)."""
        return sorted(p for p, at in self.last_failure.items() if now - at <= self.stale_s)

    def stuck(self, now: float, after_s: float) -> list[int]:
        """Partitions failing without a break for `after_s`, and still failing lately."""
        failing = self.failing(now)
        return [p for p in failing if now - self.failing_since[p] >= after_s]

    def restarted(self, now: float) -> None:
        """A new producer took over: what still fails must fail for it, for the whole bound
        again, before it counts as stuck; until a success, it still counts as failing."""
        for partition in self.failing_since:
            self.failing_since[partition] = now
