"""Import throughput: events/s through one `ingest-worker api` process on the import route
(`POST /v1/integrations/{id}/events/import`), against the single-event ingest route's events/s
measured in the same run, each with the load generator's own CPU.

    INGEST_LOG_LEVEL=WARNING PYTHONPATH=. .venv/bin/python bench/imports.py [--seconds 15]
        [--batches 100 500] [--connections 64] [--import-connections 16] [--rounds 2]
        [--httpx 100]

Per round, each against a fresh API process (INGEST_API_VALIDATION=sync, the default; rate
limit off), in this order: the ingest route as bench/api.py drives it (wrk, bench/ingest.lua,
`--connections`); the import route with each of `--batches` items per request (a gateway's
batches: 100 and 500 by default), driven by wrk with a Lua script posting one fixed body,
`--import-connections` connections; then, with `--httpx N`, the import of N items driven by a
Python generator instead (httpx on asyncio, the same body and connections), to compare what
each generator costs per event. Every import item is valid and names its own device
(`S042:0`, `S042:1`, ...), so each is checked and published; one request is checked to get
an event id for every item before the clock starts. Each load runs `--seconds` after a 3 s
warm-up. Generator CPU: wrk's from getrusage of the reaped child, the Python generator's
from this process's CPU time; the API's from /proc; all over the measured seconds only.
Rounds alternate their order (ABBA) so a drift in the machine's load falls on all. The
figure (bench/results.json, "imports"): the import of the most items per request, driven by
wrk, in each round beside that round's ingest route (`--httpx` with no sizes skips the Python
generator). With `--profile DIR`, py-spy samples the API over each measured wrk run (as
bench/api.py's `--profile` does, into DIR: `imports-{n}-{route}-{batch}.txt`, beside a `.json`
of its threads' CPU seconds, the requests and the events); those runs are slowed by the
sampling, so their figures are printed only, never saved.
Kafka and PostgreSQL: KAFKA_BOOTSTRAP_SERVERS and DATABASE_URL if set, else started here.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
from api import HERE, Spy, _integration_and_token, _ms, api_process
from workload import Goal, Pair, children_cpu_s, cpu_s, save_figure, stack

from devstack.topics import ensure_topics
from ingest_worker.core.config import Settings

TARGET_EVENTS_S = 50_000
WARMUP_S = 3

# wrk posts the body in IMPORT_BODY_FILE, read once at start, to IMPORT_PATH.
IMPORT_LUA = """
wrk.method = "POST"
wrk.path = os.getenv("IMPORT_PATH")
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. os.getenv("INGEST_TOKEN")
local file = io.open(os.getenv("IMPORT_BODY_FILE"), "rb")
wrk.body = file:read("*a")
file:close()
"""


@dataclass(frozen=True, slots=True)
class Load:
    """One load: what drove which route, and what it measured over its `seconds`."""

    name: str
    generator: str
    batch: int  # events per request; 1 is the ingest route
    connections: int
    seconds: float
    requests: int
    non_2xx: int
    p50_ms: float
    p99_ms: float
    generator_cpu_s: float
    api_cpu_s: float
    load: float

    @property
    def events_s(self) -> float:
        return (self.requests - self.non_2xx) * self.batch / self.seconds

    @property
    def events(self) -> int:
        return max((self.requests - self.non_2xx) * self.batch, 1)

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "generator": self.generator,
            "events_per_request": self.batch,
            "connections": self.connections,
            "seconds": self.seconds,
            "events_per_s": round(self.events_s),
            "requests_per_s": round(self.requests / self.seconds),
            "non_2xx": self.non_2xx,
            "p50_ms": round(self.p50_ms, 2),
            "p99_ms": round(self.p99_ms, 2),
            "generator_cpu_us_per_event": round(self.generator_cpu_s * 1e6 / self.events, 2),
            "generator_cpu_cores": round(self.generator_cpu_s / self.seconds, 2),
            "api_cpu_us_per_event": round(self.api_cpu_s * 1e6 / self.events, 2),
            "api_cpu_cores": round(self.api_cpu_s / self.seconds, 2),
            "load_1m": round(self.load, 2),
        }


@dataclass(frozen=True, slots=True)
class Api:
    """A running API process and what a load needs of it."""

    pid: int
    url: str
    path: str  # the ingest route of a fresh integration
    token: str
    type_id: str


def main() -> None:
    args = _args()
    with stack("bench-imports") as settings, tempfile.TemporaryDirectory() as tmp:
        asyncio.run(ensure_topics(str(settings.kafka_bootstrap_servers), settings))
        plan = _plan(args)
        loads: list[Load] = []
        for r in range(args.rounds):
            for what in plan if r % 2 == 0 else plan[::-1]:
                args.label = f"{len(loads) + 1}-{'ingest' if what[1] == 1 else 'import'}-{what[1]}"
                loads.append(_measure(settings, args, what, Path(tmp)))
                print(_line(loads[-1]), flush=True)
    _report(args, loads)


def _args() -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--batches", type=int, nargs="+", default=[100, 500])
    parser.add_argument("--connections", type=int, default=64, help="ingest route (as api.py)")
    parser.add_argument("--import-connections", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--httpx", type=int, nargs="*", default=[100], help="batches, Python")
    parser.add_argument("--profile", type=Path, help="py-spy each measured wrk run into this dir")
    return parser.parse_args()


def _plan(args: argparse.Namespace) -> list[tuple[str, int]]:
    """(generator, events per request) of each load of a round."""
    imports = [("wrk", b) for b in args.batches] + [("httpx", b) for b in args.httpx]
    return [("wrk", 1), *imports]


def _measure(
    settings: Settings, args: argparse.Namespace, what: tuple[str, int], tmp: Path
) -> Load:
    generator, batch = what
    with _api(settings) as api:
        if batch == 1:
            env = {
                "INGEST_PATH": api.path,
                "INGEST_TOKEN": api.token,
                "INGEST_TYPE_ID": api.type_id,
            }
            return _wrk(api, HERE / "ingest.lua", env, args, args.connections, "ingest")
        body = _import_body(batch, int(api.type_id))
        _check_import(api, body, batch)
        if generator == "httpx":
            return _httpx(api, body, batch, args.import_connections, args.seconds)
        (tmp / "body.json").write_bytes(body)
        (tmp / "import.lua").write_text(IMPORT_LUA)
        env = {"IMPORT_PATH": f"{api.path}/import", "INGEST_TOKEN": api.token}
        env["IMPORT_BODY_FILE"] = str(tmp / "body.json")
        name = f"import {batch}"
        return _wrk(api, tmp / "import.lua", env, args, args.import_connections, name, batch)


@contextmanager
def _api(settings: Settings) -> Iterator[Api]:
    """A fresh `ingest-worker api` process, as bench/api.py starts it (synchronous checks),
    with a fresh integration, token and event type."""
    endpoints = str(settings.kafka_bootstrap_servers), str(settings.database_url)
    with api_process(*endpoints, INGEST_API_VALIDATION="sync") as (url, pid):
        path, token, type_id = _integration_and_token(url)
        yield Api(pid, url, path, token, type_id)


def _import_body(batch: int, type_id: int) -> bytes:
    """`batch` valid items, each like bench/ingest.lua's event, each naming its own device."""
    items = [
        {
            "integration_event_type_id": type_id,
            "timestamp": "2024-06-01T12:00:00Z",
            "attributes": {"store_id": "S042", "lane": i % 20, "total": 12.5},
            "device_external_id": f"S042:{i}",
        }
        for i in range(batch)
    ]
    return orjson.dumps({"integration_events": items})


