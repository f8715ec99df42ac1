"""Who may call what: tokens, isolation between integrations, revocation, rate limits; and
Kafka going away and coming back under a running API."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest

from devstack.kafka import local_broker
from devstack.proc import free_port
from devstack.topics import ensure_topics
from ingest_worker.core.config import Settings
from tests.integration.apiserver import RunningApi, running_api
from tests.integration.conftest import RUN_ID
from tests.integration.test_api_ingest import event


async def _token(admin_client: httpx.AsyncClient, integration_id: int) -> tuple[int, str]:
    answer = await admin_client.post(f"/v1/integrations/{integration_id}/tokens", json={})
    assert answer.status_code == 200, answer.text
    token = answer.json()["integration_token"]
    return token["id"], token["token"]


@pytest.mark.parametrize(
    "authorization", [None, "", "Bearer", "Bearer nope", "Basic dXNlcjpwYXNz", "igw_x"]
)
async def test_missing_or_unknown_token_is_401(
    api: RunningApi, integration_id: int, authorization: str | None
) -> None:
    """No token, a malformed header or an unknown token: 401 problem."""
    headers = {} if authorization is None else {"authorization": authorization}
    async with httpx.AsyncClient(base_url=api.url) as client:
        answer = await client.post(
            f"/v1/integrations/{integration_id}/events", json=event(), headers=headers
        )
    assert answer.status_code == 401
    assert answer.json()["code"] == "unauthorized"


async def test_integration_token_works_only_for_its_integration(
    api: RunningApi, admin_client: httpx.AsyncClient, integration_id: int, event_type_id: int
) -> None:
    """A token of A ingests into A; against B (existing) or C (unknown) it gets the same 404,
    and management routes are closed to it."""
    other = (await admin_client.post("/v1/integrations", json={"name": "b"})).json()
    other_id = other["integration"]["id"]
    _, token = await _token(admin_client, integration_id)
    async with api.client(token) as client:
        own = await client.post(
            f"/v1/integrations/{integration_id}/events", json=event(event_type_id)
        )
        foreign = await client.post(f"/v1/integrations/{other_id}/events", json=event())
        unknown = await client.post("/v1/integrations/2147483000/events", json=event())
        manage = await client.get(f"/v1/integrations/{integration_id}/devices")
    assert own.status_code == 202
    assert foreign.status_code == unknown.status_code == manage.status_code == 404
    assert foreign.json() == unknown.json()


async def test_admin_token_ingests_anywhere(
    admin_client: httpx.AsyncClient, integration_id: int, event_type_id: int
) -> None:
    """An admin token works for ingest too, as one Spot API key does; unknown ids are 404."""
    ok = await admin_client.post(
        f"/v1/integrations/{integration_id}/events", json=event(event_type_id)
    )
    missing = await admin_client.post("/v1/integrations/2147483647/events", json=event())
    huge = await admin_client.post("/v1/integrations/99999999999999999999/events", json=event())
    assert (ok.status_code, missing.status_code, huge.status_code) == (202, 404, 404)


async def test_revoked_token_stops_working_within_seconds(
    api: RunningApi, admin_client: httpx.AsyncClient, integration_id: int, event_type_id: int
) -> None:
    """After DELETE of a token, every API process refuses it within the cache bound; here a
    second API process (a replica) is checked, which learns it only from the database."""
    token_id, token = await _token(admin_client, integration_id)
    async with (
        running_api(api.settings, api.bootstrap, api.database_url) as replica,
        replica.client(token) as client,
    ):
        before = await client.post(
            f"/v1/integrations/{integration_id}/events", json=event(event_type_id)
        )
        assert before.status_code == 202
        revoked = await admin_client.delete(f"/v1/integrations/{integration_id}/tokens/{token_id}")
        assert revoked.json()["integration_token"]["revoked"] is not None
        started = time.monotonic()
        status = 202
        while status != 401 and time.monotonic() - started < api.settings.auth_refresh_s + 2:
            answer = await client.post(
                f"/v1/integrations/{integration_id}/events", json=event(event_type_id)
            )
            status = answer.status_code
            await asyncio.sleep(0.05)
    assert status == 401


async def test_rate_limit_answers_429_with_retry_after(
    api: RunningApi, admin_client: httpx.AsyncClient, integration_id: int, event_type_id: int
) -> None:
    """Past a token's burst, requests get 429 with Retry-After; other tokens are unaffected."""
    _, token = await _token(admin_client, integration_id)
    _, other_token = await _token(admin_client, integration_id)
    async with (
        running_api(
            api.settings, api.bootstrap, api.database_url, rate_limit_per_s=0.5, rate_limit_burst=3
        ) as limited,
        limited.client(token) as client,
        limited.client(other_token) as other,
    ):
        path = f"/v1/integrations/{integration_id}/events"
        statuses = [
            (await client.post(path, json=event(event_type_id))).status_code for _ in range(5)
        ]
        last = await client.post(path, json=event(event_type_id))
        fresh = await other.post(path, json=event(event_type_id))
    assert statuses == [202, 202, 202, 429, 429]
    assert last.status_code == 429
    assert int(last.headers["retry-after"]) >= 1
    assert fresh.status_code == 202


async def test_kafka_down_is_503_then_back_without_restart(
    settings: Settings, api_database: str, integration_id: int, event_type_id: int
) -> None:
    """With the broker stopped, ingest answers 503 + Retry-After within the configured bound
    (never a hang, never a 202); once the broker is back, 202 again, same API process. The
    test runs a broker of its own (local process), whatever serves the rest of the session."""
    work = (settings.stack_dir / "test-runs" / RUN_ID / f"kafka-restart-{free_port()}").resolve()
    ports = (free_port(), free_port())
    cache = (settings.stack_dir / "cache").resolve()
    path = f"/v1/integrations/{integration_id}/events"
    with local_broker(work, cache, ports=ports) as bootstrap:
        await ensure_topics(bootstrap, settings, partitions=1)
        async with (
            running_api(settings, bootstrap, api_database, publish_timeout_s=2.0) as own,
            own.client() as client,
        ):
            assert (await client.post(path, json=event(event_type_id))).status_code == 202
            _stop_broker_now(work)
            started = time.monotonic()
            down = await client.post(path, json=event(event_type_id))
            elapsed = time.monotonic() - started
            with local_broker(work, cache, ports=ports):
                back = await _until_accepted(client, path, 60, event_type_id)
    assert down.status_code == 503
    assert down.json()["code"] == "kafka_unavailable"
    assert int(down.headers["retry-after"]) >= 1
    assert elapsed < 2.0 + 2.0
    assert back == 202


def _stop_broker_now(work: Path) -> None:
    """Kill the broker process of `work` (the context manager's stop comes later, as a no-op)."""
    import subprocess

    subprocess.run(["pkill", "-9", "-f", str(work / "server.properties")], check=False)
    time.sleep(0.5)


async def _until_accepted(
    client: httpx.AsyncClient, path: str, deadline_s: float, event_type_id: int
) -> int:
    started = time.monotonic()
    status = 0
    while status != 202 and time.monotonic() - started < deadline_s:
        status = (await client.post(path, json=event(event_type_id))).status_code
        if status != 202:
            await asyncio.sleep(0.5)
    return status
