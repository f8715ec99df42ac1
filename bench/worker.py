"""Events/s of `ingest-worker worker` against a librdkafka transactional passthrough
(bench/baseline_worker.py: consume, re-produce unchanged, commit the offsets in the same
transaction, every poll batch), both in the same run, at 6 and at 48 partitions; of the
worker with its event store on (the default) against the same worker with it off
(INGEST_EVENT_STORE=off); of the worker against a naive loop (bench/naive_worker.py: a
PostgreSQL transaction, an awaited produce and an offset commit per record); the ceiling,
Kafka's own producer performance tool on the same broker (bench/ceiling.py); then the
worker's end-to-end latency at a steady 2,000 events/s on 48 partitions (bench/latency.py).

    INGEST_LOG_LEVEL=WARNING .venv/bin/python bench/worker.py [--events 100000]
        [--partitions 6 48] [--rounds 2] [--naive-seconds 10] [--ceiling-records 400000]
        [--rate 2000] [--seconds 20] [--latency-rounds 2]

Per round and partition count: fresh raw, accepted and rejected topics with that many
partitions and a fresh integration (so each run creates the same devices: 2,000 named by
external id, 1,940 by template); `--events` raw events pre-filled (a third by external id,
the rest by template); then the passthrough, then the worker, then the worker with the store
off, then (at the first partition count) the naive loop, one process each with its own
consumer group on that same raw topic (the later ones find the devices made: if anything,
that flatters them). Each is rated from its group's committed offsets, from the first commit
seen to the last (the naive loop: over `--naive-seconds` from its first commit, it is slow),
and charged the CPU (user + system, all threads, from /proc) it used in that window. Nothing
generates load while they are rated: the raw topic is filled before. The ceiling runs twice
after the rounds, at the first partition count; the latency runs (passthrough, then worker,
`--latency-rounds` times) at the largest. The figures go into bench/results.json.
Kafka and PostgreSQL: KAFKA_BOOTSTRAP_SERVERS and DATABASE_URL if set, else started here.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import ceiling
import latency
from confluent_kafka import Consumer, KafkaException, TopicPartition
from workload import (
    FLOOR,
    NAIVE,
    PASSTHROUGH,
    WORKER,
    WORKER_STREAM_ONLY,
    Contender,
    Goal,
    Pair,
    Scenario,
    check_alive,
    cpu_s,
    create_topics,
    fill,
    records_in,
    running,
    save_figure,
    scenario,
    stack,
)

from ingest_worker.core.config import Settings

POLL_S = 0.05
STALL_S = 120.0
COMMITTED_TIMEOUT_S = 5.0
PREFILLED = "none while rated: the raw topic is filled before"


@dataclass(frozen=True, slots=True)
class Mark:
    """One look at a group: when, its committed offsets' sum, its process's CPU seconds."""

    at_s: float
    done: int
    cpu_s: float


@dataclass(frozen=True, slots=True)
class Run:
    """One process from its group's first commit seen to its last."""

    first: Mark
    last: Mark

    @property
    def events(self) -> int:
        return self.last.done - self.first.done

    @property
    def rate(self) -> float:
        return self.events / (self.last.at_s - self.first.at_s)

    @property
    def cpu_us(self) -> float:
        """CPU µs per event."""
        return (self.last.cpu_s - self.first.cpu_s) * 1e6 / self.events


@dataclass(frozen=True, slots=True)
class Row:
    partitions: int
    passthrough: Run
    floor: Run
    worker: Run
    stored: Run  # the worker, store on, on new events once the devices are made (`_compare`)
    stream_only: Run
    naive: Run | None
    rejected: int


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--partitions", type=int, nargs="+", default=[6, 48])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--naive-seconds", type=float, default=10.0, help="0 skips it")
    parser.add_argument("--ceiling-records", type=int, default=400_000, help="0 skips it")
    parser.add_argument("--rate", type=float, default=2000.0, help="latency run: events/s")
    parser.add_argument("--seconds", type=float, default=20.0, help="latency run: 0 skips it")
    parser.add_argument("--latency-rounds", type=int, default=2)
    args = parser.parse_args()
    first, most = args.partitions[0], max(args.partitions)
    with stack("bench-worker") as settings:
        rounds = [
            [
                _compare(
                    settings,
                    (p, args.events),
                    args.naive_seconds if p == first else 0,
                    off_first=(n + i) % 2 == 1,
                )
                for i, p in enumerate(args.partitions)
            ]
            for n in range(args.rounds)
        ]
        ceilings = _ceilings(settings, first, args.ceiling_records)
        late = [
            (
                latency.measure(settings, PASSTHROUGH, most, args.rate, args.seconds),
                latency.measure(settings, WORKER, most, args.rate, args.seconds),
            )
            for _ in range(args.latency_rounds if args.seconds > 0 else 0)
        ]
    for rows in rounds:
        _report(args.events, rows)
    _save(args, rounds)
    if ceilings:
        ceiling.save(ceilings, _ceiling_note(ceilings, [rows[0] for rows in rounds]))
    if late:
        latency.report(late, most, args.rate, args.seconds)


