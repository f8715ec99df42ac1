"""The worker's event store: every decided event stored once, updates and deletes applied in
order with their revisions, the accepted topic as the changelog, replays that store nothing
twice, the switch, and the retention's partitions."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import psycopg
from aiokafka import AIOKafkaProducer
from psycopg import sql
from psycopg.rows import dict_row

from devstack.topics import ensure_topics
from ingest_worker.core.config import Settings
from ingest_worker.core.encode import read_accepted
from ingest_worker.core.rejections import Source
from ingest_worker.worker import store
from ingest_worker.worker.revise import Revision
from tests.integration.apiserver import running_api
from tests.integration.kafka_read import read_topics
from tests.integration.pipeline_env import Pipeline, fresh_settings, running_worker
from tests.integration.worker_env import integration_with_type, until_some_output, worker_process

SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["store"],
    "properties": {"store": {"type": "string"}, "n": {"type": "integer"}},
}
Raw = tuple[bytes, bytes, list[tuple[str, bytes]]]  # key, value, headers


def create(integration_id: int, type_id: int, event_id: str, **attributes: Any) -> Raw:
    """The raw record of an event for the device `dev-<store>`, as the shim publishes it."""
    body = {
        "integration_event_type_id": type_id,
        "timestamp": "2024-06-01T12:00:00.125Z",
        "attributes": attributes,
        "device_external_id": f"dev-{attributes.get('store', 'x')}",
    }
    key = f"{integration_id}:dev-{attributes.get('store', 'x')}".encode()
    return key, orjson.dumps(body), _headers(integration_id, event_id)


def change(
    integration_id: int, event_id: str, op: str, key: bytes, body: dict[str, Any] | None = None
) -> Raw:
    """The raw record of an update or a delete, keyed like its event."""
    value = orjson.dumps(body) if body is not None else b""
    return key, value, [*_headers(integration_id, event_id), ("op", op.encode())]


def update(integration_id: int, type_id: int, event_id: str, key: bytes, **attrs: Any) -> Raw:
    body = {"integration_event_type_id": type_id, "attributes": attrs}
    return change(integration_id, event_id, "update", key, body)


def _headers(integration_id: int, event_id: str) -> list[tuple[str, bytes]]:
    return [
        ("integration-id", str(integration_id).encode()),
        ("event-id", event_id.encode()),
        ("received-at", str(int(time.time() * 1000)).encode()),
    ]


async def produce(bootstrap: str, topic: str, records: list[Raw]) -> None:
    """Publish in order (one producer, acks=all, idempotent: order kept per partition)."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True)
    await producer.start()
    try:
        for key, value, headers in records:
            await producer.send(topic, value, key=key, headers=headers)
        await producer.flush()
    finally:
        await producer.stop()


async def changelog(
    bootstrap: str, settings: Settings, count: int, timeout_s: float = 60
) -> list[tuple[str, Any]]:
    """The first `count` output records (read_committed), plus a moment for any extra:
    ("accepted", Avro record) or ("rejected", JSON)."""
    records = await read_topics(
        bootstrap,
        [settings.accepted_topic, settings.rejected_topic],
        until=lambda rs: len(rs) >= count,
        timeout_s=timeout_s,
        grace_s=1.0,
    )
    return [
        ("accepted", read_accepted(r.value))
        if r.topic == settings.accepted_topic
        else ("rejected", orjson.loads(r.value))
        for r in records
    ]


def rows(database_url: str, integration_id: int) -> list[dict[str, Any]]:
    """Every stored revision of an integration, by event then revision."""
    with (
        psycopg.connect(database_url) as conn,
        conn.cursor(row_factory=dict_row) as cur,
    ):
        cur.execute(
            "SELECT id::text, revision, op, current, attributes, error, device_id, "
            "event_type_id, timestamp_us, duration_ms, received_at_ms, raw_key "
            "FROM events WHERE integration_id = %s ORDER BY id, revision",
            (integration_id,),
        )
        return list(cur.fetchall())


def ids(n: int) -> list[str]:
    return [str(uuid.uuid4()) for _ in range(n)]


