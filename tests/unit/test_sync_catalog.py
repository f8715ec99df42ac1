"""The shim's catalog for the synchronous checks, against a fake source: loads on a miss only,
what notifications and the clock drop, the bounds on memory and on queries, and the fallback
to publishing unchecked when PostgreSQL cannot be reached."""

from __future__ import annotations

import asyncio
import logging
from types import SimpleNamespace
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Message

from ingest_worker.core.errors import DependencyUnavailable
from ingest_worker.core.metrics import ApiMetrics
from ingest_worker.shim import catalog as catalog_module
from ingest_worker.shim.catalog import ABSENT_TTL_S, RETRY_S, Catalog
from ingest_worker.shim.checks import OwnWrites, check_items, check_now, refusal
from ingest_worker.shim.problems import Problem

MAX_AGE_S = 30.0


class FakeSource:
    """Integration 1 with event type 5 (attributes need a string `store`); devices 10 and 11
    of integration 1, 20 of integration 2. Counts its calls; `down` makes every call fail."""

    def __init__(self) -> None:
        self.rows: dict[int, list[dict[str, Any]]] = {1: [_row(5, 1, "string")], 2: []}
        self.devices = {10: 1, 11: 1, 20: 2}
        self.calls: list[tuple[str, Any]] = []
        self.down = False
        self.gate: asyncio.Event | None = None

    async def event_types(self, integration_id: int) -> list[dict[str, Any]] | None:
        self.calls.append(("event_types", integration_id))
        await self._wait()
        return self.rows.get(integration_id)

    async def owners(self, device_ids: list[int]) -> dict[int, int]:
        self.calls.append(("owners", sorted(device_ids)))
        await self._wait()
        return {i: self.devices[i] for i in device_ids if i in self.devices}

    async def _wait(self) -> None:
        await asyncio.sleep(0)
        if self.gate is not None:
            await self.gate.wait()
        if self.down:
            raise DependencyUnavailable("PostgreSQL unavailable: refused")


def _row(type_id: int, version: int, store: str) -> dict[str, Any]:
    schema = {"type": "object", "properties": {"store": {"type": store}}}
    return {
        "integration_id": 1,
        "id": type_id,
        "version": version,
        "schema": schema,
        "external_device_id_template": None,
        "duration_ms": 0,
        "buffer_ms": 0,
    }


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make() -> tuple[Catalog, FakeSource, Clock, ApiMetrics]:
    source, clock, metrics = FakeSource(), Clock(), ApiMetrics()
    return Catalog(source, MAX_AGE_S, metrics, clock), source, clock, metrics


def event(type_id: int = 5, store: Any = "s", **fields: Any) -> dict[str, Any]:
    return {
        "integration_event_type_id": type_id,
        "timestamp": "2024-06-01T12:00:00Z",
        "attributes": {"store": store},
        "device_external_id": "d",
        **fields,
    }


def sample(metrics: ApiMetrics, name: str, labels: dict[str, str] | None = None) -> float | None:
    return metrics.registry.get_sample_value(name, labels or {})


async def code(catalog: Catalog, found: dict[str, Any], integration_id: int = 1) -> str | None:
    """The refusal's code, or None when the event passes."""
    decided = await refusal(catalog, integration_id, found, 100)
    return None if decided is None else decided.code


async def test_an_integration_is_loaded_once_for_all_its_types() -> None:
    """The first event loads the integration's types; later ones, of any type id (unknown
    ones included), are decided without a query."""
    catalog, source, _, _ = make()
    assert await code(catalog, event()) is None
    assert await code(catalog, event(store=1)) == "invalid_attributes"
    assert await code(catalog, event(type_id=6)) == "unknown_event_type"
    assert await code(catalog, event(type_id=123456)) == "unknown_event_type"
    assert source.calls == [("event_types", 1)]


async def test_a_type_notification_reloads_and_reuses_unchanged_compilations() -> None:
    """A change to an event type makes its integration load again: the changed version is
    compiled anew, an unchanged one is reused as it was."""
    catalog, source, clock, _ = make()
    source.rows[1].append(_row(6, 1, "string"))
    await code(catalog, event())
    before = catalog.types(1, clock.now)
    assert before is not None
    source.rows[1][0] = _row(5, 2, "integer")
    catalog.on_change('{"table": "event_types", "op": "UPDATE", "id": 5, "integration_id": 1}')
    assert await code(catalog, event(store="s")) == "invalid_attributes"
    after = catalog.types(1, clock.now)
    assert after is not None
    assert after.by_id[6] is before.by_id[6]
    assert after.by_id[5].version == 2
    assert source.calls == [("event_types", 1)] * 2


