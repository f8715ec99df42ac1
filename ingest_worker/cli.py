"""`ingest-worker`: the command line. Logging is configured here and nowhere else."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress

from ingest_worker import config, logs, tokens
from ingest_worker.config import Settings
from ingest_worker.errors import IngestError, StackError
from ingest_worker.migrate import migrate

log = logging.getLogger("ingest_worker")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ingest-worker", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("api", help="serve the HTTP API (ingest, import, management, health)")
    sub.add_parser("worker", help="consume the raw topic, resolve devices, emit exactly once")
    sub.add_parser("migrate", help="apply pending database migrations (safe to run concurrently)")
    tail = sub.add_parser(
        "tail", help="print the accepted or rejected topic, decoded, as JSON lines"
    )
    tail.add_argument("which", choices=["accepted", "rejected"])
    tail.add_argument("--from-end", action="store_true", help="only records produced from now on")
    sub.add_parser("dev", help="start the local stack (what `make run` runs) and wait for Ctrl-C")
    sub.add_parser("config", help="print the configuration table (markdown) and exit")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script."""
    args = _parser().parse_args(argv)
    if args.command == "config":
        print(config.markdown_table())
        return 0
    try:
        settings = Settings.from_env(os.environ)
        logs.setup(settings.log_level, settings.log_format)
        if args.command == "migrate":
            return _migrate(settings)
        if args.command == "api":
            return _api(settings)
        if args.command == "worker":
            return _worker(settings)
        if args.command == "tail":
            return _tail(settings, args.which, from_end=args.from_end)
        return _dev(settings)
    except IngestError as exc:
        print(f"ingest-worker: {exc}", file=sys.stderr)
        return 1


def _migrate(settings: Settings) -> int:
    if not settings.database_url:
        print("ingest-worker: DATABASE_URL is not set", file=sys.stderr)
        return 2
    applied = asyncio.run(
        migrate(settings.database_url, lock_timeout_s=settings.migrate_lock_timeout_s)
    )
    log.info("migrations done", extra={"applied": applied})
    return 0


def _api(settings: Settings) -> int:
    from ingest_worker.api.serve import serve

    serve(settings)
    return 0


def _worker(settings: Settings) -> int:
    import uvloop

    from ingest_worker.worker import serve

    uvloop.run(serve(settings))
    return 0


def _tail(settings: Settings, which: str, *, from_end: bool) -> int:
    from ingest_worker.tail import tail

    if not settings.kafka_bootstrap_servers:
        print("ingest-worker: KAFKA_BOOTSTRAP_SERVERS is not set", file=sys.stderr)
        return 2
    with suppress(KeyboardInterrupt):
        asyncio.run(tail(settings, which, from_end=from_end))
    return 0


def _dev(settings: Settings) -> int:
    from ingest_worker.devstack.stack import services
    from ingest_worker.devstack.topics import ensure_topics

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
