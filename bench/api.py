"""Ingest throughput of one API process against a baseline, measured in the same run.

    make bench            (or: .venv/bin/python bench/api.py [--seconds 15] [--connections 64])

Starts Kafka and PostgreSQL (or uses KAFKA_BOOTSTRAP_SERVERS / DATABASE_URL), one
`ingest-worker api` process, and a baseline process: the same uvicorn server answering a bare
202. wrk drives each with the same request, connections and duration. The API runs four
times, with INGEST_API_VALIDATION async, sync, sync, async (a fresh process each), so the
synchronous checks are compared with the thin shim in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from devstack.proc import free_port
from devstack.stack import services
from devstack.topics import ensure_topics
from ingest_worker.core.config import Settings
from ingest_worker.core.migrate import migrate

HERE = Path(__file__).resolve().parent
ADMIN = "igw_bench-admin"


def main() -> None:
    args = _args()
    settings = Settings.from_env(os.environ)
    work = (settings.stack_dir / "bench").resolve()
    shutil.rmtree(work, ignore_errors=True)
    with services(settings, work, durable=True) as found:
        bootstrap, database_url = found.kafka_bootstrap_servers, found.database_url
        asyncio.run(migrate(database_url, lock_timeout_s=30))
        asyncio.run(ensure_topics(bootstrap, settings))
        results = [("baseline: bare 202", _run_baseline(args))]
        for mode in [args.validation] if args.validation else ["async", "sync", "sync", "async"]:
            args.mode = mode
            results.append((f"ingest, {mode} checks", _run_api(args, bootstrap, database_url)))
    print(f"\nwrk -t1 -c{args.connections} -d{args.seconds}s, one server process, this machine")
    print(f"{'server':<22} {'requests/s':>12} {'p50 ms':>8} {'p99 ms':>8} {'non-2xx':>8}")
    for name, (rps, p50, p99, errors) in results:
        print(f"{name:<22} {rps:>12.0f} {p50:>8.2f} {p99:>8.2f} {errors:>8}")
    rates = {
        mode: [r[0] for name, r in results if name == f"ingest, {mode} checks"]
        for mode in ("sync", "async")
    }
    if rates["sync"] and rates["async"]:
        ratio = sum(rates["sync"]) / sum(rates["async"])
        print(f"sync checks at {ratio:.0%} of async (target >= 85%); runs alternate a, s, s, a")


def _args() -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument(
        "--validation",
        choices=["sync", "async"],
        help="INGEST_API_VALIDATION of the one run (default: both, alternating)",
    )
    return parser.parse_args()


def _run_baseline(args: argparse.Namespace) -> tuple[float, float, float, int]:
    port = free_port()
    cmd = [sys.executable, "-m", "uvicorn", "baseline_app:app", "--port", str(port)]
    cmd += ["--loop", "uvloop", "--http", "httptools", "--no-access-log", "--log-level", "warning"]
    server = subprocess.Popen(cmd, cwd=HERE)
    try:
        url = f"http://127.0.0.1:{port}"
        _wait(f"{url}/v1/integrations/1/events", expect_post=True)
        return _wrk(url, "/v1/integrations/1/events", "unused", args)
    finally:
        server.terminate()
        server.wait(30)


@contextmanager
def api_process(
    bootstrap: str, database_url: str, ready: str = "/readyz", **extra: str
) -> Iterator[tuple[str, int]]:
    """An `ingest-worker api` under test, with the bench's admin token, no rate limit and
    `extra` settings on top: its URL and pid once `ready` answers; stopped at the end."""
    port = free_port()
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "DATABASE_URL": database_url,
        "INGEST_ADMIN_TOKEN": ADMIN,
        "INGEST_API_PORT": str(port),
        "INGEST_RATE_LIMIT_PER_S": "0",
        **extra,
    }
    server = subprocess.Popen([sys.executable, "-m", "ingest_worker", "api"], env=env)
    try:
        url = f"http://127.0.0.1:{port}"
        _wait(url + ready)
        yield url, server.pid
    finally:
        server.terminate()
        server.wait(30)


def _run_api(
    args: argparse.Namespace, bootstrap: str, database_url: str
) -> tuple[float, float, float, int]:
    with api_process(bootstrap, database_url, INGEST_API_VALIDATION=args.mode) as (url, _):
        path, token, type_id = _integration_and_token(url)
        return _wrk(url, path, token, args, type_id)


# The event type of ingest.lua's body, so that the synchronous checks pass it.
SCHEMA = {
    "type": "object",
    "required": ["store_id", "lane"],
    "properties": {
        "store_id": {"type": "string"},
        "lane": {"type": "integer"},
        "total": {"type": "number", "minimum": 0},
    },
}


def _integration_and_token(url: str) -> tuple[str, str, str]:
    """The events path of a new integration, a token of it, and its event type's id."""
    headers = {"authorization": f"Bearer {ADMIN}"}
    made = httpx.post(f"{url}/v1/integrations", json={"name": "bench"}, headers=headers).json()
    base = f"{url}/v1/integrations/{made['integration']['id']}"
    token = httpx.post(f"{base}/tokens", json={}, headers=headers).json()["integration_token"]
    typed = httpx.post(
        f"{base}/event-types", json={"name": "sale", "schema": SCHEMA}, headers=headers
    ).json()["integration_event_type"]
    return f"/v1/integrations/{made['integration']['id']}/events", token["token"], str(typed["id"])


def _wait(url: str, expect_post: bool = False) -> None:
    for _ in range(300):
        try:
            answer = httpx.post(url, content=b"{}") if expect_post else httpx.get(url)
            if answer.status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer")


def _wrk(
    url: str, path: str, token: str, args: argparse.Namespace, type_id: str = "1"
) -> tuple[float, float, float, int]:
    env = {**os.environ, "INGEST_PATH": path, "INGEST_TOKEN": token, "INGEST_TYPE_ID": type_id}
    base = ["wrk", "-t1", f"-c{args.connections}", "--latency", "-s", str(HERE / "ingest.lua")]
    subprocess.run([*base, "-d3s", url], env=env, capture_output=True, check=True)  # warm-up
    out = subprocess.run(
        [*base, f"-d{args.seconds}s", url], env=env, capture_output=True, text=True, check=True
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return rps, _ms(out, "50%"), _ms(out, "99%"), int(errors.group(1)) if errors else 0


def _ms(out: str, percentile: str) -> float:
    value, unit = re.search(rf"{percentile}\s+([\d.]+)(us|ms|s)", out).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


if __name__ == "__main__":
    main()