def _headers(api: Api) -> dict[str, str]:
    return {"authorization": f"Bearer {api.token}", "content-type": "application/json"}


def _check_import(api: Api, body: bytes, batch: int) -> None:
    """One import must get an event id for every item: the load measures acceptance."""
    answer = httpx.post(f"{api.url}{api.path}/import", content=body, headers=_headers(api))
    results = answer.json()["results"] if answer.status_code == 202 else []
    if sum("event_id" in r for r in results) != batch:
        raise RuntimeError(f"import answered {answer.status_code}: {answer.text[:300]}")


def _wrk(
    api: Api,
    script: Path,
    env: dict[str, str],
    args: argparse.Namespace,
    connections: int,
    name: str,
    batch: int = 1,
) -> Load:
    """wrk -t1 against the API for `args.seconds`; its CPU is the reaped child's, over the
    measured run only (py-spy samples the API meanwhile with `args.profile`)."""
    seconds: int = args.seconds
    base = ["wrk", "-t1", f"-c{connections}", "--latency", "-s", str(script)]
    full_env = {**os.environ, **env}
    subprocess.run(
        [*base, f"-d{WARMUP_S}s", api.url], env=full_env, capture_output=True, check=True
    )
    to = args.profile
    spy = None if to is None else Spy(api.pid, to / f"imports-{args.label}.txt", seconds)
    before, api_before = children_cpu_s(), cpu_s(api.pid)
    out = subprocess.run(
        [*base, f"-d{seconds}s", api.url], env=full_env, capture_output=True, text=True, check=True
    ).stdout
    generator_cpu, api_cpu = children_cpu_s() - before, cpu_s(api.pid) - api_before
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if spy is not None:
        spy.finish(requests=requests, events=requests * batch, api_cpu_s=api_cpu)
    return Load(
        name,
        "wrk",
        batch,
        connections,
        requests / rps,
        requests,
        int(errors.group(1)) if errors else 0,
        _ms(out, "50%"),
        _ms(out, "99%"),
        generator_cpu,
        api_cpu,
        os.getloadavg()[0],
    )


