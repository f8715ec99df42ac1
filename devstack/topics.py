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


async def ensure_topics(bootstrap: str, settings: Settings, partitions: int = 6) -> None:
    """The three topics of the pipeline, with `partitions` each; existing ones are kept."""
    admin = AdminClient(rdkafka.config(bootstrap, "ingest-worker-devstack", rdkafka.ErrorLog(log)))
    async with asyncio.timeout(TIMEOUT_S + 1.0):
        existing = (await asyncio.to_thread(admin.list_topics, timeout=TIMEOUT_S)).topics
        names = (settings.raw_topic, settings.accepted_topic, settings.rejected_topic)
        missing = [NewTopic(n, partitions, 1) for n in names if n not in existing]
        if not missing:
            return
        created = admin.create_topics(
            missing, operation_timeout=TIMEOUT_S, request_timeout=TIMEOUT_S
        )
        for answer in created.values():
            await _created(answer)


async def _created(answer: concurrent.futures.Future[None]) -> None:
    """Wait for one topic's creation; another replica may create it meanwhile, and theirs is
    as good as ours."""
    try:
        await asyncio.wrap_future(answer)
    except KafkaException as exc:
        if rdkafka.error_code(exc) != KafkaError.TOPIC_ALREADY_EXISTS:
            raise
