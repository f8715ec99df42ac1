"""What the worker promises under change and failure: schema updates reach it mid-stream,
replicas race for the same new devices, and a worker killed mid-batch loses and duplicates
nothing."""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from contextlib import suppress
from pathlib import Path

import httpx
import orjson
import psycopg
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from devstack.postgres import local_postgres
from devstack.proc import free_port
from devstack.topics import ensure_topics
from ingest_worker.core.config import Settings
from ingest_worker.core.migrate import migrate
from tests.integration.apiserver import running_api
from tests.integration.conftest import RUN_ID
from tests.integration.pipeline_env import Pipeline, fresh_settings
from tests.integration.worker_env import (
    TEMPLATE_SCHEMA,
    event_body,
    import_events,
    integration_with_type,
    outputs_by_id,
    until_logged,
    until_some_output,
    worker_process,
)


@pytest.fixture
def env(async_env: Pipeline) -> Pipeline:
    """This module's pipeline tests send the worker what the API would refuse at once in sync
    mode."""
    return async_env


async def test_event_type_update_reaches_the_worker_mid_stream(env: Pipeline) -> None:
    """After a PUT changes the schema, the next events are validated with the new version."""
    number = {"type": "object", "required": ["total"], "properties": {"total": {"type": "number"}}}
    integration_id, type_id = await integration_with_type(env.client, number, None)
    path = f"/v1/integrations/{integration_id}/events"
    before = (
        await env.client.post(path, json=event_body(type_id, {"total": 5}, device_external_id="d"))
    ).json()["event_id"]
    assert (await env.outputs([before]))[before][0][1]["event_type_version"] == 1
    text = {"type": "object", "required": ["total"], "properties": {"total": {"type": "string"}}}
    replaced = await env.client.put(
        f"/v1/integrations/{integration_id}/event-types/{type_id}",
        json={"name": "t", "schema": text},
    )
    assert replaced.json()["integration_event_type"]["version"] == 2
    old_shape = (
        await env.client.post(path, json=event_body(type_id, {"total": 5}, device_external_id="d"))
    ).json()["event_id"]
    new_shape = (
        await env.client.post(
            path, json=event_body(type_id, {"total": "5"}, device_external_id="d")
        )
    ).json()["event_id"]
    out = await env.outputs([old_shape, new_shape])
    assert out[old_shape][0][1]["error"]["code"] == "invalid_attributes"
    assert out[new_shape][0][0] == "accepted"
    assert out[new_shape][0][1]["event_type_version"] == 2