def _compare(settings: Settings, size: tuple[int, int], naive_s: float, off_first: bool) -> Row:
    """The passthrough, the floor and the worker on one freshly filled raw topic of `size`
    (partitions, events); then the worker with its store on and off (`off_first`: off, then
    on) on a second raw topic of as many new events; and (for `naive_s`) the naive loop.

    The first worker run makes the scenario's devices (3,940); the store's two runs find
    them, so the store is not charged with making them. They read new events (ids the store
    does not hold): a second run over the first topic would store its events again, through
    the replay path (a staging table). Their order alternates between rounds (a run after
    another's 100,000 inserts may meet PostgreSQL's autovacuum)."""
    partitions, events = size
    scene = scenario(settings, partitions)
    fill(scene, events, int(time.time() * 1000))
    passthrough = _measure(scene, PASSTHROUGH, events)
    floor = _measure(scene, FLOOR, events)
    worker = _measure(scene, WORKER, events)
    again = _second_raw_topic(scene)
    fill(again, events, int(time.time() * 1000))
    if off_first:
        stream_only = _measure(again, WORKER_STREAM_ONLY, events)
        stored = _measure(again, WORKER, events)
    else:
        stored = _measure(again, WORKER, events)
        stream_only = _measure(again, WORKER_STREAM_ONLY, events)
    naive = None
    if naive_s > 0:
        named = scene.settings
        outputs = [
            named.accepted_topic + NAIVE.output_suffix,
            named.rejected_topic + NAIVE.output_suffix,
        ]
        create_topics(scene.bootstrap, outputs, partitions)
        naive = _measure(scene, NAIVE, events, naive_s)
    rejected = records_in(scene.bootstrap, scene.settings.rejected_topic, partitions)
    return Row(partitions, passthrough, floor, worker, stored, stream_only, naive, rejected)


def _second_raw_topic(scene: Scenario) -> Scenario:
    """The scenario (its integration, event type and output topics) with a raw topic of its
    own, and groups of its own."""
    raw = f"{scene.tag}.raw-again"
    create_topics(scene.bootstrap, [raw], scene.partitions)
    named = dataclasses.replace(scene.settings, raw_topic=raw)
    return dataclasses.replace(scene, settings=named, tag=f"{scene.tag}-again")


def _ceilings(settings: Settings, partitions: int, records: int) -> list[ceiling.Ceiling]:
    """Two runs of Kafka's producer performance tool on this broker, raw-event sized."""
    if records <= 0:
        return []
    scene = scenario(settings, partitions)
    size = ceiling.raw_record_bytes(scene)
    runs = [ceiling.measure(settings, scene.bootstrap, partitions, records, size) for _ in range(2)]
    for run in runs:
        print(ceiling.line(run))
    return runs


class AllAtOnceError(RuntimeError):
    """The first commit seen of a contender covered every event: it cannot be rated."""


def _measure(scene: Scenario, contender: Contender, count: int, seconds: float = math.inf) -> Run:
    """The contender's run until its group has committed `count` records (or for `seconds`
    from its first commit). One seen to commit all at once (a fast one, while the broker was
    slow to answer the looks) runs once more, in a group of its own."""
    try:
        return _rate(scene, contender, count, seconds)
    except AllAtOnceError as exc:
        print(f"{exc}; once more, in a new group", file=sys.stderr)
        return _rate(scene, contender._replace(name=f"{contender.name}-again"), count, seconds)