async def test_events_are_stored_and_changes_apply_in_order_with_revisions(env: Pipeline) -> None:
    """Created, updated twice (shallow merge), deleted: four changelog records with op and
    revision 1..4 in order, a delete carrying the last state; the store holds the four
    revisions with only the last accepted one current (none, once deleted). The changes are
    produced right behind their event, so they are applied after it."""
    integration_id, type_id = await integration_with_type(env.client, SCHEMA, None)
    kept, deleted = ids(2)
    key = f"{integration_id}:dev-a".encode()
    await produce(
        env.bootstrap,
        env.settings.raw_topic,
        [
            create(integration_id, type_id, kept, store="a", n=1),
            create(integration_id, type_id, deleted, store="a", n=1),
            update(integration_id, type_id, kept, key, n=2),
            update(integration_id, type_id, deleted, key, n=5),
            update(integration_id, type_id, kept, key, extra="x"),
            change(integration_id, deleted, "delete", key),
        ],
    )
    out = await changelog(env.bootstrap, env.settings, 6)
    by_event = {e: [o[1] for o in out if str(o[1]["event_id"]) == e] for e in (kept, deleted)}
    assert [(r["op"], r["revision"]) for r in by_event[kept]] == [
        ("created", 1),
        ("updated", 2),
        ("updated", 3),
    ]
    assert orjson.loads(by_event[kept][-1]["attributes_json"]) == {
        "store": "a",
        "n": 2,
        "extra": "x",
    }
    assert [(r["op"], r["revision"]) for r in by_event[deleted]] == [
        ("created", 1),
        ("updated", 2),
        ("deleted", 3),
    ]
    assert orjson.loads(by_event[deleted][-1]["attributes_json"]) == {"store": "a", "n": 5}
    assert by_event[kept][0]["timestamp"] == by_event[kept][-1]["timestamp"]
    assert len({r["integration_device_id"] for r in by_event[kept]}) == 1
    stored = rows(env.api.database_url, integration_id)
    assert [(r["id"], r["revision"], r["op"], r["current"]) for r in stored] == sorted(
        [
            (kept, 1, "created", False),
            (kept, 2, "updated", False),
            (kept, 3, "updated", True),
            (deleted, 1, "created", False),
            (deleted, 2, "updated", False),
            (deleted, 3, "deleted", False),
        ]
    )
    assert {bytes(r["raw_key"]) for r in stored} == {key}


async def test_a_change_that_cannot_apply_is_rejected_and_changes_nothing(env: Pipeline) -> None:
    """An update breaking the schema (`invalid_attributes`), naming an unknown type
    (`unknown_event_type`), or of an event never stored (`event_not_found`), and a delete of
    an unknown event: each rejected with its code; the stored event is unchanged."""
    integration_id, type_id = await integration_with_type(env.client, SCHEMA, None)
    (event,), unknown = ids(1), str(uuid.uuid4())
    key = f"{integration_id}:dev-a".encode()
    await produce(
        env.bootstrap,
        env.settings.raw_topic,
        [
            create(integration_id, type_id, event, store="a", n=1),
            update(integration_id, type_id, event, key, n="not an integer"),
            update(integration_id, type_id + 999, event, key, n=3),
            update(integration_id, type_id, unknown, key, n=3),
            change(integration_id, unknown, "delete", key),
        ],
    )
    out = await changelog(env.bootstrap, env.settings, 5)
    codes = [o[1]["error"]["code"] for o in out if o[0] == "rejected"]
    assert sorted(codes) == sorted(
        ["invalid_attributes", "unknown_event_type", "event_not_found", "event_not_found"]
    )
    stored = rows(env.api.database_url, integration_id)
    assert [(r["id"], r["revision"], r["current"]) for r in stored] == [(event, 1, True)]
    assert stored[0]["attributes"] == {"store": "a", "n": 1}


async def test_rejected_events_are_stored_with_their_error(env: Pipeline) -> None:
    """A rejected event is stored as revision 0 with its error, not current (never listed);
    a record for an integration that does not exist stores nothing."""
    integration_id, type_id = await integration_with_type(env.client, SCHEMA, None)
    bad, stray = ids(2)
    key, value, headers = create(integration_id, type_id, bad, n=1)  # no `store`
    await produce(
        env.bootstrap,
        env.settings.raw_topic,
        [(key, value, headers), create(2_000_000_000, type_id, stray, store="a")],
    )
    await changelog(env.bootstrap, env.settings, 2)
    stored = rows(env.api.database_url, integration_id)
    assert len(stored) == 1
    assert (stored[0]["id"], stored[0]["revision"], stored[0]["op"]) == (bad, 0, "rejected")
    assert stored[0]["current"] is False
    assert stored[0]["error"]["code"] == "invalid_attributes"
    assert stored[0]["event_type_id"] == type_id
    assert rows(env.api.database_url, 2_000_000_000) == []


@asynccontextmanager
async def _store_off(
    base: Settings, bootstrap: str, database_url: str
) -> AsyncIterator[tuple[Settings, Any]]:
    own = fresh_settings(base, event_store="off")
    await ensure_topics(bootstrap, own, partitions=1)
    async with (
        running_api(own, bootstrap, database_url) as api,
        api.client() as client,
        running_worker(own, bootstrap, database_url),
    ):
        yield own, client


