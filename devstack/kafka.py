"""A real Apache Kafka for development and tests: one KRaft node (broker and controller in one
JVM), or a cluster of three such nodes whose nodes the fault tests kill and restart.

The jars come from Maven Central through `deploy/local/pom.xml`, resolved once into a cache
folder. Each node formats its storage on first use, runs on free ports and logs to a file.
"""

from __future__ import annotations

import base64
import fcntl
import json
import logging
import os
import shutil
import signal
import subprocess
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, ClusterMetadata, PartitionMetadata

from devstack import proc
from ingest_worker.core import rdkafka
from ingest_worker.core.errors import StackError

log = logging.getLogger(__name__)

POM = Path(__file__).resolve().parents[1] / "deploy" / "local" / "pom.xml"
_MVN_NS = "{http://maven.apache.org/POM/4.0.0}"
STARTED_LINE = "Kafka Server started"
CLUSTER_SIZE = 3
# Heap per JVM: a lone node gets more; three nodes share one small machine.
SINGLE_HEAP, CLUSTER_HEAP = "1g", "512m"

_LOG4J2 = """\
Configuration:
  Appenders:
    File:
      name: file
      fileName: "{log}"
      PatternLayout:
        pattern: "[%d] %p %m (%c)%n"
  Loggers:
    Root:
      level: INFO
      AppenderRef:
        ref: file
"""


def kafka_version(pom: Path = POM) -> str:
    """The broker version pinned in the pom (`kafka.version`)."""
    node = ET.parse(pom).find(f"{_MVN_NS}properties/{_MVN_NS}kafka.version")  # noqa: S314
    if node is None or not node.text:
        raise StackError(f"{pom} has no kafka.version property")
    return node.text.strip()


