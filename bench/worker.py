"""Events/s of `ingest-worker worker` against a librdkafka transactional passthrough
(bench/baseline_worker.py: consume, re-produce unchanged, commit the offsets in the same
transaction, every poll batch), both in the same run, at 6 and at 48 partitions, and of the
worker with its event store on (the default) against the same worker with it off
(INGEST_EVENT_STORE=off); then the worker's end-to-end latency at a steady 2,000 events/s on
48 partitions (bench/latency.py).

    INGEST_LOG_LEVEL=WARNING .venv/bin/python bench/worker.py [--events 100000]
        [--partitions 6 48] [--rate 2000] [--seconds 20]

Per partition count: fresh raw, accepted and rejected topics with that many partitions and a
fresh integration (so each run creates the same devices: 2,000 named by external id, 1,940
by template); `--events` raw events pre-filled (a third by external id, the rest by
template); then the passthrough, then the worker, then the worker with the store off, one
process each with its own consumer group on that same raw topic (the store-off run finds the
devices made: if anything, that flatters it). Each is rated from its group's committed offsets,
from the first commit seen to the last, and charged the CPU (user + system, all threads, from
/proc) it used in that window. The latency run takes the largest partition count.
Kafka and PostgreSQL: KAFKA_BOOTSTRAP_SERVERS and DATABASE_URL if set, else started here.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass

import latency
from confluent_kafka import Consumer, KafkaException, TopicPartition
from workload import (
    PASSTHROUGH,
    WORKER,
    WORKER_STREAM_ONLY,
    Contender,
    Scenario,
    check_alive,
    cpu_s,
    fill,
    records_in,
    running,
    scenario,
    stack,
)

from ingest_worker.core.config import Settings

POLL_S = 0.05
STALL_S = 120.0
COMMITTED_TIMEOUT_S = 5.0


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
    worker: Run
    stream_only: Run
    rejected: int


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--partitions", type=int, nargs="+", default=[6, 48])
    parser.add_argument("--rate", type=float, default=2000.0, help="latency run: events/s")
    parser.add_argument("--seconds", type=float, default=20.0, help="latency run: 0 skips it")
    args = parser.parse_args()
    with stack("bench-worker") as settings:
        rows = [_compare(settings, p, args.events) for p in args.partitions]
        late = [
            latency.measure(settings, contender, max(args.partitions), args.rate, args.seconds)
            for contender in (PASSTHROUGH, WORKER)
            if args.seconds > 0
        ]
    _report(args.events, rows)
    if late:
        print(latency.heading(max(args.partitions), args.rate, args.seconds))
        for run in late:
            print(run)


def _compare(settings: Settings, partitions: int, events: int) -> Row:
    """The passthrough, then the worker, on one freshly filled raw topic."""
    scene = scenario(settings, partitions)
    fill(scene, events, int(time.time() * 1000))
    passthrough = _measure(scene, PASSTHROUGH, events)
    worker = _measure(scene, WORKER, events)
    stream_only = _measure(scene, WORKER_STREAM_ONLY, events)
    rejected = records_in(scene.bootstrap, scene.settings.rejected_topic, partitions)
    return Row(partitions, passthrough, worker, stream_only, rejected)


def _measure(scene: Scenario, contender: Contender, count: int) -> Run:
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
            return _watch(proc, contender.name, lambda: _committed(looker, partitions), count)
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
    proc: subprocess.Popen[bytes], name: str, committed: Callable[[], int | None], count: int
) -> Run:
    """Look at the group every POLL_S until it has committed `count` records."""
    first: Mark | None = None
    progress = Mark(time.monotonic(), 0, 0.0)
    while True:
        check_alive(proc, name)
        done = committed()
        mark = Mark(time.monotonic(), progress.done if done is None else done, cpu_s(proc.pid))
        if first is None and mark.done > 0:
            first = _first(mark, count, name)
        elif first is not None and mark.done >= count:
            return Run(first, mark)
        if mark.done != progress.done:
            progress = mark
        elif mark.at_s - progress.at_s > STALL_S:
            raise TimeoutError(f"{name}: no commit for {STALL_S:.0f} s, at {mark.done}/{count}")
        time.sleep(POLL_S)


def _first(mark: Mark, count: int, name: str) -> Mark:
    if mark.done >= count:
        raise RuntimeError(f"{name} committed all {count} events at once: give more --events")
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
        "targets: worker >= 60% of the passthrough at 6 partitions; at 48, within 15% of its "
        "own rate at 6 (>= 85%)"
    )
    print(
        f"\n{'partitions':>10} {'store off ev/s':>15} {'store on ev/s':>14} {'on/off':>7} "
        f"{'CPU µs/ev off':>14} {'on':>5}"
    )
    for row in rows:
        print(
            f"{row.partitions:>10} {row.stream_only.rate:>15.0f} {row.worker.rate:>14.0f} "
            f"{row.worker.rate / row.stream_only.rate:>7.0%} "
            f"{row.stream_only.cpu_us:>14.1f} {row.worker.cpu_us:>5.1f}"
        )
    print("target: the worker with its event store on >= 80% of the same worker with it off")
    for row in rows:
        if row.rejected:
            print(
                f"warning: the rejected topic at {row.partitions} partitions holds "
                f"{row.rejected} records and markers: the worker rejected events"
            )


if __name__ == "__main__":
    main()
