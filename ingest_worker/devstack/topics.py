"""Create the raw, accepted and rejected topics when missing (local stack and tests)."""

from __future__ import annotations

import contextlib

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from ingest_worker.config import Settings


async def ensure_topics(bootstrap: str, settings: Settings, partitions: int = 6) -> None:
    """The three topics of the pipeline, with `partitions` each; existing ones are kept."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        names = (settings.raw_topic, settings.accepted_topic, settings.rejected_topic)
        missing = [NewTopic(n, partitions, 1) for n in names if n not in existing]
        if missing:
            # Another replica may create them meanwhile; theirs are as good as ours.
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics(missing)
    finally:
        await admin.close()