def broker_properties(
    data_dir: Path,
    port: int,
    controller_port: int,
    *,
    node_id: int = 1,
    voters: str | None = None,
    replicas: int = 1,
    overrides: Mapping[str, str] | None = None,
) -> str:
    """server.properties of a node that can run transactions: alone by default; else one of
    `voters` (`id@host:port,...`) keeping `replicas` copies of every partition, of which a
    majority must be in sync for an `acks=all` write to count. `overrides` win."""
    in_sync = str(replicas // 2 + 1)
    settings = {
        "process.roles": "broker,controller",
        "node.id": str(node_id),
        "controller.quorum.voters": voters or f"{node_id}@127.0.0.1:{controller_port}",
        "listeners": f"PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}",
        "advertised.listeners": f"PLAINTEXT://127.0.0.1:{port}",
        "controller.listener.names": "CONTROLLER",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "inter.broker.listener.name": "PLAINTEXT",
        "log.dirs": str(data_dir),
        "num.partitions": "3",
        "offsets.topic.replication.factor": str(replicas),
        "offsets.topic.num.partitions": "10",
        "transaction.state.log.replication.factor": str(replicas),
        "transaction.state.log.min.isr": in_sync,
        "transaction.state.log.num.partitions": "10",
        "min.insync.replicas": in_sync,
        "default.replication.factor": str(replicas),
        "group.initial.rebalance.delay.ms": "0",
        "auto.create.topics.enable": "false",
        **(overrides or {}),
    }
    return "".join(f"{key}={value}\n" for key, value in settings.items())


def new_cluster_id() -> str:
    """A Kafka cluster id: 16 random bytes, URL-safe base64, not starting with '-'."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not cluster_id.startswith("-"):
            return cluster_id


def resolve_jars(cache_dir: Path, pom: Path = POM) -> Path:
    """The folder of the broker's jars, resolved by Maven on first use (under a file lock)."""
    libs = cache_dir.resolve() / f"kafka-{kafka_version(pom)}"
    if (libs / ".complete").exists():
        return libs
    cache_dir.mkdir(parents=True, exist_ok=True)
    with (cache_dir / ".resolve.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (libs / ".complete").exists():
            _maven_copy(pom, libs, cache_dir / "maven.log")
    return libs


def _maven_copy(pom: Path, libs: Path, log_path: Path) -> None:
    mvn = shutil.which("mvn")
    if mvn is None:
        raise StackError("Maven (`mvn`) is needed to fetch the Kafka broker; install it")
    staging = libs.with_name(libs.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    log.info("resolving the Kafka broker with Maven", extra={"into": str(libs)})
    cmd = [mvn, "-q", "-B", "-f", str(pom), "dependency:copy-dependencies"]
    cmd += [f"-DoutputDirectory={staging}", "-DincludeScope=runtime"]
    proc.run(cmd, log_path, timeout_s=900)
    (staging / ".complete").touch()
    shutil.rmtree(libs, ignore_errors=True)
    staging.rename(libs)


def java() -> str:
    """The JDK's `java`: JAVA_HOME's, else the one on PATH."""
    home = os.environ.get("JAVA_HOME")
    path = str(Path(home) / "bin" / "java") if home else shutil.which("java")
    if path is None:
        raise StackError("Java 17+ is needed to run the Kafka broker; install a JDK")
    return path


@dataclass(frozen=True, slots=True)
class Node:
    """Where one node lives: its folder and ports, the same on every start, so that a restart
    finds its data and its peers find it."""

    node_id: int
    work_dir: Path
    port: int
    controller_port: int

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def voter(self) -> str:
        """This node in `controller.quorum.voters`."""
        return f"{self.node_id}@127.0.0.1:{self.controller_port}"

    @property
    def data_dir(self) -> Path:
        return self.work_dir / "data"

    @property
    def props(self) -> Path:
        return self.work_dir / "server.properties"

    @property
    def server_log(self) -> Path:
        return self.work_dir / "server.log"


@dataclass(frozen=True, slots=True)
class _Launch:
    """A node's JVM just spawned, and how many start lines its log held before: the log is
    appended to on a restart, so only a line beyond those says this JVM is up."""

    jvm: subprocess.Popen[bytes]
    seen: int


def _install(node: Node, properties: str, libs: Path, cluster_id: str) -> None:
    """Write the node's configuration; format its storage on first use only, so that a
    restart keeps the data."""
    node.work_dir.mkdir(parents=True, exist_ok=True)
    node.props.write_text(properties)
    (node.work_dir / "log4j2.yaml").write_text(_LOG4J2.format(log=node.server_log))
    if not (node.data_dir / "meta.properties").exists():
        fmt = [*_java_cmd(node, libs, "kafka.tools.StorageTool"), "format", "-t", cluster_id]
        proc.run([*fmt, "-c", str(node.props)], node.work_dir / "format.log")


def _java_cmd(node: Node, libs: Path, main: str, jvm: Iterable[str] = ()) -> list[str]:
    log4j = f"-Dlog4j2.configurationFile={node.work_dir / 'log4j2.yaml'}"
    return [java(), *jvm, log4j, "-cp", f"{libs}/*", main]


def _spawn(node: Node, libs: Path, max_heap: str) -> _Launch:
    """Start the node's JVM without waiting for it."""
    jvm = ["-Xms256m", f"-Xmx{max_heap}", "-XX:+UseG1GC", "-Djava.awt.headless=true"]
    seen = _started_count(node.server_log)
    cmd = [*_java_cmd(node, libs, "kafka.Kafka", jvm), str(node.props)]
    return _Launch(proc.spawn(cmd, node.work_dir / "jvm.log"), seen)


def _wait_started(node: Node, launch: _Launch, timeout_s: float) -> None:
    """Block until the node logs that it started and takes connections; fail if it exits."""
    proc.wait_until(
        lambda: _started(node.server_log, node.port, launch.seen),
        launch.jvm,
        node.server_log,
        timeout_s,
    )


@contextmanager
def local_broker(
    work_dir: Path,
    cache_dir: Path,
    timeout_s: float = 120,
    ports: tuple[int, int] | None = None,
    overrides: Mapping[str, str] | None = None,
) -> Iterator[str]:
    """Run a single-node broker under work_dir (storage formatted on first use); yield its
    bootstrap address. Given the same work_dir and ports, a restart keeps the data.
    `overrides` are server.properties entries that win over the defaults."""
    libs = resolve_jars(cache_dir)
    port, controller_port = ports or proc.free_ports(2)
    node = Node(1, work_dir, port, controller_port)
    properties = broker_properties(node.data_dir, port, controller_port, overrides=overrides)
    _install(node, properties, libs, new_cluster_id())
    launch = _spawn(node, libs, SINGLE_HEAP)
    try:
        _wait_started(node, launch, timeout_s)
        log.info("kafka broker up", extra={"port": port, "log": str(node.server_log)})
        yield node.address
    finally:
        proc.stop(launch.jvm, signal.SIGTERM, 30)


@contextmanager
def local_cluster(work_dir: Path, cache_dir: Path, timeout_s: float = 180) -> Iterator[Cluster]:
    """Run a three-node cluster under work_dir/node-<id> (storage formatted on first use);
    yield it.

    Every node is broker and controller at once (`process.roles=broker,controller`): three
    voters keep a quorum through the loss of any one node, which a single separate controller
    would not, and three JVMs instead of six fit a 2-core machine."""
    libs = resolve_jars(cache_dir)
    nodes = _cluster_nodes(work_dir.resolve())
    _install_cluster(nodes, libs)
    cluster = Cluster(nodes, libs, timeout_s)
    try:
        cluster.start_all()
        log.info("kafka cluster up", extra={"bootstrap": cluster.bootstrap, "dir": str(work_dir)})
        yield cluster
    finally:
        cluster.close()


def _cluster_nodes(work_dir: Path) -> list[Node]:
    ports = proc.free_ports(2 * CLUSTER_SIZE)
    return [
        Node(i, work_dir / f"node-{i}", ports[2 * i - 2], ports[2 * i - 1])
        for i in range(1, CLUSTER_SIZE + 1)
    ]


def _install_cluster(nodes: list[Node], libs: Path) -> None:
    """Give every node the same voters and replication, and format all with one cluster id
    (nodes formatted apart would refuse each other)."""
    voters, cluster_id = ",".join(node.voter for node in nodes), new_cluster_id()
    for node in nodes:
        properties = broker_properties(
            node.data_dir,
            node.port,
            node.controller_port,
            node_id=node.node_id,
            voters=voters,
            replicas=len(nodes),
        )
        _install(node, properties, libs, cluster_id)


class Cluster:
    """Local KRaft nodes, each broker and controller, and the faults tests inflict on them.
    Nodes are named by their node id (1, 2, 3), as partition metadata names leaders.

    Use it from one long-lived thread (the main one): a node's JVM gets SIGTERM when the
    thread that started it ends (PR_SET_PDEATHSIG), not only when this process does."""

    def __init__(self, nodes: list[Node], libs: Path, timeout_s: float) -> None:
        self.nodes = {node.node_id: node for node in nodes}
        self._libs, self._timeout_s = libs, timeout_s
        self._jvms: dict[int, subprocess.Popen[bytes]] = {}
        self._launches: dict[int, _Launch] = {}
        self._admin: AdminClient | None = None

    @property
    def bootstrap(self) -> str:
        """Every node's address, comma separated: clients find the cluster while any is up."""
        return ",".join(node.address for node in self.nodes.values())

    def start(self, node_id: int) -> None:
        """Start a stopped node again, on its data and ports; return once it serves."""
        self._start([node_id])

    def start_all(self) -> None:
        """Start every node that is not running; return once all serve."""
        self._start([i for i in self.nodes if not self.running(i)])

    def spawn(self, node_id: int) -> None:
        """Start a stopped node without waiting for it (`wait_started` waits, from any
        thread): a test's event loop must go on serving meanwhile."""
        if self.running(node_id):
            raise StackError(f"kafka node {node_id} is already running")
        self._launches[node_id] = launch = _spawn(self.nodes[node_id], self._libs, CLUSTER_HEAP)
        self._jvms[node_id] = launch.jvm

    def wait_started(self, node_id: int) -> None:
        """Block until a node spawned last by `spawn` serves."""
        _wait_started(self.nodes[node_id], self._launches[node_id], self._timeout_s)

    def _start(self, node_ids: list[int]) -> None:
        """Spawn all, then wait for each: a node cannot finish starting before a majority of
        the voters answer, so a first start must not wait for one node alone."""
        for node_id in node_ids:
            self.spawn(node_id)
        for node_id in node_ids:
            self.wait_started(node_id)

    def running(self, node_id: int) -> bool:
        """Whether the node's JVM is alive (a frozen one is)."""
        jvm = self._jvms.get(node_id)
        return jvm is not None and jvm.poll() is None

    def stop(self, node_id: int) -> None:
        """SIGTERM: a controlled shutdown (leadership moves first); wait for the exit."""
        self.thaw(node_id)  # a frozen JVM would hold the SIGTERM until the grace runs out
        proc.stop(self._jvms[node_id], signal.SIGTERM, 30)

    def kill(self, node_id: int) -> None:
        """SIGKILL: a crash, nothing handed over; wait for the exit."""
        proc.stop(self._jvms[node_id], signal.SIGKILL, 30)

    def freeze(self, node_id: int) -> None:
        """SIGSTOP: the node keeps its connections open and answers nothing, like a stalled
        or partitioned machine."""
        self._signal(node_id, signal.SIGSTOP)

    def thaw(self, node_id: int) -> None:
        """SIGCONT: a frozen node resumes where it stopped."""
        self._signal(node_id, signal.SIGCONT)

    def _signal(self, node_id: int, sig: signal.Signals) -> None:
        if self.running(node_id):
            self._jvms[node_id].send_signal(sig)

    def healthy(self) -> bool:
        """Whether every node runs and is in the metadata, and every partition of every topic
        has its full ISR. (The metadata alone still counts a node killed a moment ago, until
        its session times out.)"""
        return not self._problems()

    def wait_healthy(self, timeout_s: float = 60) -> None:
        """Block until `healthy`; raise StackError naming what lags at the deadline."""
        deadline = time.monotonic() + timeout_s
        while problems := self._problems():
            if time.monotonic() > deadline:
                shown = "; ".join(problems[:5])
                raise StackError(f"kafka cluster not healthy after {timeout_s}s: {shown}")
            time.sleep(0.5)

    def _problems(self) -> list[str]:
        down = [f"node {i} is not running" for i in self.nodes if not self.running(i)]
        if down:
            return down
        try:
            metadata = self._admin_client().list_topics(timeout=5)
        except KafkaException as exc:
            return [f"no metadata: {exc}"]
        return unhealthy(metadata, len(self.nodes))

    def _admin_client(self) -> AdminClient:
        """One client for the cluster's life: a fresh one per check would log every node
        that is down again each time."""
        if self._admin is None:
            errors = rdkafka.ErrorLog(log)
            self._admin = AdminClient(rdkafka.config(self.bootstrap, "devstack-cluster", errors))
        return self._admin

    def quorum_leader(self) -> int:
        """The active controller (the KRaft quorum's leader), from the quorum state the
        running nodes keep on disk: librdkafka has no DescribeQuorum call."""
        states = [_quorum_state(self.nodes[i]) for i in self.nodes if self.running(i)]
        known = [(s.get("leaderEpoch", -1), s.get("leaderId", -1)) for s in states]
        _, leader = max(known, default=(-1, -1))
        if leader < 0:
            raise StackError("the kafka quorum has no leader")
        return int(leader)

    def close(self) -> None:
        """Stop every node at once: one by one, the last would wait for a quorum gone."""
        for node_id in self._jvms:
            self.thaw(node_id)
            self._signal(node_id, signal.SIGTERM)
        for jvm in self._jvms.values():
            proc.stop(jvm, signal.SIGTERM, 30)


def _quorum_state(node: Node) -> dict[str, Any]:
    path = node.data_dir / "__cluster_metadata-0" / "quorum-state"
    try:
        found: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return found


def unhealthy(metadata: ClusterMetadata, nodes: int) -> list[str]:
    """What keeps a cluster from full health: nodes missing from the metadata, partitions
    without a leader or with a replica out of sync. Empty when healthy."""
    problems = (
        [f"{len(metadata.brokers)} of {nodes} nodes"] if len(metadata.brokers) < nodes else []
    )
    for topic in metadata.topics.values():
        if topic.error is not None:
            problems.append(f"{topic.topic}: {topic.error}")
        lagging = [p for p in topic.partitions.values() if _lagging(p)]
        problems += [f"{topic.topic}-{p.id}: in sync {p.isrs} of {p.replicas}" for p in lagging]
    return problems


def _lagging(partition: PartitionMetadata) -> bool:
    return (
        partition.error is not None
        or partition.leader < 0
        or sorted(partition.isrs) != sorted(partition.replicas)
    )


def _started(server_log: Path, port: int, seen_before: int) -> bool:
    try:
        text = server_log.read_text(errors="replace")
    except FileNotFoundError:
        return False
    return text.count(STARTED_LINE) > seen_before and proc.port_open(port)


def _started_count(server_log: Path) -> int:
    try:
        return server_log.read_text(errors="replace").count(STARTED_LINE)
    except FileNotFoundError:
        return 0
