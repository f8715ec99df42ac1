"""The ceiling: Kafka's own producer performance tool (ProducerPerformance, which
kafka-producer-perf-test.sh runs) against the broker the contenders use, with records the size
of the raw events, `acks=all` and librdkafka's default batching: what one producer gets from
this broker on this machine, in records/s and MB/s.

    INGEST_LOG_LEVEL=WARNING PYTHONPATH=. .venv/bin/python bench/ceiling.py [--records 400000]
        [--partitions 6] [--runs 2]

bench/worker.py runs it on its own broker after its contenders and keeps the figures. Each
run produces `--records` records of random bytes (their size: the mean key + value + headers
of bench/workload.py's raw events) to a fresh topic with `--partitions`, unthrottled, the
first fifth counted as warm-up. The tool's JVM is the load generator: its CPU (getrusage of
the reaped child) is reported. Its jars, kafka-tools and what it needs, are resolved by Maven
from deploy/image/kafka/pom.xml (the broker's jars plus the command-line tools) into
.local/cache/kafka-tools/, once, as devstack resolves the broker's. Kafka and PostgreSQL:
KAFKA_BOOTSTRAP_SERVERS and DATABASE_URL if set, else started here.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path

from workload import (
    HERE,
    Pair,
    Scenario,
    children_cpu_s,
    create_topics,
    raw_event,
    save_figure,
    scenario,
    stack,
)

from devstack.kafka import java, kafka_version, resolve_jars
from ingest_worker.core.config import Settings

TOOLS_POM = HERE.parent / "deploy" / "image" / "kafka" / "pom.xml"
MAIN = "org.apache.kafka.tools.ProducerPerformance"
# Batched as the contenders' librdkafka producers batch by default (the Java client's 16 KiB
# batches halve its rate here).
LIBRDKAFKA_BATCHING = ["batch.size=1000000", "linger.ms=5"]
# "... records sent, 123.4 records/sec (0.12 MB/sec), 1.2 ms avg latency, 3.0 ms max latency,
# 1 ms 50th, 2 ms 95th, 3 ms 99th, 3 ms 99.9th." (the last such line: the steady state's)
SUMMARY = re.compile(
    r"records sent, ([\d.]+) records/sec \(([\d.]+) MB/sec\).*?([\d.]+) ms 99th", re.S
)


@dataclass(frozen=True, slots=True)
class Ceiling:
    """One run of the tool."""

    records: int
    record_bytes: int
    partitions: int
    records_s: float
    mb_s: float
    p99_ms: float
    generator_cpu_s: float

    @property
    def generator_cpu_us(self) -> float:
        """The tool's CPU µs per record (its JVM's start and warm-up included)."""
        return self.generator_cpu_s * 1e6 / self.records


def tools(settings: Settings) -> Path:
    """The folder of kafka-tools' jars (resolved by Maven on first use)."""
    return resolve_jars(settings.stack_dir / "cache" / "kafka-tools", TOOLS_POM)


def raw_record_bytes(scene: Scenario, sample: int = 1000) -> int:
    """The mean size of a raw event as bench/workload.py fills them: key, value, headers."""
    total = 0
    for n in range(sample):
        event = raw_event(n, scene, 1_700_000_000_000)
        total += len(event.key) + len(event.value)
        total += sum(len(name) + len(value or b"") for name, value in event.headers)
    return round(total / sample)


def measure(
    settings: Settings, bootstrap: str, partitions: int, records: int, record_bytes: int
) -> Ceiling:
    """One run on a fresh topic with `partitions`."""
    topic = f"bench-ceiling-{uuid.uuid4().hex[:6]}"
    create_topics(bootstrap, [topic], partitions)
    cmd = [java(), "-Xmx512m", "-cp", f"{tools(settings)}/*", MAIN, "--bootstrap-server"]
    cmd += [bootstrap, "--topic", topic, "--num-records", str(records), "--throughput", "-1"]
    cmd += ["--record-size", str(record_bytes), "--warmup-records", str(records // 5)]
    cmd += ["--command-property", "acks=all", *LIBRDKAFKA_BATCHING]
    before = children_cpu_s()
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    cpu = children_cpu_s() - before
    found = SUMMARY.findall(out)
    if not found:
        raise RuntimeError(f"no summary in ProducerPerformance's output: {out[-500:]}")
    rate, mb_s, p99 = (float(x) for x in found[-1])
    return Ceiling(records, record_bytes, partitions, rate, mb_s, p99, cpu)


def tool_name() -> str:
    return f"ProducerPerformance (kafka-tools {kafka_version(TOOLS_POM)})"


def line(run: Ceiling) -> str:
    return (
        f"{tool_name()}, {run.partitions} partitions, {run.record_bytes} B records, acks=all: "
        f"{run.records_s:,.0f} records/s, {run.mb_s:.2f} MB/s, p99 {run.p99_ms:.0f} ms, "
        f"tool CPU {run.generator_cpu_us:.1f} µs/record"
    )


def save(runs: list[Ceiling], note: str = "") -> None:
    """The ceiling's figure in bench/results.json (no baseline, no target); `note` follows
    its MB/s."""
    slowest = min(runs, key=lambda c: c.records_s)
    save_figure(
        "kafka_ceiling",
        f"ceiling: Kafka's {tool_name()}, {slowest.partitions} partitions, "
        f"{slowest.record_bytes} B records, acks=all",
        "records/s",
        [Pair(c.records_s, None) for c in runs],
        None,
        role="— (the ceiling)",
        note=", ".join(f"{c.mb_s:.1f} MB/s" for c in runs) + note,
        load_generator="the tool's JVM: "
        + ", ".join(f"{c.generator_cpu_us:.1f} µs/record" for c in runs),
        details=[
            {"records_per_s": round(c.records_s), "mb_per_s": c.mb_s, "p99_ms": c.p99_ms}
            for c in runs
        ],
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=400_000)
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--runs", type=int, default=2)
    args = parser.parse_args()
    with stack("bench-ceiling") as settings:
        scene = scenario(settings, args.partitions)
        size = raw_record_bytes(scene)
        runs = [
            measure(settings, scene.bootstrap, args.partitions, args.records, size)
            for _ in range(args.runs)
        ]
    for run in runs:
        print(line(run))
    save(runs)


if __name__ == "__main__":
    main()
