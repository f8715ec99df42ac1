"""The console script as operators run it: `migrate` and the `dev` stack command."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psycopg

from ingest_worker.devstack.stack import Endpoints
from ingest_worker.migrate import bundled

CLI = [sys.executable, "-m", "ingest_worker"]
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
    """`ingest-worker dev` with endpoints given starts nothing, migrates, prints the
    endpoints, and exits cleanly on SIGTERM."""
    env = _env(
        KAFKA_BOOTSTRAP_SERVERS=endpoints.kafka_bootstrap_servers, DATABASE_URL=empty_database
    )
    proc = subprocess.Popen(
        [*CLI, "dev"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    lines = [proc.stdout.readline().strip() for _ in range(4)]
    time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0
    assert f"KAFKA_BOOTSTRAP_SERVERS={endpoints.kafka_bootstrap_servers}" in lines
    with psycopg.connect(empty_database) as conn:
        assert conn.execute("SELECT count(*) FROM schema_migrations").fetchone() == MIGRATED
