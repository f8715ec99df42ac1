"""Pick how each service is provided, start what is missing, stop it all on exit.

Three modes, in this order of precedence:
1. endpoints given in the environment (`KAFKA_BOOTSTRAP_SERVERS`, `DATABASE_URL`): used as is;
2. Docker: `apache/kafka` and `postgres` containers via testcontainers (images set by
   `INGEST_STACK_KAFKA_IMAGE`, `INGEST_STACK_POSTGRES_IMAGE`);
3. otherwise: local processes (Kafka jars from Maven Central, PostgreSQL from a wheel).

`auto` takes Docker for a service only when an engine answers and that service's image is on
this machine or can be pulled; otherwise it says so in one log line and runs the service as
local processes. `docker` refuses, in one line naming the setting to change, what it cannot
run. The decision is the pure `decide`; `containers.probe` asks the engine.

`INGEST_KAFKA_NODES=3` asks for a three-node Kafka cluster: local processes only (`auto` takes
them even where Docker answers; `docker` mode is refused), since the container runs one node.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from devstack import containers, kafka, postgres
from ingest_worker.core.config import Settings, StackMode
from ingest_worker.core.errors import StackError

log = logging.getLogger(__name__)

Provider = Literal["given", "docker", "local"]
Service = Literal["kafka", "postgres"]
IMAGE_SETTINGS: Mapping[Service, str] = {
    "kafka": "INGEST_STACK_KAFKA_IMAGE",
    "postgres": "INGEST_STACK_POSTGRES_IMAGE",
}


@dataclass(frozen=True, slots=True)
class Endpoints:
    """Where the services answer."""

    kafka_bootstrap_servers: str
    database_url: str


@dataclass(frozen=True, slots=True)
class Need:
    """A service the stack has to start (its endpoint is not given), with the image the
    Docker mode would run it from; `docker_ok` is False for what only runs locally."""

    service: Service
    image: str
    docker_ok: bool = True


@dataclass(frozen=True, slots=True)
class Choice:
    """How each needed service is provided, and the one line that explains a fallback."""

    providers: Mapping[Service, Provider]
    note: str | None = None

    def of(self, service: Service) -> Provider:
        return self.providers.get(service, "given")


def needs(settings: Settings) -> list[Need]:
    """The services whose endpoints the environment does not give."""
    found: list[Need] = []
    if not settings.kafka_bootstrap_servers:
        found.append(Need("kafka", kafka_image(settings), docker_ok=settings.kafka_nodes == 1))
    if not settings.database_url:
        found.append(Need("postgres", settings.stack_postgres_image))
    return found


def kafka_image(settings: Settings) -> str:
    """The Kafka image of the Docker mode: the setting, else the pom's broker version."""
    return settings.stack_kafka_image or f"apache/kafka:{kafka.kafka_version()}"


def docker_candidates(mode: StackMode, wanted: Sequence[Need], nodes: int) -> list[Need]:
    """The needed services that would run in Docker if the engine can: none in `local`
    mode; a Kafka cluster never (refused outright in `docker` mode)."""
    if mode == "local":
        return []
    if mode == "docker" and any(not need.docker_ok for need in wanted):
        raise StackError(
            f"INGEST_KAFKA_NODES={nodes} runs local processes; the Docker mode runs one node "
            "(unset INGEST_KAFKA_NODES, or set INGEST_STACK_MODE=local or auto)"
        )
    return [need for need in wanted if need.docker_ok]


def decide(
    mode: StackMode,
    wanted: Sequence[Need],
    candidates: Sequence[Need],
    docker: containers.DockerState | None,
) -> Choice:
    """How to provide each wanted service, given what the engine said about the candidates'
    images (`docker` is None when it was not asked: no candidates). In `docker` mode, what
    cannot run there is a StackError naming the setting to change."""
    providers: dict[Service, Provider] = {need.service: "local" for need in wanted}
    if docker is None or not candidates:
        return Choice(providers)
    if not docker.answers:
        if mode == "docker":
            raise StackError(
                "INGEST_STACK_MODE=docker but no Docker engine answers: start one, or set "
                "INGEST_STACK_MODE=local"
            )
        return Choice(providers)
    missing = [need for need in candidates if need.image in docker.unavailable]
    if missing and mode == "docker":
        raise StackError(_refusal(missing, docker))
    for need in candidates:
        if need not in missing:
            providers[need.service] = "docker"
    return Choice(providers, _fallback_note(missing, docker) if missing else None)