async def test_with_the_store_off_nothing_is_stored_and_changes_are_refused(
    settings: Settings, kafka_bootstrap: str, api_database: str
) -> None:
    """INGEST_EVENT_STORE=off: events still flow to the accepted topic, nothing is stored,
    and a change is rejected `event_store_disabled`."""
    async with _store_off(settings, kafka_bootstrap, api_database) as (own, client):
        integration_id, type_id = await integration_with_type(client, SCHEMA, None)
        (event,) = ids(1)
        key = f"{integration_id}:dev-a".encode()
        await produce(
            kafka_bootstrap,
            own.raw_topic,
            [
                create(integration_id, type_id, event, store="a"),
                change(integration_id, event, "delete", key),
            ],
        )
        out = await changelog(kafka_bootstrap, own, 2)
    kinds = dict(out)
    assert set(kinds) == {"accepted", "rejected"}
    assert kinds["rejected"]["error"]["code"] == "event_store_disabled"
    assert rows(api_database, integration_id) == []


async def test_a_killed_worker_replays_without_storing_twice(
    settings: Settings, kafka_bootstrap: str, api_database: str, tmp_path: Path
) -> None:
    """`kill -9` mid-stream of events each followed by two updates, then a replacement: every
    event is stored with revisions 1, 2, 3 exactly once, the last one current, and the
    changelog (read_committed) holds each (event, revision) exactly once."""
    own = fresh_settings(settings)
    await ensure_topics(kafka_bootstrap, own, partitions=4)
    async with running_api(own, kafka_bootstrap, api_database) as api, api.client() as client:
        integration_id, type_id = await integration_with_type(client, SCHEMA, None)
    events = ids(1500)
    records: list[Raw] = []
    for i, event in enumerate(events):
        made = create(integration_id, type_id, event, store=f"s{i % 40}", n=0)
        records += [made, update(integration_id, type_id, event, made[0], n=1)]
        records.append(update(integration_id, type_id, event, made[0], n=2))
    with worker_process(own, kafka_bootstrap, api_database, tmp_path / "victim.log") as victim:
        await asyncio.sleep(3)
        sending = asyncio.create_task(produce(kafka_bootstrap, own.raw_topic, records))
        await until_some_output(kafka_bootstrap, own, at_least=600)
        victim.kill()
        victim.wait(10)
        await sending
    with worker_process(own, kafka_bootstrap, api_database, tmp_path / "replacement.log"):
        out = await changelog(kafka_bootstrap, own, len(records), timeout_s=180)
    seen = Counter((str(o[1]["event_id"]), o[1]["revision"]) for o in out if o[0] == "accepted")
    assert len(out) == len(records)
    assert set(seen.values()) == {1}
    assert len(seen) == len(records)
    stored = rows(api_database, integration_id)
    per_event = Counter(r["id"] for r in stored)
    assert set(per_event.values()) == {3}
    assert len(per_event) == len(events)
    assert {(r["revision"], r["current"]) for r in stored} == {(1, False), (2, False), (3, True)}
    assert all(r["attributes"]["n"] == r["revision"] - 1 for r in stored)


async def test_retention_drops_whole_days_and_keeps_the_rest(database_url: str) -> None:
    """`keep_partitions`: the days around today get partitions; a day past the retention is
    dropped whole; rows that waited in the default partition move into their day's partition
    when it is made, and default rows past the retention are deleted."""
    today = datetime.now(UTC).date()
    old_day, future_day = today - timedelta(days=40), today + timedelta(days=20)
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        await conn.execute("SELECT ingest_event_partition(%s)", (old_day,))
        for when in (old_day, today, future_day, today - timedelta(days=50)):
            await _insert_row(conn, datetime(when.year, when.month, when.day, 12, tzinfo=UTC))
        await store.keep_partitions(conn, retention_days=30)
        kept = await _partitions(conn)
        assert f"events_p{today:%Y%m%d}" in kept
        assert f"events_p{(today + timedelta(days=2)):%Y%m%d}" in kept
        assert f"events_p{old_day:%Y%m%d}" not in kept
        assert await _count(conn, "events") == 2  # today's and the future one
        assert await _count(conn, "events_default") == 1  # the future one waits there
        await conn.execute("SELECT ingest_event_partition(%s)", (future_day,))
        assert await _count(conn, "events_default") == 0
        assert await _count(conn, f"events_p{future_day:%Y%m%d}") == 1


