"""`python -m devstack` (what `make run` runs): a real Kafka broker and PostgreSQL on this
machine (or in Docker), migrated, with topics, an `ingest-worker api` and an `ingest-worker
worker` beside them; prints the endpoints and the admin token, and stops everything on Ctrl-C.
A development tool: the installed package never imports it."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager

from devstack.stack import services
from devstack.topics import ensure_topics
from ingest_worker.core import logs, tokens
from ingest_worker.core.config import Settings
from ingest_worker.core.errors import IngestError, StackError
from ingest_worker.core.migrate import migrate

log = logging.getLogger("devstack")


def main() -> int:
    try:
        settings = Settings.from_env(os.environ)
        logs.setup(settings.log_level, settings.log_format)
        return run(settings)
    except IngestError as exc:
        print(f"devstack: {exc}", file=sys.stderr)
        return 1


def run(settings: Settings) -> int:
    """The local stack, the API and a worker, until SIGINT or SIGTERM."""
    work_dir = settings.stack_dir / "run"
    shutil.rmtree(work_dir, ignore_errors=True)
    admin_token = settings.admin_token or tokens.generate()
    with services(settings, work_dir, durable=True) as endpoints:
        bootstrap, database_url = endpoints.kafka_bootstrap_servers, endpoints.database_url
        asyncio.run(migrate(database_url, lock_timeout_s=settings.migrate_lock_timeout_s))
        asyncio.run(ensure_topics(bootstrap, settings))
        env = {
            **os.environ,
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "DATABASE_URL": database_url,
            "INGEST_ADMIN_TOKEN": admin_token,
        }
        api_url = f"http://{settings.api_host}:{settings.api_port}"
        with _children(env, ["api", "worker"]) as procs:
            _wait_ready(f"{api_url}/readyz", procs)
            print(_banner(api_url, bootstrap, database_url, admin_token), flush=True)
            _wait_for_stop_signal()
    return 0


def _wait_ready(url: str, procs: list[subprocess.Popen[bytes]], timeout_s: float = 60) -> None:
    """Block until `url` answers 200; fail if a child process exits first."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if any(proc.poll() is not None for proc in procs):
            raise StackError("a service process exited during start-up (see its log above)")
        try:
            with urllib.request.urlopen(url, timeout=1) as answer:  # noqa: S310 - our own URL
                if answer.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise StackError(f"{url} did not become ready in {timeout_s}s")


@contextmanager
def _children(env: dict[str, str], commands: list[str]) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Run `ingest-worker <command>` processes beside the stack; stop them (SIGTERM) on exit."""
    procs = [
        subprocess.Popen([sys.executable, "-m", "ingest_worker", command], env=env)
        for command in commands
    ]
    try:
        yield procs
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(30)


def _banner(api_url: str, bootstrap: str, database_url: str, admin_token: str) -> str:
    return "\n".join(
        [
            "",
            "ingest-worker is up (Ctrl-C stops it)",
            f"  API                      {api_url}",
            f"  KAFKA_BOOTSTRAP_SERVERS={bootstrap}",
            f"  DATABASE_URL={database_url}",
            f"  INGEST_ADMIN_TOKEN={admin_token}",
            "",
        ]
    )


def _wait_for_stop_signal() -> None:
    received: list[int] = []

    def on_signal(signum: int, _frame: object) -> None:
        received.append(signum)

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    while not received:
        signal.pause()
    log.info("stopping", extra={"signal": signal.Signals(received[0]).name})


if __name__ == "__main__":
    sys.exit(main())
