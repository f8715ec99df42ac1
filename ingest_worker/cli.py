"""`ingest-worker`: the command line. Logging is configured here and nowhere else."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shutil
import signal
import sys
from collections.abc import Sequence

from ingest_worker import config, logs
from ingest_worker.config import Settings
from ingest_worker.errors import IngestError
from ingest_worker.migrate import migrate

log = logging.getLogger("ingest_worker")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ingest-worker", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("migrate", help="apply pending database migrations (safe to run concurrently)")
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


def _dev(settings: Settings) -> int:
    from ingest_worker.devstack.stack import services

    work_dir = settings.stack_dir / "run"
    shutil.rmtree(work_dir, ignore_errors=True)
    with services(settings, work_dir, durable=True) as endpoints:
        asyncio.run(migrate(endpoints.database_url, lock_timeout_s=settings.migrate_lock_timeout_s))
        print(_banner(endpoints.kafka_bootstrap_servers, endpoints.database_url), flush=True)
        _wait_for_stop_signal()
    return 0


def _banner(bootstrap: str, database_url: str) -> str:
    return "\n".join(
        [
            "",
            "ingest-worker local stack is up (Ctrl-C stops it)",
            f"  KAFKA_BOOTSTRAP_SERVERS={bootstrap}",
            f"  DATABASE_URL={database_url}",
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
