"""deploy/compose.yaml and deploy/Dockerfile against the code they run: every setting,
command, port, probe path, topic and broker setting they name must be the code's own, so the
files fail here when the two drift apart."""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import inspect
import re
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import urlparse

import pytest
import yaml
from psycopg import conninfo

from devstack import kafka, topics
from ingest_worker import cli
from ingest_worker.core.config import Settings
from ingest_worker.shim import app
from ingest_worker.worker import loop

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
COMPOSE_TEXT = (DEPLOY / "compose.yaml").read_text()
DOCKERFILE = (DEPLOY / "Dockerfile").read_text()
COMPOSE: dict[str, Any] = yaml.safe_load(COMPOSE_TEXT)
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
SUBSTITUTION = re.compile(r"\$\{(\w+)(?::?-([^}]*))?\}")
# The variables the compose file reads, as its header documents them.
DOCUMENTED_VARIABLES = {
    "INGEST_IMAGE",
    "BASE_IMAGE",
    "KAFKA_IMAGE",
    "POSTGRES_IMAGE",
    "INGEST_ADMIN_TOKEN",
    "API_HOST_PORT",
}
SETTING_NAMES = {f.metadata["env"] for f in dataclasses.fields(Settings)}
# Broker settings that name this node's own host, port, id or folder.
PER_NODE = {"node.id", "listeners", "advertised.listeners", "controller.quorum.voters", "log.dirs"}


def _defaults(text: str) -> str:
    """The text as compose reads it with none of its variables set: `${X:-d}` is `d`."""
    return SUBSTITUTION.sub(lambda match: match.group(2) or "", text)


def _ours() -> dict[str, dict[str, Any]]:
    """The services that run the ingest-worker image."""
    return {
        name: service
        for name, service in SERVICES.items()
        if service["image"].startswith("${INGEST_IMAGE")
    }


def _environment(service: dict[str, Any]) -> dict[str, str]:
    return {key: _defaults(str(value)) for key, value in service["environment"].items()}


