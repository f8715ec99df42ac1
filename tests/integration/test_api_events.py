"""Spot's stored-event endpoints over real HTTP: the filtered, paged list; an event's fate;
updates and deletes on the raw topic; the store switch; and the cascades of deletes.

The worker's store writes are seeded here with direct INSERTs into `events`."""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import httpx
import orjson
import psycopg
import pytest
from psycopg.types.json import Jsonb

from ingest_worker.core.config import Settings
from tests.integration.apiserver import RunningApi, running_api
from tests.integration.kafka_read import header, read_topic

T0 = datetime(2024, 6, 1, 10, 0, tzinfo=UTC)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_OFFSETS = itertools.count()
# Epoch milliseconds of now, as the worker writes `received_at_ms` and `created_ms`.
_NOW_MS = "(extract(epoch FROM now()) * 1000)::bigint"


@dataclass(frozen=True)
class Stored:
    """One revision of an event, as the worker would store it."""

    integration_id: int
    event_id: str = ""
    revision: int = 1
    op: str = "created"
    current: bool = True
    type_id: int | None = 1
    device_id: int | None = 1
    timestamp: datetime | None = T0
    attributes: str | None = '{"store": "s1"}'
    raw_key: bytes | None = b"key"
    error: dict[str, Any] | None = None


def _epoch_us(moment: datetime | None) -> int | None:
    """A time as `timestamp_us` stores it: epoch microseconds."""
    return None if moment is None else (moment - _EPOCH) // timedelta(microseconds=1)


async def store(database_url: str, *rows: Stored) -> list[str]:
    """Insert revisions into `events` (a fresh event id where none is given); their ids."""
    ids = [row.event_id or str(uuid.uuid4()) for row in rows]
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        for event_id, row in zip(ids, rows, strict=True):
            await conn.execute(
                "INSERT INTO events (integration_id, id, revision, received_at_ms, op, current, "
                "event_type_id, device_id, timestamp_us, duration_ms, buffer_ms, attributes, "
                "revision_received_at_ms, raw_key, source_partition, source_offset, error, "
                f"created_ms) VALUES (%s, %s, %s, {_NOW_MS}, %s, %s, %s, %s, %s, 5000, 1000, %s, "
                f"{_NOW_MS}, %s, 0, %s, %s, {_NOW_MS})",
                (
                    row.integration_id,
                    event_id,
                    row.revision,
                    row.op,
                    row.current,
                    row.type_id,
                    row.device_id,
                    _epoch_us(row.timestamp),
                    row.attributes,
                    row.raw_key,
                    next(_OFFSETS),
                    None if row.error is None else Jsonb(row.error),
                ),
            )
    return ids


async def count_events(database_url: str, where: str, *params: Any) -> int:
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        row = await (
            await conn.execute(f"SELECT count(*) FROM events WHERE {where}", params)
        ).fetchone()
    assert row is not None
    return int(row[0])


def event(type_id: int) -> dict[str, Any]:
    """An ingest body of an existing type (the API may check it synchronously)."""
    return {
        "integration_event_type_id": type_id,
        "timestamp": "2024-06-01T12:00:00Z",
        "attributes": {"store": "s1"},
        "device_external_id": "lane-1",
    }


def _events(integration_id: int) -> str:
    return f"/v1/integrations/{integration_id}/events"


async def _device(
    client: httpx.AsyncClient, integration_id: int, name: str, cameras: list[int]
) -> int:
    body = {"name": name, "external_id": name, "camera_ids": cameras}
    answer = await client.post(f"/v1/integrations/{integration_id}/devices", json=body)
    assert answer.status_code == 200, answer.text
    found: int = answer.json()["integration_device"]["id"]
    return found


async def _listed(client: httpx.AsyncClient, path: str, query: str = "") -> list[str]:
    answer = await client.get(f"{path}?{query}")
    assert answer.status_code == 200, answer.text
    return [item["id"] for item in answer.json()["integration_events"]]


# --- the list's filters ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Seeded:
    """An integration with devices a (camera 10), b (camera 20), c (none) and five events."""

    integration_id: int
    devices: dict[str, int]
    events: dict[str, str]


