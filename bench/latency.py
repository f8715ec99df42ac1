"""End-to-end latency of `ingest-worker worker` at a steady rate, beside the librdkafka
passthrough's (bench/baseline_worker.py): raw events produced at `--rate` per second for
`--seconds` (after a 5 s warm-up that is not counted), each timed from its produce() call to
the moment a read_committed reader of the output topic sees it. Also shown: the raw
producer's own acknowledgement time (produce() to acks=all, the shim's 202) and the time from
that acknowledgement to the reader, the part the contender adds.

    INGEST_LOG_LEVEL=WARNING .venv/bin/python bench/latency.py [--rate 2000] [--seconds 20]
        [--partitions 48] [--rounds 2] [--profile DIR [--idle]]

bench/worker.py runs it after its throughput runs. Per round the passthrough, then the
worker; the worker's p99 is the figure (bench/results.json, "end_to_end"), the passthrough's
its baseline, and the bench process's own CPU (the paced producer and the reader: the load
generator) is shown beside them. Each contender gets fresh topics with
`--partitions`, a fresh event type and group; it starts first, and one probe event must come
through before the clock starts. An event not seen within 30 s of the last produce counts as
infinitely late. The raw producer is librdkafka's with acks=all and its default linger (5 ms).
Kafka and PostgreSQL: KAFKA_BOOTSTRAP_SERVERS and DATABASE_URL if set, else started here.
The warm-up is 5 s because a run's topics are created just before it: for the first 2 to 3 s
the broker acknowledges even the raw producer's plain writes late (seen up to 2 s at p99).

With `--profile DIR`, py-spy samples each contender from the end of its probe to its last
produce (bench/api.py's `Spy`, into DIR: `latency-run{n}-{name}.txt`, beside a `.json` of its
threads' CPU seconds and the events produced meanwhile; `--idle`: waiting threads too, a
wall-clock profile), and the worker serves its metrics (INGEST_WORKER_HTTP_PORT), read into
`latency-run{n}-{name}.metrics.txt` at the end. Those runs are slowed by the sampling, so
their figures are printed only, never saved.
"""

from __future__ import annotations

import argparse
import functools
import math
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
from api import Spy
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    Message,
    Producer,
    TopicPartition,
)
from workload import (
    PASSTHROUGH,
    WORKER,
    Contender,
    Deliveries,
    Goal,
    Pair,
    Scenario,
    check_alive,
    cpu_s,
    produce,
    raw_event,
    running,
    save_figure,
    scenario,
    stack,
)

from devstack.proc import free_port
from ingest_worker.core.config import Settings

WARMUP_S = 5.0
DRAIN_S = 30.0
PROBE_S = 120.0
READ_WAIT_S = 0.005

UnderTest = tuple[subprocess.Popen[bytes], str]
Spied = tuple[Path, str, bool]  # a profile's directory, its run's label, and whether --idle


@dataclass(frozen=True, slots=True)
class Latency:
    """What one run measured; latencies in ms, the contender's CPU in seconds per second."""

    name: str
    sent: int
    seen: int
    p50_ms: float
    p99_ms: float
    ack_p99_ms: float
    after_ack_p99_ms: float
    cpu_share: float
    generator_cpu_share: float  # the bench process's: the paced producer and the reader

    def __str__(self) -> str:
        return (
            f"{self.name:<12} {self.p50_ms:>9.1f} {self.p99_ms:>9.1f} {self.ack_p99_ms:>12.1f} "
            f"{self.after_ack_p99_ms:>14.1f} {self.seen:>7}/{self.sent:<7} {self.cpu_share:>6.0%}"
            f" {self.generator_cpu_share:>10.0%}"
        )


