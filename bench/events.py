"""Latency of Spot's event list by device over a large store: `GET
/v1/integrations/{id}/events?integrationDeviceIds=D&limit=50` against `ingest-worker api`,
with 1,000,000 stored events (1,000 devices, received over the last 10 days, so 10 day
partitions and more), one request at a time. Baseline in the same run: `GET
.../devices/{D}` (one row by primary key), the same server's floor for an authenticated GET.

    .venv/bin/python bench/events.py [--events 1000000] [--requests 1000] [--runs 3]

After a warm-up, `--runs` runs of `--requests` lists then as many floor requests, for random
devices; the p99 of each run's lists is the figure (bench/results.json, "event_list"), the
client's own CPU (httpx, this process) beside it.
Kafka and PostgreSQL: KAFKA_BOOTSTRAP_SERVERS and DATABASE_URL if set, else started here.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from collections.abc import Callable

import httpx
import psycopg
from api import ADMIN, api_process
from workload import Goal, Pair, save_figure, stack

from ingest_worker.core.config import Settings

DEVICES = 1000
DAYS = 10
TARGET_P99_MS = 20.0

_FILL = """
    INSERT INTO events (integration_id, id, revision, received_at_ms, op, current,
        event_type_id, event_type_version, device_id, device_resolution, timestamp_us,
        duration_ms, buffer_ms, attributes, revision_received_at_ms, raw_key,
        source_partition, source_offset, created_ms)
    SELECT %(i)s, gen_random_uuid(), 1, r.at, 'created', true, %(t)s, 1,
           (%(devices)s::int[])[1 + g %% %(n)s], 'direct', (r.at - 5000) * 1000, 0, 0,
           json_build_object('store', 'S' || (g %% 97), 'lane', g %% 20, 'total', g)::text::json,
           r.at, '\\x00', g %% 6, g, r.at
    FROM generate_series(1, %(count)s) AS g,
         LATERAL (SELECT (extract(epoch FROM now()) * 1000)::bigint
                         - (g::bigint * %(days)s * 86400000 / %(count)s) AS at) r
"""

Samples = list[float]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with stack("bench-events") as settings:
        integration_id, devices = _fill(str(settings.database_url), args.events)
        runs, cpu_s = _measure(settings, integration_id, devices, args.requests, args.runs)
    print(f"\n{args.events} stored events, {DEVICES} devices, {DAYS} days; one request at a time")
    print(f"{'request':<48} {'p50 ms':>7} {'p95 ms':>7} {'p99 ms':>7}")
    for n, (lists, floor) in enumerate(runs, 1):
        for name, samples in (
            (f"run {n}: list by device, page of 50", lists),
            ("  device by id (floor)", floor),
        ):
            cells = " ".join(f"{_pct(samples, pct):>7.1f}" for pct in (50, 95, 99))
            print(f"{name:<48} {cells}")
    print(f"target: list by device p99 <= {TARGET_P99_MS:.0f} ms")
    requests = 2 * args.requests * args.runs
    save_figure(
        "event_list",
        f"event list by device over {args.events:,} stored events, p99",
        "ms",
        [Pair(_pct(lists, 99), _pct(floor, 99)) for lists, floor in runs],
        Goal(f"p99 <= {TARGET_P99_MS:.0f} ms", TARGET_P99_MS, at_least=False, on_ratio=False),
        "device by id p99",
        note="p50 " + ", ".join(f"{_pct(lists, 50):.1f}" for lists, _ in runs) + " ms",
        load_generator=f"httpx, one request at a time: {cpu_s * 1e6 / requests:.0f} µs/request",
        requests_per_run=args.requests,
    )


def _fill(database_url: str, count: int) -> tuple[int, list[int]]:
    """An integration with DEVICES devices and `count` stored events spread over DAYS days."""
    started = time.monotonic()
    with psycopg.connect(database_url, autocommit=True) as conn:
        row = conn.execute("INSERT INTO integrations (name) VALUES ('b') RETURNING id").fetchone()
        assert row is not None
        integration_id = int(row[0])
        typed = conn.execute(
            "INSERT INTO event_types (integration_id, name, schema) VALUES (%s, 't', '{}') "
            "RETURNING id",
            (integration_id,),
        ).fetchone()
        assert typed is not None
        devices = [
            int(r[0])
            for r in conn.execute(
                "INSERT INTO devices (integration_id, name) "
                "SELECT %s, 'd' || g FROM generate_series(1, %s) g RETURNING id",
                (integration_id, DEVICES),
            ).fetchall()
        ]
        conn.execute(
            "SELECT ingest_event_partition((now() AT TIME ZONE 'UTC')::date - d) "
            "FROM generate_series(0, %s) d",
            (DAYS,),
        )
        values = {"i": integration_id, "t": typed[0], "devices": devices, "n": DEVICES}
        conn.execute(_FILL, {**values, "count": count, "days": DAYS})
        conn.execute("VACUUM ANALYZE events")
        size = conn.execute(
            "SELECT sum(pg_total_relation_size(inhrelid)) FROM pg_inherits "
            "WHERE inhparent = 'events'::regclass"
        ).fetchone()
    assert size is not None
    print(
        f"filled {count} events in {time.monotonic() - started:.0f} s; "
        f"{int(size[0]) / count:.0f} bytes per stored event, indexes included"
    )
    return integration_id, devices


def _measure(
    settings: Settings, integration_id: int, devices: list[int], requests: int, runs: int
) -> tuple[list[tuple[Samples, Samples]], float]:
    """Per run, the lists' and the floor's milliseconds; and this process's CPU seconds over
    the runs."""
    endpoints = str(settings.kafka_bootstrap_servers), str(settings.database_url)
    # Alive is enough: listing needs PostgreSQL, not Kafka.
    with api_process(*endpoints, "/healthz", INGEST_LOG_LEVEL="WARNING") as (url, _):
        base = f"{url}/v1/integrations/{integration_id}"
        with httpx.Client(headers={"authorization": f"Bearer {ADMIN}"}, timeout=30) as client:

            def listed(device: int) -> httpx.Response:
                return client.get(f"{base}/events?integrationDeviceIds={device}&limit=50")

            def found(device: int) -> httpx.Response:
                return client.get(f"{base}/devices/{device}")

            _timed(listed, devices, 200)  # warm-up
            _timed(found, devices, 200)
            before = time.process_time()
            measured = [
                (_timed(listed, devices, requests), _timed(found, devices, requests))
                for _ in range(runs)
            ]
            return measured, time.process_time() - before


def _timed(call: Callable[[int], httpx.Response], devices: list[int], count: int) -> list[float]:
    """Milliseconds per request, for random devices; every answer must be a 200."""
    samples = []
    for _ in range(count):
        device = random.choice(devices)  # noqa: S311 - a load pattern, not a secret
        started = time.perf_counter()
        answer = call(device)
        samples.append((time.perf_counter() - started) * 1000)
        if answer.status_code != 200:
            raise RuntimeError(f"{answer.status_code}: {answer.text[:300]}")
    return samples


def _pct(samples: list[float], pct: int) -> float:
    return statistics.quantiles(samples, n=100, method="inclusive")[pct - 1]


if __name__ == "__main__":
    main()
