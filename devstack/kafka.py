"""A real Apache Kafka broker (KRaft, broker+controller in one JVM) for development and tests.

The broker's jars come from Maven Central through `deploy/local/pom.xml`, resolved once into a
cache folder. Each start formats fresh storage, picks free ports and logs to a file.
"""

from __future__ import annotations

import base64
import fcntl
import logging
import os
import shutil
import signal
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from devstack import proc
from ingest_worker.core.errors import StackError

log = logging.getLogger(__name__)

POM = Path(__file__).resolve().parents[1] / "deploy" / "local" / "pom.xml"
_MVN_NS = "{http://maven.apache.org/POM/4.0.0}"
STARTED_LINE = "Kafka Server started"

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


def broker_properties(data_dir: Path, port: int, controller_port: int) -> str:
    """server.properties for a single node that can run transactions."""
    settings = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.voters": f"1@127.0.0.1:{controller_port}",
        "listeners": f"PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}",
        "advertised.listeners": f"PLAINTEXT://127.0.0.1:{port}",
        "controller.listener.names": "CONTROLLER",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "inter.broker.listener.name": "PLAINTEXT",
        "log.dirs": str(data_dir),
        "num.partitions": "3",
        "offsets.topic.replication.factor": "1",
        "offsets.topic.num.partitions": "10",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "transaction.state.log.num.partitions": "10",
        "min.insync.replicas": "1",
        "default.replication.factor": "1",
        "group.initial.rebalance.delay.ms": "0",
        "auto.create.topics.enable": "false",
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


def _java() -> str:
    home = os.environ.get("JAVA_HOME")
    java = str(Path(home) / "bin" / "java") if home else shutil.which("java")
    if java is None:
        raise StackError("Java 17+ is needed to run the Kafka broker; install a JDK")
    return java


@contextmanager
def local_broker(
    work_dir: Path, cache_dir: Path, timeout_s: float = 120, ports: tuple[int, int] | None = None
) -> Iterator[str]:
    """Run a single-node broker under work_dir (storage formatted on first use); yield its
    bootstrap address. Given the same work_dir and ports, a restart keeps the data."""
    libs = resolve_jars(cache_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    port, controller_port = ports or (proc.free_port(), proc.free_port())
    props, server_log = work_dir / "server.properties", work_dir / "server.log"
    props.write_text(broker_properties(work_dir / "data", port, controller_port))
    (work_dir / "log4j2.yaml").write_text(_LOG4J2.format(log=server_log))
    base = [_java(), f"-Dlog4j2.configurationFile={work_dir / 'log4j2.yaml'}"]
    base += ["-cp", f"{libs}/*"]
    if not (work_dir / "data" / "meta.properties").exists():
        format_cmd = [*base, "kafka.tools.StorageTool", "format", "-t", new_cluster_id()]
        proc.run([*format_cmd, "-c", str(props)], work_dir / "format.log")
    jvm = ["-Xms256m", "-Xmx1g", "-XX:+UseG1GC", "-Djava.awt.headless=true"]
    seen = _started_count(server_log)
    broker = proc.spawn([base[0], *jvm, *base[1:], "kafka.Kafka", str(props)], work_dir / "jvm.log")
    try:
        proc.wait_until(lambda: _started(server_log, port, seen), broker, server_log, timeout_s)
        log.info("kafka broker up", extra={"port": port, "log": str(server_log)})
        yield f"127.0.0.1:{port}"
    finally:
        proc.stop(broker, signal.SIGTERM, 30)


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
