"""Create the raw, accepted and rejected topics when missing (local stack and tests)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from ingest_worker.core import rdkafka
from ingest_worker.core.config import Settings

log = logging.getLogger(__name__)

TIMEOUT_S = 30.0
MAX_REPLICAS = 3


async def ensure_topics(bootstrap: str, settings: Settings, partitions: int = 6) -> None:
    """The three topics of the pipeline, with `partitions` each; existing ones are kept."""
    admin = AdminClient(rdkafka.config(bootstrap, "ingest-worker-devstack", rdkafka.ErrorLog(log)))
    async with asyncio.timeout(TIMEOUT_S + 1.0):
        metadata = await asyncio.to_thread(admin.list_topics, timeout=TIMEOUT_S)
        replicas, config = replication(len(metadata.brokers))
        names = (settings.raw_topic, settings.accepted_topic, settings.rejected_topic)
        missing = [
            NewTopic(n, partitions, replicas, config=config)
            for n in names
            if n not in metadata.topics
        ]
        if not missing:
            return
        created = admin.create_topics(
            missing, operation_timeout=TIMEOUT_S, request_timeout=TIMEOUT_S
        )
        for answer in created.values():
            await _created(answer)


def replication(brokers: int) -> tuple[int, dict[str, str]]:
    """Replication factor and topic config on `brokers`: with three or more, three copies of
    which two must be in sync for an `acks=all` write, so a node may go without a write being
    lost or refused; below that, one copy per broker (one on a lone broker)."""
    replicas = min(MAX_REPLICAS, brokers)
    return replicas, {"min.insync.replicas": "2"} if replicas == MAX_REPLICAS else {}


async def _created(answer: concurrent.futures.Future[None]) -> None:
    """Wait for one topic's creation; another replica may create it meanwhile, and theirs is
    as good as ours."""
    try:
        await asyncio.wrap_future(answer)
    except KafkaException as exc:
        if rdkafka.error_code(exc) != KafkaError.TOPIC_ALREADY_EXISTS:
            raise