def _refusal(missing: Sequence[Need], docker: containers.DockerState) -> str:
    settings = " / ".join(IMAGE_SETTINGS[need.service] for need in missing)
    return (
        f"INGEST_STACK_MODE=docker but {_unavailable(missing, docker)}: set {settings} to "
        "an image this engine has, or INGEST_STACK_MODE=local"
    )


def _fallback_note(missing: Sequence[Need], docker: containers.DockerState) -> str:
    services = " and ".join(need.service for need in missing)
    settings = " / ".join(IMAGE_SETTINGS[need.service] for need in missing)
    run = "runs" if len(missing) == 1 else "run"
    return (
        f"Docker answers but {_unavailable(missing, docker)}; {services} {run} as local "
        f"processes instead (set {settings} to an image this engine has, or "
        "INGEST_STACK_MODE=local to skip Docker)"
    )


def _unavailable(missing: Sequence[Need], docker: containers.DockerState) -> str:
    """`IMAGE is not on this machine and cannot be pulled (why)`, for one image or several."""
    images = ", ".join(need.image for need in missing)
    verb = "is" if len(missing) == 1 else "are"
    reasons = dict.fromkeys(docker.unavailable[need.image] for need in missing)
    return f"{images} {verb} not on this machine and cannot be pulled ({'; '.join(reasons)})"


@contextmanager
def services(settings: Settings, work_dir: Path, *, durable: bool) -> Iterator[Endpoints]:
    """Yield endpoints of a running Kafka and PostgreSQL, starting those not given."""
    choice = choose(settings)
    if choice.note:
        log.warning(choice.note)
    cache, work_dir = (settings.stack_dir / "cache").resolve(), work_dir.resolve()
    with ExitStack() as stack:
        bootstrap = settings.kafka_bootstrap_servers or stack.enter_context(
            _kafka(choice.of("kafka"), work_dir / "kafka", cache, settings)
        )
        database_url = settings.database_url or stack.enter_context(
            _postgres(choice.of("postgres"), work_dir / "postgres", durable, settings)
        )
        yield Endpoints(bootstrap, database_url)


def choose(settings: Settings) -> Choice:
    """Ask the engine about the images only when some service could run in Docker, then
    decide; get the reaper out of the way when the containers must do without it."""
    wanted = needs(settings)
    candidates = docker_candidates(settings.stack_mode, wanted, settings.kafka_nodes)
    reaper = containers.reaper_image()
    images = [need.image for need in candidates] + ([reaper] if reaper else [])
    docker = containers.probe(images) if candidates else None
    choice = decide(settings.stack_mode, wanted, candidates, docker)
    if docker is not None and "docker" in choice.providers.values():
        containers.settle_reaper(docker)
    return choice


def _kafka(
    how: Provider, work_dir: Path, cache: Path, settings: Settings
) -> AbstractContextManager[str]:
    if how == "docker":
        return containers.kafka_container(kafka_image(settings))
    if settings.kafka_nodes > 1:
        return _cluster_bootstrap(work_dir, cache)
    return kafka.local_broker(work_dir, cache)


@contextmanager
def _cluster_bootstrap(work_dir: Path, cache: Path) -> Iterator[str]:
    """A local cluster seen as the stack sees every Kafka: a bootstrap address."""
    with kafka.local_cluster(work_dir, cache) as cluster:
        yield cluster.bootstrap


def _postgres(
    how: Provider, work_dir: Path, durable: bool, settings: Settings
) -> AbstractContextManager[str]:
    if how == "docker":
        return containers.postgres_container(settings.stack_postgres_image)
    return postgres.local_postgres(work_dir, durable=durable)
