"""Events/s of `ingest-worker worker` against the same job written with Quix Streams
(bench/quix_peer.py: exactly-once, per-record PostgreSQL with a cache), in the same run.

    INGEST_LOG_LEVEL=WARNING PYTHONPATH=. .venv/bin/python bench/peer.py [--events 100000]
        [--partitions 6] [--rounds 1] [--profile DIR [--idle]]

Per round: fresh raw, accepted and rejected topics (and the peer's `.quix` accepted and
rejected topics) with `--partitions` partitions and a fresh integration, `--events` raw
events pre-filled as bench/worker.py fills them (a third by external id, the rest by
template); then the peer, then the worker, one process each with its own consumer group on
that same raw topic, each rated from its group's committed offsets and charged the CPU it
used meanwhile, as bench/worker.py rates them. Whichever runs first creates the devices
(2,000 by external id, 1,940 by template) and the other finds them made, so the order
alternates: the peer first in odd rounds, the worker first in even ones.

Quix Streams pins confluent-kafka < 2.13 and the project needs >= 2.16, so the peer runs in a
venv of its own, .local/quix-venv, made here on first use (QUIX_REQUIREMENTS, and this
project installed editable without its dependencies). The figures go into
bench/results.json under "quix_peer". Kafka and PostgreSQL: KAFKA_BOOTSTRAP_SERVERS and
DATABASE_URL if set, else started here.

With `--profile DIR`, py-spy samples each process of each run for PROFILE_S from its group's
first commit seen (bench/api.py's `Spy`, into DIR: `peer-round{n}-{first}-first-{name}.txt`,
beside a `.json` of its threads' CPU seconds, the events its group committed in the window
and PostgreSQL's CPU seconds meanwhile); `--idle` samples waiting threads too (wall clock).
Those runs are slowed by the sampling, so their figures are printed only, never saved.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import worker as rating
from api import Spy
from confluent_kafka import Consumer, TopicPartition
from workload import (
    HERE,
    WORKER,
    Contender,
    Goal,
    Pair,
    Scenario,
    create_topics,
    fill,
    postmaster_pid,
    records_in,
    running,
    save_figure,
    scenario,
    stack,
    tree_cpu_s,
)

from ingest_worker.core.config import Settings
from ingest_worker.worker.sink import METADATA_FAST_REFRESH_MS, TXN_RETRY_BACKOFF_MS

TARGET = 2.0  # the worker at least this many times the peer's events/s
QUIX_VENV = HERE.parent / ".local" / "quix-venv"
QUIX_REQUIREMENTS = [
    "quixstreams==3.28.1",
    "jsonschema-rs>=0.30,<1",
    "fastavro>=1.10,<2",
    "psycopg[binary]>=3.2,<3.4",
    "orjson>=3.10,<4",
]
OUTPUT_SUFFIX = ".quix"  # bench/quix_peer.py's
PROFILE_S = 10


@dataclass(frozen=True, slots=True)
class Round:
    peer: rating.Run
    worker: rating.Run
    peer_rejected: int
    worker_rejected: int
    load: tuple[float, float, float]
    worker_first: bool

    @property
    def ratio(self) -> float:
        return self.worker.rate / self.peer.rate

    def as_json(self) -> dict[str, object]:
        return {
            "peer_events_per_s": round(self.peer.rate),
            "worker_events_per_s": round(self.worker.rate),
            "worker_over_peer": round(self.ratio, 2),
            "peer_cpu_us_per_event": round(self.peer.cpu_us, 1),
            "worker_cpu_us_per_event": round(self.worker.cpu_us, 1),
            "peer_rejected_records": self.peer_rejected,
            "worker_rejected_records": self.worker_rejected,
            "load_average_1_5_15_at_end": [round(load, 2) for load in self.load],
            "first": "worker" if self.worker_first else "peer",
        }


def quix_python() -> Path:
    """The interpreter of the peer's venv, made (or brought up to QUIX_REQUIREMENTS) here."""
    python = QUIX_VENV / "bin" / "python"
    stamp = QUIX_VENV / ".installed-stamp"
    wanted = "\n".join(QUIX_REQUIREMENTS)
    if stamp.exists() and stamp.read_text() == wanted:
        return python
    print(f"installing the peer's venv in {QUIX_VENV}", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "venv", str(QUIX_VENV)], check=True)
    pip = [str(python), "-m", "pip", "install", "--quiet"]
    subprocess.run([*pip, *QUIX_REQUIREMENTS], check=True)
    subprocess.run([*pip, "--no-deps", "-e", str(HERE.parent)], check=True)
    stamp.write_text(wanted)
    return python


