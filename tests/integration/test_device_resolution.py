"""Device resolution's one-statement find or create, against the real PostgreSQL: what it
finds, what it makes, and a device another replica commits while the statement runs."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import psycopg

from ingest_worker.worker import resolve

Conn = psycopg.AsyncConnection[Any]


async def _integration(conn: Conn) -> int:
    row = await (
        await conn.execute("INSERT INTO integrations (name) VALUES ('i') RETURNING id")
    ).fetchone()
    assert row is not None
    return int(row[0])


async def _rows(conn: Conn, integration_id: int) -> list[tuple[Any, ...]]:
    query = (
        "SELECT external_id, name, auto_created, created_by_event::text FROM devices "
        "WHERE integration_id = %s ORDER BY external_id"
    )
    return await (await conn.execute(query, (integration_id,))).fetchall()


async def test_finds_existing_devices_and_creates_only_the_missing(database_url: str) -> None:
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        integration_id = await _integration(conn)
        other = await _integration(conn)
        await conn.execute("DELETE FROM integrations WHERE id = %s", (other,))
        long_id = "x" * 60
        first, second = str(uuid.uuid4()), str(uuid.uuid4())
        made = await resolve.external_devices(conn, {(integration_id, "a"): first})
        assert made.devices[(integration_id, "a")].created_by_event == first
        before = await (await conn.execute("SELECT xmin::text FROM devices")).fetchall()

        wanted = {(integration_id, "a"): second, (integration_id, long_id): second}
        wanted[(other, "gone")] = second  # its integration is deleted: no device
        found = await resolve.external_devices(conn, wanted)

        assert found.refused == set()
        assert set(found.devices) == {(integration_id, "a"), (integration_id, long_id)}
        assert found.devices[(integration_id, "a")] == made.devices[(integration_id, "a")]
        assert found.devices[(integration_id, long_id)].created_by_event == second
        assert await _rows(conn, integration_id) == [
            ("a", "a", True, first),
            (long_id, "x" * 39 + "…", True, second),
        ]
        untouched = await (
            await conn.execute("SELECT xmin::text FROM devices WHERE external_id = 'a'")
        ).fetchall()
        assert untouched == before  # found, not rewritten


async def test_a_device_another_replica_commits_meanwhile_is_read_back(database_url: str) -> None:
    async with (
        await psycopg.AsyncConnection.connect(database_url, autocommit=True) as setup,
        await psycopg.AsyncConnection.connect(database_url) as first,
        await psycopg.AsyncConnection.connect(database_url) as second,
    ):
        integration_id = await _integration(setup)
        key = (integration_id, "door-1")
        ours, theirs = str(uuid.uuid4()), str(uuid.uuid4())
        async with first.transaction():
            made = await resolve.external_devices(first, {key: theirs})
            # The second replica's insert waits on the first's uncommitted row; once that
            # commits, the conflict makes nothing and its snapshot predates the row.
            racing = asyncio.create_task(resolve.external_devices(second, {key: ours}))
            await asyncio.sleep(0.3)
            assert not racing.done()
        found = await racing
        await second.commit()

        assert found.devices[key] == made.devices[key]
        assert found.devices[key].created_by_event == theirs
        assert await _rows(setup, integration_id) == [("door-1", "door-1", True, theirs)]
