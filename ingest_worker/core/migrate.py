"""Versioned SQL migrations, applied under a PostgreSQL advisory lock.

Several replicas may start at once: each takes the same session-level advisory lock, so one
applies the pending migrations while the others wait, then find nothing left to do. Every
migration runs in its own transaction together with its bookkeeping row.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from importlib import resources

import psycopg
from psycopg import sql
from psycopg.rows import TupleRow

from ingest_worker.core.errors import DependencyUnavailable, MigrationError

log = logging.getLogger(__name__)

AsyncConnection = psycopg.AsyncConnection[TupleRow]

# pg_advisory_lock key: "ingw" as a 32-bit integer, shared by every replica.
LOCK_KEY = 0x696E6777
_FILENAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")

_CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version     integer PRIMARY KEY,
    name        text NOT NULL,
    sha256      text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
)"""


@dataclass(frozen=True, slots=True)
class Migration:
    """One SQL file: `NNNN_name.sql`."""

    version: int
    name: str
    sql: str

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def parse(files: dict[str, str]) -> list[Migration]:
    """Migrations from {filename: text}, ordered by version; reject gaps and bad names."""
    found = []
    for filename, text in files.items():
        match = _FILENAME.match(filename)
        if match is None:
            raise MigrationError(f"migration file {filename!r} is not named NNNN_name.sql")
        found.append(Migration(int(match[1]), match[2], text))
    found.sort(key=lambda m: m.version)
    expected = list(range(1, len(found) + 1))
    if [m.version for m in found] != expected:
        raise MigrationError(f"migration versions must be 1..{len(found)} without gaps")
    return found


def bundled() -> list[Migration]:
    """The migrations shipped in this package."""
    folder = resources.files("ingest_worker.core") / "migrations"
    files = {p.name: p.read_text("utf-8") for p in folder.iterdir() if p.name.endswith(".sql")}
    return parse(files)


def pending(available: list[Migration], applied: dict[int, str]) -> list[Migration]:
    """What is left to apply, given {version: sha256} already applied; refuse edited history."""
    known = {m.version: m for m in available}
    for version, digest in applied.items():
        if version not in known:
            raise MigrationError(f"database has migration {version}, unknown to this release")
        if known[version].sha256 != digest:
            raise MigrationError(f"migration {version} was edited after it was applied")
    return [m for m in available if m.version not in applied]


async def migrate(
    database_url: str, *, lock_timeout_s: float, migrations: list[Migration] | None = None
) -> list[int]:
    """Apply pending migrations; return the versions this call applied (empty if none)."""
    todo_source = bundled() if migrations is None else migrations
    try:
        conn = await psycopg.AsyncConnection.connect(database_url, autocommit=True)
    except psycopg.OperationalError as exc:
        raise DependencyUnavailable(f"cannot connect to PostgreSQL: {exc}") from exc
    async with conn:
        await _lock(conn, lock_timeout_s)
        try:
            return await _apply_all(conn, todo_source)
        finally:
            await conn.execute("SELECT pg_advisory_unlock(%s)", (LOCK_KEY,))


async def _lock(conn: AsyncConnection, timeout_s: float) -> None:
    await conn.execute(sql.SQL("SET lock_timeout = {}").format(sql.Literal(f"{timeout_s}s")))
    try:
        await conn.execute("SELECT pg_advisory_lock(%s)", (LOCK_KEY,))
    except psycopg.errors.LockNotAvailable as exc:
        raise MigrationError(f"another migrator held the lock for over {timeout_s}s") from exc
    await conn.execute("SET lock_timeout = 0")


async def _apply_all(conn: AsyncConnection, available: list[Migration]) -> list[int]:
    await conn.execute(_CREATE_TABLE)
    cur = await conn.execute("SELECT version, sha256 FROM schema_migrations")
    applied = {int(row[0]): str(row[1]) for row in await cur.fetchall()}
    done = []
    for migration in pending(available, applied):
        await _apply_one(conn, migration)
        done.append(migration.version)
    return done


async def _apply_one(conn: AsyncConnection, migration: Migration) -> None:
    log.info(
        "applying migration", extra={"version": migration.version, "migration": migration.name}
    )
    async with conn.transaction():
        await conn.execute(migration.sql.encode())
        await conn.execute(
            "INSERT INTO schema_migrations (version, name, sha256) VALUES (%s, %s, %s)",
            (migration.version, migration.name, migration.sha256),
        )
