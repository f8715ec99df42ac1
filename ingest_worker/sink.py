"""Exactly-once emit: one transactional producer per assigned input partition.

aiokafka has group-id based transactions only (no KIP-447), so the transactional id is tied
to the input partition: `{prefix}-{group}-{topic}-{partition}`. Whoever owns the partition
next starts a producer with the same id, which fences the previous owner and aborts its open
transaction. Per partition, a batch's outputs and its next offset commit in one transaction.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Sequence
from contextlib import suppress

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError, ProducerFenced
from aiokafka.structs import TopicPartition

from ingest_worker.encode import OutRecord
from ingest_worker.errors import DependencyUnavailable

log = logging.getLogger(__name__)


class PartitionLost(Exception):  # noqa: N818 - a state, like the broker's own error name
    """Another worker owns this partition now (we were fenced); drop our batch for it."""


def transactional_id(prefix: str, group_id: str, tp: TopicPartition) -> str:
    return f"{prefix}-{group_id}-{tp.topic}-{tp.partition}"


class PartitionSinks:
    """The producers of the partitions this worker owns."""

    def __init__(self, bootstrap: str, group_id: str, prefix: str, timeout_s: float) -> None:
        self._bootstrap, self._group_id, self._prefix = bootstrap, group_id, prefix
        self._timeout_s = timeout_s
        self._producers: dict[TopicPartition, AIOKafkaProducer] = {}
        # Two producers with one transactional id would fence each other: open one at a time.
        self._opening = asyncio.Lock()

    def owns(self, tp: TopicPartition) -> bool:
        return tp in self._producers

    def owned(self) -> set[TopicPartition]:
        return set(self._producers)

    async def open(self, partitions: Iterable[TopicPartition]) -> None:
        """Start a producer per partition; starting fences any previous owner."""
        await asyncio.gather(
            *(self._open_one(tp) for tp in partitions if tp not in self._producers)
        )

    async def _open_one(self, tp: TopicPartition) -> None:
        producer = AIOKafkaProducer(
            bootstrap_servers=self._bootstrap,
            transactional_id=transactional_id(self._prefix, self._group_id, tp),
            enable_idempotence=True,
            acks="all",
            linger_ms=0,
            max_batch_size=1024 * 1024,
            request_timeout_ms=int(self._timeout_s * 1000),
            client_id=f"ingest-worker-{tp.partition}",
        )
        try:
            async with asyncio.timeout(self._timeout_s):
                await producer.start()
        except (KafkaError, TimeoutError) as exc:
            await self._stop(producer)
            raise DependencyUnavailable(f"cannot start the producer of {tp}: {exc!r}") from exc
        self._producers[tp] = producer

    async def _stop(self, producer: AIOKafkaProducer) -> None:
        """Stop a producer, but never wait past the timeout: one whose sender died with the
        broker can wait forever for batches it will never send. An abandoned producer is
        harmless: the next one with its transactional id fences it."""
        with suppress(KafkaError, TimeoutError):
            async with asyncio.timeout(self._timeout_s):
                await producer.stop()

    async def close(self, partitions: Iterable[TopicPartition]) -> None:
        """Stop the producers of partitions we no longer own (an open transaction aborts)."""
        closing = [self._producers.pop(tp) for tp in list(partitions) if tp in self._producers]
        await asyncio.gather(*(self._stop(p) for p in closing))

    async def close_all(self) -> None:
        await self.close(list(self._producers))

    async def reset(self, tp: TopicPartition) -> None:
        """Replace a producer left in an unknown state by a failed transaction."""
        await self.close([tp])
        await self.open([tp])

    async def commit(
        self, tp: TopicPartition, records: Sequence[OutRecord], next_offset: int
    ) -> None:
        """Emit `records` and move the group's offset of `tp` to `next_offset`, atomically."""
        producer = self._producers.get(tp)
        if producer is None:
            raise PartitionLost(str(tp))
        try:
            async with asyncio.timeout(self._timeout_s):
                await self._transaction(producer, tp, records, next_offset)
        except ProducerFenced as exc:
            await self.close([tp])
            raise PartitionLost(str(tp)) from exc
        except (KafkaError, TimeoutError) as exc:
            raise DependencyUnavailable(f"transaction for {tp} failed: {exc!r}") from exc

    async def _transaction(
        self,
        producer: AIOKafkaProducer,
        tp: TopicPartition,
        records: Sequence[OutRecord],
        next_offset: int,
    ) -> None:
        # Not `producer.transaction()`: on a timeout its exit awaits an abort that, with the
        # broker gone, never returns. A failed transaction is left open instead; the caller
        # replaces the producer, and the new one (same transactional id) aborts it.
        await producer.begin_transaction()
        sent = [
            await producer.send(r.topic, r.value, key=r.key, headers=r.headers) for r in records
        ]
        await producer.send_offsets_to_transaction({tp: next_offset}, self._group_id)
        await asyncio.gather(*sent)
        await producer.commit_transaction()
