"""The soak's stack: a three-node Kafka cluster, a PostgreSQL that can be stopped and started
on its data, one `ingest-worker api` process and a group of `ingest-worker worker` processes
that the faults kill, terminate, replace and scale.

Every server (JVM, postgres, the API, the workers) is spawned from the main thread: a child
gets SIGTERM when the *thread* that spawned it ends (PR_SET_PDEATHSIG), so an executor's
thread must never start one. Waiting happens in threads.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from confluent_kafka import Consumer, KafkaException, TopicPartition

from devstack import proc
from devstack.kafka import Cluster, local_cluster
from devstack.postgres import Postgres, local_postgres_server
from devstack.topics import ensure_topics
from ingest_worker.core.config import Settings
from ingest_worker.core.migrate import migrate

log = logging.getLogger(__name__)

PARTITIONS = 6
BASE_WORKERS = 2
ADMIN_TOKEN = "igw_soak-admin-token"  # noqa: S105 - a local stack's, made per run
READY_TIMEOUT_S = 90.0
SIGTERM_GRACE_S = 30.0  # the worker's own bounds: 10 s per Kafka call
KAFKA_TIMEOUT_S = 10.0


@dataclass
class Problems:
    """What the stack's processes did that they must not: a crash, an unclean exit, a hang
    on SIGTERM. Each is a finding for the report, never retried away silently."""

    found: list[str] = field(default_factory=list)

    def add(self, text: str) -> None:
        log.error("soak problem: %s", text)
        self.found.append(text)


def process_env(settings: Settings, bootstrap: str, database_url: str) -> dict[str, str]:
    """The environment an API or worker process gets: this run's Kafka, PostgreSQL, topics and
    group, the admin token, no rate limit (the soak sends in bursts on purpose), and the
    defaults the ledger's expectations rest on (synchronous checks, the event store), whatever
    the caller's environment says."""
    inherited = {k: v for k, v in os.environ.items() if k != "INGEST_TRANSACTIONAL_ID"}
    return {
        **inherited,
        "INGEST_API_VALIDATION": "sync",
        "INGEST_EVENT_STORE": "on",
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "DATABASE_URL": database_url,
        "INGEST_RAW_TOPIC": settings.raw_topic,
        "INGEST_ACCEPTED_TOPIC": settings.accepted_topic,
        "INGEST_REJECTED_TOPIC": settings.rejected_topic,
        "INGEST_GROUP_ID": settings.group_id,
        "INGEST_ADMIN_TOKEN": ADMIN_TOKEN,
        "INGEST_RATE_LIMIT_PER_S": "0",
        "INGEST_LOG_FORMAT": "json",
    }


def _command(which: str) -> list[str]:
    return [sys.executable, "-m", "ingest_worker", which]


async def _until_ready(url: str, process: subprocess.Popen[bytes], timeout_s: float) -> bool:
    """Poll `url` until it answers 200; False if the process exits or the time runs out."""
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient(timeout=2) as client:
        while time.monotonic() < deadline and process.poll() is None:
            with suppress(httpx.HTTPError):
                if (await client.get(url)).status_code == 200:
                    return True
            await asyncio.sleep(0.2)
    return False


async def _stop(process: subprocess.Popen[bytes], grace_s: float) -> int | None:
    """SIGTERM and wait (in a thread) up to grace_s: the exit code, or None when it had to be
    killed."""
    if process.poll() is not None:
        return process.returncode
    process.send_signal(signal.SIGTERM)
    try:
        return await asyncio.to_thread(process.wait, grace_s)
    except subprocess.TimeoutExpired:
        process.kill()
        await asyncio.to_thread(process.wait)
        return None


