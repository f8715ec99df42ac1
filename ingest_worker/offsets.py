"""The one owner of the worker's per-partition state: which records are new, and what the
open Kafka transaction will commit. Pure: the worker feeds it what the consumer returned and
what the broker answered."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import NamedTuple


class Partition(NamedTuple):
    topic: str
    partition: int


@dataclass
class Offsets:
    """Per partition, the next offset to process; and, for the open transaction, the next
    offsets it carries and how many records it holds."""

    next: dict[Partition, int] = field(default_factory=dict)
    # What the broker is known to hold: offsets this worker committed, or read back and used.
    confirmed: dict[Partition, int] = field(default_factory=dict)
    # The first offset processed since the partition was assigned (where the client resumed).
    start: dict[Partition, int] = field(default_factory=dict)
    pending: dict[Partition, int] = field(default_factory=dict)
    pending_records: int = 0
    opened_at: float | None = None

    def fresh(self, tp: Partition, offset: int) -> bool:
        """Whether a consumed record is new: not below the partition's next offset (a record
        fetched before a rewind, consumed again after it, is not processed twice)."""
        expected = self.next.get(tp)
        if expected is not None and offset < expected:
            return False
        self.start.setdefault(tp, offset)
        return True

    def processed(self, last: Mapping[Partition, int], count: int, now: float) -> None:
        """A batch's outputs are in the open transaction: `last` offset per partition."""
        for tp, offset in last.items():
            self.next[tp] = self.pending[tp] = offset + 1
        self.pending_records += count
        if self.opened_at is None:
            self.opened_at = now

    def due(self, now: float, interval_s: float, max_records: int) -> bool:
        """Whether the open transaction should commit now."""
        if self.opened_at is None:
            return False
        return now - self.opened_at >= interval_s or self.pending_records >= max_records

    def take_pending(self) -> dict[Partition, int]:
        """The offsets the open transaction commits; the next one starts empty."""
        taken, self.pending = self.pending, {}
        self.pending_records, self.opened_at = 0, None
        return taken

    def committed(self, offsets: Mapping[Partition, int]) -> None:
        """A transaction with these offsets committed."""
        self.confirmed.update(offsets)

    def resume_points(self, answers: Mapping[Partition, int]) -> dict[Partition, int]:
        """Where each partition resumes after a transaction that did not commit, from the
        broker's committed offsets (negative: none). An answer below what this worker knows
        the broker holds is not believed (a coordinator still loading): Unsettled. With no
        commit at all, a partition resumes where it was first read; one never read stays."""
        points, stale = {}, []
        for tp, answer in answers.items():
            known = self.confirmed.get(tp)
            if known is not None and answer < known:
                stale.append(tp)
            elif answer >= 0:
                points[tp] = answer
            elif tp in self.start:
                points[tp] = self.start[tp]
        if stale:
            raise Unsettled(stale)
        return points

    def rewind(self, points: Mapping[Partition, int]) -> None:
        """Processing resumes from `points`; nothing is pending."""
        self.next = dict(points)
        self.confirmed.update(points)
        self.take_pending()

    def reassigned(self) -> None:
        """After a rebalance: the client resumes every partition from its committed offset;
        nothing this worker knew still holds."""
        self.next, self.confirmed, self.start = {}, {}, {}
        self.take_pending()


class Unsettled(Exception):  # noqa: N818 - a state of the broker, like its own error names
    """The broker's committed offsets for these partitions are behind what it is known to
    hold; ask again later."""
