"""Management routes with Spot's envelopes: integrations, event types, devices, tokens."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import psycopg
import pytest

from ingest_worker.core.changes import CHANNEL
from tests.integration.apiserver import RunningApi

SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["store_id", "lane", "meta"],
    "properties": {
        "store_id": {"type": "string"},
        "lane": {"type": "integer"},
        "meta": {
            "type": "object",
            "required": ["site"],
            "properties": {
                "site": {"type": "object", "required": ["id"], "properties": {"id": {}}}
            },
        },
        "note": {"type": "string"},
    },
}


def _type_body(**fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"name": "POS sale", "schema": SCHEMA, "duration": 5000, "buffer": 1000}
    body.update(fields)
    return body


async def test_integration_lifecycle(admin_client: httpx.AsyncClient) -> None:
    """Create, read, rename, list and delete an integration, in Spot's envelopes."""
    created = (await admin_client.post("/v1/integrations", json={"name": "doors"})).json()
    item = created["integration"]
    assert set(item) == {"id", "name", "integration_type_id", "created", "updated"}
    assert item["integration_type_id"] == 1  # custom, Spot's default
    path = f"/v1/integrations/{item['id']}"
    renamed = await admin_client.put(path, json={"name": "badges"})
    assert renamed.json()["integration"]["name"] == "badges"
    assert (await admin_client.get(path)).json()["integration"]["name"] == "badges"
    listed = await _all_pages(admin_client, "/v1/integrations", "integrations")
    assert item["id"] in {i["id"] for i in listed}
    assert (await admin_client.delete(path)).status_code == 200
    assert (await admin_client.get(path)).status_code == 404


async def test_integration_type_as_spot_takes_it(admin_client: httpx.AsyncClient) -> None:
    """`integration_type` (`custom` or `pos`) is taken on create and kept on rename; the object
    carries Spot's `integration_type_id` (1 custom, 2 pos); any other type is a 400."""
    pos = await admin_client.post(
        "/v1/integrations", json={"name": "tills", "integration_type": "pos"}
    )
    assert pos.status_code == 200, pos.text
    item = pos.json()["integration"]
    assert item["integration_type_id"] == 2
    path = f"/v1/integrations/{item['id']}"
    renamed = (await admin_client.put(path, json={"name": "tills 2"})).json()["integration"]
    assert renamed["integration_type_id"] == 2
    custom = await admin_client.put(path, json={"name": "tills", "integration_type": "custom"})
    assert custom.json()["integration"]["integration_type_id"] == 1
    bad = await admin_client.post("/v1/integrations", json={"name": "x", "integration_type": "crm"})
    assert (bad.status_code, bad.json()["details"][0]["field"]) == (400, "integration_type")


async def test_integration_list_without_limit_is_every_integration(
    admin_client: httpx.AsyncClient,
) -> None:
    """As Spot answers it: without `limit` or `cursor` the list holds every integration (more
    than a page of 50) with no cursors; with `limit` it pages."""
    made = await asyncio.gather(
        *(admin_client.post("/v1/integrations", json={"name": f"i{n}"}) for n in range(55))
    )
    ids = {answer.json()["integration"]["id"] for answer in made}
    everything = (await admin_client.get("/v1/integrations")).json()
    assert ids <= {i["id"] for i in everything["integrations"]}
    assert len(everything["integrations"]) >= 55
    assert (everything["prev"], everything["next"]) == (None, None)
    listed = [i["id"] for i in everything["integrations"]]
    assert listed == sorted(listed)
    paged = (await admin_client.get("/v1/integrations", params={"limit": 10})).json()
    assert len(paged["integrations"]) == 10
    assert paged["next"] is not None


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"name": ""}, "name"),
        ({"name": "x" * 41}, "name"),
        ({"schema": {"type": "objectx"}}, "schema.type"),
        (
            {"schema": {"type": "object", "properties": {"a": {"pattern": "(["}}}},
            "schema.properties.a.pattern",
        ),
        ({"duration": 600001}, "duration"),
        ({"buffer": -1}, "buffer"),
        ({"external_device_id_template": ""}, "external_device_id_template"),
        ({"external_device_id_template": "no placeholder"}, "external_device_id_template"),
        ({"external_device_id_template": "{store_id"}, "external_device_id_template"),
        ({"external_device_id_template": "store_id}"}, "external_device_id_template"),
        ({"external_device_id_template": "{note}"}, "external_device_id_template"),
        ({"external_device_id_template": "{missing}"}, "external_device_id_template"),
        ({"external_device_id_template": "{meta.site.name}"}, "external_device_id_template"),
        ({"colour": "red"}, "colour"),
    ],
)
async def test_event_type_save_names_the_field_at_fault(
    admin_client: httpx.AsyncClient, integration_id: int, fields: dict[str, Any], field: str
) -> None:
    """A bad name, schema, limit or Device ID Template is a 400 naming the exact field."""
    answer = await admin_client.post(
        f"/v1/integrations/{integration_id}/event-types", json=_type_body(**fields)
    )
    assert answer.status_code == 400, answer.text
    assert [d["field"] for d in answer.json()["details"]] == [field]


