"""Helpers for the worker tests: an integration with an event type, events imported
through the API, `ingest-worker worker` processes, and the outputs read back by event id."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from devstack.proc import free_port
from ingest_worker.core.config import Settings
from tests.integration.kafka_read import header, read_topics

TEMPLATE_SCHEMA = {
    "type": "object",
    "required": ["store"],
    "properties": {"store": {"type": "string"}, "n": {"type": "integer"}},
}


async def integration_with_type(
    client: httpx.AsyncClient, schema: dict[str, Any], template: str | None
) -> tuple[int, int]:
    """A new integration and an event type of it (schema, optional template): their ids."""
    made = (await client.post("/v1/integrations", json={"name": "g"})).json()["integration"]["id"]
    body: dict[str, Any] = {"name": "t", "schema": schema}
    if template:
        body["external_device_id_template"] = template
    typed = await client.post(f"/v1/integrations/{made}/event-types", json=body)
    assert typed.status_code == 200, typed.text
    return made, typed.json()["integration_event_type"]["id"]


def event_body(type_id: int, attributes: dict[str, Any], **fields: Any) -> dict[str, Any]:
    """An ingest request body."""
    return {
        "integration_event_type_id": type_id,
        "timestamp": "2024-06-01T12:00:00Z",
        "attributes": attributes,
        **fields,
    }


@contextmanager
def worker_process(
    settings: Settings, bootstrap: str, database_url: str, log: Path, port: int = 0
) -> Iterator[subprocess.Popen[bytes]]:
    """`ingest-worker worker` as its own process (side port `port`, or a free one); SIGTERM
    at the end (if still alive)."""
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "DATABASE_URL": database_url,
        "INGEST_RAW_TOPIC": settings.raw_topic,
        "INGEST_ACCEPTED_TOPIC": settings.accepted_topic,
        "INGEST_REJECTED_TOPIC": settings.rejected_topic,
        "INGEST_GROUP_ID": settings.group_id,
        "INGEST_WORKER_HTTP_PORT": str(port or free_port()),
        "INGEST_WORKER_BATCH_MAX_RECORDS": str(settings.worker_batch_max_records),
    }
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ingest_worker", "worker"], env=env, stderr=out, stdout=out
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)


async def import_events(
    client: httpx.AsyncClient, integration_id: int, events: list[dict[str, Any]]
) -> list[str]:
    """Import in chunks of 500; return every event id, in order."""
    ids: list[str] = []
    for start in range(0, len(events), 500):
        answer = await client.post(
            f"/v1/integrations/{integration_id}/events/import",
            json={"integration_events": events[start : start + 500]},
        )
        assert answer.status_code == 202, answer.text
        ids += [r["event_id"] for r in answer.json()["results"]]
    return ids


async def outputs_by_id(
    bootstrap: str, settings: Settings, ids: list[str], timeout_s: float
) -> dict[bytes, list[Any]]:
    """Accepted and rejected records (read_committed) by event id, once every id has one,
    plus a second to catch a duplicate."""
    wanted = {i.encode() for i in ids}
    records = await read_topics(
        bootstrap,
        [settings.accepted_topic, settings.rejected_topic],
        until=lambda rs: wanted <= {header(r, "event-id") for r in rs},
        timeout_s=timeout_s,
        grace_s=1.0,
    )
    found: dict[bytes, list[Any]] = {}
    for record in records:
        found.setdefault(header(record, "event-id") or b"", []).append(record)
    return found


async def until_some_output(bootstrap: str, settings: Settings, at_least: int) -> None:
    """Wait until `at_least` outputs exist, committed or not."""
    await read_topics(
        bootstrap,
        [settings.accepted_topic, settings.rejected_topic],
        until=lambda rs: len(rs) >= at_least,
        timeout_s=60,
        isolation="read_uncommitted",
    )


async def until_logged(log: Path, text: str, timeout_s: float = 60) -> None:
    """Wait until `text` appears in the log file."""
    for _ in range(int(timeout_s * 10)):
        if text in await asyncio.to_thread(log.read_text):
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{text!r} never logged")
