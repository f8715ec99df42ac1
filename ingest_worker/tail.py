"""`ingest-worker tail accepted|rejected`: follow an output topic, one JSON object per line."""

from __future__ import annotations

import sys
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer

from ingest_worker.config import Settings
from ingest_worker.encode import read_accepted


def render(which: str, value: bytes) -> bytes:
    """One output record as a JSON line: accepted ones decoded from Avro."""
    if which == "rejected":
        return value
    try:
        return orjson.dumps(read_accepted(value), default=str)
    except ValueError as exc:
        return orjson.dumps({"undecodable": str(exc)})


async def tail(settings: Settings, which: str, *, from_end: bool) -> None:
    topic = settings.accepted_topic if which == "accepted" else settings.rejected_topic
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=settings.kafka_bootstrap_servers,
        isolation_level="read_committed",
        auto_offset_reset="latest" if from_end else "earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        async for record in consumer:
            _write(render(which, record.value or b""))
    finally:
        await consumer.stop()


def _write(line: Any) -> None:
    sys.stdout.buffer.write(line + b"\n")
    sys.stdout.buffer.flush()
