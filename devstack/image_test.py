"""`make image-test`: the container image end to end, on this machine.

Starts a Docker engine when none answers (Debian's docker.io, installed when absent), builds
the local base image once (deploy/image/base.sh, kept afterwards), builds deploy/Dockerfile on
it, and runs `migrate`, `api` and `worker` from that image on the host network against the
local stack (Kafka and PostgreSQL as local processes, as the tests start them). Then it
ingests an event over HTTP, reads it back from the accepted topic, checks that the processes
run as a non-root user, and that each stops on SIGTERM well within its grace period with the
exit code of a clean shutdown. Exits non-zero, saying what failed, otherwise.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import shutil
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from devstack import containers, proc
from devstack.stack import Endpoints, services
from devstack.topics import ensure_topics
from ingest_worker.core import logs, rdkafka, tokens
from ingest_worker.core.config import Settings
from ingest_worker.core.errors import IngestError, StackError

log = logging.getLogger("devstack.image_test")

ROOT = Path(__file__).resolve().parents[1]
BASE_IMAGE = os.environ.get("INGEST_LOCAL_BASE_IMAGE", "ingest-worker-base:bookworm")
IMAGE = "ingest-worker:image-test"
# The grace `docker stop` gives before SIGKILL; a clean stop must come well before it.
GRACE_S = 20
ENGINE_TIMEOUT_S = 60
READY_TIMEOUT_S = 90
# Debian packages the test needs, by the command that tells whether each is there.
PACKAGES = {"dockerd": "docker.io", "debootstrap": "debootstrap"}


@dataclass(frozen=True, slots=True)
class Step:
    """One timed step of the run, for the summary."""

    name: str
    seconds: float


class Steps:
    """Times each step and logs it as it ends."""

    def __init__(self) -> None:
        self.done: list[Step] = []

    @contextmanager
    def timed(self, name: str) -> Iterator[None]:
        start = time.monotonic()
        yield
        self.done.append(Step(name, time.monotonic() - start))
        log.info("%s: %.1f s", name, self.done[-1].seconds)

    def summary(self) -> str:
        rows = [*((step.name, step.seconds) for step in self.done)]
        rows.append(("total", sum(seconds for _, seconds in rows)))
        width = max(len(name) for name, _ in rows)
        lines = [f"  {name:<{width}} {seconds:7.1f} s" for name, seconds in rows]
        return "\n".join(["image-test passed", *lines])


def main() -> int:
    settings = dataclasses.replace(Settings.from_env(os.environ), stack_mode="local")
    logs.setup(settings.log_level, "console")
    work_dir = (settings.stack_dir / "image-test").resolve()
    shutil.rmtree(work_dir, ignore_errors=True)
    work_dir.mkdir(parents=True)
    steps = Steps()
    try:
        run(settings, work_dir, steps)
    except (IngestError, subprocess.SubprocessError) as exc:
        print(f"image-test failed: {exc}", file=sys.stderr)
        return 1
    print(steps.summary(), flush=True)
    return 0


def run(settings: Settings, work_dir: Path, steps: Steps) -> None:
    """Every step in order; the local stack and the containers are gone when it returns."""
    with steps.timed("engine (install and start when absent)"):
        ensure_engine(work_dir)
    with steps.timed(f"base image {BASE_IMAGE} (built once)"):
        docker_step([str(ROOT / "deploy" / "image" / "base.sh"), BASE_IMAGE], work_dir, "base")
    with steps.timed(f"build {IMAGE}"):
        build_image(work_dir)
    with ExitStack() as stack:
        with steps.timed("local Kafka and PostgreSQL"):
            endpoints = stack.enter_context(services(settings, work_dir / "stack", durable=False))
            asyncio.run(ensure_topics(endpoints.kafka_bootstrap_servers, settings))
        exercise(settings, endpoints, work_dir, steps, stack)


def exercise(
    settings: Settings, endpoints: Endpoints, work_dir: Path, steps: Steps, stack: ExitStack
) -> None:
    """migrate, then api and worker from the image: ingest, read back, user, SIGTERM."""
    with steps.timed("migrate container"):
        docker_step(docker_run(IMAGE, app_env(endpoints), "migrate"), work_dir, "migrate")
    api_port, worker_port = proc.free_ports(2)
    token = tokens.generate()
    env = {**app_env(endpoints), "INGEST_ADMIN_TOKEN": token}
    roles = {
        "api": {**env, "INGEST_API_PORT": str(api_port)},
        "worker": {**env, "INGEST_WORKER_HTTP_PORT": str(worker_port)},
    }
    names = [f"ingest-image-test-{role}-{uuid.uuid4().hex[:6]}" for role in roles]
    stack.callback(remove_containers, names)
    with steps.timed("api and worker containers healthy"):
        for name, (role, role_env) in zip(names, roles.items(), strict=True):
            docker_step(docker_run(IMAGE, role_env, role, name=name), work_dir, role)
        for name in names:
            wait_healthy(name)
    with steps.timed("event ingested and read back"):
        event_id = ingest_one(f"http://127.0.0.1:{api_port}", token)
        read_back(endpoints.kafka_bootstrap_servers, settings.accepted_topic, event_id)
    with steps.timed("non-root and SIGTERM within the grace"):
        for name in names:
            check_user(name)
        for name in names:
            check_stop(name)


def app_env(endpoints: Endpoints) -> dict[str, str]:
    """What every process of the image gets: the stack's endpoints, loopback only."""
    return {
        "KAFKA_BOOTSTRAP_SERVERS": endpoints.kafka_bootstrap_servers,
        "DATABASE_URL": endpoints.database_url,
        "INGEST_API_HOST": "127.0.0.1",
    }