@pytest.fixture(scope="module")
async def seeded(api: RunningApi) -> Seeded:
    """e1 a/type 1 10:00, e2 a/2 10:01, e3 b/1 10:02, e4 b/3 10:03, e5 c/2 10:04."""
    async with api.client() as client:
        made = await client.post("/v1/integrations", json={"name": "events"})
        integration_id = made.json()["integration"]["id"]
        devices = {
            name: await _device(client, integration_id, name, cameras)
            for name, cameras in (("a", [10]), ("b", [20, 30]), ("c", []))
        }
    plan = [("a", 1), ("a", 2), ("b", 1), ("b", 3), ("c", 2)]
    rows = [
        Stored(integration_id, type_id=t, device_id=devices[d], timestamp=T0 + timedelta(minutes=n))
        for n, (d, t) in enumerate(plan)
    ]
    ids = await store(api.database_url, *rows)
    return Seeded(integration_id, devices, {f"e{n + 1}": i for n, i in enumerate(ids)})


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("", "e1 e2 e3 e4 e5"),
        ("integrationDeviceIds={a}", "e1 e2"),
        ("integrationDeviceIds={a},{b}", "e1 e2 e3 e4"),
        ("integrationDeviceIds={a}&integrationDeviceIds={c}", "e1 e2 e5"),
        ("integrationDeviceIds=2147483647", ""),
        ("integrationEventTypeIds=1", "e1 e3"),
        ("integrationEventTypeIds=1,2", "e1 e2 e3 e5"),
        ("integrationEventTypeIds=3&integrationEventTypeIds=2", "e2 e4 e5"),
        ("cameraIds=10", "e1 e2"),
        ("cameraIds=10,30", "e1 e2 e3 e4"),
        ("cameraIds=10&cameraIds=20", "e1 e2 e3 e4"),
        ("cameraIds=99", ""),
        ("start=2024-06-01T10:01:00Z", "e2 e3 e4 e5"),
        ("end=2024-06-01T10:03:00Z", "e1 e2 e3"),
        ("start=2024-06-01T10:01:00Z&end=2024-06-01T10:03:00Z", "e2 e3"),
        ("start=2024-06-01T12:01:00%2B02:00&end=2024-06-01T12:03:00+02:00", "e2 e3"),
        ("integrationDeviceIds={a},{b}&integrationEventTypeIds=1", "e1 e3"),
        ("integrationDeviceIds={b}&integrationEventTypeIds=1,3", "e3 e4"),
        ("cameraIds=20&integrationEventTypeIds=3", "e4"),
        ("cameraIds=10&integrationDeviceIds={b}", ""),
        ("cameraIds=10,20&integrationDeviceIds={b},{c}", "e3 e4"),
        ("integrationDeviceIds={b}&start=2024-06-01T10:02:00Z&end=2024-06-01T10:03:00Z", "e3"),
        ("integrationEventTypeIds=1,2&start=2024-06-01T10:01:00Z", "e2 e3 e5"),
        ("cameraIds=10,20&end=2024-06-01T10:02:00.000001Z", "e1 e2 e3"),
    ],
)
async def test_list_filters_alone_and_combined(
    admin_client: httpx.AsyncClient, seeded: Seeded, query: str, expected: str
) -> None:
    """Each of Spot's filters keeps exactly its events, alone or with others (every filter
    must hold); lists are comma lists or repeated keys; `start` is inclusive, `end`
    exclusive; the answer is ordered by timestamp."""
    listed = await _listed(
        admin_client, _events(seeded.integration_id), query.format(**seeded.devices)
    )
    assert listed == [seeded.events[name] for name in expected.split()]


