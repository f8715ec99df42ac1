"""Device growth: events/s and peak RSS of `ingest-worker worker` with the same number of raw
events spread over few and over many distinct external ids, measured in the same run.

    INGEST_LOG_LEVEL=WARNING PYTHONPATH=. .venv/bin/python bench/devices.py [--events 100000]
        [--ids 1000 1000000] [--partitions 6] [--rounds 2] [--profile DIR]

Each run gets fresh topics and a fresh integration (so it creates its own devices), `--events`
raw events pre-filled, every one naming its device by external id `ext-{n % ids}` (keyed by
that hint, as the API keys it): with 1,000 ids, 1,000 devices are created and then found 99
times each; with 1,000,000 ids and 100,000 events, every event names an id not seen before and
creates its device. One worker process per run, rated from its group's committed offsets as
bench/worker.py rates it, charged the CPU it used meanwhile, and its peak resident set
(VmHWM) read just before it stops. Runs alternate ABBA (1k, 1M, 1M, 1k for two rounds) so a
drift in the machine's load falls on both. With `--profile DIR`, py-spy samples the worker of
each run with the most ids for 10 s from its first commit (`-f raw`, into DIR): those runs are
slowed by the sampling, so profile in a run of its own. The figure goes into
bench/results.json under "device_growth" ("device_growth_profiled" with `--profile`): per
round, the run with the most ids beside the run with the fewest. Kafka and PostgreSQL:
KAFKA_BOOTSTRAP_SERVERS and DATABASE_URL if set, else started here.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import worker as rating
from confluent_kafka import Consumer, TopicPartition
from workload import (
    HERE,
    WORKER,
    Goal,
    Pair,
    Scenario,
    fill,
    peak_rss_kib,
    postmaster_pid,
    records_in,
    running,
    save_figure,
    scenario,
    stack,
    tree_cpu_s,
)

from ingest_worker.core.config import Settings

TARGET = 0.85  # the most ids' rate at least this share of the fewest ids' rate
PROFILE_S = 10


@dataclass(frozen=True, slots=True)
class Measured:
    """One worker run: its external id count, rate, CPU per event (its own and PostgreSQL's,
    over the same window), peak RSS, rejections, and the 1-minute load average at its end."""

    ids: int
    run: rating.Run
    pg_cpu_s: float
    peak_rss_kib: int
    rejected: int
    load: float

    @property
    def pg_cpu_us(self) -> float:
        return self.pg_cpu_s * 1e6 / self.run.events

    def as_json(self) -> dict[str, float | int]:
        return {
            "external_ids": self.ids,
            "events_per_s": round(self.run.rate),
            "cpu_us_per_event": round(self.run.cpu_us, 1),
            "postgres_cpu_us_per_event": round(self.pg_cpu_us, 1),
            "peak_rss_mib": round(self.peak_rss_kib / 1024, 1),
            "rejected_records": self.rejected,
            "load_1m": round(self.load, 2),
        }


class Committed:
    """The group's committed offsets' sum (as bench/worker.py reads it), and PostgreSQL's CPU
    seconds at the first and the latest look that saw a commit (the run's first and last
    marks); on the first commit seen, starts py-spy on the worker when asked to."""

    def __init__(self, looker: Consumer, partitions: list[TopicPartition], postmaster: int) -> None:
        self._looker, self._partitions, self._postmaster = looker, partitions, postmaster
        self.pg_cpu_s: list[float] = []
        self.profile_to: Path | None = None
        self.pid = 0
        self.profiler: subprocess.Popen[bytes] | None = None

    def __call__(self) -> int | None:
        done = rating._committed(self._looker, self._partitions)
        if done:
            self.pg_cpu_s[1:] = [tree_cpu_s(self._postmaster)]
            if len(self.pg_cpu_s) == 1:
                self.pg_cpu_s.append(self.pg_cpu_s[0])
        if done and self.profile_to is not None and self.profiler is None:
            spy = [str(HERE.parent / ".venv/bin/py-spy"), "record", "-p", str(self.pid)]
            spy += ["-d", str(PROFILE_S), "-f", "raw", "-o", str(self.profile_to)]
            self.profiler = subprocess.Popen(spy, stdout=subprocess.DEVNULL)
        return done


def main() -> None:
    args = _args()
    with stack("bench-devices") as settings:
        order = [ids for r in range(args.rounds) for ids in _round(args.ids, r)]
        runs = [_measure(settings, args, ids, n) for n, ids in enumerate(order)]
    _report(args, runs)


def _args() -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--ids", type=int, nargs="+", default=[1000, 1_000_000])
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--profile", type=Path, help="py-spy the most ids' runs into this dir")
    return parser.parse_args()


def _round(ids: list[int], index: int) -> list[int]:
    """The id counts in order on even rounds, reversed on odd ones (ABBA)."""
    return ids if index % 2 == 0 else ids[::-1]


def _measure(settings: Settings, args: argparse.Namespace, ids: int, n: int) -> Measured:
    scene = scenario(settings, args.partitions)
    fill(scene, args.events, int(time.time() * 1000), external_ids=ids)
    looker = Consumer(
        {"bootstrap.servers": scene.bootstrap, "group.id": scene.group(WORKER)}
        | {"enable.auto.commit": False}
    )
    raw = scene.settings.raw_topic
    postmaster = postmaster_pid(str(settings.database_url))
    partitions = [TopicPartition(raw, p) for p in range(args.partitions)]
    committed = Committed(looker, partitions, postmaster)
    if args.profile is not None and ids == max(args.ids):
        args.profile.mkdir(parents=True, exist_ok=True)
        committed.profile_to = args.profile / f"worker-{ids}-ids-run{n}.txt"
    try:
        with running(WORKER, scene) as proc:
            committed.pid = proc.pid
            run = rating._watch(proc, WORKER.name, committed, args.events)
            peak = peak_rss_kib(proc.pid)
    finally:
        looker.close()
        if committed.profiler is not None:
            committed.profiler.wait(PROFILE_S * 6)
    pg_cpu_s = committed.pg_cpu_s[-1] - committed.pg_cpu_s[0]
    measured = Measured(ids, run, pg_cpu_s, peak, _rejected(scene), os.getloadavg()[0])
    print(
        f"run {n + 1}: {ids} ids: {run.rate:.0f} events/s, peak RSS {peak / 1024:.0f} MiB, "
        f"PostgreSQL {measured.pg_cpu_us:.0f} µs/event, load {measured.load:.1f}"
    )
    return measured


def _rejected(scene: Scenario) -> int:
    return records_in(scene.bootstrap, scene.settings.rejected_topic, scene.partitions)


def _report(args: argparse.Namespace, runs: list[Measured]) -> None:
    few, many = min(args.ids), max(args.ids)
    rate = {ids: sum(r.run.rate for r in runs if r.ids == ids) for ids in (few, many)}
    ratio = rate[many] / rate[few]
    loads = " / ".join(f"{load:.1f}" for load in os.getloadavg())
    print(f"\n{args.events} raw events per run over {args.partitions} partitions, one worker,")
    print(f"{os.cpu_count()} cores; load average 1/5/15 min at the end: {loads}\n")
    print(
        "| run | external ids | events/s | worker CPU µs/event | PostgreSQL CPU µs/event "
        "| worker peak RSS MiB | rejected | load 1m |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for n, r in enumerate(runs, 1):
        print(
            f"| {n} | {r.ids:,} | {r.run.rate:,.0f} | {r.run.cpu_us:.1f} | {r.pg_cpu_us:.1f} "
            f"| {r.peak_rss_kib / 1024:.0f} | {r.rejected} | {r.load:.1f} |"
        )
    verdict = "met" if ratio >= TARGET else "missed"
    print(
        f"\n{many:,} ids at {ratio:.0%} of {few:,} ids, runs pooled "
        f"(target >= {TARGET:.0%}): {verdict}"
    )
    if any(r.rejected for r in runs):
        print("warning: rejected topics hold records: the worker rejected events")
    _save(args, runs)


def _save(args: argparse.Namespace, runs: list[Measured]) -> None:
    """Per round, the run with the most ids against the run with the fewest."""
    few, many = min(args.ids), max(args.ids)
    pairs = []
    for r in range(0, len(runs), len(args.ids)):
        by_ids = {m.ids: m for m in runs[r : r + len(args.ids)]}
        pairs.append((by_ids[many], by_ids[few]))
    rss = ", ".join(f"{m.peak_rss_kib / 1024:.0f} vs {f.peak_rss_kib / 1024:.0f}" for m, f in pairs)
    save_figure(
        "device_growth_profiled" if args.profile else "device_growth",
        f"worker over {many:,} vs {few:,} external ids ({args.events:,} events)",
        "events/s",
        [Pair(m.run.rate, f.run.rate) for m, f in pairs],
        Goal(f">= 85% of {few:,} ids", TARGET),
        f"{few:,} ids",
        note=f"worker peak RSS {rss} MiB",
        load_generator="none while rated: the raw topic is filled before",
        events_per_run=args.events,
        partitions=args.partitions,
        profiled=args.profile is not None,
        details=[r.as_json() for r in runs],
    )


if __name__ == "__main__":
    main()