@pytest.mark.parametrize(
    "template", ["{store_id}:{lane}", "{meta.site.id}", "{{literal}}-{store_id}", "{lane}"]
)
async def test_event_type_accepts_templates_of_required_properties(
    admin_client: httpx.AsyncClient, integration_id: int, template: str
) -> None:
    """Templates whose every placeholder is required at each level are accepted."""
    answer = await admin_client.post(
        f"/v1/integrations/{integration_id}/event-types",
        json=_type_body(external_device_id_template=template),
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["integration_event_type"]["external_device_id_template"] == template


async def test_event_type_put_replaces_bumps_version_and_notifies(
    api: RunningApi, admin_client: httpx.AsyncClient, integration_id: int
) -> None:
    """PUT replaces the whole type (omitted fields fall back to defaults), bumps its version,
    and announces the change on the database channel the workers listen to."""
    base = f"/v1/integrations/{integration_id}/event-types"
    created = (await admin_client.post(base, json=_type_body())).json()["integration_event_type"]
    assert (created["version"], created["duration"]) == (1, 5000)
    async with await psycopg.AsyncConnection.connect(api.database_url, autocommit=True) as conn:
        await conn.execute(f"LISTEN {CHANNEL}")
        replaced = await admin_client.put(
            f"{base}/{created['id']}", json={"name": "renamed", "schema": {"type": "object"}}
        )
        notes = [n.payload async for n in conn.notifies(timeout=5, stop_after=1)]
    item = replaced.json()["integration_event_type"]
    assert (item["version"], item["name"], item["duration"]) == (2, "renamed", 0)
    assert item["external_device_id_template"] is None
    assert f'"id": {created["id"]}' in notes[0]
    assert '"version": 2' in notes[0]


async def test_device_lifecycle_and_immutable_external_id(
    admin_client: httpx.AsyncClient, integration_id: int
) -> None:
    """Create, rename, re-camera, delete a device; the external id is unique and immutable."""
    base = f"/v1/integrations/{integration_id}/devices"
    body = {"name": "Lane 3", "external_id": "S1:3", "tags": ["pos"], "camera_ids": [1, 2]}
    created = (await admin_client.post(base, json=body)).json()["integration_device"]
    assert created["auto_created"] is False
    duplicate = await admin_client.post(base, json=body)
    assert (duplicate.status_code, duplicate.json()["details"][0]["field"]) == (409, "external_id")
    item = f"{base}/{created['id']}"
    renamed = (await admin_client.put(item, json={"name": "Lane three"})).json()
    assert renamed["integration_device"]["tags"] == ["pos"]
    moved = await admin_client.put(item, json={"external_id": "S1:4"})
    assert moved.status_code == 400
    cams = await admin_client.put(f"{item}/cameras", json={"camera_ids": [1, 2, 3, 4, 5]})
    assert cams.status_code == 400
    cams = await admin_client.put(f"{item}/cameras", json={"camera_ids": [7]})
    assert cams.json()["integration_device"]["camera_ids"] == [7]
    assert (await admin_client.delete(item)).status_code == 200
    assert (await admin_client.get(item)).status_code == 404


async def test_device_list_pages_until_next_is_null_and_filters(
    admin_client: httpx.AsyncClient, integration_id: int
) -> None:
    """Cursor pagination visits every device once, forward and back; `external_id` filters."""
    base = f"/v1/integrations/{integration_id}/devices"
    made = await asyncio.gather(
        *(admin_client.post(base, json={"name": f"d{i}", "external_id": f"e{i}"}) for i in range(7))
    )
    ids = sorted(answer.json()["integration_device"]["id"] for answer in made)
    pages = await _pages(admin_client, base, "integration_devices", limit=3)
    assert [[d["id"] for d in page["integration_devices"]] for page in pages] == [
        ids[0:3],
        ids[3:6],
        ids[6:7],
    ]
    back = await admin_client.get(base, params={"cursor": pages[1]["prev"], "limit": 3})
    assert [d["id"] for d in back.json()["integration_devices"]] == ids[0:3]
    assert back.json()["prev"] is None
    found = await admin_client.get(base, params={"external_id": "e4"})
    assert [d["external_id"] for d in found.json()["integration_devices"]] == ["e4"]
    for bad in ({"limit": "101"}, {"limit": "0"}, {"cursor": "garbage"}):
        assert (await admin_client.get(base, params=bad)).status_code == 400


async def test_device_list_filters_by_tags_and_cameras_as_spot_does(
    admin_client: httpx.AsyncClient, integration_id: int
) -> None:
    """`tags` and `camera_ids` (repeated keys or comma lists) keep the devices with any of the
    given tags and any of the given cameras; both given, a device must match each."""
    base = f"/v1/integrations/{integration_id}/devices"
    devices = {
        "a": (["pos", "north"], [1]),
        "b": (["pos"], [2, 3]),
        "c": (["door"], [3]),
        "d": ([], []),
    }
    for name, (tags, cameras) in devices.items():
        body = {"name": name, "external_id": name, "tags": tags, "camera_ids": cameras}
        assert (await admin_client.post(base, json=body)).status_code == 200

    async def names(query: str) -> list[str]:
        answer = await admin_client.get(f"{base}?{query}")
        assert answer.status_code == 200, answer.text
        return sorted(d["name"] for d in answer.json()["integration_devices"])

    assert await names("tags=pos") == ["a", "b"]
    assert await names("tags=door,north") == ["a", "c"]
    assert await names("tags=door&tags=north") == ["a", "c"]
    assert await names("camera_ids=3") == ["b", "c"]
    assert await names("camera_ids=1,2") == ["a", "b"]
    assert await names("tags=pos&camera_ids=3") == ["b"]
    assert await names("tags=none") == []
    assert await names("") == ["a", "b", "c", "d"]
    for bad in ("camera_ids=x", "camera_ids=99999999999", "tags=a%00b"):
        assert (await admin_client.get(f"{base}?{bad}")).status_code == 400


async def test_tokens_are_shown_once_and_stored_hashed(
    api: RunningApi, admin_client: httpx.AsyncClient, integration_id: int
) -> None:
    """The secret is in the create answer only; the database holds its SHA-256."""
    base = f"/v1/integrations/{integration_id}/tokens"
    created = (await admin_client.post(base, json={"name": "gateway"})).json()
    secret = created["integration_token"]["token"]
    listed = (await admin_client.get(base)).json()["integration_tokens"]
    assert all("token" not in t for t in listed)
    assert secret[:10] == listed[0]["prefix"]
    with psycopg.connect(api.database_url) as conn:
        rows = conn.execute("SELECT token_sha256 FROM api_tokens").fetchall()
    assert all(secret.encode() not in bytes(r[0]) for r in rows)


async def test_management_of_unknown_integration_is_404(admin_client: httpx.AsyncClient) -> None:
    """Every resource under an unknown integration answers 404."""
    for path in ("event-types", "devices", "tokens"):
        answer = await admin_client.get(f"/v1/integrations/2147483600/{path}")
        assert answer.status_code == 404, path


async def _pages(
    client: httpx.AsyncClient, path: str, key: str, limit: int = 100
) -> list[dict[str, Any]]:
    pages, cursor = [], None
    while True:
        params: dict[str, Any] = {"limit": limit}
        if cursor:
            params["cursor"] = cursor
        page = (await client.get(path, params=params)).json()
        pages.append(page)
        cursor = page["next"]
        if cursor is None:
            return pages


async def _all_pages(client: httpx.AsyncClient, path: str, key: str) -> list[dict[str, Any]]:
    return [item for page in await _pages(client, path, key) for item in page[key]]
