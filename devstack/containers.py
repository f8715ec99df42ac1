"""The same services from Docker images through testcontainers, where a Docker engine answers
and has (or can pull) the images."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from devstack import proc

log = logging.getLogger(__name__)

# Bound on each question to the engine, a registry look-up through it included: a registry
# that drops packets must not stall the stack's start.
PROBE_TIMEOUT_S = 10
REASON_MAX_CHARS = 120


@dataclass(frozen=True, slots=True)
class DockerState:
    """What the engine said: whether it answers, and which of the images asked about it can
    neither find on this machine nor pull, each with why."""

    answers: bool
    unavailable: Mapping[str, str] = field(default_factory=dict)


def docker_answers() -> bool:
    """Whether a Docker engine responds to a ping within a few seconds."""
    return probe([]).answers


def probe(images: Sequence[str]) -> DockerState:
    """Ask the engine, without pulling anything, whether it answers and can provide each
    image: present on this machine, or known to the registry (a manifest look-up)."""
    try:
        import docker
    except ImportError:
        return DockerState(answers=False)
    try:
        client = docker.from_env(timeout=PROBE_TIMEOUT_S)
    except Exception:  # no engine configured or reachable: a plain "no"
        return DockerState(answers=False)
    try:
        if not _pings(client):
            return DockerState(answers=False)
        missing = {image: why for image in images if (why := _why_unavailable(client, image))}
        return DockerState(answers=True, unavailable=missing)
    finally:
        client.close()


def _pings(client: Any) -> bool:
    try:
        return bool(client.ping())
    except Exception:  # any failure to answer means no engine
        return False


def _why_unavailable(client: Any, image: str) -> str | None:
    """None when the engine has the image or its registry knows it; else the reason, short."""
    from docker.errors import DockerException, ImageNotFound
    from requests.exceptions import RequestException

    try:
        client.images.get(image)
        return None
    except ImageNotFound:
        pass
    except (DockerException, RequestException) as exc:
        return short_reason(str(exc))
    try:
        client.images.get_registry_data(image)
        return None
    except (DockerException, RequestException) as exc:
        return short_reason(str(getattr(exc, "explanation", None) or exc))


def short_reason(text: str) -> str:
    """The tail of an engine's error, which says what failed (`lookup registry... : no such
    host`, `manifest unknown`), without the URL chain before it; one line, bounded."""
    parts = " ".join(text.split()).split(": ")
    tail = ": ".join(parts[-2:]) if len(parts) > 2 else ": ".join(parts)
    return tail if len(tail) <= REASON_MAX_CHARS else tail[: REASON_MAX_CHARS - 3] + "..."


def reaper_image() -> str | None:
    """testcontainers' reaper (Ryuk) image, or None when the reaper is turned off."""
    try:
        from testcontainers.core.config import testcontainers_config
    except ImportError:
        return None
    return None if testcontainers_config.ryuk_disabled else str(testcontainers_config.ryuk_image)


def settle_reaper(docker: DockerState) -> None:
    """Turn the reaper off when its image cannot be had: the stack stops and removes its
    containers on exit itself, and a pull that cannot succeed would end the start-up."""
    image = reaper_image()
    if image is None or image not in docker.unavailable:
        return
    from testcontainers.core.config import testcontainers_config

    testcontainers_config.ryuk_disabled = True
    log.info("testcontainers' reaper image %s cannot be had; running without it", image)


def kafka_env(port: int) -> dict[str, str]:
    """Environment of the `apache/kafka` image for one transactional KRaft node.

    The host port equals the container port so the advertised listener is right on both sides.
    """
    return {
        "KAFKA_NODE_ID": "1",
        "KAFKA_PROCESS_ROLES": "broker,controller",
        "KAFKA_LISTENERS": f"PLAINTEXT://:{port},CONTROLLER://:9093",
        "KAFKA_ADVERTISED_LISTENERS": f"PLAINTEXT://127.0.0.1:{port}",
        "KAFKA_CONTROLLER_LISTENER_NAMES": "CONTROLLER",
        "KAFKA_CONTROLLER_QUORUM_VOTERS": "1@localhost:9093",
        "KAFKA_LISTENER_SECURITY_PROTOCOL_MAP": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR": "1",
        "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR": "1",
        "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR": "1",
        "KAFKA_MIN_INSYNC_REPLICAS": "1",
        "KAFKA_NUM_PARTITIONS": "3",
        "KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS": "0",
        "KAFKA_AUTO_CREATE_TOPICS_ENABLE": "false",
    }


@contextmanager
def kafka_container(image: str) -> Iterator[str]:
    """Run a Kafka image (`apache/kafka` or one taking its environment); yield its bootstrap
    address."""
    from testcontainers.core.container import DockerContainer
    from testcontainers.core.wait_strategies import LogMessageWaitStrategy

    port = proc.free_port()
    container = DockerContainer(image).with_bind_ports(port, port)
    container.with_envs(**kafka_env(port))
    container.waiting_for(LogMessageWaitStrategy("Kafka Server started"))
    with container:
        log.info("kafka container up", extra={"port": port})
        yield f"127.0.0.1:{port}"


@contextmanager
def postgres_container(image: str) -> Iterator[str]:
    """Run a `postgres` image; yield the URL of its `postgres` database."""
    from testcontainers.community.postgres import PostgresContainer

    with PostgresContainer(image, dbname="postgres", driver=None) as container:
        url = container.get_connection_url()
        log.info("postgres container up")
        yield url