def docker_run(image: str, env: dict[str, str], command: str, name: str | None = None) -> list[str]:
    """`docker run` on the host network: in the background when named, else to completion."""
    how = ["-d", "--name", name] if name else ["--rm"]
    flags = [arg for key, value in env.items() for arg in ("-e", f"{key}={value}")]
    return ["docker", "run", *how, "--network", "host", *flags, image, command]


def docker_step(cmd: list[str], work_dir: Path, name: str, timeout_s: float = 900) -> None:
    """Run a command to completion, its output in `<name>.log`; fail with the log's tail."""
    proc.run(cmd, work_dir / f"{name}.log", timeout_s=timeout_s)


def ensure_engine(work_dir: Path) -> None:
    """A Docker engine that answers: install and start one when there is none."""
    if containers.docker_answers():
        return
    missing = [package for command, package in PACKAGES.items() if not shutil.which(command)]
    if missing:
        log.info("installing %s", " ".join(missing))
        docker_step(["apt-get", "update", "-qq"], work_dir, "apt")
        docker_step(["apt-get", "install", "-y", "-qq", *missing], work_dir, "apt")
    dockerd_log = work_dir / "dockerd.log"
    log.info("starting dockerd (log: %s)", dockerd_log)
    with dockerd_log.open("ab") as out:
        # Its own session, not tied to this process: it serves later runs too.
        subprocess.Popen(["dockerd"], stdout=out, stderr=out, start_new_session=True)
    if not wait_for(containers.docker_answers, ENGINE_TIMEOUT_S):
        raise StackError(
            f"dockerd did not answer in {ENGINE_TIMEOUT_S} s:\n{proc.tail(dockerd_log)}"
        )


def build_image(work_dir: Path) -> None:
    """deploy/Dockerfile on the local base; the host network reaches the package index."""
    cmd = ["docker", "build", "--network", "host", "--build-arg", f"BASE_IMAGE={BASE_IMAGE}"]
    cmd += ["-f", str(ROOT / "deploy" / "Dockerfile"), "-t", IMAGE, str(ROOT)]
    docker_step(cmd, work_dir, "build")


def wait_healthy(name: str) -> None:
    """Until the image's own HEALTHCHECK says healthy; fail if the container exits."""

    def healthy() -> bool:
        state = inspect(name)["State"]
        if not state["Running"]:
            raise StackError(f"{name} exited ({state['ExitCode']}):\n{logs_of(name)}")
        return bool(state.get("Health", {}).get("Status") == "healthy")

    if not wait_for(healthy, READY_TIMEOUT_S):
        raise StackError(f"{name} not healthy in {READY_TIMEOUT_S} s:\n{logs_of(name)}")


def ingest_one(api_url: str, token: str) -> str:
    """An integration, an event type and one event, as the README's first steps; the id."""
    call = _caller(api_url, token)
    integration = call("/v1/integrations", {"name": "image-test"})["integration"]["id"]
    base = f"/v1/integrations/{integration}"
    schema = {"type": "object"}
    event_type = call(f"{base}/event-types", {"name": "sale", "schema": schema})
    event = {
        "integration_event_type_id": event_type["integration_event_type"]["id"],
        "timestamp": "2024-06-01T12:00:00Z",
        "attributes": {"store_id": "S042"},
        "device_external_id": "S042:3",
    }
    return str(call(f"{base}/events", event)["event_id"])