def _httpx(api: Api, body: bytes, batch: int, connections: int, seconds: int) -> Load:
    """The Python generator: `connections` tasks posting the body over httpx until the time
    is up; its CPU is this process's over the measured run."""
    asyncio.run(_post_for(api, body, connections, WARMUP_S))
    before, api_before, started = time.process_time(), cpu_s(api.pid), time.monotonic()
    timings, failed = asyncio.run(_post_for(api, body, connections, seconds))
    took = time.monotonic() - started
    generator_cpu, api_cpu = time.process_time() - before, cpu_s(api.pid) - api_before
    timings.sort()
    return Load(
        f"import {batch}",
        "httpx",
        batch,
        connections,
        took,
        len(timings),
        failed,
        timings[len(timings) // 2] * 1000,
        timings[int(len(timings) * 0.99)] * 1000,
        generator_cpu,
        api_cpu,
        os.getloadavg()[0],
    )


async def _post_for(
    api: Api, body: bytes, connections: int, seconds: int
) -> tuple[list[float], int]:
    """Each request's seconds, and how many were not answered 202."""
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    timings: list[float] = []
    failed = 0
    url, headers = f"{api.url}{api.path}/import", _headers(api)
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:
        until = time.monotonic() + seconds

        async def post_until() -> None:
            nonlocal failed
            while (started := time.monotonic()) < until:
                answer = await client.post(url, content=body, headers=headers)
                timings.append(time.monotonic() - started)
                failed += answer.status_code != 202

        await asyncio.gather(*(post_until() for _ in range(connections)))
    return timings, failed


def _line(load: Load) -> str:
    figures = load.as_json()
    return (
        f"{load.name:<11} {load.generator:<6} {load.connections:>5} {load.events_s:>10,.0f} "
        f"{figures['p50_ms']:>8.2f} {figures['p99_ms']:>8.2f} {load.non_2xx:>8} "
        f"{figures['generator_cpu_us_per_event']:>10.2f} {figures['generator_cpu_cores']:>8.2f} "
        f"{figures['api_cpu_us_per_event']:>8.2f} {load.load:>6.1f}"
    )


HEADING = (
    f"{'route':<11} {'gen':<6} {'conns':>5} {'events/s':>10} {'p50 ms':>8} {'p99 ms':>8} "
    f"{'non-2xx':>8} {'gen µs/ev':>10} {'gen CPU':>8} {'API µs/ev':>8} {'load':>6}"
)


def _report(args: argparse.Namespace, loads: list[Load]) -> None:
    ingest = [x for x in loads if x.batch == 1]
    rate_ingest = sum(x.events_s for x in ingest) / len(ingest)
    loads_now = " / ".join(f"{load:.1f}" for load in os.getloadavg())
    print(
        f"\none API process, {args.seconds} s per load after {WARMUP_S} s of warm-up, this machine"
    )
    print(f"({os.cpu_count()} cores; load average 1/5/15 min at the end: {loads_now})\n")
    print(
        "| # | route | events/request | generator | connections | events/s | x ingest "
        "| p99 ms | non-2xx | generator µs/event | generator cores | API µs/event | load 1m |"
    )
    print("|---:|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for n, x in enumerate(loads, 1):
        f = x.as_json()
        print(
            f"| {n} | {'ingest' if x.batch == 1 else 'import'} | {x.batch} | {x.generator} "
            f"| {x.connections} | {x.events_s:,.0f} | {x.events_s / rate_ingest:.1f} "
            f"| {x.p99_ms:.1f} | {x.non_2xx} | {f['generator_cpu_us_per_event']:.2f} "
            f"| {f['generator_cpu_cores']:.2f} | {f['api_cpu_us_per_event']:.1f} | {x.load:.1f} |"
        )
    summary = {"ingest_mean_events_per_s": round(rate_ingest)}
    for generator, batch in _plan(args)[1:]:
        runs = [x for x in loads if (x.generator, x.batch) == (generator, batch)]
        rate = sum(x.events_s for x in runs) / len(runs)
        verdict = "met" if rate >= TARGET_EVENTS_S else "missed"
        print(
            f"import {batch} ({generator}): mean {rate:,.0f} events/s, {rate / rate_ingest:.1f}x "
            f"the ingest route's {rate_ingest:,.0f} (target >= {TARGET_EVENTS_S:,}): {verdict}"
        )
        summary[f"import_{batch}_{generator}_mean_events_per_s"] = round(rate)
    if args.profile is None:  # profiled runs are slowed by the sampling
        _save(args, loads, summary)


def _save(args: argparse.Namespace, loads: list[Load], summary: dict[str, int]) -> None:
    """The import of the most items per request (wrk) in each round, beside the ingest
    route's rate in that round."""
    batch = max(args.batches)
    per_round = len(_plan(args))
    rounds = [loads[r : r + per_round] for r in range(0, len(loads), per_round)]
    pairs = []
    for loaded in rounds:
        ingest = next(x for x in loaded if x.batch == 1)
        chosen = next(x for x in loaded if (x.generator, x.batch) == ("wrk", batch))
        pairs.append((chosen, ingest))
    save_figure(
        "imports",
        f"import route, {batch} events per request, {args.import_connections} connections",
        "events/s",
        [Pair(x.events_s, i.events_s) for x, i in pairs],
        Goal(f">= {TARGET_EVENTS_S:,} events/s", TARGET_EVENTS_S, on_ratio=False),
        "single-event ingest route",
        note="API CPU "
        + ", ".join(f"{x.as_json()['api_cpu_us_per_event']:.0f}" for x, _ in pairs)
        + " µs/event",
        load_generator="wrk -t1: "
        + ", ".join(f"{x.as_json()['generator_cpu_us_per_event']:.2f}" for x, _ in pairs)
        + " µs/event imported",
        validation="sync",
        **summary,
        loads=[x.as_json() for x in loads],
    )


if __name__ == "__main__":
    main()
