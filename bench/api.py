"""Ingest throughput of one API process against a baseline, measured in the same run.

    make bench            (or: .venv/bin/python bench/api.py [--seconds 15] [--connections 64])

Starts Kafka and PostgreSQL (or uses KAFKA_BOOTSTRAP_SERVERS / DATABASE_URL), one
`ingest-worker api` process, and a baseline process: the same uvicorn server answering a bare
202. wrk drives each with the same request, connections and duration (after a 3 s warm-up).
In order: the baseline, the API with INGEST_API_VALIDATION async, sync, sync, async (a fresh
process each), the baseline again; so the synchronous checks are compared with the thin shim
in the same run, and each sync run with the baseline run nearest it. wrk's own CPU (getrusage
of the reaped child) is reported beside. The figures go into bench/results.json.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple, cast

import httpx
import orjson
from workload import Goal, Pair, children_cpu_s, cpu_s, save_figure

from devstack.proc import free_port
from devstack.stack import services
from devstack.topics import ensure_topics
from ingest_worker.core.config import Settings
from ingest_worker.core.migrate import migrate

HERE = Path(__file__).resolve().parent
ADMIN = "igw_bench-admin"
MODES = ["async", "sync", "sync", "async"]
PROFILE_RATE = 100  # py-spy samples per second


class Load(NamedTuple):
    """What one wrk run measured, and the CPU seconds wrk itself used."""

    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    generator_cpu_s: float
    requests: int


def main() -> None:
    args = _args()
    settings = Settings.from_env(os.environ)
    work = (settings.stack_dir / "bench").resolve()
    shutil.rmtree(work, ignore_errors=True)
    with services(settings, work, durable=True) as found:
        bootstrap, database_url = found.kafka_bootstrap_servers, found.database_url
        asyncio.run(migrate(database_url, lock_timeout_s=30))
        asyncio.run(ensure_topics(bootstrap, settings))
        results = [("baseline: bare 202", _run_baseline(args, "1-bare202"))]
        for n, mode in enumerate([args.validation] if args.validation else MODES, 2):
            args.mode = mode
            load = _run_api(args, bootstrap, database_url, f"{n}-ingest-{mode}")
            results.append((f"ingest, {mode} checks", load))
        results.append(("baseline: bare 202", _run_baseline(args, f"{len(results) + 1}-bare202")))
    print(f"\nwrk -t1 -c{args.connections} -d{args.seconds}s, one server process, this machine")
    print(
        f"{'server':<22} {'requests/s':>12} {'p50 ms':>8} {'p99 ms':>8} {'non-2xx':>8} "
        f"{'wrk µs/req':>11}"
    )
    for name, r in results:
        print(
            f"{name:<22} {r.rps:>12.0f} {r.p50_ms:>8.2f} {r.p99_ms:>8.2f} {r.errors:>8} "
            f"{r.generator_cpu_s * 1e6 / r.requests:>11.1f}"
        )
    if args.profile is None:  # profiled runs are slowed by the sampling
        _save(args, results)


def _save(args: argparse.Namespace, results: list[tuple[str, Load]]) -> None:
    """Each sync run against the baseline run nearer it (the first two against the first),
    and against the async run beside it (a, s, s, a: the first with the first)."""
    bases = [r for name, r in results if name.startswith("baseline")]
    syncs = [(i, r) for i, (name, r) in enumerate(results) if name == "ingest, sync checks"]
    asyncs = [r for name, r in results if name == "ingest, async checks"]
    if not syncs:
        return
    nearest = [bases[0] if i < len(results) / 2 else bases[-1] for i, _ in syncs]
    wrk = "wrk -t1: " + ", ".join(
        f"{r.generator_cpu_s * 1e6 / r.requests:.0f} µs/request" for _, r in results
    )
    save_figure(
        "api_vs_bare",
        f"API ingest (sync checks, acks=all) vs a bare 202, {args.connections} connections",
        "requests/s",
        [Pair(s.rps, b.rps) for (_, s), b in zip(syncs, nearest, strict=True)],
        Goal(">= 50% of the bare 202", 0.50),
        "bare 202",
        note="p99 " + ", ".join(f"{s.p99_ms:.0f}" for _, s in syncs) + " ms",
        load_generator=wrk,
        seconds_per_run=args.seconds,
    )
    if asyncs:
        save_figure(
            "api_sync_vs_async",
            f"API with sync checks vs async, {args.connections} connections",
            "requests/s",
            [Pair(s.rps, a.rps) for (_, s), a in zip(syncs, asyncs, strict=True)],
            Goal(">= 85% of async", 0.85),
            "async checks",
            load_generator=wrk,
            seconds_per_run=args.seconds,
        )


def _args() -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument(
        "--validation",
        choices=["sync", "async"],
        help="INGEST_API_VALIDATION of the one run (default: both, alternating)",
    )
    parser.add_argument("--profile", type=Path, help="py-spy each measured run into this dir")
    return parser.parse_args()


def thread_cpu_s(pid: int) -> dict[int, tuple[str, float]]:
    """Each live thread of `pid`: its name and CPU seconds (user + system)."""
    found = {}
    for stat in Path(f"/proc/{pid}/task").glob("*/stat"):
        try:
            text = stat.read_text()
        except OSError:  # gone meanwhile
            continue
        fields = text.rsplit(")", 1)[1].split()
        ticks = int(fields[11]) + int(fields[12])
        name = text[text.index("(") + 1 : text.rindex(")")]
        found[int(stat.parent.name)] = (name, ticks / os.sysconf("SC_CLK_TCK"))
    return found


class Spy:
    """py-spy sampling process `pid` for `seconds` (`-f raw`, thread ids, C frames; with
    `idle`, waiting threads too: a wall-clock profile) into `out`, and each of its threads'
    CPU seconds over the same window: the window ends after `seconds`, or at `finish()` if
    that comes first (call it while the process lives). `finish(**facts)` writes the threads
    and the facts (what was done meanwhile) into `out` with `.json`, once py-spy has written
    its samples."""

    def __init__(self, pid: int, out: Path, seconds: float, idle: bool = False) -> None:
        out.parent.mkdir(parents=True, exist_ok=True)
        self.pid, self.out = pid, out
        spy = [str(HERE.parent / ".venv/bin/py-spy"), "record", "-p", str(pid), "--native"]
        spy += ["-d", str(max(1, round(seconds))), "-r", str(PROFILE_RATE), "--threads"]
        spy += ["--idle"] if idle else []
        self._lock = threading.Lock()
        self._before, self._started = thread_cpu_s(pid), time.monotonic()
        self._after: dict[int, tuple[str, float]] | None = None
        self._took = 0.0
        self._proc = subprocess.Popen(
            [*spy, "-f", "raw", "-o", str(out)], stdout=subprocess.DEVNULL
        )
        self._timer = threading.Timer(seconds, self._window_ends)
        self._timer.start()

    def _window_ends(self) -> None:
        with self._lock:
            if self._after is None:
                self._after, self._took = thread_cpu_s(self.pid), time.monotonic() - self._started

    def finish(self, **facts: object) -> None:
        self._timer.cancel()
        self._window_ends()
        self._proc.wait(120)
        assert self._after is not None
        threads = [
            {"tid": tid, "name": name, "cpu_s": round(cpu - self._before.get(tid, (name, 0))[1], 3)}
            for tid, (name, cpu) in sorted(self._after.items())
        ]
        document = {"pid": self.pid, "seconds": round(self._took, 3), "threads": threads, **facts}
        document["idle_sampled"] = "--idle" in cast("list[str]", self._proc.args)
        indented = orjson.dumps(document, option=orjson.OPT_INDENT_2)
        self.out.with_suffix(".json").write_bytes(indented)


def _run_baseline(args: argparse.Namespace, label: str) -> Load:
    port = free_port()
    cmd = [sys.executable, "-m", "uvicorn", "baseline_app:app", "--port", str(port)]
    cmd += ["--loop", "uvloop", "--http", "httptools", "--no-access-log", "--log-level", "warning"]
    server = subprocess.Popen(cmd, cwd=HERE)
    try:
        url = f"http://127.0.0.1:{port}"
        _wait(f"{url}/v1/integrations/1/events", expect_post=True)
        return _wrk(url, "/v1/integrations/1/events", "unused", args, (server.pid, label))
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


def _run_api(args: argparse.Namespace, bootstrap: str, database_url: str, label: str) -> Load:
    with api_process(bootstrap, database_url, INGEST_API_VALIDATION=args.mode) as (url, pid):
        path, token, type_id = _integration_and_token(url)
        return _wrk(url, path, token, args, (pid, label), type_id)


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
    url: str,
    path: str,
    token: str,
    args: argparse.Namespace,
    server: tuple[int, str],
    type_id: str = "1",
) -> Load:
    """wrk against `server` (its pid, and a label naming its profile with `--profile`)."""
    env = {**os.environ, "INGEST_PATH": path, "INGEST_TOKEN": token, "INGEST_TYPE_ID": type_id}
    base = ["wrk", "-t1", f"-c{args.connections}", "--latency", "-s", str(HERE / "ingest.lua")]
    subprocess.run([*base, "-d3s", url], env=env, capture_output=True, check=True)  # warm-up
    pid, label = server
    to = args.profile
    spy = None if to is None else Spy(pid, to / f"api-{label}.txt", args.seconds)
    before, server_before = children_cpu_s(), cpu_s(pid)
    out = subprocess.run(
        [*base, f"-d{args.seconds}s", url], env=env, capture_output=True, text=True, check=True
    ).stdout
    cpu, server_cpu = children_cpu_s() - before, cpu_s(pid) - server_before
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    found = int(errors.group(1)) if errors else 0
    if spy is not None:
        spy.finish(requests=requests, requests_per_s=rps, server_cpu_s=server_cpu, wrk_cpu_s=cpu)
    return Load(rps, _ms(out, "50%"), _ms(out, "99%"), found, cpu, max(requests, 1))


def _ms(out: str, percentile: str) -> float:
    value, unit = re.search(rf"{percentile}\s+([\d.]+)(us|ms|s)", out).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


if __name__ == "__main__":
    main()
