"""What the bench scripts share: the services, a fresh scenario (topics and an event type),
raw events as the API writes them, the process under test and what it used; and
bench/results.json, where every script keeps its figures (bench/table.py renders them)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import resource
import secrets
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import NamedTuple

import orjson
import psycopg
from baseline_worker import EVENT_SCHEMA
from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from devstack.stack import services
from ingest_worker.core.config import Settings
from ingest_worker.core.migrate import migrate
from ingest_worker.core.raw import random_event_ids

HERE = Path(__file__).resolve().parent
DEVICES = 2000
ADMIN_TIMEOUT_S = 30.0


@dataclass(frozen=True, slots=True)
class Scenario:
    """Fresh topics (all with `partitions`), a fresh event type, and settings naming them."""

    settings: Settings
    tag: str
    partitions: int
    integration_id: int
    type_id: int

    @property
    def bootstrap(self) -> str:
        return str(self.settings.kafka_bootstrap_servers)

    def group(self, contender: Contender) -> str:
        """The contender's own consumer group on this scenario's raw topic."""
        return f"{self.tag}-{contender.name}"


class Contender(NamedTuple):
    """A process under test, the suffix of the accepted topic it writes to, and settings of
    its own."""

    name: str
    command: list[str]
    output_suffix: str
    env: dict[str, str] = {}  # noqa: RUF012 - never mutated


WORKER = Contender("worker", [sys.executable, "-m", "ingest_worker", "worker"], "")
WORKER_STREAM_ONLY = WORKER._replace(name="worker-store-off", env={"INGEST_EVENT_STORE": "off"})
PASSTHROUGH = Contender(
    "passthrough", [sys.executable, str(HERE / "baseline_worker.py")], ".baseline"
)
# The passthrough doing only the per-record work no worker can skip (bench/baseline_worker.py).
FLOOR = PASSTHROUGH._replace(name="floor", env={"BENCH_PASSTHROUGH_WORK": "floor"})
NAIVE = Contender("naive", [sys.executable, str(HERE / "naive_worker.py")], ".naive")


Headers = list[tuple[str, str | bytes | None]]


class RawEvent(NamedTuple):
    """One raw-topic record."""

    key: bytes
    value: bytes
    headers: Headers
    event_id: str


@contextmanager
def stack(name: str) -> Iterator[Settings]:
    """Settings pointing at a migrated PostgreSQL and a Kafka broker (started unless given)."""
    base = Settings.from_env(os.environ)
    work = (base.stack_dir / name).resolve()
    shutil.rmtree(work, ignore_errors=True)
    with services(base, work, durable=True) as found:
        asyncio.run(migrate(found.database_url, lock_timeout_s=30))
        yield dataclasses.replace(
            base,
            kafka_bootstrap_servers=found.kafka_bootstrap_servers,
            database_url=found.database_url,
        )


def scenario(settings: Settings, partitions: int) -> Scenario:
    """Raw, accepted, rejected and the passthrough's topics, created with `partitions`."""
    tag = f"bench-p{partitions}-{uuid.uuid4().hex[:6]}"
    named = dataclasses.replace(
        settings,
        raw_topic=f"{tag}.raw",
        accepted_topic=f"{tag}.accepted",
        rejected_topic=f"{tag}.rejected",
    )
    topics = [named.raw_topic, named.accepted_topic, named.rejected_topic]
    create_topics(
        str(settings.kafka_bootstrap_servers), [*topics, f"{tag}.accepted.baseline"], partitions
    )
    integration_id, type_id = event_type(str(settings.database_url))
    return Scenario(named, tag, partitions, integration_id, type_id)


def create_topics(bootstrap: str, names: Sequence[str], partitions: int) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    new = [NewTopic(name, num_partitions=partitions, replication_factor=1) for name in names]
    for future in admin.create_topics(new).values():
        future.result(ADMIN_TIMEOUT_S)


def event_type(database_url: str) -> tuple[int, int]:
    """A fresh integration with one event type resolving devices by `{store}:{lane}`."""
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "INSERT INTO integrations (name) VALUES ('bench') RETURNING id"
        ).fetchone()
        assert row is not None
        typed = conn.execute(
            "INSERT INTO event_types (integration_id, name, schema, external_device_id_template) "
            "VALUES (%s, 'sale', %s, '{store}:{lane}') RETURNING id",
            (row[0], orjson.dumps(EVENT_SCHEMA).decode()),
        ).fetchone()
        assert typed is not None
        return int(row[0]), int(typed[0])