def _accepted_by_template(port: int) -> int:
    """A worker's `ingest_worker_records_total` for accepted, template-resolved events."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics").text
    for line in text.splitlines():
        if line.startswith('ingest_worker_records_total{code="template",outcome="accepted"}'):
            return int(float(line.split()[-1]))
    return 0


def _auto_devices(database_url: str, integration_id: int) -> int:
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM devices WHERE integration_id = %s AND auto_created",
            (integration_id,),
        ).fetchone()
    return int(row[0]) if row else -1


async def test_three_workers_race_for_the_same_new_devices(
    settings: Settings, kafka_bootstrap: str, api_database: str, tmp_path: Path
) -> None:
    """Three worker processes, 1,000 events naming 200 new external ids (from a template, so
    each id's events spread over every partition): exactly 200 devices, every event accepted
    once, each device reported created exactly once, no error in any worker's log, the
    counts on every worker's /metrics, and a clean exit on SIGTERM."""
    own = fresh_settings(settings)
    await ensure_topics(kafka_bootstrap, own, partitions=6)
    ports = [free_port() for _ in range(3)]
    async with running_api(own, kafka_bootstrap, api_database) as api, api.client() as client:
        integration_id, type_id = await integration_with_type(
            client, TEMPLATE_SCHEMA, "store-{store}"
        )
        logs = [tmp_path / f"worker-{n}.log" for n in range(3)]
        with (
            worker_process(own, kafka_bootstrap, api_database, logs[0], ports[0]) as first,
            worker_process(own, kafka_bootstrap, api_database, logs[1], ports[1]) as second,
            worker_process(own, kafka_bootstrap, api_database, logs[2], ports[2]) as third,
        ):
            await asyncio.sleep(3)  # let the three join the group
            events = [event_body(type_id, {"store": f"s{i % 200}", "n": i}) for i in range(1000)]
            ids = await import_events(client, integration_id, events)
            found = await outputs_by_id(kafka_bootstrap, own, ids, timeout_s=120)
            counted = sum(map(_accepted_by_template, ports))
    assert [first.returncode, second.returncode, third.returncode] == [0, 0, 0]
    assert counted == 1000
    assert {len(found.get(i.encode(), [])) for i in ids} == {1}
    assert {r.topic for rs in found.values() for r in rs} == {own.accepted_topic}
    assert _auto_devices(api_database, integration_id) == 200
    from ingest_worker.core.encode import read_accepted

    created = [read_accepted(r.value)["device_created"] for rs in found.values() for r in rs]
    assert created.count(True) == 200
    for log in logs:  # aiokafka logs a transient coordinator lookup as an error: not ours
        ours = [line for line in log.read_text().splitlines() if '"logger":"ingest_worker' in line]
        assert not [line for line in ours if '"level":"error"' in line], ours


async def test_killed_worker_loses_nothing_and_duplicates_nothing(
    settings: Settings, kafka_bootstrap: str, api_database: str, tmp_path: Path
) -> None:
    """`kill -9` of a worker mid-stream, then a replacement: a read_committed consumer sees
    every event id exactly once across the accepted and rejected topics. The API leaves every
    check to the workers (async), so that some events are theirs to reject."""
    own = fresh_settings(settings, api_validation="async")
    await ensure_topics(kafka_bootstrap, own, partitions=4)
    async with running_api(own, kafka_bootstrap, api_database) as api, api.client() as client:
        integration_id, type_id = await integration_with_type(
            client, TEMPLATE_SCHEMA, "store-{store}"
        )
        events = [
            event_body(type_id, {"store": f"k{i % 300}", "n": i} if i % 10 else {"n": i})
            for i in range(6000)
        ]
        victim_log, other_log = tmp_path / "victim.log", tmp_path / "other.log"
        with (
            worker_process(own, kafka_bootstrap, api_database, victim_log) as victim,
            worker_process(own, kafka_bootstrap, api_database, other_log),
        ):
            await asyncio.sleep(3)
            sending = asyncio.create_task(import_events(client, integration_id, events))
            await until_some_output(kafka_bootstrap, own, at_least=500)
            victim.kill()  # SIGKILL, mid-stream
            victim.wait(10)
            ids = await sending
            with worker_process(own, kafka_bootstrap, api_database, tmp_path / "replacement.log"):
                found = await outputs_by_id(kafka_bootstrap, own, ids, timeout_s=180)
    counts = {i: len(found.get(i.encode(), [])) for i in ids}
    assert sorted(set(counts.values())) == [1], {k: v for k, v in counts.items() if v != 1}
    assert len(found) == len(ids)
    rejected = [r for rs in found.values() for r in rs if r.topic == own.rejected_topic]
    assert len(rejected) == 600  # the events without the template's `store`


async def test_postgres_outage_backs_off_and_loses_nothing(
    settings: Settings, kafka_bootstrap: str, tmp_path: Path
) -> None:
    """With PostgreSQL stopped mid-stream the worker puts batches back and retries, committing
    nothing, and its /readyz answers 503; once it is back, every event comes out exactly once
    and /readyz is 200 again. The test runs a server of its own (from the wheel), whatever
    serves the rest of the session."""
    work = (settings.stack_dir / "test-runs" / RUN_ID / f"pg-outage-{free_port()}").resolve()
    port = free_port()
    own = fresh_settings(settings)
    await ensure_topics(kafka_bootstrap, own, partitions=2)
    log = tmp_path / "worker.log"
    with local_postgres(work, durable=False, port=port) as database_url:
        await migrate(database_url, lock_timeout_s=30)
        async with running_api(own, kafka_bootstrap, database_url) as api, api.client() as client:
            integration_id, type_id = await integration_with_type(
                client, TEMPLATE_SCHEMA, "store-{store}"
            )
            events = [event_body(type_id, {"store": f"p{i % 20}", "n": i}) for i in range(400)]
            side = free_port()
            with worker_process(own, kafka_bootstrap, database_url, log, port=side):
                first = await import_events(client, integration_id, events[:200])
                await outputs_by_id(kafka_bootstrap, own, first, timeout_s=60)
                _kill_postgres(work)
                second = await import_events(client, integration_id, events[200:])
                await until_logged(log, "batch put back")
                async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{side}") as probe:
                    down = await probe.get("/readyz", timeout=5)
                with local_postgres(work, durable=False, port=port):
                    found = await outputs_by_id(kafka_bootstrap, own, first + second, timeout_s=120)
                    await asyncio.sleep(1)  # a poll after the last batch
                    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{side}") as probe:
                        back = await probe.get("/readyz", timeout=5)
    assert (down.status_code, down.json()["dependencies"]) == (503, False)
    assert back.status_code == 200
    assert {len(found.get(i.encode(), [])) for i in first + second} == {1}
    assert {r.topic for rs in found.values() for r in rs} == {own.accepted_topic}


def _kill_postgres(work: Path) -> None:
    """SIGKILL the server and all its backends at once (its own process group), like a crash."""
    pid = int((work / "data" / "postmaster.pid").read_text().split()[0])
    os.killpg(pid, signal.SIGKILL)  # the server leads its own session and process group
    with suppress(ChildProcessError):
        os.waitpid(pid, 0)  # it is this test process's child: reap it
    for _ in range(200):
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)