async def _insert_row(conn: psycopg.AsyncConnection[Any], received_at: datetime) -> None:
    at_ms = int(received_at.timestamp() * 1000)
    await conn.execute(
        "INSERT INTO events (integration_id, id, revision, received_at_ms, op, current, "
        "revision_received_at_ms, source_partition, source_offset, created_ms) "
        "VALUES (1, %s, 1, %s, 'created', true, %s, 0, 0, %s)",
        (uuid.uuid4(), at_ms, at_ms, at_ms),
    )


async def _partitions(conn: psycopg.AsyncConnection[Any]) -> set[str]:
    cur = await conn.execute(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = 'events'::regclass"
    )
    return {row[0] for row in await cur.fetchall()}


async def _count(conn: psycopg.AsyncConnection[Any], table: str) -> int:
    cur = await conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table)))
    row = await cur.fetchone()
    assert row is not None
    return int(row[0])


async def test_writing_a_batch_again_stores_each_revision_once(database_url: str) -> None:
    """A replayed batch, partly stored already: the rows there are kept as they are and the
    others are added."""
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        made = await conn.execute("INSERT INTO integrations (name) VALUES ('r') RETURNING id")
        row = await made.fetchone()
        assert row is not None
        revisions = [_revision(row[0], offset) for offset in range(4)]
        async with conn.transaction():
            await store.write(conn, revisions[:2])
        async with conn.transaction():
            await store.write(conn, revisions)
        cur = await conn.execute(
            "SELECT source_offset, count(*) FROM events WHERE integration_id = %s "
            "GROUP BY source_offset ORDER BY 1",
            (row[0],),
        )
        assert await cur.fetchall() == [(0, 1), (1, 1), (2, 1), (3, 1)]


def _revision(integration_id: int, offset: int) -> Revision:
    now_ms = int(time.time() * 1000)
    return Revision(
        integration_id, str(uuid.uuid4()), 1, now_ms, "created", 1, 1, 1, None, "direct",
        0, 0, 0, "{}", now_ms, None, None, b"k", Source("raw", 0, offset), None,
    )  # fmt: skip


async def test_an_event_through_the_api_is_stored_changed_and_deleted(env: Pipeline) -> None:
    """End to end, as a Spot client sees it: ingest, then the event is listed and found
    accepted; an update answered 202 shows its merged attributes; a delete makes it gone
    from the list and from lookups."""
    integration_id, type_id = await integration_with_type(env.client, SCHEMA, None)
    base = f"/v1/integrations/{integration_id}/events"
    body = {
        "integration_event_type_id": type_id,
        "timestamp": "2024-06-01T12:00:00Z",
        "attributes": {"store": "a", "n": 1},
        "device_external_id": "dev-a",
    }
    made = await env.client.post(base, json=body)
    assert made.status_code == 202, made.text
    event_id = made.json()["event_id"]
    found = await _until(env, f"{base}/{event_id}", lambda a: a.status_code == 200)
    assert found.json()["status"] == "accepted"
    first = found.json()["integration_event"]
    assert first["attributes"] == {"store": "a", "n": 1}
    assert first["created"] == first["updated"]
    device_id = first["integration_device_id"]
    listed = await env.client.get(base, params={"integrationDeviceIds": str(device_id)})
    assert [e["id"] for e in listed.json()["integration_events"]] == [event_id]
    update = {"integration_event_type_id": type_id, "attributes": {"n": 2}}
    assert (await env.client.put(f"{base}/{event_id}", json=update)).status_code == 202
    changed = await _until(
        env,
        f"{base}/{event_id}",
        lambda a: a.json()["integration_event"]["attributes"] == {"store": "a", "n": 2},
    )
    after = changed.json()["integration_event"]
    assert after["timestamp"].startswith("2024-06-01T12:00:00")
    assert after["created"] == first["created"] <= after["updated"]
    assert (await env.client.delete(f"{base}/{event_id}")).status_code == 202
    await _until(env, f"{base}/{event_id}", lambda a: a.status_code == 404)
    assert (await env.client.get(base)).json()["integration_events"] == []
    out = await changelog(env.bootstrap, env.settings, 3)
    assert [(o[1]["op"], o[1]["revision"]) for o in out] == [
        ("created", 1),
        ("updated", 2),
        ("deleted", 3),
    ]


async def _until(
    env: Pipeline, path: str, done: Callable[[httpx.Response], bool], timeout_s: float = 30
) -> httpx.Response:
    """GET `path` until `done(answer)`; the last answer."""
    deadline = time.monotonic() + timeout_s
    while True:
        answer = await env.client.get(path)
        if done(answer) or time.monotonic() > deadline:
            assert done(answer), answer.text
            return answer
        await asyncio.sleep(0.1)
