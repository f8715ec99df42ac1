"""Events/s of one worker process with exactly-once on, against a baseline measured in the
same run: the same consumer and per-partition transactional producers re-producing each raw
record unchanged (no decoding, validation, database or encoding).

    .venv/bin/python bench/worker.py [--events 100000]

Both read the same pre-filled raw topic (6 partitions) with their own consumer group; the
rate is taken from the group's committed offsets, from the first commit to the last.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import orjson
import psycopg
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import GroupCoordinatorNotAvailableError

from ingest_worker.config import Settings
from ingest_worker.devstack.stack import services
from ingest_worker.devstack.topics import ensure_topics
from ingest_worker.migrate import migrate

HERE = Path(__file__).resolve().parent
DEVICES = 2000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=100_000)
    args = parser.parse_args()
    base = Settings.from_env(os.environ)
    work = (base.stack_dir / "bench-worker").resolve()
    shutil.rmtree(work, ignore_errors=True)
    with services(base, work, durable=True) as found:
        bootstrap, database_url = found.kafka_bootstrap_servers, found.database_url
        settings = dataclasses.replace(
            base, kafka_bootstrap_servers=bootstrap, database_url=database_url
        )
        asyncio.run(migrate(database_url, lock_timeout_s=30))
        asyncio.run(ensure_topics(bootstrap, settings))
        integration_id, type_id = _event_type(database_url)
        asyncio.run(_fill(bootstrap, settings.raw_topic, integration_id, type_id, args.events))
        baseline = _measure(
            settings, "baseline", [sys.executable, str(HERE / "baseline_worker.py")], args.events
        )
        worker = _measure(
            settings, "worker", [sys.executable, "-m", "ingest_worker", "worker"], args.events
        )
    print(f"\n{args.events} events, 6 partitions, one process each, exactly-once, this machine")
    print(f"{'process':<40} {'events/s':>10}")
    print(f"{'baseline: consume + re-produce (EOS)':<40} {baseline:>10.0f}")
    print(f"{'ingest-worker worker':<40} {worker:>10.0f}")


def _event_type(database_url: str) -> tuple[int, int]:
    schema = {
        "type": "object",
        "required": ["store", "lane"],
        "properties": {
            "store": {"type": "string"},
            "lane": {"type": "integer"},
            "total": {"type": "number"},
        },
    }
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "INSERT INTO integrations (name) VALUES ('bench') RETURNING id"
        ).fetchone()
        assert row is not None
        typed = conn.execute(
            "INSERT INTO event_types (integration_id, name, schema, external_device_id_template) "
            "VALUES (%s, 'sale', %s, '{store}:{lane}') RETURNING id",
            (row[0], orjson.dumps(schema).decode()),
        ).fetchone()
        assert typed is not None
        return int(row[0]), int(typed[0])


async def _fill(bootstrap: str, topic: str, integration_id: int, type_id: int, count: int) -> None:
    """Raw events as the API writes them: a third by external id, the rest by template."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, max_batch_size=512 * 1024)
    await producer.start()
    try:
        pending = []
        for n in range(count):
            event: dict[str, object] = {
                "integration_event_type_id": type_id,
                "timestamp": "2024-06-01T12:00:00.123Z",
                "attributes": {
                    "store": f"S{n % 97}",
                    "lane": n % (DEVICES // 97),
                    "total": n / 100,
                },
            }
            if n % 3 == 0:
                event["device_external_id"] = f"ext-{n % DEVICES}"
            event_id = str(uuid.uuid4())
            headers = [
                ("integration-id", str(integration_id).encode()),
                ("event-id", event_id.encode()),
            ]
            pending.append(
                await producer.send(
                    topic, orjson.dumps(event), key=event_id.encode(), headers=headers
                )
            )
            if len(pending) >= 5000:
                await asyncio.gather(*pending)
                pending = []
        await asyncio.gather(*pending)
    finally:
        await producer.stop()


def _measure(settings: Settings, name: str, command: list[str], count: int) -> float:
    group = f"bench-{name}-{uuid.uuid4().hex[:6]}"
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": str(settings.kafka_bootstrap_servers),
        "DATABASE_URL": str(settings.database_url),
        "INGEST_GROUP_ID": group,
        "INGEST_WORKER_HTTP_PORT": "0",
        "INGEST_LOG_LEVEL": "WARNING",
    }
    proc = subprocess.Popen(command, env=env)
    try:
        return asyncio.run(_rate(str(settings.kafka_bootstrap_servers), group, count))
    finally:
        proc.terminate()
        proc.wait(60)


async def _rate(bootstrap: str, group: str, count: int) -> float:
    """Events per second between the group's first committed progress and the end."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        first: tuple[float, int] | None = None
        while True:
            try:
                offsets = await admin.list_consumer_group_offsets(group)
            except GroupCoordinatorNotAvailableError:  # the group is not there yet
                await asyncio.sleep(0.2)
                continue
            done = sum(meta.offset for meta in offsets.values() if meta.offset > 0)
            now = time.monotonic()
            if done and first is None:
                first = (now, done)
            if done >= count and first is not None:
                return float(done - first[1]) / max(now - first[0], 1e-9)
            await asyncio.sleep(0.05)
    finally:
        await admin.close()


if __name__ == "__main__":
    main()