async def test_the_group_reaches_the_end_of_transactional_input(env: Pipeline) -> None:
    """A gateway producing to the raw topic in Kafka transactions leaves a commit marker at
    the end of each partition, which the consumer skips. Once the events are out, the group's
    committed offsets reach the end of every raw partition (lag 0, as a lag-based autoscaler
    expects), not one short of it."""
    integration_id, type_id = await integration_with_type(env.client, TEMPLATE_SCHEMA, None)
    ids = [str(uuid.uuid4()) for _ in range(12)]
    await asyncio.to_thread(_produce_in_a_transaction, env, integration_id, type_id, ids)
    await env.outputs(ids)
    behind: dict[int, int] = {}
    for _ in range(60):
        behind = await asyncio.to_thread(_group_lag, env.bootstrap, env.settings)
        if behind and not any(behind.values()):
            return
        await asyncio.sleep(0.5)
    raise AssertionError(f"committed offsets short of the end: {behind}")


def _produce_in_a_transaction(
    env: Pipeline, integration_id: int, type_id: int, event_ids: list[str]
) -> None:
    producer = Producer(
        {"bootstrap.servers": env.bootstrap, "transactional.id": f"gateway-{uuid.uuid4()}"}
    )
    producer.init_transactions(30)
    producer.begin_transaction()
    for n, event_id in enumerate(event_ids):
        body = event_body(type_id, {"store": "s"}, device_external_id=f"lag-{n}")
        headers: list[tuple[str, str | bytes | None]] = [
            ("integration-id", str(integration_id)),
            ("event-id", event_id),
        ]
        key = f"{integration_id}:lag-{n}".encode()
        producer.produce(env.settings.raw_topic, orjson.dumps(body), key, headers=headers)
    producer.commit_transaction(30)


def _group_lag(bootstrap: str, settings: Settings) -> dict[int, int]:
    """End offset minus the group's committed offset, per raw partition that holds records."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": settings.group_id})
    try:
        topic = settings.raw_topic
        partitions = consumer.list_topics(topic, 10).topics[topic].partitions
        committed = consumer.committed([TopicPartition(topic, p) for p in partitions], 10)
        lag = {}
        for tp in committed:
            _, high = consumer.get_watermark_offsets(tp, 10)
            if high > 0:
                lag[tp.partition] = high - max(tp.offset, 0)
        return lag
    finally:
        consumer.close()
