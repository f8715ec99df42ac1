"""The one owner of the worker's per-partition state: which records are new, and what the
open Kafka transaction will commit. Pure: the worker feeds it what the consumer returned and
what the broker answered."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

# Kafka's logical offset "the partition's first record" (librdkafka's OFFSET_BEGINNING).
OFFSET_BEGINNING = -2


class Partition(NamedTuple):
    topic: str
    partition: int


@dataclass
class Offsets:
    """Per partition, the next offset to process; and, for the open transaction, the next
    offsets it carries and how many records it holds."""

    next: dict[Partition, int] = field(default_factory=dict)
    # What the broker is known to hold: offsets this worker committed or read back from it.
    # Committed offsets only grow, so this stays true across rebalances.
    confirmed: dict[Partition, int] = field(default_factory=dict)
    pending: dict[Partition, int] = field(default_factory=dict)
    pending_records: int = 0
    opened_at: float | None = None

    def fresh(self, tp: Partition, offset: int) -> bool:
        """Whether a consumed record is new: not below the partition's next offset (a record
        fetched before a rewind, consumed again after it, is not processed twice)."""
        expected = self.next.get(tp)
        return expected is None or offset >= expected

    def processed(
        self,
        last: Mapping[Partition, int],
        count: int,
        now: float,
        positions: Mapping[Partition, int] | None = None,
    ) -> None:
        """A batch's outputs are in the open transaction: `last` offset per partition, and
        the consumer's position there just after the poll that returned them. A position
        beyond the last record is past what the consumer skipped after it (a transaction's
        commit marker, an aborted transaction's records): the partition resumes there, so
        the committed offset reaches the end of the partition and its lag can be 0."""
        positions = positions or {}
        for tp, offset in last.items():
            self.next[tp] = self.pending[tp] = max(offset + 1, positions.get(tp, -1))
        self.pending_records += count
        if self.opened_at is None:
            self.opened_at = now

    def due(self, now: float, interval_s: float, max_records: int, caught_up: bool = False) -> bool:
        """Whether the open transaction should commit now: the interval is up, it holds the
        most records, or the last poll came back short (it took all the consumer had: nothing
        gains from waiting, and the outputs become visible sooner). Below capacity that is
        after every batch, one commit per commit round trip; under a backlog batches come
        full and the interval or the record count decides."""
        if self.opened_at is None:
            return False
        return (
            caught_up or now - self.opened_at >= interval_s or self.pending_records >= max_records
        )

    def take_pending(self) -> dict[Partition, int]:
        """The offsets the open transaction commits; the next one starts empty."""
        taken, self.pending = self.pending, {}
        self.pending_records, self.opened_at = 0, None
        return taken

    def committed(self, offsets: Mapping[Partition, int]) -> None:
        """A transaction with these offsets committed."""
        self.confirmed.update(offsets)

    def resume_points(self, answers: Mapping[Partition, int]) -> dict[Partition, int]:
        """Where each assigned partition resumes after a transaction that did not commit: the
        broker's committed offset, or the beginning (`OFFSET_BEGINNING`) where it holds none,
        as a new group would. An answer below what the broker is known to hold is not
        believed (a coordinator still loading): Unsettled, ask again."""
        points, stale = {}, []
        for tp, answer in answers.items():
            known = self.confirmed.get(tp)
            if known is not None and answer < known:
                stale.append(tp)
            else:
                points[tp] = answer if answer >= 0 else OFFSET_BEGINNING
        if stale:
            raise Unsettled(stale)
        return points

    def rewind(self, points: Mapping[Partition, int]) -> None:
        """Processing resumes from `points`; nothing is pending."""
        self.next = {tp: offset for tp, offset in points.items() if offset >= 0}
        self.confirmed.update(self.next)
        self.take_pending()

    def reassigned(self) -> None:
        """After a rebalance: the open transaction was aborted, and where each partition
        resumes is only known once read back (`rewind`)."""
        self.next = {}
        self.take_pending()


class Unsettled(Exception):  # noqa: N818 - a state of the broker, like its own error names
    """The broker's committed offsets for these partitions are behind what it is known to
    hold; ask again later."""
