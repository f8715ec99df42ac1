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
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError, ProducerFenced
from aiokafka.structs import TopicPartition

from ingest_worker.encode import OutRecord
from ingest_worker.errors import DependencyUnavailable

log = logging.getLogger(__name__)

MAX_BATCH_BYTES = 1024 * 1024


class PartitionLost(Exception):  # noqa: N818 - a state, like the broker's own error name
    """Another worker owns this partition now (we were fenced); drop our batch for it."""


def transactional_id(prefix: str, group_id: str, tp: TopicPartition) -> str:
    return f"{prefix}-{group_id}-{tp.topic}-{tp.partition}"


class PartitionSinks:
    """The producers of the partitions this worker owns."""

    def __init__(
        self,
        bootstrap: str,
        group_id: str,
        prefix: str,
        timeout_s: float,
        record_limits: tuple[int, ...] = (MAX_BATCH_BYTES,),
    ) -> None:
        self._bootstrap, self._group_id, self._prefix = bootstrap, group_id, prefix
        self._timeout_s = timeout_s
        # Records are checked against their topic's limit before they get here; a batch of
        # several must stay under the smallest limit, one record under the largest.
        self._max_request_bytes = max(record_limits)
        self._max_batch_bytes = min(MAX_BATCH_BYTES, *record_limits)
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
            max_batch_size=self._max_batch_bytes,
            max_request_size=self._max_request_bytes,
            request_timeout_ms=int(self._timeout_s * 1000),
            client_id=f"ingest-worker-{tp.partition}",
        )
        try:
            async with asyncio.timeout(self._timeout_s):
                await producer.start()
        except (KafkaError, TimeoutError) as exc:
            await self._kill(producer)
            raise DependencyUnavailable(f"cannot start the producer of {tp}: {exc!r}") from exc
        self._producers[tp] = producer

    async def _stop(self, producer: AIOKafkaProducer) -> None:
        """Stop a producer between transactions: flush and close, but never wait past the
        timeout (a producer whose broker is gone can wait forever); then kill it."""
        with suppress(KafkaError, TimeoutError):
            async with asyncio.timeout(self._timeout_s):
                await producer.stop()
                return
        await self._kill(producer)

    async def _kill(self, producer: AIOKafkaProducer) -> None:
        """Stop a producer without flushing. aiokafka's stop() flushes first and, cancelled
        while flushing, leaves the sender task running (aio-libs/aiokafka#1101): a zombie that
        retries its sends, or even commits its transaction, once the broker is back. So the
        sender is cancelled and the connections closed; the unsent batches are dropped."""
        sender: asyncio.Task[None] | None = producer._sender.sender_task
        for _ in range(10):
            if sender is None or sender.done():
                break
            sender.cancel()  # again if it was awaiting a request: that request is cancelled too
            await asyncio.wait([sender], timeout=1)
        with suppress(KafkaError, TimeoutError):
            async with asyncio.timeout(self._timeout_s):
                await producer.client.close()
        producer._closed = True  # as stop() would mark it, so it is not reported unclosed

    async def close(self, partitions: Iterable[TopicPartition]) -> None:
        """Stop the producers of partitions we no longer own."""
        closing = [self._producers.pop(tp) for tp in list(partitions) if tp in self._producers]
        await asyncio.gather(*(self._stop(p) for p in closing))

    async def close_all(self) -> None:
        await self.close(list(self._producers))

    async def commit(
        self, tp: TopicPartition, records: Sequence[OutRecord], next_offset: int
    ) -> None:
        """Emit `records` and move the group's offset of `tp` to `next_offset`, atomically.

        A failed transaction's outcome is unknown: the broker may still commit it. So its
        producer is killed and the partition given up; taking it again (`open`, then reading
        the committed offset) fences the producer and settles the transaction first."""
        producer = self._producers.get(tp)
        if producer is None:
            raise PartitionLost(str(tp))
        try:
            async with asyncio.timeout(self._timeout_s):
                await self._transaction(producer, tp, records, next_offset)
        except ProducerFenced as exc:
            await self._give_up(tp, producer)
            raise PartitionLost(str(tp)) from exc
        except (KafkaError, TimeoutError) as exc:
            await self._give_up(tp, producer)
            raise DependencyUnavailable(f"transaction for {tp} failed: {exc!r}") from exc

    async def _give_up(self, tp: TopicPartition, producer: AIOKafkaProducer) -> None:
        if self._producers.get(tp) is producer:
            del self._producers[tp]
        await self._kill(producer)

    async def _transaction(
        self,
        producer: AIOKafkaProducer,
        tp: TopicPartition,
        records: Sequence[OutRecord],
        next_offset: int,
    ) -> None:
        # Not `producer.transaction()`: on a timeout its exit awaits an abort that, with the
        # broker gone, never returns. A failed transaction is left to the broker instead: the
        # next producer with this transactional id completes or aborts it.
        await producer.begin_transaction()
        sent: list[asyncio.Future[Any]] = []
        try:
            for r in records:
                sent.append(await producer.send(r.topic, r.value, key=r.key, headers=r.headers))
            await producer.send_offsets_to_transaction({tp: next_offset}, self._group_id)
            await asyncio.gather(*sent)
            await producer.commit_transaction()
        except BaseException:
            for future in sent:  # their errors are this one; nobody else will read them
                future.add_done_callback(_quiet)
            raise


def _quiet(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()
