"""The same services from Docker images through testcontainers, where a Docker engine answers."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from devstack import proc

log = logging.getLogger(__name__)


def docker_answers() -> bool:
    """Whether a Docker engine responds to a ping within a few seconds."""
    try:
        import docker
    except ImportError:
        return False
    try:
        client = docker.from_env(timeout=3)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:
        return False


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
