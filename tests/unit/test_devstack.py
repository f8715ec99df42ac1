"""The local stack's pure parts: broker settings, cluster ids, mode choice, server args."""

from __future__ import annotations

from pathlib import Path

import pytest

from devstack import containers, kafka, postgres, proc
from devstack.stack import choose


def _props(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines())


def test_broker_can_run_transactions_alone() -> None:
    """One node: internal topics with replication factor 1 and min ISR 1, KRaft combined."""
    props = _props(kafka.broker_properties(Path("/d"), 1234, 1235))
    assert props["process.roles"] == "broker,controller"
    assert props["transaction.state.log.replication.factor"] == "1"
    assert props["transaction.state.log.min.isr"] == "1"
    assert props["offsets.topic.replication.factor"] == "1"
    assert props["advertised.listeners"] == "PLAINTEXT://127.0.0.1:1234"
    assert props["controller.quorum.voters"] == "1@127.0.0.1:1235"


def test_container_broker_matches_local_broker_settings() -> None:
    """The Docker broker gets the same transactional single-node settings."""
    env = containers.kafka_env(4321)
    assert env["KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR"] == "1"
    assert env["KAFKA_TRANSACTION_STATE_LOG_MIN_ISR"] == "1"
    assert env["KAFKA_ADVERTISED_LISTENERS"] == "PLAINTEXT://127.0.0.1:4321"


def test_cluster_ids_are_kafka_uuids() -> None:
    """Cluster ids are 22 URL-safe base64 characters and never start with '-'."""
    ids = {kafka.new_cluster_id() for _ in range(200)}
    assert len(ids) == 200
    assert all(len(i) == 22 and not i.startswith("-") for i in ids)


def test_pom_pins_a_kafka_4_broker() -> None:
    """The broker version comes from the pom, and it is a 4.x release."""
    assert kafka.kafka_version().startswith("4.")


@pytest.mark.parametrize(
    ("given", "mode", "docker", "expected"),
    [
        ("host:9092", "docker", True, "given"),
        (None, "auto", True, "docker"),
        (None, "auto", False, "local"),
        (None, "local", True, "local"),
        (None, "docker", False, "docker"),
    ],
)
def test_environment_wins_then_docker_then_local(
    given: str | None, mode: str, docker: bool, expected: str
) -> None:
    """Endpoints from the environment always win; `auto` uses Docker only if it answers."""
    assert choose(given, mode, lambda: docker) == expected  # type: ignore[arg-type]


def test_test_servers_trade_durability_for_speed() -> None:
    """Test databases run without fsync; `make run` keeps PostgreSQL's durable defaults."""
    fast = postgres.server_args(Path("/d"), Path("/s"), 5, durable=False)
    safe = postgres.server_args(Path("/d"), Path("/s"), 5, durable=True)
    assert "fsync=off" in fast
    assert "fsync=off" not in safe
    assert safe[:4] == ["-D", "/d", "-p", "5"]


def test_picked_ports_are_distinct_free_and_below_the_ephemeral_range() -> None:
    """Ports for servers come from below the kernel's ephemeral range (which outgoing
    connections draw from, so one could take a port between its pick and its bind), are
    distinct, and nothing listens on them."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ports = proc.free_ports(20)
    assert len(set(ports)) == 20
    assert all(port < low for port in ports)
    assert not any(proc.port_open(port) for port in ports)