def raw_event(
    n: int, scene: Scenario, received_at_ms: int, external_ids: int | None = None
) -> RawEvent:
    """Event `n` as the API writes it: a third name their device by external id (2,000 ids,
    keyed by the device hint), the rest resolve it by template (97 stores x 20 lanes, keyed
    by the event id). With `external_ids`, every event names its device by external id,
    `ext-{n % external_ids}`, keyed by that hint."""
    event: dict[str, object] = {
        "integration_event_type_id": scene.type_id,
        "timestamp": "2024-06-01T12:00:00.123Z",
        "attributes": {"store": f"S{n % 97}", "lane": n % (DEVICES // 97), "total": n / 100},
    }
    event_id = random_event_ids(1)[0]  # as the API mints them
    key = event_id
    if external_ids is not None or n % 3 == 0:
        external_id = f"ext-{n % (external_ids or DEVICES)}"
        event["device_external_id"] = external_id
        key = f"{scene.integration_id}:{external_id}"
    headers: Headers = [
        ("integration-id", str(scene.integration_id).encode()),
        ("event-id", event_id.encode()),
        ("received-at", str(received_at_ms).encode()),
        ("traceparent", f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01".encode()),
    ]
    return RawEvent(key.encode(), orjson.dumps(event), headers, event_id)


OnDelivery = Callable[[KafkaError | None, Message], None]


class Deliveries:
    """A delivery callback that keeps the failures."""

    def __init__(self) -> None:
        self.failed: list[KafkaError] = []

    def __call__(self, error: KafkaError | None, _record: Message) -> None:
        if error is not None:
            self.failed.append(error)


def produce(producer: Producer, topic: str, event: RawEvent, on_delivery: OnDelivery) -> None:
    while True:
        try:
            producer.produce(
                topic, event.value, event.key, headers=event.headers, on_delivery=on_delivery
            )
            return
        except BufferError:  # the local queue is full: let librdkafka send some
            producer.poll(0.01)


def fill(scene: Scenario, count: int, received_at_ms: int, external_ids: int | None = None) -> None:
    """`count` raw events on the scenario's raw topic, acknowledged by all replicas (with
    `external_ids`, as `raw_event` makes them)."""
    producer = Producer({"bootstrap.servers": scene.bootstrap, "acks": "all", "linger.ms": 20})
    deliveries = Deliveries()
    topic = scene.settings.raw_topic
    for n in range(count):
        produce(producer, topic, raw_event(n, scene, received_at_ms, external_ids), deliveries)
        producer.poll(0)
    if producer.flush(ADMIN_TIMEOUT_S) or deliveries.failed:
        raise RuntimeError(f"filling the raw topic failed: {deliveries.failed[:3]}")


def records_in(bootstrap: str, topic: str, partitions: int) -> int:
    """Sum of the topic's high watermarks: its records, plus transaction markers."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "bench-watermarks"})
    try:
        marks = [
            consumer.get_watermark_offsets(TopicPartition(topic, p), ADMIN_TIMEOUT_S)
            for p in range(partitions)
        ]
    finally:
        consumer.close()
    return sum(high for _low, high in marks)


def child_env(scene: Scenario, group: str) -> dict[str, str]:
    """The environment of a process under test: the scenario's topics, its own group."""
    settings = scene.settings
    return {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": scene.bootstrap,
        "DATABASE_URL": str(settings.database_url),
        "INGEST_RAW_TOPIC": settings.raw_topic,
        "INGEST_ACCEPTED_TOPIC": settings.accepted_topic,
        "INGEST_REJECTED_TOPIC": settings.rejected_topic,
        "INGEST_GROUP_ID": group,
        "INGEST_WORKER_HTTP_PORT": "0",
        "INGEST_LOG_LEVEL": os.environ.get("INGEST_LOG_LEVEL", "WARNING"),
    }


@contextmanager
def running(contender: Contender, scene: Scenario) -> Iterator[subprocess.Popen[bytes]]:
    """The contender in its own group, SIGTERMed (then killed after 60 s) on exit."""
    env = {**child_env(scene, scene.group(contender)), **contender.env}
    proc = subprocess.Popen(contender.command, env=env)
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def check_alive(proc: subprocess.Popen[bytes], name: str) -> None:
    code = proc.poll()
    if code is not None:
        raise RuntimeError(f"{name} exited with {code}")


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a live process, all its threads (librdkafka's too)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat.rsplit(")", 1)[1].split()  # after the command name, fields start at 3
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_kib(pid: int) -> int:
    """A live process's peak resident set (VmHWM), in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/{pid}/status has no VmHWM")


RESULTS = HERE / "results.json"
STARTED_S = time.monotonic()  # when the bench script began (it imports this module first)


def save_results(key: str, figures: dict[str, object]) -> None:
    """Put `figures` under `key` in bench/results.json, with the command, the time, the load
    average and the script's wall time so far; the other keys stay as they are."""
    # json, not orjson: it reads back the Infinity of a p99 whose events were never seen.
    found = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    found[key] = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "time": datetime.now(UTC).isoformat(timespec="seconds"),
        "load_average_1_5_15": [round(load, 2) for load in os.getloadavg()],
        "cores": os.cpu_count(),
        "script_wall_s": round(time.monotonic() - STARTED_S),
        **figures,
    }
    RESULTS.write_text(json.dumps(found, indent=2, sort_keys=True) + "\n")


class Pair(NamedTuple):
    """One run of a figure: what was measured, and its baseline in the same run (None: the
    figure has none)."""

    measured: float
    baseline: float | None


class Goal(NamedTuple):
    """A figure's target: a bound on measured / baseline (`on_ratio`) or on the measured value
    itself, as `text` says it."""

    text: str
    bound: float
    at_least: bool = True
    on_ratio: bool = True

    def score(self, run: Pair) -> float:
        if not self.on_ratio:
            return run.measured
        assert run.baseline
        return run.measured / run.baseline

    def met(self, run: Pair) -> bool:
        score = self.score(run)
        return score >= self.bound if self.at_least else score <= self.bound


def save_figure(
    key: str,
    figure: str,
    unit: str,
    runs: Sequence[Pair],
    goal: Goal | None,
    baseline_name: str = "",
    **extra: object,
) -> None:
    """One row of README's table, in bench/results.json under `key`: the run reported is the
    median of `runs` by the goal's score (of two, the worse), beside every run, so the
    spread shows; met or not is that run's. `extra` (a `note` for the table, the load
    generator's CPU, details) is kept as given."""
    ordered = sorted(runs, key=goal.score if goal else lambda r: r.measured)
    worse_middle = (len(ordered) - 1) // 2 if goal is None or goal.at_least else len(ordered) // 2
    reported = ordered[worse_middle]
    spread = [round(goal.score(ordered[i]), 3) for i in (0, -1)] if goal else None
    save_results(
        key,
        {
            "figure": figure,
            "unit": unit,
            **_run_json(reported),
            "baseline_name": baseline_name,
            "target": goal.text if goal else None,
            "goal": goal._asdict() if goal else None,
            "met": goal.met(reported) if goal else None,
            "runs": [_run_json(r) for r in runs],
            "spread": spread,
            **extra,
        },
    )


def _run_json(run: Pair) -> dict[str, float | None]:
    baseline = None if run.baseline is None else round(run.baseline, 1)
    ratio = round(run.measured / run.baseline, 3) if run.baseline else None
    return {"measured": round(run.measured, 1), "baseline": baseline, "ratio": ratio}


def children_cpu_s() -> float:
    """User + system CPU seconds of this process's children that have been waited for."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def tree_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process, of its children that have exited (waited
    for), and of its live children: what a server that forks a process per connection
    (PostgreSQL's postmaster) has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = sum(int(f) for f in fields[11:15])  # utime, stime, cutime, cstime
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            child = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        if int(child[1]) == pid:  # ppid
            ticks += int(child[11]) + int(child[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def postmaster_pid(database_url: str) -> int:
    """The pid of a PostgreSQL server on this machine (the parent of its backends)."""
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT pg_backend_pid()").fetchone()
        assert row is not None
        stat = Path(f"/proc/{row[0]}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[1])