def _healthcheck() -> ModuleType:
    """The image's health check script, loaded as a module."""
    spec = importlib.util.spec_from_file_location("healthcheck", DEPLOY / "image/healthcheck.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _broker_properties(environment: dict[str, str]) -> dict[str, str]:
    """KAFKA_* variables as the `apache/kafka` image turns them into server.properties."""
    return {
        key.removeprefix("KAFKA_").lower().replace("_", "."): value
        for key, value in environment.items()
        if key.startswith("KAFKA_") and key != "KAFKA_HEAP_OPTS"
    }


def test_compose_runs_api_two_workers_migrate_and_kafka_on_three_nodes() -> None:
    """The services the demo needs are all there."""
    commands = {name: service["command"] for name, service in _ours().items()}
    assert commands["api"] == ["api"]
    assert commands["migrate"] == ["migrate"]
    assert sorted(name for name, command in commands.items() if command == ["worker"]) == [
        "worker-1",
        "worker-2",
    ]
    assert {"kafka-1", "kafka-2", "kafka-3", "postgres", "topics"} <= set(SERVICES)


@pytest.mark.parametrize("name", sorted(_ours()))
def test_every_command_is_a_cli_subcommand(name: str) -> None:
    """What each service runs is a command the CLI accepts."""
    parsed = cli._parser().parse_args(SERVICES[name]["command"])
    assert parsed.command == SERVICES[name]["command"][0]


@pytest.mark.parametrize("name", sorted(_ours()))
def test_every_variable_is_a_setting_with_a_valid_value(name: str) -> None:
    """Each environment variable of our services is a field of Settings, and the values
    (variables at their defaults) parse."""
    environment = _environment(SERVICES[name])
    assert set(environment) <= SETTING_NAMES, set(environment) - SETTING_NAMES
    Settings.from_env(environment)


def test_the_api_publishes_the_port_it_listens_on() -> None:
    """The API's published container port is its INGEST_API_PORT."""
    settings = Settings.from_env(_environment(SERVICES["api"]))
    published = [_defaults(port).rsplit(":", 1)[1] for port in SERVICES["api"]["ports"]]
    assert published == [str(settings.api_port)]


def test_workers_have_distinct_transactional_ids_in_one_group() -> None:
    """Worker replicas share the group and never share a transactional id."""
    workers = [Settings.from_env(_environment(SERVICES[n])) for n in ("worker-1", "worker-2")]
    assert len({worker.group_id for worker in workers}) == 1
    assert len({worker.transactional_id for worker in workers}) == 2


def test_database_url_names_the_postgres_service_credentials() -> None:
    """DATABASE_URL reaches the postgres service as the user, password and database the
    postgres image is told to create."""
    postgres = _environment(SERVICES["postgres"])
    url = conninfo.conninfo_to_dict(_environment(SERVICES["api"])["DATABASE_URL"])
    assert (url["host"], url["port"]) == ("postgres", "5432")
    assert url["user"] == postgres["POSTGRES_USER"]
    assert url["password"] == postgres["POSTGRES_PASSWORD"]
    assert url["dbname"] == postgres["POSTGRES_DB"]


def test_bootstrap_servers_are_the_advertised_listeners() -> None:
    """KAFKA_BOOTSTRAP_SERVERS lists every node as it advertises itself."""
    nodes = [_environment(SERVICES[f"kafka-{i}"]) for i in (1, 2, 3)]
    advertised = [node["KAFKA_ADVERTISED_LISTENERS"].removeprefix("PLAINTEXT://") for node in nodes]
    bootstrap = _environment(SERVICES["api"])["KAFKA_BOOTSTRAP_SERVERS"]
    assert bootstrap.split(",") == advertised


@pytest.mark.parametrize("node", [1, 2, 3])
def test_each_node_has_the_local_cluster_settings(node: int) -> None:
    """Each Kafka node gets what devstack/kafka.py gives a node of its local three-node
    cluster (replication 3, 2 in sync, transactions), and its own id."""
    environment = _environment(SERVICES[f"kafka-{node}"])
    ours = _broker_properties(environment)
    local = dict(
        line.split("=", 1)
        for line in kafka.broker_properties(Path("/d"), 1, 2, replicas=3).splitlines()
    )
    assert {k: v for k, v in local.items() if k not in PER_NODE} == {
        k: ours.get(k) for k in local if k not in PER_NODE
    }
    assert ours["node.id"] == str(node)
    assert f"{node}@kafka-{node}:9093" in ours["controller.quorum.voters"].split(",")


def test_topics_service_creates_the_settings_topics_as_the_local_stack_does() -> None:
    """The topics service creates the default raw, accepted and rejected topics with the
    partitions, replicas and min ISR that devstack/topics.py gives three brokers."""
    script = " ".join(SERVICES["topics"]["command"])
    defaults = Settings()
    for topic in (defaults.raw_topic, defaults.accepted_topic, defaults.rejected_topic):
        assert topic in script
    replicas, config = topics.replication(3)
    default_partitions = inspect.signature(topics.ensure_topics).parameters["partitions"].default
    assert f"--partitions {default_partitions}" in script
    assert f"--replication-factor {replicas}" in script
    assert f"min.insync.replicas={config['min.insync.replicas']}" in script


def test_image_variables_are_documented_and_default_to_the_pinned_versions() -> None:
    """Every `${VAR}` the file reads is in its header, and the Kafka image defaults to the
    broker version the local stack pins."""
    variables = {match.group(1) for match in SUBSTITUTION.finditer(COMPOSE_TEXT)}
    assert variables == DOCUMENTED_VARIABLES
    assert all(f"#   {name}" in COMPOSE_TEXT for name in DOCUMENTED_VARIABLES)
    assert _defaults(SERVICES["kafka-1"]["image"]) == f"apache/kafka:{kafka.kafka_version()}"
    assert _defaults(SERVICES["topics"]["image"]) == _defaults(SERVICES["kafka-1"]["image"])


def test_the_health_check_probes_real_settings_and_routes() -> None:
    """The image's health check reads the settings' port variables with their defaults and
    probes a path that both the API and the worker serve."""
    check = _healthcheck()
    defaults = {f.metadata["env"]: f.default for f in dataclasses.fields(Settings)}
    for name, default in check.PORTS.values():
        assert str(defaults[name]) == default
    api_path = urlparse(check.healthz_url("api", {})).path
    worker_path = urlparse(check.healthz_url("worker", {})).path
    assert api_path in {route.path for route in app.ROUTES}
    assert f'Route("{worker_path}"' in inspect.getsource(loop)


def test_the_health_check_probes_the_process_pid_1_runs() -> None:
    """`worker` is probed on its HTTP port, `api` on the API port, `migrate` not at all, and a
    worker with its HTTP port off (0) counts as healthy while it runs."""
    check = _healthcheck()
    assert check.command(b"/opt/ingest-worker/bin/python\0/usr/bin/ingest-worker\0worker\0") == (
        "worker"
    )
    env = {"INGEST_API_PORT": "9000", "INGEST_WORKER_HTTP_PORT": "9001"}
    assert check.healthz_url("api", env) == "http://127.0.0.1:9000/healthz"
    assert check.healthz_url("worker", env) == "http://127.0.0.1:9001/healthz"
    assert check.healthz_url("migrate", env) is None
    assert check.healthz_url("worker", {"INGEST_WORKER_HTTP_PORT": "0"}) is None


def test_dockerfile_is_standard_non_root_and_exec_form() -> None:
    """The user-facing Dockerfile: no `# syntax` line, `python:3.11-slim` by default,
    multi-stage, a numeric non-root USER, `ingest-worker` as an exec-form ENTRYPOINT, and the
    settings' default ports exposed."""
    assert not DOCKERFILE.lstrip().startswith("# syntax")
    assert "ARG BASE_IMAGE=python:3.11-slim" in DOCKERFILE
    assert len(re.findall(r"^FROM ", DOCKERFILE, re.MULTILINE)) == 2
    user = re.findall(r"^USER (\d+)", DOCKERFILE, re.MULTILINE)
    assert user
    assert int(user[-1]) != 0
    assert re.search(r'^ENTRYPOINT \["ingest-worker"\]$', DOCKERFILE, re.MULTILINE)
    exposed = re.findall(r"^EXPOSE (.+)$", DOCKERFILE, re.MULTILINE)
    defaults = Settings()
    assert exposed == [f"{defaults.api_port} {defaults.worker_http_port}"]
