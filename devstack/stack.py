"""Pick how each service is provided, start what is missing, stop it all on exit.

Three modes, in this order of precedence:
1. endpoints given in the environment (`KAFKA_BOOTSTRAP_SERVERS`, `DATABASE_URL`): used as is;
2. a Docker engine answers: `apache/kafka` and `postgres` containers via testcontainers;
3. otherwise: local processes (Kafka jars from Maven Central, PostgreSQL from a wheel).

`INGEST_KAFKA_NODES=3` asks for a three-node Kafka cluster: local processes only (`auto` takes
them even where Docker answers; `docker` mode is refused), since the container runs one node.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from devstack import containers, kafka, postgres
from ingest_worker.core.config import Settings, StackMode
from ingest_worker.core.errors import StackError

Provider = Literal["given", "docker", "local"]


@dataclass(frozen=True, slots=True)
class Endpoints:
    """Where the services answer."""

    kafka_bootstrap_servers: str
    database_url: str


def choose(given: str | None, mode: StackMode, docker_answers: Callable[[], bool]) -> Provider:
    """How to provide one service: the environment wins, then Docker (if wanted and up)."""
    if given:
        return "given"
    if mode == "local":
        return "local"
    if mode == "docker" or docker_answers():
        return "docker"
    return "local"


def choose_kafka(
    given: str | None, mode: StackMode, nodes: int, docker_answers: Callable[[], bool]
) -> Provider:
    """As `choose`, but a cluster (nodes > 1) is local processes only."""
    if given or nodes == 1:
        return choose(given, mode, docker_answers)
    if mode == "docker":
        raise StackError(
            f"INGEST_KAFKA_NODES={nodes} runs local processes; the Docker mode runs one node "
            "(unset INGEST_KAFKA_NODES, or set INGEST_STACK_MODE=local or auto)"
        )
    return "local"


@contextmanager
def services(settings: Settings, work_dir: Path, *, durable: bool) -> Iterator[Endpoints]:
    """Yield endpoints of a running Kafka and PostgreSQL, starting those not given."""
    probe = _memo(containers.docker_answers)
    kafka_how = choose_kafka(
        settings.kafka_bootstrap_servers, settings.stack_mode, settings.kafka_nodes, probe
    )
    pg_how = choose(settings.database_url, settings.stack_mode, probe)
    cache, work_dir = (settings.stack_dir / "cache").resolve(), work_dir.resolve()
    with ExitStack() as stack:
        bootstrap = settings.kafka_bootstrap_servers or stack.enter_context(
            _kafka(kafka_how, work_dir / "kafka", cache, settings)
        )
        database_url = settings.database_url or stack.enter_context(
            _postgres(pg_how, work_dir / "postgres", durable, settings.stack_postgres_image)
        )
        yield Endpoints(bootstrap, database_url)


def _kafka(
    how: Provider, work_dir: Path, cache: Path, settings: Settings
) -> AbstractContextManager[str]:
    if how == "docker":
        image = settings.stack_kafka_image or f"apache/kafka:{kafka.kafka_version()}"
        return containers.kafka_container(image)
    if settings.kafka_nodes > 1:
        return _cluster_bootstrap(work_dir, cache)
    return kafka.local_broker(work_dir, cache)


@contextmanager
def _cluster_bootstrap(work_dir: Path, cache: Path) -> Iterator[str]:
    """A local cluster seen as the stack sees every Kafka: a bootstrap address."""
    with kafka.local_cluster(work_dir, cache) as cluster:
        yield cluster.bootstrap


def _postgres(
    how: Provider, work_dir: Path, durable: bool, image: str
) -> AbstractContextManager[str]:
    if how == "docker":
        return containers.postgres_container(image)
    return postgres.local_postgres(work_dir, durable=durable)


def _memo(fn: Callable[[], bool]) -> Callable[[], bool]:
    seen: list[bool] = []

    def once() -> bool:
        if not seen:
            seen.append(fn())
        return seen[0]

    return once