class Trial:
    """The paced producer and the reader's sightings, driven from one loop."""

    def __init__(self, scene: Scenario, producer: Producer, rate: float, seconds: float) -> None:
        self.scene, self.producer, self.rate = scene, producer, rate
        self.failed: list[KafkaError] = []
        self.sent: dict[str, float] = {}
        self.acked: dict[str, float] = {}
        self.seen: dict[str, float] = {}
        self.produced = 0
        self.warmup = int(rate * WARMUP_S)
        self.total = int(rate * (WARMUP_S + seconds))
        self.start = time.monotonic()
        self.end = self.start + WARMUP_S + seconds

    def send_due(self, now: float) -> None:
        due = min(self.total, int((now - self.start) * self.rate))
        for n in range(self.produced, due):
            event = raw_event(n, self.scene, int(time.time() * 1000))
            if n >= self.warmup:
                self.sent[event.event_id] = time.monotonic()
            acked = functools.partial(self._acked, event.event_id)
            produce(self.producer, self.scene.settings.raw_topic, event, acked)
        self.produced = max(self.produced, due)
        self.producer.poll(0)

    def _acked(self, event_id: str, error: KafkaError | None, _record: Message) -> None:
        if error is not None:
            self.failed.append(error)
        elif event_id in self.sent:
            self.acked[event_id] = time.monotonic()

    def read(self, reader: Consumer) -> None:
        for record in reader.consume(1000, READ_WAIT_S):
            now = time.monotonic()
            event_id = _event_id(record)
            if event_id in self.sent:
                self.seen.setdefault(event_id, now)

    def done(self, now: float) -> bool:
        if self.produced < self.total:
            return False
        return len(self.seen) >= len(self.sent) or now > self.end + DRAIN_S


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rate", type=float, default=2000.0)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--partitions", type=int, default=48)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--profile", type=Path, help="py-spy each contender into this dir")
    parser.add_argument("--idle", action="store_true", help="with --profile: wall clock")
    args = parser.parse_args()
    with stack("bench-latency") as settings:
        runs = [
            (
                measure(settings, PASSTHROUGH, *_plan(args), _spied(args, n)),
                measure(settings, WORKER, *_plan(args), _spied(args, n)),
            )
            for n in range(args.rounds)
        ]
    report(runs, args.partitions, args.rate, args.seconds, save=args.profile is None)


def _plan(args: argparse.Namespace) -> tuple[int, float, float]:
    return args.partitions, args.rate, args.seconds


def _spied(args: argparse.Namespace, n: int) -> Spied | None:
    """Run `n`'s profile (`--profile`), or None."""
    return None if args.profile is None else (args.profile, f"run{n + 1}", args.idle)


def report(
    runs: list[tuple[Latency, Latency]],
    partitions: int,
    rate: float,
    seconds: float,
    save: bool = True,
) -> None:
    """Print the runs (passthrough, worker) and keep the worker's p99 as a figure (unless
    the runs were profiled, `save` False)."""
    print(heading(partitions, rate, seconds))
    for passthrough, worker in runs:
        print(passthrough, worker, sep="\n")
    if not save:
        return
    save_figure(
        "end_to_end",
        f"end to end p99 at {rate:,.0f} events/s offered, {partitions} partitions",
        "ms",
        [Pair(w.p99_ms, p.p99_ms) for p, w in runs],
        Goal("p99 <= 300 ms", 300.0, at_least=False, on_ratio=False),
        "passthrough p99",
        note="p50 "
        + ", ".join(f"{w.p50_ms:.0f}" for _, w in runs)
        + " ms; raw ack p99 "
        + ", ".join(f"{w.ack_p99_ms:.0f}" for _, w in runs)
        + " ms",
        load_generator="the bench process (paced producer and reader): "
        + ", ".join(f"{w.generator_cpu_share:.0%} of a core" for _, w in runs),
        seconds_per_run=seconds,
    )


def heading(partitions: int, rate: float, seconds: float) -> str:
    return (
        f"\nend to end at {rate:.0f} events/s for {seconds:.0f} s, {partitions} partitions, fresh "
        "topics and group each; ms from produce() to a read_committed reader (target: worker "
        f"p99 <= 300 ms)\n{'process':<12} {'p50':>9} {'p99':>9} {'raw ack p99':>12} "
        f"{'ack->seen p99':>14} {'seen/sent':>15} {'CPU':>6} {'bench CPU':>10}"
    )