async def test_entries_are_not_used_past_max_age() -> None:
    """Without any notification, an integration and a device load again after max age."""
    catalog, source, clock, _ = make()
    await code(catalog, event(integration_device_id=10))
    clock.now += MAX_AGE_S - 1
    await code(catalog, event(integration_device_id=10))
    assert len(source.calls) == 2
    clock.now += 2
    await code(catalog, event(integration_device_id=10))
    assert source.calls[2:] == [("event_types", 1), ("owners", [10])]


async def test_device_ids_of_this_and_other_integrations() -> None:
    """An own device passes; another integration's device and an id of no device are
    `device_not_found`; a deleted device is dropped on its notification."""
    catalog, source, _, _ = make()
    assert await code(catalog, event(integration_device_id=10)) is None
    assert await code(catalog, event(integration_device_id=20)) == "device_not_found"
    assert await code(catalog, event(integration_device_id=99)) == "device_not_found"
    del source.devices[10]
    catalog.on_change('{"table": "devices", "op": "DELETE", "id": 10, "integration_id": 1}')
    assert await code(catalog, event(integration_device_id=10)) == "device_not_found"


async def test_concurrent_misses_share_one_query_at_a_time() -> None:
    """A burst of distinct unknown device ids costs a query per batch, not per id: while one
    query runs, the ids asked meanwhile wait for the next."""
    catalog, source, _, _ = make()
    await code(catalog, event())
    source.calls.clear()
    ids = list(range(1000, 1000 + 1200))
    found = await asyncio.gather(*(code(catalog, event(integration_device_id=i)) for i in ids))
    assert set(found) == {"device_not_found"}
    assert all(kind == "owners" for kind, _ in source.calls)
    assert len(source.calls) <= 4
    assert sorted(i for _, batch in source.calls for i in batch) == ids


async def test_an_absent_device_id_is_believed_briefly() -> None:
    """An id of no device is remembered for ABSENT_TTL_S (devices are not announced when
    created), so repeating it costs no query; after that it is asked again."""
    catalog, source, clock, _ = make()
    await code(catalog, event(integration_device_id=12))
    source.devices[12] = 1
    assert await code(catalog, event(integration_device_id=12)) == "device_not_found"
    assert len(source.calls) == 2
    clock.now += ABSENT_TTL_S + 0.1
    assert await code(catalog, event(integration_device_id=12)) is None
    assert len(source.calls) == 3


async def test_device_entries_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """Known and absent device ids are each kept up to a bound, the oldest dropped first."""
    monkeypatch.setattr(catalog_module, "MAX_DEVICES", 2)
    monkeypatch.setattr(catalog_module, "MAX_ABSENT", 2)
    catalog, source, clock, _ = make()
    source.devices.update({12: 1, 13: 1})
    await catalog.load_owners([10, 11, 12, 13, 50, 51, 52])
    cached = {i for i in (10, 11, 12, 13, 50, 51, 52) if catalog.owner(i, clock.now) is not None}
    assert cached == {12, 13, 51, 52}


async def test_a_load_that_raced_a_notification_is_used_once_not_kept() -> None:
    """A type change announced while its integration was loading: that load answers the
    request that waited for it, and the next request loads again."""
    catalog, source, clock, _ = make()
    source.gate = asyncio.Event()
    waiting = asyncio.create_task(code(catalog, event()))
    await asyncio.sleep(0.01)
    catalog.on_change('{"table": "event_types", "op": "UPDATE", "id": 5, "integration_id": 1}')
    source.gate.set()
    assert await waiting is None
    assert catalog.types(1, clock.now) is None


async def test_notifications_drop_what_they_name_or_everything() -> None:
    """A deleted integration is forgotten; a notification of another table changes nothing;
    an unreadable one clears the whole catalog."""
    catalog, _, clock, _ = make()
    await code(catalog, event(integration_device_id=10))
    await code(catalog, event(), integration_id=2)
    catalog.on_change('{"table": "integrations", "op": "DELETE", "id": 2}')
    catalog.on_change('{"table": "api_tokens", "op": "INSERT", "id": 3}')
    assert catalog.types(2, clock.now) is None
    assert catalog.types(1, clock.now) is not None
    catalog.on_change("not json")
    assert catalog.types(1, clock.now) is None
    assert catalog.owner(10, clock.now) is None


async def test_an_integration_gone_from_the_database_is_404() -> None:
    """An integration the token cache still knows but PostgreSQL no longer has is the same
    404 as an unknown one."""
    catalog, _, _, _ = make()
    with pytest.raises(Problem) as raised:
        await refusal(catalog, 3, event(), 100)
    assert (raised.value.status, raised.value.code) == (404, "not_found")


