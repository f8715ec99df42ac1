"""Session fixtures: one real Kafka broker and one real PostgreSQL server per test run.

Endpoints from the environment win (KAFKA_BOOTSTRAP_SERVERS, DATABASE_URL); otherwise the
services are started once for the session (Docker if it answers, else local processes).
Each run gets its own topic names and databases, so runs and tests don't see each other.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import httpx
import psycopg
import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from psycopg import conninfo, sql

from devstack.kafka import Cluster, local_cluster
from devstack.proc import free_port
from devstack.stack import Endpoints, services
from devstack.topics import ensure_topics
from ingest_worker.core.config import Settings
from ingest_worker.core.migrate import migrate
from tests.integration.apiserver import ADMIN_TOKEN, RunningApi, running_api
from tests.integration.pipeline_env import Pipeline, pipeline

RUN_ID = uuid.uuid4().hex[:8]

NewDatabase = Callable[[], str]
NewTopicFactory = Callable[..., Awaitable[str]]


@pytest.fixture(scope="session")
def settings() -> Settings:
    """Settings from the environment, as a process would read them."""
    return Settings.from_env(os.environ)


@pytest.fixture(scope="session")
def endpoints(settings: Settings) -> Iterator[Endpoints]:
    """The running services, started once for the whole session when not given."""
    work_dir = settings.stack_dir / "test-runs" / RUN_ID
    with services(settings, work_dir, durable=False) as found:
        yield found
    shutil.rmtree(work_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def kafka_cluster(settings: Settings) -> Iterator[Cluster]:
    """Three local Kafka nodes for the fault tests, started by the first test that asks for
    them and stopped at the end of the session. Always local processes, whatever
    KAFKA_BOOTSTRAP_SERVERS, INGEST_KAFKA_NODES or Docker say: the tests kill, freeze and
    restart its nodes, which they may only do to JVMs of their own."""
    work_dir = settings.stack_dir / "test-runs" / f"{RUN_ID}-kafka-cluster"
    with local_cluster(work_dir, settings.stack_dir / "cache") as cluster:
        yield cluster
    shutil.rmtree(work_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def kafka_bootstrap(endpoints: Endpoints) -> str:
    """Bootstrap address of the session's broker."""
    return endpoints.kafka_bootstrap_servers


@pytest.fixture(scope="session")
def server_url(endpoints: Endpoints) -> str:
    """URL of the session's PostgreSQL server (its maintenance database)."""
    return endpoints.database_url


def _with_dbname(url: str, dbname: str) -> str:
    return conninfo.make_conninfo(url, dbname=dbname)


@pytest.fixture(scope="session")
def new_database(server_url: str) -> Iterator[NewDatabase]:
    """A factory of empty databases, named for this run, dropped at the end of the session."""
    created: list[str] = []

    def create() -> str:
        name = f"ingest_{RUN_ID}_{len(created)}"
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        created.append(name)
        return _with_dbname(server_url, name)

    yield create
    with psycopg.connect(server_url, autocommit=True) as conn:
        for name in created:
            query = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
            conn.execute(query.format(sql.Identifier(name)))


@pytest.fixture
def empty_database(new_database: NewDatabase) -> str:
    """A fresh database with no tables, for this test alone."""
    return new_database()


@pytest.fixture
async def database_url(empty_database: str, settings: Settings) -> str:
    """A fresh database with every migration applied, for this test alone."""
    await migrate(empty_database, lock_timeout_s=settings.migrate_lock_timeout_s)
    return empty_database


@pytest.fixture
async def new_topic(
    kafka_bootstrap: str, request: pytest.FixtureRequest
) -> AsyncIterator[NewTopicFactory]:
    """A factory of topics whose names are unique to this run and test."""
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    stem = re.sub(r"[^a-zA-Z0-9._-]", "_", request.node.name)[:80]
    count = 0

    async def create(partitions: int = 3) -> str:
        nonlocal count
        count += 1
        name = f"test.{RUN_ID}.{stem}.{count}"
        await admin.create_topics([NewTopic(name, partitions, 1)])
        return name

    try:
        yield create
    finally:
        await admin.close()


def project_root() -> Path:
    """The checkout this test suite belongs to."""
    return Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
