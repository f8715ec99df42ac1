"""Record sizes against a topic's `max.message.bytes`: what Kafka counts for one record (pure),
and each topic's limit, read once from the broker when a process starts."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from collections.abc import Sequence

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, ConfigEntry, ConfigResource, ResourceType

from ingest_worker.core import rdkafka
from ingest_worker.core.errors import DependencyUnavailable

log = logging.getLogger(__name__)

# Kafka's default `message.max.bytes`, for a topic that does not exist yet.
DEFAULT_MAX_MESSAGE_BYTES = 1_048_588
# A record batch's header, and one record's length fields at their widest (varints).
BATCH_OVERHEAD_BYTES = 61
RECORD_OVERHEAD_BYTES = 40
HEADER_OVERHEAD_BYTES = 10


def record_size(
    key: bytes | None, value: bytes | None, headers: Sequence[tuple[str, bytes]]
) -> int:
    """An upper bound of the bytes the broker counts for this record alone in a batch
    (uncompressed, as our producers send): compare it with the topic's `max.message.bytes`."""
    size = BATCH_OVERHEAD_BYTES + RECORD_OVERHEAD_BYTES + len(key or b"") + len(value or b"")
    for name, data in headers:
        size += HEADER_OVERHEAD_BYTES + len(name.encode()) + len(data or b"")
    return size


async def max_message_bytes(
    bootstrap: str, topics: Sequence[str], timeout_s: float
) -> dict[str, int]:
    """Each topic's `max.message.bytes` (the broker default for a topic not created yet)."""
    admin = AdminClient(rdkafka.config(bootstrap, "ingest-worker-admin", rdkafka.ErrorLog(log)))
    asked = [ConfigResource(ResourceType.TOPIC, topic) for topic in topics]
    answers = admin.describe_configs(asked, request_timeout=timeout_s)
    try:
        async with asyncio.timeout(timeout_s + 1.0):
            return {r.name: await _limit(answer) for r, answer in answers.items()}
    except (KafkaException, TimeoutError) as exc:
        raise DependencyUnavailable(f"cannot read the topics' configuration: {exc!r}") from exc


async def _limit(answer: concurrent.futures.Future[dict[str, ConfigEntry]]) -> int:
    try:
        configs = await asyncio.wrap_future(answer)
    except KafkaException as exc:
        if rdkafka.error_code(exc) == KafkaError.UNKNOWN_TOPIC_OR_PART:
            return DEFAULT_MAX_MESSAGE_BYTES
        raise
    entry = configs.get("max.message.bytes")
    return int(entry.value) if entry is not None and entry.value else DEFAULT_MAX_MESSAGE_BYTES