def _rate(scene: Scenario, contender: Contender, count: int, seconds: float) -> Run:
    group = scene.group(contender)
    raw = scene.settings.raw_topic
    partitions = [TopicPartition(raw, p) for p in range(scene.partitions)]
    # Reads the group's offsets without joining it. Not AdminClient.list_consumer_group_offsets:
    # on a NOT_COORDINATOR answer (a fresh broker's offsets topic still loading) librdkafka
    # 2.16 dereferences a null group handle and the bench dies of SIGSEGV (librdkafka#5040).
    looker = Consumer(
        {"bootstrap.servers": scene.bootstrap, "group.id": group, "enable.auto.commit": False}
    )
    try:
        with running(contender, scene) as proc:
            return _watch(
                proc, contender.name, lambda: _committed(looker, partitions), count, seconds
            )
    finally:
        looker.close()


def _committed(looker: Consumer, partitions: list[TopicPartition]) -> int | None:
    """The sum of the group's committed offsets; None while the broker cannot say."""
    try:
        answer = looker.committed(partitions, COMMITTED_TIMEOUT_S)
    except KafkaException:
        return None
    return sum(tp.offset for tp in answer if tp.offset > 0)


def _watch(
    proc: subprocess.Popen[bytes],
    name: str,
    committed: Callable[[], int | None],
    count: int,
    seconds: float = math.inf,
) -> Run:
    """Look at the group every POLL_S until it has committed `count` records, or for
    `seconds` from its first commit seen."""
    first: Mark | None = None
    progress = Mark(time.monotonic(), 0, 0.0)
    while True:
        check_alive(proc, name)
        done = committed()
        mark = Mark(time.monotonic(), progress.done if done is None else done, cpu_s(proc.pid))
        if first is None and mark.done > 0:
            first = _first(mark, count, name)
        elif first is not None and (mark.done >= count or mark.at_s - first.at_s >= seconds):
            return Run(first, mark)
        if mark.done != progress.done:
            progress = mark
        elif mark.at_s - progress.at_s > STALL_S:
            raise TimeoutError(f"{name}: no commit for {STALL_S:.0f} s, at {mark.done}/{count}")
        time.sleep(POLL_S)


def _first(mark: Mark, count: int, name: str) -> Mark:
    if mark.done >= count:
        raise AllAtOnceError(f"{name} committed all {count} events at once")
    return mark


def _report(events: int, rows: list[Row]) -> None:
    loads = " / ".join(f"{load:.1f}" for load in os.getloadavg())
    print(f"\n{events} raw events per run, one process each, exactly-once, this machine")
    print(f"({os.cpu_count()} cores; load average 1/5/15 min at the end: {loads})")
    print(
        f"{'partitions':>10} {'passthrough ev/s':>17} {'worker ev/s':>12} "
        f"{'worker/passthrough':>19} {f'worker vs {rows[0].partitions} p.':>16} "
        f"{'CPU µs/ev passthrough':>22} {'worker':>7}"
    )
    for row in rows:
        print(
            f"{row.partitions:>10} {row.passthrough.rate:>17.0f} {row.worker.rate:>12.0f} "
            f"{row.worker.rate / row.passthrough.rate:>19.0%} "
            f"{row.worker.rate / rows[0].worker.rate:>16.0%} "
            f"{row.passthrough.cpu_us:>22.1f} {row.worker.cpu_us:>7.1f}"
        )
    print(
        f"\n{'partitions':>10} {'store off ev/s':>15} {'store on ev/s':>14} {'on/off':>7} "
        f"{'CPU µs/ev off':>14} {'on':>5}"
    )
    for row in rows:
        print(
            f"{row.partitions:>10} {row.stream_only.rate:>15.0f} {row.stored.rate:>14.0f} "
            f"{row.stored.rate / row.stream_only.rate:>7.0%} "
            f"{row.stream_only.cpu_us:>14.1f} {row.stored.cpu_us:>5.1f}"
        )
    print(
        f"\n{'partitions':>10} {'floor ev/s':>11} {'floor/passthrough':>18} "
        f"{'worker/floor':>13} {'CPU µs/ev floor':>16}"
    )
    for row in rows:
        print(
            f"{row.partitions:>10} {row.floor.rate:>11.0f} "
            f"{row.floor.rate / row.passthrough.rate:>18.0%} "
            f"{row.worker.rate / row.floor.rate:>13.0%} {row.floor.cpu_us:>16.1f}"
        )
    for row in rows:
        if row.naive is not None:
            print(
                f"\nnaive loop at {row.partitions} partitions: {row.naive.rate:.0f} events/s "
                f"({row.naive.events} events, CPU {row.naive.cpu_us:.0f} µs/event); "
                f"worker {row.worker.rate / row.naive.rate:.1f}x"
            )
        if row.rejected:
            print(
                f"warning: the rejected topic at {row.partitions} partitions holds "
                f"{row.rejected} records and markers: the worker rejected events"
            )


