"""Background tasks survive what they are sent and say when they are down: the worker's
catalog follower after junk notifications, `/readyz` of the API and of the worker."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from devstack.proc import free_port
from devstack.topics import ensure_topics
from ingest_worker.core import supervise
from ingest_worker.core.changes import CHANNEL
from ingest_worker.core.config import Settings
from ingest_worker.core.metrics import WorkerMetrics
from ingest_worker.worker.loop import _side_server
from tests.integration.apiserver import running_api
from tests.integration.pipeline_env import Pipeline, fresh_settings, pipeline
from tests.integration.worker_env import event_body, integration_with_type, worker_process

JUNK = [
    "[1]",
    "1",
    '"event_types"',
    "null",
    "not json",
    "[" * 2000 + "]" * 2000,
    '{"table": ["event_types"], "id": 1}',
    '{"table": {"nested": {"junk": [1, 2]}}}',
    '{"table": "event_types", "id": "1", "integration_id": 1}',
    '{"table": "event_types", "id": 1, "integration_id": [1]}',
    '{"table": "event_types", "id": 1.5, "integration_id": 1}',
    '{"table": "integrations", "op": "DELETE", "id": true}',
    '{"table": "devices", "id": {"id": 1}}',
    '{"table": "devices", "id": 99999999999999999999999999}',
]
NUMBER = {"type": "object", "required": ["total"], "properties": {"total": {"type": "number"}}}
TEXT = {"type": "object", "required": ["total"], "properties": {"total": {"type": "string"}}}


async def _notify(database_url: str, payloads: list[str]) -> None:
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        for payload in payloads:
            await conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, payload))


async def _send(env: Pipeline, integration_id: int, type_id: int, total: Any) -> str:
    answer = await env.client.post(
        f"/v1/integrations/{integration_id}/events",
        json=event_body(type_id, {"total": total}, device_external_id="d"),
    )
    assert answer.status_code == 202, answer.text
    event_id: str = answer.json()["event_id"]
    return event_id


def _crashes(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "ingest_worker.core.supervise"]


async def test_the_follower_survives_junk_notifications(
    settings: Settings, kafka_bootstrap: str, api_database: str, caplog: pytest.LogCaptureFixture
) -> None:
    """After junk on `ingest_changes` (a list, scalars, bad JSON, nested junk, ids of the
    wrong type), a schema change still reaches the worker at once: the follower neither
    crashed nor stopped. Cached types never expire here, so only the follower can apply it;
    the API leaves the attributes to the worker (async)."""
    never_expire = dataclasses.replace(settings, catalog_max_age_s=3600, api_validation="async")
    async with pipeline(never_expire, kafka_bootstrap, api_database) as env:
        integration_id, type_id = await integration_with_type(env.client, NUMBER, None)
        await _notify(api_database, JUNK)
        cached = await _send(env, integration_id, type_id, 5)
        assert (await env.outputs([cached]))[cached][0][1]["event_type_version"] == 1
        replaced = await env.client.put(
            f"/v1/integrations/{integration_id}/event-types/{type_id}",
            json={"name": "t", "schema": TEXT},
        )
        assert replaced.json()["integration_event_type"]["version"] == 2
        old_shape = await _send(env, integration_id, type_id, 5)
        new_shape = await _send(env, integration_id, type_id, "5")
        out = await env.outputs([old_shape, new_shape], timeout_s=30)
    assert out[old_shape][0][1]["error"]["code"] == "invalid_attributes"
    assert out[new_shape][0][0] == "accepted"
    assert out[new_shape][0][1]["event_type_version"] == 2
    assert _crashes(caplog) == []


async def _readyz(url: str, until: Callable[[httpx.Response], bool]) -> httpx.Response:
    """GET /readyz until `until(answer)` (the server may not listen yet), for at most 60 s."""
    async with httpx.AsyncClient(base_url=url, timeout=5) as client, asyncio.timeout(60):
        while True:
            with suppress(httpx.TransportError):
                answer = await client.get("/readyz")
                if until(answer):
                    return answer
            await asyncio.sleep(0.1)


async def test_api_readyz_names_a_crashed_token_refresh(
    api_settings: Settings,
    kafka_bootstrap: str,
    database_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """When the token refresh crashes (its table gone), /readyz answers 503 naming
    `auth_refresh` with Kafka and PostgreSQL still up; the crash is logged with its error;
    once the table is back the task restarts by itself and /readyz is 200 again."""
    async with running_api(api_settings, kafka_bootstrap, database_url) as api:
        ready = await _readyz(api.url, lambda a: a.status_code == 200)
        tasks = {"auth_refresh": True, "catalog_follower": True}
        assert ready.json() == {"kafka": True, "postgres": True, "tasks": tasks}
        async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
            await conn.execute("ALTER TABLE api_tokens RENAME TO api_tokens_away")
            await conn.execute(f"NOTIFY {CHANNEL}")
            down = await _readyz(api.url, lambda a: a.status_code == 503)
            assert down.json() == {
                "kafka": True,
                "postgres": True,
                "tasks": {"auth_refresh": False, "catalog_follower": True},
            }
            await conn.execute("ALTER TABLE api_tokens_away RENAME TO api_tokens")
        back = await _readyz(api.url, lambda a: a.status_code == 200)
        assert back.json()["tasks"] == tasks
    crashed = [r for r in caplog.records if r.name == "ingest_worker.core.supervise"]
    assert crashed
    assert all(r.__dict__["task"] == "auth_refresh" for r in crashed)
    assert all(isinstance(r.exc_info and r.exc_info[1], psycopg.Error) for r in crashed)


async def test_worker_readyz_names_a_down_task(settings: Settings) -> None:
    """The worker's side port answers /readyz 200 while its supervised tasks work, 503
    naming the task from its crash until it works again, then 200."""
    metrics = WorkerMetrics()
    side = dataclasses.replace(settings, worker_http_port=free_port())
    crash, recover = asyncio.Event(), asyncio.Event()
    runs: list[int] = []

    async def follower(beat: supervise.Beat) -> None:
        runs.append(1)
        if len(runs) > 1:
            await recover.wait()
        beat()
        if len(runs) == 1:
            await crash.wait()
            raise RuntimeError("follower lost")
        await asyncio.Event().wait()

    url = f"http://127.0.0.1:{side.worker_http_port}"
    async with _side_server(side, metrics):
        task = supervise.board(metrics.registry).start("catalog_follower", follower)
        try:
            up = await _readyz(url, lambda a: a.status_code == 200)
            assert up.json() == {"dependencies": True, "tasks": {"catalog_follower": True}}
            crash.set()
            down = await _readyz(url, lambda a: a.status_code == 503)
            assert down.json() == {"dependencies": True, "tasks": {"catalog_follower": False}}
            recover.set()
            back = await _readyz(url, lambda a: a.status_code == 200)
            assert back.json() == {"dependencies": True, "tasks": {"catalog_follower": True}}
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


async def test_worker_process_is_ready_with_its_follower(
    settings: Settings, kafka_bootstrap: str, api_database: str, tmp_path: Path
) -> None:
    """`ingest-worker worker` answers /readyz 200 on its side port, naming its catalog
    follower, and /metrics exports the follower's health."""
    port = free_port()
    own = fresh_settings(settings)
    await ensure_topics(kafka_bootstrap, own, partitions=1)
    with worker_process(own, kafka_bootstrap, api_database, tmp_path / "worker.log", port):
        url = f"http://127.0.0.1:{port}"
        ready = await _readyz(url, lambda a: a.status_code == 200)
        assert ready.json() == {"dependencies": True, "tasks": {"catalog_follower": True}}
        async with httpx.AsyncClient(base_url=url) as client:
            exported = (await client.get("/metrics")).text
    assert 'ingest_background_task_up{task="catalog_follower"} 1.0' in exported
