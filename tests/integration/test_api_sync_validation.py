"""The synchronous checks (INGEST_API_VALIDATION=sync, the default) over real HTTP, Kafka and
PostgreSQL: each refusal answered at once with the worker's status and code and nothing
published; the same requests published in `async` mode; changes seen without a restart; import
items refused one by one; and PostgreSQL unreachable on a miss leaves the event to the worker."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
import pytest
from psycopg import conninfo

from tests.integration.apiserver import RunningApi, running_api
from tests.integration.kafka_read import header, read_topic, read_topics

TEMPLATED_SCHEMA = {
    "type": "object",
    "required": ["store", "lane"],
    "properties": {"store": {}, "lane": {"type": "integer"}},
}
SEEN_WITHIN_S = 5.0


@dataclass(frozen=True)
class World:
    """An integration with a templated type, a type without template and a device; and
    another integration's device."""

    integration_id: int
    templated: int
    plain: int
    device_id: int
    foreign_device_id: int

    @property
    def path(self) -> str:
        return f"/v1/integrations/{self.integration_id}/events"


async def _post(client: httpx.AsyncClient, path: str, body: dict[str, Any]) -> dict[str, Any]:
    answer = await client.post(path, json=body)
    assert answer.status_code == 200, answer.text
    found: dict[str, Any] = answer.json()
    return found


async def _world(client: httpx.AsyncClient, integration_id: int) -> World:
    base = f"/v1/integrations/{integration_id}"
    templated = {"name": "t", "schema": TEMPLATED_SCHEMA, "external_device_id_template": "{store}"}
    typed = await _post(client, f"{base}/event-types", templated)
    plain = await _post(client, f"{base}/event-types", {"name": "p", "schema": {"type": "object"}})
    device = await _post(client, f"{base}/devices", {"name": "d", "external_id": "d-1"})
    other = await _post(client, "/v1/integrations", {"name": "other"})
    foreign = await _post(
        client,
        f"/v1/integrations/{other['integration']['id']}/devices",
        {"name": "theirs", "external_id": "x"},
    )
    return World(
        integration_id,
        typed["integration_event_type"]["id"],
        plain["integration_event_type"]["id"],
        device["integration_device"]["id"],
        foreign["integration_device"]["id"],
    )


@pytest.fixture
async def world(admin_client: httpx.AsyncClient, integration_id: int) -> World:
    """This test's integration, its types and devices."""
    return await _world(admin_client, integration_id)


@pytest.fixture
async def async_api(api: RunningApi, world: World) -> AsyncIterator[RunningApi]:
    """A second API on the same database and topics, with INGEST_API_VALIDATION=async,
    started once `world` exists (so its token cache knows the integration)."""
    async with running_api(
        api.settings, api.bootstrap, api.database_url, api_validation="async"
    ) as served:
        yield served


def _event(type_id: int, **fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "integration_event_type_id": type_id,
        "timestamp": "2024-06-01T12:00:00Z",
        "attributes": {"store": "s1", "lane": 3},
    }
    return base | fields


def _refused(w: World) -> dict[str, tuple[dict[str, Any], int]]:
    """One well-shaped event per synchronous refusal: {code: (body, status)}."""
    return {
        "unknown_event_type": (_event(2_000_000_000, device_external_id="a"), 404),
        "invalid_attributes": (_event(w.templated, attributes={"store": "s", "lane": "x"}), 400),
        "device_not_found": (_event(w.plain, integration_device_id=2_000_000_000), 404),
        "device_unresolvable": (_event(w.plain), 400),
        "template_unresolvable": (_event(w.templated, attributes={"store": None, "lane": 1}), 400),
    }


MESSAGES = {
    "unknown_event_type": "no such event type in this integration",
    "invalid_attributes": "the attributes do not match the event type's schema",
    "device_not_found": "no such device in this integration",
    "device_unresolvable": "no device id, external id or template",
    "template_unresolvable": "attribute 'store' is null, not a string, number or boolean",
}


async def _only_these_published(api: RunningApi, integration_id: int, event_ids: set[str]) -> None:
    """The raw topic holds, of this integration, exactly the records of `event_ids`."""
    wanted = {e.encode() for e in event_ids}
    records = await read_topics(
        api.bootstrap,
        [api.settings.raw_topic],
        until=lambda rs: wanted <= {header(r, "event-id") for r in rs},
        grace_s=1.0,
    )
    mine = [r for r in records if header(r, "integration-id") == str(integration_id).encode()]
    assert {header(r, "event-id") for r in mine} == wanted
    assert len(mine) == len(wanted)