async def test_list_item_has_spots_fields_and_attributes_as_stored(
    admin_client: httpx.AsyncClient, integration_id: int, api: RunningApi
) -> None:
    """An item carries Spot's fields, times in RFC 3339 UTC, and the attributes byte for byte
    as stored (key order, spacing and number forms kept)."""
    attributes = '{"b": 1, "a": [1.50, 2e3], "c": {"d": null}}'
    stamp = datetime(2024, 6, 1, 14, 0, 0, 123456, tzinfo=timezone(timedelta(hours=2)))
    (event_id,) = await store(
        api.database_url,
        Stored(integration_id, type_id=7, device_id=42, timestamp=stamp, attributes=attributes),
    )
    answer = await admin_client.get(_events(integration_id))
    assert answer.status_code == 200, answer.text
    assert attributes.encode() in answer.content
    body = answer.json()
    assert set(body) == {"integration_events", "prev", "next"}
    (item,) = body["integration_events"]
    assert set(item) == {
        "id",
        "integration_id",
        "integration_event_type_id",
        "integration_device_id",
        "timestamp",
        "duration",
        "buffer",
        "attributes",
        "created",
        "updated",
    }
    assert (item["id"], item["integration_id"]) == (event_id, integration_id)
    assert (item["integration_event_type_id"], item["integration_device_id"]) == (7, 42)
    assert (item["timestamp"], item["duration"], item["buffer"]) == (
        "2024-06-01T12:00:00.123Z",
        5000,
        1000,
    )
    assert item["attributes"] == orjson.loads(attributes)
    assert item["created"].endswith("Z")


# --- paging ---------------------------------------------------------------------------------------


async def _walk(
    client: httpx.AsyncClient, path: str, query: dict[str, Any]
) -> list[dict[str, Any]]:
    """Every page, following `next` until it is null."""
    pages, cursor = [], None
    while True:
        params = {**query, **({"cursor": cursor} if cursor else {})}
        answer = await client.get(path, params=params)
        assert answer.status_code == 200, answer.text
        pages.append(answer.json())
        cursor = pages[-1]["next"]
        if cursor is None or len(pages) > 50:
            return pages


@pytest.mark.parametrize(
    "query",
    [
        {},
        {"integrationDeviceIds": "1"},
        {"integrationDeviceIds": "1,2"},
        {"integrationEventTypeIds": "1,2"},
    ],
)
async def test_paging_with_cursor_has_no_gap_or_duplicate(
    admin_client: httpx.AsyncClient, integration_id: int, api: RunningApi, query: dict[str, Any]
) -> None:
    """Paging with `next` walks every listed event once, in (timestamp, id) order, even when
    timestamps tie across pages; `prev` of a page leads back to the page before it."""
    rows = [
        Stored(
            integration_id,
            device_id=1 + n % 2,
            type_id=1 + n % 2,
            timestamp=T0 + timedelta(seconds=n // 4),
        )
        for n in range(23)
    ]
    ids = await store(api.database_url, *rows)
    wanted_devices = {int(d) for d in query.get("integrationDeviceIds", "1,2").split(",")}
    expected = sorted(
        (row.timestamp, uuid.UUID(i))
        for i, row in zip(ids, rows, strict=True)
        if row.device_id in wanted_devices
    )
    pages = await _walk(admin_client, _events(integration_id), {**query, "limit": 5})
    walked = [uuid.UUID(item["id"]) for page in pages for item in page["integration_events"]]
    assert walked == [event_id for _, event_id in expected]
    assert pages[0]["prev"] is None
    assert all(page["prev"] for page in pages[1:])
    assert len(pages) == -(-len(expected) // 5)
    back = await admin_client.get(
        _events(integration_id), params={**query, "limit": 5, "cursor": pages[1]["prev"]}
    )
    assert back.json()["integration_events"] == pages[0]["integration_events"]
    assert back.json()["prev"] is None
    assert back.json()["next"] is not None


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("limit=101", "limit"),
        ("limit=0", "limit"),
        ("cursor=garbage", "cursor"),
        ("cursor=eyJpZCI6IDF9", "cursor"),
        ("start=yesterday", "start"),
        ("start=2024-06-01", "start"),
        ("end=2024-06-01T10:00:00", "end"),
        ("end=2024-02-30T10:00:00Z", "end"),
        ("integrationDeviceIds=x", "integrationDeviceIds"),
        ("integrationEventTypeIds=2147483648", "integrationEventTypeIds"),
        ("cameraIds=-1", "cameraIds"),
    ],
)
async def test_bad_list_parameters_are_400_naming_them(
    admin_client: httpx.AsyncClient, integration_id: int, query: str, field: str
) -> None:
    """A limit over 100, a cursor that is not ours, a malformed time or id: 400 with the
    parameter named in `details`."""
    answer = await admin_client.get(f"{_events(integration_id)}?{query}")
    assert answer.status_code == 400, answer.text
    assert answer.json()["code"] == "invalid_request"
    assert [d["field"] for d in answer.json()["details"]] == [field]


