"""Migrations against a real PostgreSQL: empty database, re-run, concurrent replicas."""

from __future__ import annotations

import asyncio

import psycopg
import pytest

from ingest_worker.core.errors import MigrationError
from ingest_worker.core.migrate import LOCK_KEY, bundled, migrate

ALL_VERSIONS = [m.version for m in bundled()]
TABLES = {"integrations", "event_types", "devices", "api_tokens", "schema_migrations"}


def _tables(url: str) -> set[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
        ).fetchall()
    return {str(row[0]) for row in rows}


async def test_empty_database_gets_every_migration(empty_database: str) -> None:
    """On an empty database every migration is applied and every table exists."""
    applied = await migrate(empty_database, lock_timeout_s=10)
    assert applied == ALL_VERSIONS
    assert _tables(empty_database) >= TABLES


async def test_second_run_is_a_no_op(empty_database: str) -> None:
    """Running again applies nothing."""
    await migrate(empty_database, lock_timeout_s=10)
    assert await migrate(empty_database, lock_timeout_s=10) == []


async def test_concurrent_migrators_apply_once(empty_database: str) -> None:
    """Of several replicas starting together, one applies everything, the others nothing."""
    results = await asyncio.gather(*(migrate(empty_database, lock_timeout_s=30) for _ in range(4)))
    assert sorted(results, key=len) == [[], [], [], ALL_VERSIONS]
    with psycopg.connect(empty_database) as conn:
        count = conn.execute("SELECT count(*) FROM schema_migrations").fetchone()
    assert count == (len(ALL_VERSIONS),)


async def test_waits_for_the_lock_and_gives_up_at_the_timeout(empty_database: str) -> None:
    """While another session holds the migration lock, a migrator waits, then fails clearly."""
    async with await psycopg.AsyncConnection.connect(empty_database, autocommit=True) as holder:
        await holder.execute("SELECT pg_advisory_lock(%s)", (LOCK_KEY,))
        with pytest.raises(MigrationError, match="lock"):
            await migrate(empty_database, lock_timeout_s=0.5)
    assert await migrate(empty_database, lock_timeout_s=10) == ALL_VERSIONS


async def test_edited_migration_is_refused(empty_database: str) -> None:
    """A migration whose text changed after it was applied stops the migrator."""
    await migrate(empty_database, lock_timeout_s=10)
    with psycopg.connect(empty_database, autocommit=True) as conn:
        conn.execute("UPDATE schema_migrations SET sha256 = 'edited' WHERE version = 1")
    with pytest.raises(MigrationError, match="edited"):
        await migrate(empty_database, lock_timeout_s=10)


def test_event_type_version_bumps_on_every_update(database_url: str) -> None:
    """Each update of an event type bumps its version, so caches can tell stale copies."""
    with psycopg.connect(database_url) as conn:
        (integration,) = conn.execute(
            "INSERT INTO integrations (name) VALUES ('pos') RETURNING id"
        ).fetchone() or (None,)
        row = conn.execute(
            "INSERT INTO event_types (integration_id, name, schema) "
            "VALUES (%s, 'sale', '{}') RETURNING id, version",
            (integration,),
        ).fetchone()
        assert row is not None
        type_id, first = row
        conn.execute("UPDATE event_types SET duration_ms = 10 WHERE id = %s", (type_id,))
        conn.execute("UPDATE event_types SET buffer_ms = 10 WHERE id = %s", (type_id,))
        after = conn.execute("SELECT version FROM event_types WHERE id = %s", (type_id,))
        assert (first, after.fetchone()) == (1, (3,))


def test_device_external_id_is_unique_and_immutable(database_url: str) -> None:
    """A device's external id is unique within its integration and cannot change."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        ids = [
            conn.execute(f"INSERT INTO integrations (name) VALUES ('i{n}') RETURNING id").fetchone()
            for n in range(2)
        ]
        a, b = (row[0] for row in ids if row is not None)
        insert = "INSERT INTO devices (integration_id, name, external_id) VALUES (%s, 'd', 'x')"
        conn.execute(insert, (a,))
        conn.execute(insert, (b,))  # same external id, other integration: fine
        with pytest.raises(psycopg.errors.UniqueViolation):
            conn.execute(insert, (a,))
        with pytest.raises(psycopg.errors.CheckViolation):
            conn.execute("UPDATE devices SET external_id = 'y' WHERE integration_id = %s", (a,))
        with pytest.raises(psycopg.errors.CheckViolation):
            conn.execute(
                "INSERT INTO devices (integration_id, name, camera_ids) VALUES (%s, 'd', %s)",
                (a, [1, 2, 3, 4, 5]),
            )