async def test_each_check_answers_at_once_and_publishes_nothing(
    api: RunningApi, admin_client: httpx.AsyncClient, world: World
) -> None:
    """Unknown type, bad attributes, a device id of no device, no way to a device and a
    template that cannot resolve: each its worker status, code and message as the problem,
    none on the raw topic; a good event of the same integration is published."""
    for code, (body, status) in _refused(world).items():
        answer = await admin_client.post(world.path, json=body)
        problem = answer.json()
        assert answer.status_code == status, (code, answer.text)
        assert answer.headers["content-type"] == "application/problem+json"
        assert (problem["code"], problem["status"], problem["detail"]) == (
            code,
            status,
            MESSAGES[code],
        )
        assert problem["message"] == MESSAGES[code]
        assert problem["details"], answer.text
    good = await admin_client.post(world.path, json=_event(world.plain, device_external_id="ok"))
    assert good.status_code == 202, good.text
    await _only_these_published(api, world.integration_id, {good.json()["event_id"]})


async def test_invalid_attributes_name_each_field(
    admin_client: httpx.AsyncClient, world: World
) -> None:
    """The attribute errors are listed per field, as the worker lists them."""
    body = _event(world.templated, attributes={"lane": "x"})
    problem = (await admin_client.post(world.path, json=body)).json()
    assert problem["code"] == "invalid_attributes"
    assert {d["field"] for d in problem["details"]} == {"attributes.lane", "attributes.store"}


async def test_a_device_of_another_integration_is_not_found(
    admin_client: httpx.AsyncClient, world: World
) -> None:
    """Another integration's device id is the same 404 as an id of no device (no fallback to
    the external id beside it); the integration's own device id is accepted."""
    theirs = _event(world.plain, integration_device_id=world.foreign_device_id)
    answer = await admin_client.post(world.path, json=theirs | {"device_external_id": "x"})
    own = await admin_client.post(
        world.path, json=_event(world.plain, integration_device_id=world.device_id)
    )
    assert (answer.status_code, answer.json()["code"]) == (404, "device_not_found")
    assert own.status_code == 202, own.text


async def test_async_mode_publishes_them_for_the_worker(
    async_api: RunningApi, world: World
) -> None:
    """With INGEST_API_VALIDATION=async the same requests are 202 and on the raw topic."""
    async with async_api.client() as client:
        answers = [await client.post(world.path, json=b) for b, _ in _refused(world).values()]
    assert [a.status_code for a in answers] == [202] * len(answers), [a.text for a in answers]
    await _only_these_published(
        async_api, world.integration_id, {a.json()["event_id"] for a in answers}
    )


async def _until(
    check: Callable[[], Awaitable[int]], wanted: int, within_s: float = SEEN_WITHIN_S
) -> float:
    """Seconds until `check()` returns `wanted`; fails past `within_s`."""
    started = time.monotonic()
    while (status := await check()) != wanted:
        assert time.monotonic() - started < within_s, status
        await asyncio.sleep(0.05)
    return time.monotonic() - started


async def test_a_changed_event_type_is_seen_without_restart(
    api: RunningApi, admin_client: httpx.AsyncClient, world: World
) -> None:
    """A PUT of the type through this API is seen by its very next request; one through
    another API process reaches this one by change notification, within moments."""
    path = f"/v1/integrations/{world.integration_id}/event-types/{world.templated}"
    body = _event(world.templated, attributes={"store": "s", "lane": "x"})

    async def status() -> int:
        return (await admin_client.post(world.path, json=body)).status_code

    assert await status() == 400
    relaxed = {
        "name": "t",
        "schema": {"type": "object", "required": ["store"], "properties": {"store": {}}},
        "external_device_id_template": "{store}",
    }
    assert (await admin_client.put(path, json=relaxed)).status_code == 200
    assert await status() == 202
    strict = {"name": "t", "schema": TEMPLATED_SCHEMA, "external_device_id_template": "{store}"}
    async with running_api(api.settings, api.bootstrap, api.database_url) as replica:
        async with replica.client() as other:
            assert (await other.put(path, json=strict)).status_code == 200
        await _until(status, 400)


async def test_deleted_and_created_devices_are_seen(
    api: RunningApi, admin_client: httpx.AsyncClient, world: World
) -> None:
    """A device deleted through this API is not found by the next request; one deleted
    through another process is not found within moments; a new device is found at once."""
    base = f"/v1/integrations/{world.integration_id}/devices"

    async def status(device_id: int) -> int:
        body = _event(world.plain, integration_device_id=device_id)
        return (await admin_client.post(world.path, json=body)).status_code

    assert await status(world.device_id) == 202
    assert (await admin_client.delete(f"{base}/{world.device_id}")).status_code == 200
    assert await status(world.device_id) == 404
    made = await _post(admin_client, base, {"name": "n", "external_id": "d-2"})
    fresh = made["integration_device"]["id"]
    assert await status(fresh) == 202
    async with running_api(api.settings, api.bootstrap, api.database_url) as replica:
        async with replica.client() as other:
            assert (await other.delete(f"{base}/{fresh}")).status_code == 200
        await _until(lambda: status(fresh), 404)