async def test_only_current_revisions_are_listed(
    admin_client: httpx.AsyncClient, integration_id: int, api: RunningApi
) -> None:
    """An updated event is listed once, in its latest state; a deleted or rejected event and
    superseded revisions are not listed."""
    updated, deleted, rejected = (str(uuid.uuid4()) for _ in range(3))
    await store(
        api.database_url,
        Stored(integration_id, updated, current=False, attributes='{"v": 1}'),
        Stored(integration_id, updated, revision=2, op="updated", attributes='{"v": 2}'),
        Stored(integration_id, deleted, current=False),
        Stored(integration_id, deleted, revision=2, op="deleted", current=False),
        Stored(integration_id, rejected, revision=0, op="rejected", current=False),
    )
    items = (await admin_client.get(_events(integration_id))).json()["integration_events"]
    assert [(i["id"], i["attributes"]) for i in items] == [(updated, {"v": 2})]


# --- access ---------------------------------------------------------------------------------------


async def test_another_integrations_token_gets_404(
    api: RunningApi, admin_client: httpx.AsyncClient, integration_id: int
) -> None:
    """An integration token reads its own events; on another integration's every event
    endpoint answers 404, as for an unknown integration; no token is 401."""
    other = (await admin_client.post("/v1/integrations", json={"name": "b"})).json()["integration"][
        "id"
    ]
    (own,) = await store(api.database_url, Stored(integration_id))
    (foreign,) = await store(api.database_url, Stored(other))
    made = await admin_client.post(f"/v1/integrations/{integration_id}/tokens", json={})
    token = made.json()["integration_token"]["token"]
    body = {"integration_event_type_id": 1, "attributes": {}}
    async with api.client(token) as client:
        assert await _listed(client, _events(integration_id)) == [own]
        assert (await client.get(f"{_events(integration_id)}/{own}")).status_code == 200
        answers = [
            await client.get(_events(other)),
            await client.get(f"{_events(other)}/{foreign}"),
            await client.put(f"{_events(other)}/{foreign}", json=body),
            await client.delete(f"{_events(other)}/{foreign}"),
            await client.get(_events(2147483000)),
        ]
    assert [a.status_code for a in answers] == [404] * 5
    async with api.client(None) as anonymous:
        assert (await anonymous.get(_events(integration_id))).status_code == 401


# --- one event's fate -----------------------------------------------------------------------------


async def test_fate_of_accepted_rejected_deleted_and_unknown_events(
    admin_client: httpx.AsyncClient, integration_id: int, api: RunningApi
) -> None:
    """By id: an accepted event in its latest state; a rejected one with its reason and the
    fields it carried; a deleted, unknown (or other integration's) or malformed id is 404."""
    accepted, rejected, deleted = (str(uuid.uuid4()) for _ in range(3))
    error = {
        "status": 422,
        "code": "invalid_attributes",
        "message": "bad",
        "details": [{"field": "a", "message": "x"}],
    }
    await store(
        api.database_url,
        Stored(integration_id, accepted, current=False),
        Stored(integration_id, accepted, revision=2, op="updated", attributes='{"v": 2}'),
        Stored(
            integration_id,
            rejected,
            revision=0,
            op="rejected",
            current=False,
            device_id=None,
            error=error,
        ),
        Stored(integration_id, deleted, current=False),
        Stored(integration_id, deleted, revision=2, op="deleted", current=False),
    )
    base = _events(integration_id)
    ok = (await admin_client.get(f"{base}/{accepted}")).json()
    assert ok["status"] == "accepted"
    assert "error" not in ok
    assert (ok["integration_event"]["id"], ok["integration_event"]["attributes"]) == (
        accepted,
        {"v": 2},
    )
    bad = (await admin_client.get(f"{base}/{rejected}")).json()
    assert (bad["status"], bad["error"]) == ("rejected", error)
    assert (bad["integration_event"]["id"], bad["integration_event"]["integration_device_id"]) == (
        rejected,
        None,
    )
    other = (await admin_client.post("/v1/integrations", json={"name": "o"})).json()["integration"][
        "id"
    ]
    for path in (
        f"{base}/{deleted}",
        f"{base}/{uuid.uuid4()}",
        f"{_events(other)}/{accepted}",
        f"{base}/not-a-uuid",
        f"{base}/{accepted}x",
    ):
        answer = await admin_client.get(path)
        assert (answer.status_code, answer.json()["code"]) == (404, "not_found"), path