def peer(python: Path) -> Contender:
    return Contender(
        "quix-peer",
        [str(python), str(HERE / "quix_peer.py")],
        OUTPUT_SUFFIX,
        {
            "QUIX_PEER_RETRY_BACKOFF_MS": str(TXN_RETRY_BACKOFF_MS),
            "QUIX_PEER_METADATA_REFRESH_MS": str(METADATA_FAST_REFRESH_MS),
        },
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--profile", type=Path, help="py-spy each process into this dir")
    parser.add_argument("--idle", action="store_true", help="with --profile: wall clock")
    args = parser.parse_args()
    contender = peer(quix_python())
    with stack("bench-peer") as settings:
        rounds = [_round(settings, contender, args, n) for n in range(args.rounds)]
    _report(args.events, args.partitions, rounds)
    if args.profile is not None:  # profiled runs are slowed by the sampling
        return
    save_figure(
        "quix_peer",
        f"worker vs a Quix Streams peer, {args.partitions} partitions",
        "events/s",
        [Pair(r.worker.rate, r.peer.rate) for r in rounds],
        Goal(f">= {TARGET:.0f}x the peer", TARGET),
        "Quix Streams peer",
        note="first: " + ", ".join("worker" if r.worker_first else "peer" for r in rounds),
        load_generator="none while rated: the raw topic is filled before",
        events=args.events,
        partitions=args.partitions,
        peer="bench/quix_peer.py, Quix Streams 3.28.1, exactly-once, commit_interval "
        "0.1 s, per-record PostgreSQL with a cache",
        details=[r.as_json() for r in rounds],
    )


def _round(settings: Settings, contender: Contender, args: argparse.Namespace, n: int) -> Round:
    """The peer and the worker, one after the other, on one freshly filled raw topic (round
    `n`: the worker first in odd ones)."""
    partitions, events, worker_first = args.partitions, args.events, n % 2 == 1
    scene = scenario(settings, partitions)
    named = scene.settings
    outputs = [named.accepted_topic + OUTPUT_SUFFIX, named.rejected_topic + OUTPUT_SUFFIX]
    create_topics(scene.bootstrap, outputs, partitions)
    fill(scene, events, int(time.time() * 1000))
    first = "worker" if worker_first else "peer"
    spied = None if args.profile is None else (args.profile, f"round{n + 1}-{first}-first", args)
    if worker_first:
        worker_run = _measure(scene, WORKER, events, spied)
        peer_run = _measure(scene, contender, events, spied)
    else:
        peer_run = _measure(scene, contender, events, spied)
        worker_run = _measure(scene, WORKER, events, spied)
    return Round(
        peer_run,
        worker_run,
        records_in(scene.bootstrap, outputs[1], partitions),
        records_in(scene.bootstrap, named.rejected_topic, partitions),
        os.getloadavg(),
        worker_first,
    )


class Watched:
    """The group's committed offsets' sum (as bench/worker.py reads it); at the first commit
    seen, py-spy starts on the process for PROFILE_S, and the commits and PostgreSQL's CPU
    seconds seen within that window are kept."""

    def __init__(
        self, scene: Scenario, contender: Contender, pid: int, spied: tuple[Path, str, bool]
    ) -> None:
        raw = scene.settings.raw_topic
        self._partitions = [TopicPartition(raw, p) for p in range(scene.partitions)]
        self._looker = Consumer(
            {"bootstrap.servers": scene.bootstrap, "group.id": scene.group(contender)}
            | {"enable.auto.commit": False}
        )
        self._postmaster = postmaster_pid(str(scene.settings.database_url))
        self._pid, (directory, label, self._idle) = pid, spied
        self._out = directory / f"peer-{label}-{contender.name}.txt"
        self.spy: Spy | None = None
        self._started = 0.0
        self.marks: list[tuple[int, float]] = []  # (committed, PostgreSQL CPU s) in the window

    def __call__(self) -> int | None:
        done = rating._committed(self._looker, self._partitions)
        if done and self.spy is None:
            self.spy = Spy(self._pid, self._out, PROFILE_S, idle=self._idle)
            self._started = time.monotonic()
        if done and time.monotonic() - self._started <= PROFILE_S:
            self.marks[1:] = [(done, tree_cpu_s(self._postmaster))]
            self.marks[:1] = self.marks[:1] or self.marks[1:]
        return done

    def close(self) -> None:
        self._looker.close()

    def finish(self, run: rating.Run) -> None:
        """Write the profile's facts (while the process still lives)."""
        if self.spy is None:
            return
        (first, pg_first), (last, pg_last) = self.marks[0], self.marks[-1]
        self.spy.finish(
            events=last - first,
            postgres_cpu_s=round(pg_last - pg_first, 3),
            run_events_per_s=round(run.rate),
            run_cpu_us_per_event=round(run.cpu_us, 1),
        )


def _measure(
    scene: Scenario,
    contender: Contender,
    count: int,
    spied: tuple[Path, str, argparse.Namespace] | None,
) -> rating.Run:
    """bench/worker.py's rating of the contender, profiled when `spied` (the directory, the
    run's label and the arguments) says so."""
    if spied is None:
        return rating._measure(scene, contender, count)
    directory, label, args = spied
    with running(contender, scene) as proc:
        watched = Watched(scene, contender, proc.pid, (directory, label, args.idle))
        try:
            run = rating._watch(proc, contender.name, watched, count)
            watched.finish(run)
        finally:
            watched.close()
        return run


def _report(events: int, partitions: int, rounds: list[Round]) -> None:
    print(f"\n{events} raw events per run, {partitions} partitions, one process each, exactly-once")
    print(f"({os.cpu_count()} cores; load average 1/5/15 min at the end of each round)")
    print(
        f"{'round':>5} {'quix peer ev/s':>15} {'worker ev/s':>12} {'worker/peer':>12} "
        f"{'CPU µs/ev peer':>15} {'worker':>7} {'load 1/5/15':>16} {'first':>7}"
    )
    for n, r in enumerate(rounds, 1):
        loads = "/".join(f"{load:.1f}" for load in r.load)
        print(
            f"{n:>5} {r.peer.rate:>15.0f} {r.worker.rate:>12.0f} {r.ratio:>11.2f}x "
            f"{r.peer.cpu_us:>15.1f} {r.worker.cpu_us:>7.1f} {loads:>16} "
            f"{'worker' if r.worker_first else 'peer':>7}"
        )
    print(f"target: worker >= {TARGET:.0f}x the Quix Streams peer")
    for n, r in enumerate(rounds, 1):
        if r.peer_rejected or r.worker_rejected:
            print(
                f"warning: round {n}: rejected topics hold {r.peer_rejected} (peer) and "
                f"{r.worker_rejected} (worker) records and markers"
            )


if __name__ == "__main__":
    main()