@dataclass
class Api:
    """The one `ingest-worker api` process."""

    env: dict[str, str]
    log_path: Path
    port: int = field(default_factory=proc.free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        """Spawn (on this, the main, thread) and wait until /readyz answers 200."""
        env = {**self.env, "INGEST_API_PORT": str(self.port)}
        self.process = proc.spawn(_command("api"), self.log_path, env=env)
        if not await _until_ready(f"{self.url}/readyz", self.process, READY_TIMEOUT_S):
            raise RuntimeError(f"ingest-worker api not ready:\n{proc.tail(self.log_path)}")

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    async def close(self, problems: Problems) -> None:
        if self.process is None:
            return
        if not self.alive():
            problems.add(f"the API exited by itself with {self.process.returncode}")
            return
        code = await _stop(self.process, SIGTERM_GRACE_S)
        if code not in (0, -signal.SIGTERM):  # uvicorn re-raises the signal once shut down
            problems.add(f"the API ended with {code} on SIGTERM")


@dataclass
class _Member:
    """One live worker process and the slot it fills."""

    slot: int
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path


class Workers:
    """The worker group: processes in numbered slots. A slot keeps its transactional id across
    replacements, as a StatefulSet's pod keeps its name (a replacement fences its
    predecessor's open transaction at once); no two live processes ever share one."""

    def __init__(self, env: dict[str, str], log_dir: Path, run_id: str, problems: Problems):
        self.base_size = BASE_WORKERS
        self.rebalances = 0
        self._env, self._log_dir, self._run_id = env, log_dir, run_id
        self._members: dict[int, _Member] = {}
        self._problems = problems
        self._started = 0

    @property
    def slots(self) -> list[int]:
        return sorted(self._members)

    def pick(self, target: int) -> int:
        """The running worker a fault's `target` names (modulo how many run)."""
        slots = self.slots
        if not slots:
            raise RuntimeError("no worker is running")
        return slots[target % len(slots)]

    def spawn(self, slot: int, *, new_id: bool = False) -> _Member:
        """Start a worker in `slot` without waiting (on the main thread): under the slot's
        transactional id, or with `new_id` under the default one (per process)."""
        if slot in self._members:
            raise RuntimeError(f"worker slot {slot} is taken")
        self._started += 1
        port = proc.free_port()
        env = {**self._env, "INGEST_WORKER_HTTP_PORT": str(port)}
        if not new_id:
            env["INGEST_TRANSACTIONAL_ID"] = f"soak-{self._run_id}-slot-{slot}"
        log_path = self._log_dir / f"worker-{slot}-{self._started}.log"
        member = _Member(slot, port, proc.spawn(_command("worker"), log_path, env=env), log_path)
        self._members[slot] = member
        return member

    async def start(self, *slots: int, new_id: bool = False) -> None:
        """Start workers in these slots; wait until each answers /readyz."""
        members = [self.spawn(slot, new_id=new_id) for slot in slots]
        for member in members:
            url = f"http://127.0.0.1:{member.port}/readyz"
            if not await _until_ready(url, member.process, READY_TIMEOUT_S):
                self._problems.add(f"worker slot {member.slot} not ready ({member.log_path})")

    def kill(self, slot: int) -> None:
        """kill -9, and wait for the exit."""
        member = self._members.pop(slot)
        proc.stop(member.process, signal.SIGKILL, 10)

    async def terminate(self, slot: int) -> None:
        """SIGTERM: the worker must finish its batch, leave the group and exit 0 in time."""
        member = self._members.pop(slot)
        code = await _stop(member.process, SIGTERM_GRACE_S)
        if code != 0:
            what = "hung on SIGTERM" if code is None else f"ended with {code} on SIGTERM"
            self._problems.add(f"worker slot {slot} {what} ({member.log_path})")

    async def scale(self, size: int) -> None:
        """Terminate the highest slots or start the lowest free ones until `size` run."""
        if size == len(self._members):
            return
        self.rebalances += 1
        while len(self._members) > size:
            await self.terminate(max(self._members))
        free = [s for s in range(size + len(self._members)) if s not in self._members]
        await self.start(*free[: size - len(self._members)])

    async def processed(self, slot: int) -> float | None:
        """Records the worker has emitted (its `ingest_worker_records_total`); None while its
        side port does not answer."""
        url = f"http://127.0.0.1:{self._members[slot].port}/metrics"
        try:
            async with httpx.AsyncClient(timeout=2) as client:
                return _metric_sum((await client.get(url)).text, "ingest_worker_records_total{")
        except httpx.HTTPError:
            return None

    async def replace_crashed(self) -> None:
        """A worker that exited by itself is a finding; its slot is filled again so the soak
        goes on."""
        for slot, member in list(self._members.items()):
            if member.process.poll() is not None:
                code = member.process.returncode
                self._problems.add(f"worker slot {slot} exited by itself with {code}")
                del self._members[slot]
                await self.start(slot)

    async def close(self) -> None:
        """SIGTERM every worker at once; each must exit 0."""
        await self.replace_crashed()
        await asyncio.gather(*(self.terminate(slot) for slot in self.slots))


def _metric_sum(metrics: str, prefix: str) -> float:
    """Sum of a metric's samples (every label set), from Prometheus text."""
    total = 0.0
    for line in metrics.splitlines():
        if line.startswith(prefix):
            total += float(line.rsplit(" ", 1)[1])
    return total


class GroupLag:
    """Records of the raw topic the worker group has not committed yet, from the broker's
    committed offsets and high watermarks (a consumer of the group's id that never joins).
    The committed offsets are read as *stable*: while a transaction holding offsets of the
    group is open (or stuck), the broker does not say, and neither does this."""

    def __init__(self, bootstrap: str, group: str, topic: str) -> None:
        self._config: dict[str, str | bool] = {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "enable.auto.commit": False,
        }
        self._consumer = Consumer(self._config)
        self._partitions = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        self.last_error: str | None = None

    def behind(self) -> int | None:
        """Records not yet committed, over every partition; None while the broker does not
        say."""
        found = self.by_partition()
        return None if found is None else sum(found.values())

    def by_partition(self) -> dict[int, int] | None:
        """Per partition, records not yet committed; None while the broker does not say."""
        try:
            committed = self._consumer.committed(self._partitions, timeout=KAFKA_TIMEOUT_S)
            found = {}
            for tp in committed:
                low, high = self._consumer.get_watermark_offsets(tp, timeout=KAFKA_TIMEOUT_S)
                found[tp.partition] = high - (tp.offset if tp.offset >= 0 else low)
        except KafkaException as exc:
            # A consumer whose coordinator was on a killed node may not find its way back:
            # say why, and ask with a fresh one next time.
            self.last_error = str(exc)
            log.warning("group lag unknown", extra={"error": self.last_error})
            self._consumer.close()
            self._consumer = Consumer(self._config)
            return None
        self.last_error = None
        return found

    def close(self) -> None:
        self._consumer.close()


@dataclass
class Stack:
    """Everything the drive talks to and the faults hit."""

    run_dir: Path
    settings: Settings
    cluster: Cluster
    postgres: Postgres
    api: Api
    workers: Workers
    problems: Problems
    lag: GroupLag

    @property
    def bootstrap(self) -> str:
        return self.cluster.bootstrap

    async def restore(self) -> None:
        """After the faults: every node up and in sync, PostgreSQL up, the group at its size."""
        await whole_cluster(self.cluster)
        if not self.postgres.running():
            self.postgres.spawn()
            await asyncio.to_thread(self.postgres.wait_started)
        await self.workers.replace_crashed()
        await self.workers.scale(self.workers.base_size)

    async def behind(self) -> int | None:
        """Raw records the group has not committed yet (None: the broker did not say)."""
        return await asyncio.to_thread(self.lag.behind)

    async def drain(self, timeout_s: float) -> bool:
        """Wait until the group has committed every raw record. A group still behind at the
        deadline is a finding (the verdict then shows what is missing), not a crash."""
        deadline = time.monotonic() + timeout_s
        while await self.behind() != 0:
            if time.monotonic() > deadline:
                found = await asyncio.to_thread(self.lag.by_partition)
                what = f"unknown ({self.lag.last_error})" if found is None else found
                self.problems.add(f"the group did not drain in {timeout_s}s: behind {what}")
                self.keep_broker_logs()
                return False
            await self.workers.replace_crashed()
            await asyncio.sleep(1)
        return True

    def keep_broker_logs(self) -> None:
        """Copy every node's server log into the run's folder (a cluster of the test session
        is deleted with its logs at the session's end)."""
        for node_id, node in self.cluster.nodes.items():
            with suppress(OSError):
                shutil.copy(node.server_log, self.run_dir / "logs" / f"kafka-node-{node_id}.log")


async def whole_cluster(cluster: Cluster) -> None:
    """Start any node that is down (on the main thread) and wait until every ISR is full."""
    down = [node for node in cluster.nodes if not cluster.running(node)]
    for node in down:
        cluster.spawn(node)
    for node in down:
        await asyncio.to_thread(cluster.wait_started, node)
    await asyncio.to_thread(cluster.wait_healthy, 240)


def _folders(run_dir: Path) -> Path:
    """The run's folder, absolute (the servers run elsewhere), with its logs folder."""
    run_dir = run_dir.resolve()
    (run_dir / "logs").mkdir(parents=True, exist_ok=True)
    return run_dir


def soak_settings(run_id: str) -> Settings:
    """Settings naming this run's topics and group."""
    return dataclasses.replace(
        Settings.from_env(os.environ),
        raw_topic=f"soak.{run_id}.raw",
        accepted_topic=f"soak.{run_id}.accepted",
        rejected_topic=f"soak.{run_id}.rejected",
        group_id=f"soak-{run_id}",
    )


@asynccontextmanager
async def running_stack(run_dir: Path, cluster: Cluster | None = None) -> AsyncIterator[Stack]:
    """The whole stack under run_dir, on `cluster` if given (left running and healthy at the
    end) or on a three-node cluster of its own."""
    run_id = uuid.uuid4().hex[:8]
    settings, problems = soak_settings(run_id), Problems()
    run_dir = _folders(run_dir)
    async with AsyncExitStack() as stack:
        if cluster is None:
            cache = (settings.stack_dir / "cache").resolve()
            cluster = stack.enter_context(local_cluster(run_dir / "kafka", cache))
        else:
            stack.push_async_callback(whole_cluster, cluster)
        await whole_cluster(cluster)
        postgres = stack.enter_context(local_postgres_server(run_dir / "postgres", durable=True))
        await migrate(postgres.url, lock_timeout_s=60)
        await ensure_topics(cluster.bootstrap, settings, partitions=PARTITIONS)
        env = process_env(settings, cluster.bootstrap, postgres.url)
        api = Api(env, run_dir / "logs" / "api.log")
        stack.push_async_callback(api.close, problems)
        await api.start()
        workers = Workers(env, run_dir / "logs", run_id, problems)
        stack.push_async_callback(workers.close)
        await workers.start(*range(workers.base_size))
        lag = GroupLag(cluster.bootstrap, settings.group_id, settings.raw_topic)
        stack.push_async_callback(asyncio.to_thread, lag.close)
        yield Stack(run_dir, settings, cluster, postgres, api, workers, problems, lag)