# --- updates and deletes --------------------------------------------------------------------------


async def test_change_of_an_event_not_stored_is_404(
    admin_client: httpx.AsyncClient, integration_id: int, api: RunningApi
) -> None:
    """PUT and DELETE of an unknown, deleted or rejected event answer 404 at once."""
    deleted, rejected = str(uuid.uuid4()), str(uuid.uuid4())
    await store(
        api.database_url,
        Stored(integration_id, deleted, current=False),
        Stored(integration_id, deleted, revision=2, op="deleted", current=False),
        Stored(integration_id, rejected, revision=0, op="rejected", current=False),
    )
    body = {"integration_event_type_id": 1, "attributes": {"a": 1}}
    for event_id in (str(uuid.uuid4()), deleted, rejected):
        path = f"{_events(integration_id)}/{event_id}"
        put, delete = await admin_client.put(path, json=body), await admin_client.delete(path)
        assert (put.status_code, delete.status_code) == (404, 404), event_id
        assert put.json()["code"] == "not_found"


@pytest.mark.parametrize(
    ("body", "fields"),
    [
        ({"attributes": {}}, ["integration_event_type_id"]),
        ({"integration_event_type_id": 1}, ["attributes"]),
        (
            {"integration_event_type_id": 1, "attributes": {}, "timestamp": "2024-01-01T00:00:00Z"},
            ["timestamp"],
        ),
        (
            {"integration_event_type_id": 1, "attributes": [], "duration": 600001},
            ["attributes", "duration"],
        ),
    ],
)
async def test_update_with_bad_body_is_400_with_details(
    admin_client: httpx.AsyncClient,
    integration_id: int,
    api: RunningApi,
    body: dict[str, Any],
    fields: list[str],
) -> None:
    """An update body is Spot's: missing, unknown or out-of-range fields are a 400 naming each."""
    (event_id,) = await store(api.database_url, Stored(integration_id))
    answer = await admin_client.put(f"{_events(integration_id)}/{event_id}", json=body)
    assert answer.status_code == 400, answer.text
    assert sorted(d["field"] for d in answer.json()["details"]) == fields


async def test_update_body_rules_match_ingest(
    admin_client: httpx.AsyncClient, integration_id: int, api: RunningApi
) -> None:
    """Not JSON: 400 invalid_json; not declared JSON: 415; over the body limit: 413."""
    (event_id,) = await store(api.database_url, Stored(integration_id))
    path = f"{_events(integration_id)}/{event_id}"
    json_type = {"content-type": "application/json"}
    broken = await admin_client.put(path, content=b'{"attributes":', headers=json_type)
    text = await admin_client.put(path, content=b"{}", headers={"content-type": "text/plain"})
    huge = await admin_client.put(
        path, content=b" " * (api.settings.max_body_bytes + 1), headers=json_type
    )
    assert (broken.status_code, broken.json()["code"]) == (400, "invalid_json")
    assert (text.status_code, huge.status_code) == (415, 413)


async def test_update_and_delete_travel_the_raw_topic_under_the_events_key(
    admin_client: httpx.AsyncClient, integration_id: int, api: RunningApi
) -> None:
    """PUT and DELETE answer 202 with the event id once on the raw topic: keyed with the
    event's stored raw key, headers integration-id, event-id, op, received-at and the
    caller's traceparent; the update's body byte for byte, the delete's empty."""
    raw_key = f"{integration_id}:door-{uuid.uuid4()}".encode()
    (event_id,) = await store(api.database_url, Stored(integration_id, raw_key=raw_key))
    path = f"{_events(integration_id)}/{event_id}"
    type_id = await _event_type(admin_client, integration_id)
    body = b'{"integration_event_type_id": %d,  "attributes": {"b": 1.50, "a": 2}, "buffer": 0}'
    body %= type_id
    trace = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    headers = {"content-type": "application/json", "traceparent": trace}
    put = await admin_client.put(path, content=body, headers=headers)
    delete = await admin_client.delete(path, headers={"traceparent": trace})
    assert (put.status_code, delete.status_code) == (202, 202), put.text
    assert put.json() == delete.json() == {"event_id": event_id}
    records = await read_topic(
        api.bootstrap,
        api.settings.raw_topic,
        until=lambda rs: len([r for r in rs if r.key == raw_key]) >= 2,
    )
    mine = [r for r in records if r.key == raw_key]
    assert [(header(r, "op"), r.value) for r in mine] == [(b"update", body), (b"delete", b"")]
    for record in mine:
        assert header(record, "integration-id") == str(integration_id).encode()
        assert header(record, "event-id") == event_id.encode()
        assert header(record, "traceparent") == trace.encode()
        assert int(header(record, "received-at") or b"0") > 1_700_000_000_000


