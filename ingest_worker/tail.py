"""`ingest-worker tail accepted|rejected`: follow an output topic, one JSON object per line."""

from __future__ import annotations

import asyncio
import logging
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import orjson
from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, Consumer, TopicPartition

from ingest_worker.core import rdkafka
from ingest_worker.core.config import Settings
from ingest_worker.core.encode import read_accepted

log = logging.getLogger(__name__)

METADATA_TIMEOUT_S = 10.0
POLL_S = 0.5
BATCH_MAX_RECORDS = 500


def render(which: str, value: bytes) -> bytes:
    """One output record as a JSON line: accepted ones decoded from Avro."""
    if which == "rejected":
        return value
    try:
        return orjson.dumps(read_accepted(value), default=str)
    except ValueError as exc:
        return orjson.dumps({"undecodable": str(exc)})


async def tail(settings: Settings, which: str, *, from_end: bool) -> None:
    """Print every partition of the topic (those it has now) from its start or its end. The
    consumer is assigned its partitions, so it joins no group and commits nothing."""
    topic = settings.accepted_topic if which == "accepted" else settings.rejected_topic
    bootstrap = settings.kafka_bootstrap_servers or ""
    consumer = Consumer(
        {
            **rdkafka.config(bootstrap, "ingest-worker-tail", rdkafka.ErrorLog(log)),
            "group.id": "ingest-worker-tail",  # the client wants one; never joined
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
        }
    )
    loop = asyncio.get_running_loop()
    # One thread for every blocking call, so that close() never runs beside a consume().
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="tail") as blocking:
        try:
            metadata = await loop.run_in_executor(
                blocking, consumer.list_topics, topic, METADATA_TIMEOUT_S
            )
            start = OFFSET_END if from_end else OFFSET_BEGINNING
            partitions = metadata.topics[topic].partitions
            consumer.assign([TopicPartition(topic, p, start) for p in partitions])
            while True:
                batch = await loop.run_in_executor(
                    blocking, consumer.consume, BATCH_MAX_RECORDS, POLL_S
                )
                for message in batch:
                    if message.error() is None:
                        _write(render(which, message.value() or b""))
                    else:
                        log.warning("cannot read the topic", extra={"error": message.error()})
        finally:
            await loop.run_in_executor(blocking, consumer.close)


def _write(line: Any) -> None:
    sys.stdout.buffer.write(line + b"\n")
    sys.stdout.buffer.flush()
