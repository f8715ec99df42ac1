"""`ingest-worker`: the command line. Logging is configured here and nowhere else."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence
from contextlib import suppress

from ingest_worker.core import config, logs
from ingest_worker.core.config import Settings
from ingest_worker.core.errors import IngestError
from ingest_worker.core.migrate import migrate

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
        return _tail(settings, args.which, from_end=args.from_end)
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
    from ingest_worker.shim.serve import serve

    serve(settings)
    return 0


def _worker(settings: Settings) -> int:
    import uvloop

    from ingest_worker.worker.loop import serve

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