def _caller(api_url: str, token: str) -> Callable[[str, dict[str, Any]], Any]:
    def call(path: str, body: dict[str, Any]) -> Any:
        request = urllib.request.Request(  # noqa: S310 - our own URL
            api_url + path,
            data=json.dumps(body).encode(),
            headers={"authorization": f"Bearer {token}", "content-type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as answer:  # noqa: S310
            return json.loads(answer.read())

    return call


def read_back(bootstrap: str, topic: str, event_id: str, timeout_s: float = 60) -> None:
    """Wait for the event on the accepted topic, read_committed, by its `event-id` header."""
    consumer = Consumer(
        {
            **rdkafka.config(bootstrap, "ingest-image-test", rdkafka.ErrorLog(log)),
            "group.id": "ingest-image-test",  # assigned, never joined
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
        }
    )
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        if not wait_for(lambda: _seen(consumer, event_id), timeout_s):
            raise StackError(f"event {event_id} not on {topic} after {timeout_s:.0f} s")
        log.info("event %s read back from %s", event_id, topic)
    finally:
        consumer.close()


def _seen(consumer: Consumer, event_id: str) -> bool:
    for message in consumer.consume(100, 0.5):
        headers = dict(message.headers() or [])
        if message.error() is None and headers.get("event-id") == event_id.encode():
            return True
    return False


def check_user(name: str) -> None:
    """The container's PID 1 runs as a non-root user (read from the host's /proc)."""
    pid = inspect(name)["State"]["Pid"]
    uid = real_uid(Path(f"/proc/{pid}/status").read_text())
    if uid == 0:
        raise StackError(f"{name}: PID 1 runs as root")
    log.info("%s: PID 1 runs as uid %d", name, uid)


def real_uid(status: str) -> int:
    """The real uid in a /proc/<pid>/status text."""
    line = next(line for line in status.splitlines() if line.startswith("Uid:"))
    return int(line.split()[1])


def check_stop(name: str) -> None:
    """`docker stop -t GRACE_S`: SIGTERM, then SIGKILL at the grace's end. A clean shutdown
    ends before it with exit code 0."""
    start = time.monotonic()
    subprocess.run(["docker", "stop", "-t", str(GRACE_S), name], check=True, capture_output=True)
    elapsed = time.monotonic() - start
    problem = stop_problem(elapsed, inspect(name)["State"]["ExitCode"], GRACE_S)
    if problem:
        raise StackError(f"{name}: {problem}:\n{logs_of(name)}")
    log.info("%s: stopped on SIGTERM in %.1f s, exit code 0", name, elapsed)


def stop_problem(elapsed_s: float, exit_code: int, grace_s: float) -> str | None:
    """What is wrong with a stop: too slow (the grace ran out, or nearly), or an unclean exit
    code (137 is the SIGKILL at the grace's end). None when it was clean."""
    if elapsed_s >= grace_s * 0.75:
        return f"took {elapsed_s:.1f} s of a {grace_s} s grace"
    if exit_code != 0:
        return f"exit code {exit_code} after SIGTERM"
    return None


def inspect(name: str) -> Any:
    text = subprocess.run(
        ["docker", "inspect", name], check=True, capture_output=True, text=True
    ).stdout
    return json.loads(text)[0]


def logs_of(name: str) -> str:
    return subprocess.run(
        ["docker", "logs", "--tail", "30", name], capture_output=True, text=True, check=False
    ).stdout


def remove_containers(names: list[str]) -> None:
    for name in names:
        _quiet(["docker", "rm", "-f", name])


def wait_for(ready: Callable[[], bool], timeout_s: float) -> bool:
    """Poll `ready` until true (True) or the deadline (False)."""
    deadline = time.monotonic() + timeout_s
    while not ready():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.5)
    return True


def _quiet(cmd: list[str]) -> int:
    try:
        return subprocess.run(cmd, capture_output=True, check=False, timeout=30).returncode
    except (OSError, subprocess.TimeoutExpired):
        return 1


if __name__ == "__main__":
    sys.exit(main())