# --- the store switch and routing -----------------------------------------------------------------


@pytest.fixture(scope="module")
async def store_off(api: RunningApi, api_settings: Settings) -> AsyncIterator[RunningApi]:
    """A second API on the same database and topics, with the event store off."""
    async with running_api(
        api_settings, api.bootstrap, api.database_url, event_store="off"
    ) as served:
        yield served


async def _sees_integration(client: httpx.AsyncClient, integration_id: int) -> None:
    """Wait until the API's token cache (refreshed on a change notification) knows the
    integration made through the other API."""
    for _ in range(200):
        if (await client.get(_events(integration_id))).status_code != 404:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the integration never became known")


async def _event_type(client: httpx.AsyncClient, integration_id: int) -> int:
    """A new event type taking any attributes."""
    body = {"name": "any", "schema": {"type": "object"}}
    answer = await client.post(f"/v1/integrations/{integration_id}/event-types", json=body)
    assert answer.status_code == 200, answer.text
    found: int = answer.json()["integration_event_type"]["id"]
    return found


async def test_store_off_answers_501_and_ingest_still_works(
    store_off: RunningApi, integration_id: int, api: RunningApi
) -> None:
    """With INGEST_EVENT_STORE=off the four event endpoints answer 501
    `event_store_disabled`, even for a stored event; ingest on the same path still answers
    202."""
    (event_id,) = await store(api.database_url, Stored(integration_id))
    path = f"{_events(integration_id)}/{event_id}"
    async with store_off.client() as client:
        await _sees_integration(client, integration_id)
        type_id = await _event_type(client, integration_id)
        answers = [
            await client.get(_events(integration_id)),
            await client.get(path),
            await client.put(path, json={"integration_event_type_id": 1, "attributes": {}}),
            await client.delete(path),
        ]
        ingest = await client.post(_events(integration_id), json=event(type_id))
    assert [(a.status_code, a.json()["code"]) for a in answers] == [
        (501, "event_store_disabled")
    ] * 4
    assert answers[0].json()["title"] == "Not Implemented"
    assert ingest.status_code == 202, ingest.text


async def test_list_ingest_and_import_share_their_paths(
    admin_client: httpx.AsyncClient, integration_id: int
) -> None:
    """GET lists and POST ingests on `.../events`; `.../events/import` is still the import; a
    wrong method gets 405 with every method of the path in `Allow`."""
    path = _events(integration_id)
    one = event(await _event_type(admin_client, integration_id))
    assert (await admin_client.get(path)).status_code == 200
    assert (await admin_client.post(path, json=one)).status_code == 202
    imported = await admin_client.post(f"{path}/import", json={"integration_events": [one]})
    assert imported.status_code == 202, imported.text
    wrong = await admin_client.patch(path, json={})
    assert wrong.status_code == 405
    assert set(wrong.headers["allow"].replace(" ", "").split(",")) == {"GET", "HEAD", "POST"}
    item = await admin_client.patch(f"{path}/{uuid.uuid4()}", json={})
    assert set(item.headers["allow"].replace(" ", "").split(",")) == {
        "GET",
        "HEAD",
        "PUT",
        "DELETE",
    }
    assert (await admin_client.get(f"{path}/import")).status_code == 405


# --- cascades -------------------------------------------------------------------------------------


