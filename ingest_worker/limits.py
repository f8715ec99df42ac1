"""Record sizes against a topic's `max.message.bytes`: what Kafka counts for one record (pure),
and each topic's limit, read once from the broker when a process starts."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaError

from ingest_worker.errors import DependencyUnavailable

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
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap, request_timeout_ms=int(timeout_s * 1000)
    )
    try:
        async with asyncio.timeout(timeout_s):
            await admin.start()
            answers = await admin.describe_configs(
                [ConfigResource(ConfigResourceType.TOPIC, topic) for topic in topics]
            )
    except (KafkaError, TimeoutError) as exc:
        raise DependencyUnavailable(f"cannot read the topics' configuration: {exc!r}") from exc
    finally:
        await admin.close()
    found = {topic: DEFAULT_MAX_MESSAGE_BYTES for topic in topics}
    for answer in answers:
        for error_code, _, _, name, configs in answer.resources:
            limit = [int(v) for k, v, *_ in configs if k == "max.message.bytes"]
            if error_code == 0 and limit:
                found[name] = limit[0]
    return found