async def api_database(new_database: NewDatabase, settings: Settings) -> str:
    """One migrated database shared by the API tests (each test makes its own integration)."""
    url = new_database()
    await migrate(url, lock_timeout_s=settings.migrate_lock_timeout_s)
    return url


@pytest.fixture(scope="session")
async def api_settings(settings: Settings, kafka_bootstrap: str) -> Settings:
    """Settings of the shared API: topics named for this run, created up front."""
    found = dataclasses.replace(
        settings,
        raw_topic=f"test.{RUN_ID}.raw",
        accepted_topic=f"test.{RUN_ID}.accepted",
        rejected_topic=f"test.{RUN_ID}.rejected",
    )
    await ensure_topics(kafka_bootstrap, found, partitions=3)
    return found


@pytest.fixture(scope="session")
async def api(
    api_settings: Settings, kafka_bootstrap: str, api_database: str
) -> AsyncIterator[RunningApi]:
    """The real API, served once for the session."""
    async with running_api(api_settings, kafka_bootstrap, api_database) as served:
        yield served


@pytest.fixture
async def admin_client(api: RunningApi) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client holding the admin token."""
    async with api.client() as client:
        yield client


@pytest.fixture
async def integration_id(admin_client: httpx.AsyncClient) -> int:
    """A new integration for this test alone."""
    answer = await admin_client.post("/v1/integrations", json={"name": "test"})
    assert answer.status_code == 200, answer.text
    found: int = answer.json()["integration"]["id"]
    return found


@pytest.fixture
async def event_type_id(admin_client: httpx.AsyncClient, integration_id: int) -> int:
    """An event type of `integration_id` that takes any attributes (no template), so events
    naming a device pass the API's synchronous checks (INGEST_API_VALIDATION=sync)."""
    answer = await admin_client.post(
        f"/v1/integrations/{integration_id}/event-types",
        json={"name": "any", "schema": {"type": "object"}},
    )
    assert answer.status_code == 200, answer.text
    found: int = answer.json()["integration_event_type"]["id"]
    return found


@dataclasses.dataclass(frozen=True)
class ApiProcess:
    """`ingest-worker api` in its own process, as operators run it."""

    url: str
    admin_token: str
    integration_id: int


@pytest.fixture(scope="session")
def api_process(
    api_settings: Settings, kafka_bootstrap: str, new_database: NewDatabase
) -> Iterator[ApiProcess]:
    """A separate API process on a fresh migrated database, with one integration in it."""
    database_url = new_database()
    port = free_port()
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "DATABASE_URL": database_url,
        "INGEST_ADMIN_TOKEN": ADMIN_TOKEN,
        "INGEST_API_PORT": str(port),
        "INGEST_RAW_TOPIC": api_settings.raw_topic,
        "INGEST_RATE_LIMIT_PER_S": "0",
    }
    migrated = subprocess.run(
        [sys.executable, "-m", "ingest_worker", "migrate"], env=env, timeout=60, check=False
    )
    assert migrated.returncode == 0
    proc = subprocess.Popen([sys.executable, "-m", "ingest_worker", "api"], env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, proc)
        headers = {"authorization": f"Bearer {ADMIN_TOKEN}"}
        made = httpx.post(f"{url}/v1/integrations", json={"name": "fuzz"}, headers=headers)
        yield ApiProcess(url, ADMIN_TOKEN, int(made.json()["integration"]["id"]))
    finally:
        proc.terminate()
        proc.wait(30)


def _wait_healthy(url: str, proc: subprocess.Popen[bytes]) -> None:
    for _ in range(300):
        if proc.poll() is not None:
            raise RuntimeError(f"ingest-worker api exited with {proc.returncode}")
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError("ingest-worker api did not become ready")


@pytest.fixture
async def env(
    settings: Settings, kafka_bootstrap: str, api_database: str
) -> AsyncIterator[Pipeline]:
    """An API and one in-process worker on topics of this test alone."""
    async with pipeline(settings, kafka_bootstrap, api_database) as found:
        yield found


@pytest.fixture
async def async_env(
    settings: Settings, kafka_bootstrap: str, api_database: str
) -> AsyncIterator[Pipeline]:
    """As `env`, with INGEST_API_VALIDATION=async: every event reaches the worker, for tests
    of what the worker decides about events the API would otherwise refuse at once."""
    async with pipeline(settings, kafka_bootstrap, api_database, api_validation="async") as found:
        yield found