async def test_deleting_a_device_deletes_its_events(
    admin_client: httpx.AsyncClient, integration_id: int, api: RunningApi
) -> None:
    """Spot's cascade: a deleted device's stored events (every revision) go with it; other
    devices' stay."""
    gone = await _device(admin_client, integration_id, "gone", [])
    kept = await _device(admin_client, integration_id, "kept", [])
    event_id = str(uuid.uuid4())
    await store(
        api.database_url,
        Stored(integration_id, event_id, device_id=gone, current=False),
        Stored(integration_id, event_id, revision=2, op="updated", device_id=gone),
        Stored(integration_id, device_id=kept),
    )
    answer = await admin_client.delete(f"/v1/integrations/{integration_id}/devices/{gone}")
    assert answer.status_code == 200, answer.text
    where = "integration_id = %s AND device_id = %s"
    assert await count_events(api.database_url, where, integration_id, gone) == 0
    assert await count_events(api.database_url, where, integration_id, kept) == 1


async def test_deleting_an_event_type_deletes_its_events(
    admin_client: httpx.AsyncClient, integration_id: int, api: RunningApi
) -> None:
    """Spot's cascade: a deleted event type's stored events go with it; other types' stay."""
    types = f"/v1/integrations/{integration_id}/event-types"
    made = [
        await admin_client.post(types, json={"name": n, "schema": {"type": "object"}}) for n in "ab"
    ]
    gone, kept = (m.json()["integration_event_type"]["id"] for m in made)
    await store(
        api.database_url, Stored(integration_id, type_id=gone), Stored(integration_id, type_id=kept)
    )
    assert (await admin_client.delete(f"{types}/{gone}")).status_code == 200
    where = "integration_id = %s AND event_type_id = %s"
    assert await count_events(api.database_url, where, integration_id, gone) == 0
    assert await count_events(api.database_url, where, integration_id, kept) == 1


async def test_deleting_an_integration_deletes_its_events(
    admin_client: httpx.AsyncClient, api: RunningApi
) -> None:
    """Spot's cascade: a deleted integration's stored events go with it; others' stay."""
    made = [await admin_client.post("/v1/integrations", json={"name": n}) for n in "ab"]
    gone, kept = (m.json()["integration"]["id"] for m in made)
    await store(api.database_url, Stored(gone), Stored(gone, device_id=None), Stored(kept))
    assert (await admin_client.delete(f"/v1/integrations/{gone}")).status_code == 200
    assert await count_events(api.database_url, "integration_id = %s", gone) == 0
    assert await count_events(api.database_url, "integration_id = %s", kept) == 1


async def test_an_update_that_cannot_apply_is_refused_at_once(
    admin_client: httpx.AsyncClient, integration_id: int, api: RunningApi
) -> None:
    """Synchronous checks (the default) on PUT, with the worker's codes: a type the
    integration lacks is 404 `unknown_event_type`; attributes that, merged over the stored
    ones, break the type's schema are 400 `invalid_attributes` naming the field; an update
    whose own attributes lack a required key the stored ones have is accepted (202)."""
    schema = {
        "type": "object",
        "required": ["store", "n"],
        "properties": {"store": {"type": "string"}, "n": {"type": "integer"}},
    }
    made = await admin_client.post(
        f"/v1/integrations/{integration_id}/event-types", json={"name": "s", "schema": schema}
    )
    type_id = made.json()["integration_event_type"]["id"]
    stored = Stored(integration_id, type_id=type_id, attributes='{"store": "s1", "n": 1}')
    (event_id,) = await store(api.database_url, stored)
    path = f"{_events(integration_id)}/{event_id}"

    def update(type_id: int, **attributes: Any) -> dict[str, Any]:
        return {"integration_event_type_id": type_id, "attributes": attributes}

    unknown = await admin_client.put(path, json=update(type_id + 10_000, n=2))
    broken = await admin_client.put(path, json=update(type_id, n="two"))
    merged = await admin_client.put(path, json=update(type_id, n=2))
    assert (unknown.status_code, unknown.json()["code"]) == (404, "unknown_event_type")
    assert (broken.status_code, broken.json()["code"]) == (400, "invalid_attributes")
    assert [d["field"] for d in broken.json()["details"]] == ["attributes.n"]
    assert merged.status_code == 202, merged.text