def _save(args: argparse.Namespace, rounds: list[list[Row]]) -> None:
    """The figures of the throughput rounds, one per target."""
    first = [rows[0] for rows in rounds]
    most = [max(rows, key=lambda r: r.partitions) for rows in rounds]
    p0, pn = first[0].partitions, most[0].partitions
    common = {"events_per_run": args.events, "load_generator": PREFILLED}
    save_figure(
        "worker_vs_passthrough",
        f"worker vs librdkafka transactional passthrough, {p0} partitions",
        "events/s",
        [Pair(r.worker.rate, r.passthrough.rate) for r in first],
        Goal(">= 60% of the passthrough", 0.60),
        "passthrough",
        note=_cpu_note(first, "passthrough"),
        **common,
    )
    save_figure(
        "floor_vs_passthrough",
        f"floor: the passthrough doing only the work no worker can skip, {p0} partitions",
        "events/s",
        [Pair(r.floor.rate, r.passthrough.rate) for r in first],
        None,
        "passthrough",
        role="— (a reference: the least per-record work, committing every poll)",
        note="of the passthrough: "
        + " / ".join(f"{r.floor.rate / r.passthrough.rate:.0%}" for r in first)
        + "; the worker at "
        + " / ".join(f"{r.worker.rate / r.floor.rate:.0%}" for r in first)
        + " of it; CPU µs/event "
        + ", ".join(f"{r.floor.cpu_us:.0f} vs {r.passthrough.cpu_us:.0f}" for r in first),
        **common,
    )
    save_figure(
        "worker_partitions",
        f"worker at {pn} partitions vs at {p0}",
        "events/s",
        [Pair(m.worker.rate, f.worker.rate) for f, m in zip(first, most, strict=True)],
        Goal(f">= 85% of its rate at {p0}", 0.85),
        f"worker at {p0} partitions",
        **common,
    )
    save_figure(
        "worker_store",
        f"worker, event store on vs off ({' and '.join(map(str, args.partitions))} partitions)",
        "events/s",
        [Pair(r.stored.rate, r.stream_only.rate) for rows in rounds for r in rows],
        Goal(">= 80% of store off", 0.80),
        "store off",
        note="new events, devices made by an earlier run, order alternating; CPU µs/event "
        + ", ".join(
            f"{r.stored.cpu_us:.0f} vs {r.stream_only.cpu_us:.0f}" for rows in rounds for r in rows
        ),
        **common,
    )
    naive = [(r.worker, r.naive) for r in first if r.naive is not None]
    if naive:
        save_figure(
            "worker_vs_naive",
            f"worker vs a naive loop, {p0} partitions",
            "events/s",
            [Pair(w.rate, n.rate) for w, n in naive],
            Goal(">= 20x the naive loop", 20.0),
            "naive loop",
            note=f"naive rated over {args.naive_seconds:.0f} s; CPU µs/event "
            + ", ".join(f"{w.cpu_us:.0f} vs {n.cpu_us:.0f}" for w, n in naive),
            **common,
        )


def _cpu_note(rows: list[Row], other: str) -> str:
    """The worker's CPU per event against the other contender's, per run."""
    pairs = [f"{r.worker.cpu_us:.0f} vs {getattr(r, other).cpu_us:.0f}" for r in rows]
    return "CPU µs/event " + ", ".join(pairs)


def _ceiling_note(runs: list[ceiling.Ceiling], rows: list[Row]) -> str:
    slowest = min(c.records_s for c in runs)
    shares = " / ".join(f"{r.worker.rate / slowest:.0%}" for r in rows)
    return f"; the worker at {rows[0].partitions} partitions: {shares} of it"


if __name__ == "__main__":
    main()