async def test_import_refuses_items_one_by_one(
    api: RunningApi, admin_client: httpx.AsyncClient, world: World
) -> None:
    """Each refused item gets the status and code a single ingest would get and its fields
    at fault, under its index; the valid items are published, and only they."""
    refused = _refused(world)
    items = [
        _event(world.plain, device_external_id="i-0"),
        _event(world.plain, duration=600001, device_external_id="i-1"),
        *(body for body, _ in refused.values()),
        _event(world.plain, integration_device_id=world.foreign_device_id),
        _event(world.plain, integration_device_id=world.device_id),
    ]
    answer = await admin_client.post(f"{world.path}/import", json={"integration_events": items})
    assert answer.status_code == 202, answer.text
    results = answer.json()["results"]
    assert [r["index"] for r in results] == list(range(len(items)))
    codes = [(r.get("status"), r.get("code")) for r in results]
    assert codes == [
        (None, None),
        (400, "invalid_request"),
        *((status, code) for code, (_, status) in refused.items()),
        (404, "device_not_found"),
        (None, None),
    ]
    assert results[1]["errors"][0]["field"] == "integration_events.1.duration"
    assert results[2]["errors"] == [
        {
            "field": "integration_events.2.integration_event_type_id",
            "message": MESSAGES["unknown_event_type"],
            "value": 2_000_000_000,
        }
    ]
    assert results[3]["errors"][0]["field"] == "integration_events.3.attributes.lane"
    published = {results[0]["event_id"], results[-1]["event_id"]}
    await _only_these_published(api, world.integration_id, published)


# --- PostgreSQL unreachable -----------------------------------------------------------------


@dataclass
class Proxy:
    """A TCP proxy to PostgreSQL that can be cut (every connection dropped, new ones refused)."""

    target: tuple[str, int]
    port: int = 0
    cut: bool = False
    writers: list[asyncio.StreamWriter] = field(default_factory=list)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.cut:
            writer.close()
            return
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        self.writers += [writer, up_writer]
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))

    def sever(self) -> None:
        self.cut = True
        for writer in self.writers:
            writer.transport.abort()
        self.writers.clear()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with suppress(ConnectionError, OSError):
        while chunk := await reader.read(65536):
            writer.write(chunk)
            await writer.drain()
    writer.close()


@asynccontextmanager
async def _proxy(database_url: str) -> AsyncIterator[tuple[Proxy, str]]:
    """A proxy in front of the database's server, and the URL to reach it through."""
    params = conninfo.conninfo_to_dict(database_url)
    proxy = Proxy((str(params.get("host", "127.0.0.1")), int(str(params.get("port", 5432)))))
    server = await asyncio.start_server(proxy.handle, "127.0.0.1", 0)
    proxy.port = server.sockets[0].getsockname()[1]
    try:
        yield proxy, conninfo.make_conninfo(database_url, host="127.0.0.1", port=proxy.port)
    finally:
        proxy.sever()
        server.close()


async def _metric(api: RunningApi, name: str) -> float:
    async with api.client() as client:
        text = (await client.get("/metrics")).text
    lines = [line for line in text.splitlines() if line.startswith(name + " ")]
    return float(lines[0].split()[1]) if lines else 0.0


async def test_postgres_unreachable_on_a_miss_publishes_unchecked(
    api: RunningApi, world: World
) -> None:
    """An API whose PostgreSQL is cut answers an event it has not cached yet with 202 at
    once and publishes it (the worker decides), counted; once PostgreSQL is back, the same
    event is refused again."""
    body = _event(2_000_000_000, device_external_id="a")
    async with (
        _proxy(api.database_url) as (proxy, url),
        running_api(api.settings, api.bootstrap, url) as cut_off,
        cut_off.client() as client,
    ):
        proxy.sever()
        started = time.monotonic()
        answer = await client.post(world.path, json=body)
        elapsed = time.monotonic() - started
        assert answer.status_code == 202, answer.text
        assert elapsed < 3.0
        assert await _metric(cut_off, "ingest_unchecked_events_total") == 1.0
        proxy.cut = False

        async def status() -> int:
            return (await client.post(world.path, json=body)).status_code

        await _until(status, 404, within_s=15.0)
    event_id = answer.json()["event_id"].encode()
    records = await read_topic(
        api.bootstrap,
        api.settings.raw_topic,
        until=lambda rs: any(header(r, "event-id") == event_id for r in rs),
    )
    (record,) = [r for r in records if header(r, "event-id") == event_id]
    assert orjson.loads(record.value) == body