def measure(
    settings: Settings,
    contender: Contender,
    partitions: int,
    rate: float,
    seconds: float,
    spied: Spied | None = None,
) -> Latency:
    """One run of `contender` on fresh topics at `rate` events/s (profiled with `spied`)."""
    scene = scenario(settings, partitions)
    reader = _reader(scene, scene.settings.accepted_topic + contender.output_suffix)
    producer = Producer({"bootstrap.servers": scene.bootstrap, "acks": "all", "linger.ms": 5})
    port = free_port()
    if spied is not None:
        contender = contender._replace(env={**contender.env, "INGEST_WORKER_HTTP_PORT": str(port)})
    try:
        with running(contender, scene) as proc:
            _probe(scene, producer, reader, (proc, contender.name))
            spy = None if spied is None else _spy(proc.pid, contender, spied, seconds)
            cpu_before, before = cpu_s(proc.pid), time.monotonic()
            own_before = time.process_time()
            trial = _drive(Trial(scene, producer, rate, seconds), reader, (proc, contender.name))
            took = time.monotonic() - before
            share = (cpu_s(proc.pid) - cpu_before) / took
            own = (time.process_time() - own_before) / took
            if spy is not None:
                spy.finish(events=trial.produced, cpu_share=round(share, 3))
                _keep_metrics(port, spy.out.with_suffix(".metrics.txt"))
    finally:
        reader.close()
    if trial.failed:
        raise RuntimeError(f"producing raw events failed: {trial.failed[:3]}")
    return _summary(contender.name, trial, share, own)


def _spy(pid: int, contender: Contender, spied: Spied, seconds: float) -> Spy:
    """py-spy on the contender over the paced run (its warm-up included)."""
    directory, label, idle = spied
    return Spy(pid, directory / f"latency-{label}-{contender.name}.txt", WARMUP_S + seconds, idle)


def _keep_metrics(port: int, out: Path) -> None:
    """The worker's metrics as it serves them now (none from the passthrough)."""
    try:
        out.write_text(httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text)
    except httpx.HTTPError as exc:
        out.write_text(f"# no metrics: {exc!r}\n")


def _reader(scene: Scenario, topic: str) -> Consumer:
    """Every partition of `topic`, from the start, committed records only."""
    reader = Consumer(
        {
            "bootstrap.servers": scene.bootstrap,
            "group.id": f"{scene.tag}-reader",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
            "fetch.wait.max.ms": 50,
        }
    )
    reader.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(scene.partitions)])
    return reader


def _probe(scene: Scenario, producer: Producer, reader: Consumer, under_test: UnderTest) -> None:
    """One event through the contender: it has joined its group and is past its start."""
    event = raw_event(0, scene, int(time.time() * 1000))
    produce(producer, scene.settings.raw_topic, event, Deliveries())
    producer.flush(PROBE_S)
    deadline = time.monotonic() + PROBE_S
    while time.monotonic() < deadline:
        check_alive(*under_test)
        if any(_event_id(r) == event.event_id for r in reader.consume(1000, 0.1)):
            return
    raise TimeoutError(f"the probe event did not come through in {PROBE_S:.0f} s")


def _drive(trial: Trial, reader: Consumer, under_test: UnderTest) -> Trial:
    while not trial.done(time.monotonic()):
        trial.send_due(time.monotonic())
        trial.read(reader)
        check_alive(*under_test)
    return trial


def _event_id(record: Message) -> str | None:
    if record.error() is not None:
        return None
    headers = record.headers() or []
    pairs = headers.items() if isinstance(headers, dict) else headers
    for name, value in pairs:
        if name == "event-id" and value is not None:
            return value.decode() if isinstance(value, bytes) else value
    return None


def _summary(name: str, trial: Trial, share: float, own: float) -> Latency:
    """Percentiles over every measured event; one never seen counts as infinitely late."""
    missing = [math.inf] * (len(trial.sent) - len(trial.seen))
    late = sorted([trial.seen[e] - trial.sent[e] for e in trial.seen] + missing)
    acks = sorted(trial.acked[e] - trial.sent[e] for e in trial.acked)
    after = sorted(
        [trial.seen[e] - trial.acked.get(e, trial.sent[e]) for e in trial.seen] + missing
    )
    return Latency(
        name,
        len(trial.sent),
        len(trial.seen),
        _percentile(late, 0.50) * 1000,
        _percentile(late, 0.99) * 1000,
        _percentile(acks, 0.99) * 1000,
        _percentile(after, 0.99) * 1000,
        share,
        own,
    )


def _percentile(ordered: list[float], q: float) -> float:
    """Nearest rank."""
    if not ordered:
        return math.nan
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


if __name__ == "__main__":
    main()