async def test_an_integration_created_after_a_miss_is_found_at_once() -> None:
    """A miss is not remembered: an integration created a moment after someone asked for its
    id is found before its change notification arrives."""
    catalog, source, _, _ = make()
    with pytest.raises(Problem):
        await refusal(catalog, 3, event(), 100)
    source.rows[3] = [_row(5, 1, "string")]
    assert await code(catalog, event(), integration_id=3) is None


async def test_unreachable_postgres_passes_events_unchecked(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """With PostgreSQL down on a miss the event passes (the worker decides), counted; the
    state change is logged once; for RETRY_S misses do not even try; once it answers again,
    checks resume and that is logged once."""
    catalog, source, clock, metrics = make()
    source.down = True
    with caplog.at_level(logging.INFO, logger="ingest_worker.shim.catalog"):
        await check_now(catalog, metrics, 1, event(store=1), 100)
        await check_now(catalog, metrics, 1, event(store=1), 100)
        assert len(source.calls) == 1
        clock.now += RETRY_S + 0.1
        await check_now(catalog, metrics, 1, event(store=1), 100)
        source.down = False
        clock.now += RETRY_S + 0.1
        with pytest.raises(Problem) as raised:
            await check_now(catalog, metrics, 1, event(store=1), 100)
    assert raised.value.code == "invalid_attributes"
    assert sample(metrics, "ingest_unchecked_events_total") == 3
    assert [r.levelname for r in caplog.records] == ["WARNING", "INFO"]
    failed = {"kind": "event_types", "result": "failed"}
    assert sample(metrics, "ingest_catalog_loads_total", failed) == 2


async def test_import_items_are_checked_together() -> None:
    """An import's items share one type load and one device batch; each refused item has its
    code; items the catalog cannot check pass, counted."""
    catalog, source, _, metrics = make()
    items = {
        0: (event(), 100),
        1: (event(type_id=6), 100),
        2: (event(integration_device_id=10), 100),
        3: (event(integration_device_id=20), 100),
        4: (event(integration_device_id=77), 100),
    }
    refused = await check_items(catalog, metrics, 1, items)
    assert {i: r.code for i, r in refused.items()} == {
        1: "unknown_event_type",
        3: "device_not_found",
        4: "device_not_found",
    }
    assert source.calls == [("event_types", 1), ("owners", [10, 20, 77])]
    source.down = True
    unreachable = Catalog(source, MAX_AGE_S, metrics, Clock())
    assert await check_items(unreachable, metrics, 1, items) == {}
    assert sample(metrics, "ingest_unchecked_events_total") == len(items)


async def _answer_through_own_writes(
    catalog: Catalog, method: str, path: str
) -> list[tuple[bool, bool]]:
    """Send one request through OwnWrites to an app that answers 200; whether the catalog had
    forgotten integration 1's types, and device 10, when the answer started."""
    app = Starlette(routes=[Route("/{rest:path}", _ok, methods=[method])])
    app.state.deps = SimpleNamespace(catalog=catalog)
    seen: list[tuple[bool, bool]] = []

    async def send(message: Message) -> None:
        if message["type"] == "http.response.start":
            now = catalog.clock()
            seen.append((catalog.types(1, now) is None, catalog.owner(10, now) is None))

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    scope = {"type": "http", "method": method, "path": path, "headers": [], "query_string": b""}
    await OwnWrites(app)(scope, receive, send)
    return seen


async def _ok(_: Request) -> Response:
    return Response(b"{}", 200)


@pytest.mark.parametrize(
    ("method", "path", "forgets"),
    [
        ("PUT", "/v1/integrations/1/event-types/5", "types"),
        ("POST", "/v1/integrations/1/event-types", "types"),
        ("DELETE", "/v1/integrations/1", "types"),
        ("DELETE", "/v1/integrations/1/devices/10", "device"),
        ("GET", "/v1/integrations/1/event-types/5", None),
        ("POST", "/v1/integrations/1/events", None),
    ],
)
async def test_own_writes_reach_the_catalog_before_their_answer(
    method: str, path: str, forgets: str | None
) -> None:
    """A management write answered by this process drops what it changed (an integration's
    types, a device) before the answer starts; reads and ingests drop nothing."""
    catalog, _, _, _ = make()
    await code(catalog, event(integration_device_id=10))
    seen = await _answer_through_own_writes(catalog, method, path)
    assert seen == [(forgets == "types", forgets == "device")]
