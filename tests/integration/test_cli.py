"""The console script as operators run it: `migrate` and the `dev` stack command."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import psycopg

from devstack.proc import free_port
from devstack.stack import Endpoints
from ingest_worker.core.migrate import bundled

CLI = [sys.executable, "-m", "ingest_worker"]
ROOT = Path(__file__).resolve().parents[2]
MIGRATED = (len(bundled()),)


def _env(**overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL",)}
    env.update(overrides)
    return env


def test_migrate_command_applies_and_exits_zero(empty_database: str) -> None:
    """`ingest-worker migrate` migrates the database named by DATABASE_URL."""
    result = subprocess.run(
        [*CLI, "migrate"], env=_env(DATABASE_URL=empty_database), capture_output=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    with psycopg.connect(empty_database) as conn:
        assert conn.execute("SELECT count(*) FROM schema_migrations").fetchone() == MIGRATED


def test_migrate_without_database_url_says_so() -> None:
    """Without DATABASE_URL, `migrate` exits 2 with a message naming the variable."""
    result = subprocess.run([*CLI, "migrate"], env=_env(), capture_output=True, timeout=60)
    assert result.returncode == 2
    assert b"DATABASE_URL is not set" in result.stderr


def test_bad_setting_fails_fast() -> None:
    """A malformed setting stops the process at start with the variable's name."""
    result = subprocess.run(
        [*CLI, "migrate"], env=_env(INGEST_API_PORT="x"), capture_output=True, timeout=60
    )
    assert result.returncode == 1
    assert b"INGEST_API_PORT" in result.stderr


def test_dev_uses_given_endpoints_and_stops_on_sigterm(
    endpoints: Endpoints, empty_database: str
) -> None:
    """`python -m devstack` (`make run`) with endpoints given starts no broker or database,
    migrates, starts the API, prints where everything is once it answers, and stops on
    SIGTERM."""
    port = free_port()
    env = _env(
        KAFKA_BOOTSTRAP_SERVERS=endpoints.kafka_bootstrap_servers,
        DATABASE_URL=empty_database,
        INGEST_API_PORT=str(port),
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "devstack"], env=env, stdout=subprocess.PIPE, text=True, cwd=ROOT
    )
    assert proc.stdout is not None
    lines = [proc.stdout.readline().strip() for _ in range(6)]
    health = httpx.get(f"http://127.0.0.1:{port}/healthz")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0
    assert health.status_code == 200
    assert f"API                      http://127.0.0.1:{port}" in lines
    assert f"KAFKA_BOOTSTRAP_SERVERS={endpoints.kafka_bootstrap_servers}" in lines
    assert any(line.startswith("INGEST_ADMIN_TOKEN=igw_") for line in lines)
    with psycopg.connect(empty_database) as conn:
        assert conn.execute("SELECT count(*) FROM schema_migrations").fetchone() == MIGRATED
