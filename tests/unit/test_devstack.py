"""The local stack's pure parts: broker settings, cluster ids, the choice between Docker and
local processes, server args."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from devstack import containers, image_test, kafka, postgres, proc
from devstack.containers import DockerState
from devstack.stack import Choice, Need, decide, docker_candidates, needs
from ingest_worker.core.config import Settings, StackMode
from ingest_worker.core.errors import StackError


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


def test_broker_overrides_win_over_the_defaults() -> None:
    """An override replaces a default and adds what the defaults lack; the rest stays."""
    overrides = {"min.insync.replicas": "2", "broker.session.timeout.ms": "600000"}
    props = _props(kafka.broker_properties(Path("/d"), 1234, 1235, overrides=overrides))
    assert props["min.insync.replicas"] == "2"
    assert props["broker.session.timeout.ms"] == "600000"
    assert props["process.roles"] == "broker,controller"


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


KAFKA = Need("kafka", "apache/kafka:4.4.0")
POSTGRES = Need("postgres", "postgres:16-alpine")
BOTH = [KAFKA, POSTGRES]
NO_REGISTRY = "lookup registry-1.docker.io on 10.0.0.53:53: no such host"
ALL_THERE = DockerState(answers=True)
NO_ENGINE = DockerState(answers=False)
NONE_THERE = DockerState(True, {KAFKA.image: NO_REGISTRY, POSTGRES.image: NO_REGISTRY})


def _decide(mode: StackMode, wanted: list[Need], docker: DockerState | None) -> Choice:
    return decide(mode, wanted, docker_candidates(mode, wanted, 1), docker)


@pytest.mark.parametrize(
    ("mode", "docker", "expected"),
    [
        ("auto", ALL_THERE, "docker"),
        ("auto", NO_ENGINE, "local"),
        ("auto", NONE_THERE, "local"),
        ("docker", ALL_THERE, "docker"),
        ("local", None, "local"),
    ],
)
def test_docker_only_where_the_engine_answers_and_has_the_images(
    mode: StackMode, docker: DockerState | None, expected: str
) -> None:
    """`auto` runs a service in Docker only when the engine answers and can provide its
    image; `local` never asks."""
    choice = _decide(mode, BOTH, docker)
    assert choice.of("kafka") == choice.of("postgres") == expected


def test_given_endpoints_are_never_started() -> None:
    """A service whose endpoint the environment gives is neither a need nor started."""
    settings = Settings(kafka_bootstrap_servers="host:9092", stack_mode="docker")
    assert [need.service for need in needs(settings)] == ["postgres"]
    assert decide("docker", [], [], None).of("kafka") == "given"


def test_local_mode_asks_docker_nothing() -> None:
    """`local` has no Docker candidates, so the engine is not even probed."""
    assert docker_candidates("local", BOTH, 1) == []


def test_auto_falls_back_per_service_in_one_line_naming_the_settings() -> None:
    """With one image missing, only that service runs locally, and one line says which
    image, why, and which setting would change it."""
    docker = DockerState(True, {KAFKA.image: NO_REGISTRY})
    choice = _decide("auto", BOTH, docker)
    assert (choice.of("kafka"), choice.of("postgres")) == ("local", "docker")
    assert choice.note is not None
    assert "\n" not in choice.note
    assert KAFKA.image in choice.note
    assert NO_REGISTRY in choice.note
    assert "INGEST_STACK_KAFKA_IMAGE" in choice.note
    assert "INGEST_STACK_POSTGRES_IMAGE" not in choice.note


def test_nothing_is_said_when_docker_serves_or_is_absent() -> None:
    """No fallback line where Docker provides everything, or where no engine runs at all
    (the plain local case)."""
    assert _decide("auto", BOTH, ALL_THERE).note is None
    assert _decide("auto", BOTH, NO_ENGINE).note is None


@pytest.mark.parametrize(
    ("docker", "settings"),
    [
        (NONE_THERE, ["INGEST_STACK_KAFKA_IMAGE", "INGEST_STACK_POSTGRES_IMAGE"]),
        (DockerState(True, {POSTGRES.image: "manifest unknown"}), ["INGEST_STACK_POSTGRES_IMAGE"]),
        (NO_ENGINE, []),
    ],
)
def test_docker_mode_refuses_in_one_line_naming_what_to_change(
    docker: DockerState, settings: list[str]
) -> None:
    """`docker` mode without the engine or an image fails with one line that names the
    image settings to change, or INGEST_STACK_MODE=local."""
    with pytest.raises(StackError) as refused:
        _decide("docker", BOTH, docker)
    message = str(refused.value)
    assert "\n" not in message
    assert "INGEST_STACK_MODE=local" in message
    assert all(setting in message for setting in settings)


def test_a_kafka_cluster_is_local_in_auto_and_refused_in_docker_mode() -> None:
    """Three Kafka nodes are local processes: never a Docker candidate, and `docker` mode
    says to unset INGEST_KAFKA_NODES."""
    cluster = Need("kafka", KAFKA.image, docker_ok=False)
    assert docker_candidates("auto", [cluster, POSTGRES], 3) == [POSTGRES]
    with pytest.raises(StackError, match="INGEST_KAFKA_NODES=3"):
        docker_candidates("docker", [cluster, POSTGRES], 3)


def test_the_image_settings_name_the_images_docker_would_run() -> None:
    """The Kafka image defaults to `apache/kafka:<the pom's version>`; both can be set."""
    default = {need.service: need.image for need in needs(Settings())}
    assert default["kafka"] == f"apache/kafka:{kafka.kafka_version()}"
    chosen = Settings(stack_kafka_image="k:1", stack_postgres_image="p:2")
    assert [need.image for need in needs(chosen)] == ["k:1", "p:2"]


def test_engine_errors_are_cut_to_what_failed() -> None:
    """An engine's pull error keeps its last two parts (what failed and why), on one line
    of bounded length."""
    text = (
        'Get "https://registry-1.docker.io/v2/": dial tcp: lookup registry-1.docker.io '
        "on 10.255.255.53:53: no such host"
    )
    assert containers.short_reason(text) == (
        "lookup registry-1.docker.io on 10.255.255.53:53: no such host"
    )
    assert containers.short_reason("manifest unknown") == "manifest unknown"
    assert len(containers.short_reason("x: " + "y" * 500)) == containers.REASON_MAX_CHARS


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


def test_image_test_reads_the_real_uid_of_a_process() -> None:
    """The image test's user check reads the real uid from /proc/<pid>/status."""
    status = "Name:\tpython3\nUid:\t10001\t10001\t10001\t10001\nGid:\t10001\n"
    assert image_test.real_uid(status) == 10001
    assert image_test.real_uid(Path("/proc/self/status").read_text()) == os.getuid()


@pytest.mark.parametrize(
    ("elapsed_s", "exit_code", "clean"),
    [(0.4, 0, True), (0.4, 137, False), (0.4, 1, False), (19.9, 137, False), (16.0, 0, False)],
)
def test_image_test_takes_only_a_quick_zero_exit_as_a_clean_stop(
    elapsed_s: float, exit_code: int, clean: bool
) -> None:
    """A SIGTERM stop is clean only with exit code 0 and well before the grace's end (a
    SIGKILL at the end of it gives 137)."""
    assert (image_test.stop_problem(elapsed_s, exit_code, 20) is None) == clean
