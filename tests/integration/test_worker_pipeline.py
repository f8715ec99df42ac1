"""The worker end to end from HTTP: each device resolution path, no fallback, and every
rejection code with the original payload on the rejected topic."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from aiokafka import AIOKafkaProducer

from tests.integration.pipeline_env import Pipeline

SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["store", "lane", "meta"],
    "properties": {
        "store": {"type": "string"},
        "lane": {"type": "number"},
        "meta": {
            "type": "object",
            "required": ["site"],
            "properties": {
                "site": {"type": "object", "required": ["id"], "properties": {"id": {}}}
            },
        },
        "total": {"type": "number", "minimum": 0},
    },
}


@pytest.fixture
def env(async_env: Pipeline) -> Pipeline:
    """These tests send the worker what the API would refuse at once in sync mode."""
    return async_env


async def _setup(env: Pipeline, template: str | None = "{store}:{lane}") -> tuple[int, int]:
    made = await env.client.post("/v1/integrations", json={"name": "pos"})
    integration_id = made.json()["integration"]["id"]
    body: dict[str, Any] = {"name": "sale", "schema": SCHEMA, "duration": 5000, "buffer": 700}
    if template:
        body["external_device_id_template"] = template
    typed = await env.client.post(f"/v1/integrations/{integration_id}/event-types", json=body)
    assert typed.status_code == 200, typed.text
    return integration_id, typed.json()["integration_event_type"]["id"]


def _event(type_id: int, **fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "integration_event_type_id": type_id,
        "timestamp": "2024-06-01T12:00:00.250+02:00",
        "attributes": {"store": "S1", "lane": 3, "meta": {"site": {"id": 77}}},
    }
    base.update(fields)
    return base


async def _send(env: Pipeline, integration_id: int, body: dict[str, Any]) -> str:
    answer = await env.client.post(f"/v1/integrations/{integration_id}/events", json=body)
    assert answer.status_code == 202, answer.text
    event_id: str = answer.json()["event_id"]
    return event_id


def _devices(env: Pipeline, integration_id: int) -> list[tuple[Any, ...]]:
    with psycopg.connect(env.api.database_url) as conn:
        return conn.execute(
            "SELECT external_id, name, auto_created FROM devices WHERE integration_id = %s "
            "ORDER BY external_id",
            (integration_id,),
        ).fetchall()


async def test_each_resolution_path(env: Pipeline) -> None:
    """Direct id, given external id (found or created), and templates with nested paths and
    numbers written as JSON writes them; defaults applied; exactly one `device_created`."""
    integration_id, type_id = await _setup(env, "{store}:{lane}:{meta.site.id}")
    device = await env.client.post(
        f"/v1/integrations/{integration_id}/devices", json={"name": "Door", "external_id": "door-1"}
    )
    device_id = device.json()["integration_device"]["id"]
    ids = {
        "direct": await _send(
            env, integration_id, _event(type_id, integration_device_id=device_id)
        ),
        "existing": await _send(env, integration_id, _event(type_id, device_external_id="door-1")),
        "new": await _send(
            env, integration_id, _event(type_id, device_external_id="gate-9", duration=10)
        ),
        "template": await _send(
            env,
            integration_id,
            _event(type_id, attributes={"store": "S1", "lane": 3.0, "meta": {"site": {"id": 77}}}),
        ),
        "template-again": await _send(env, integration_id, _event(type_id)),
    }
    out = await env.outputs(ids.values())
    got = {name: out[eid] for name, eid in ids.items()}
    assert {k: [kind for kind, _ in v] for k, v in got.items()} == {k: ["accepted"] for k in got}, (
        got
    )
    rec = {name: v[0][1] for name, v in got.items()}
    assert (rec["direct"]["integration_device_id"], rec["direct"]["device_resolution"]) == (
        device_id,
        "direct",
    )
    assert rec["existing"]["integration_device_id"] == device_id
    assert rec["existing"]["device_created"] is False
    assert (rec["new"]["device_external_id"], rec["new"]["device_created"]) == ("gate-9", True)
    assert (rec["new"]["duration_ms"], rec["new"]["buffer_ms"]) == (10, 700)
    assert (rec["template"]["device_external_id"], rec["template"]["device_resolution"]) == (
        "S1:3:77",
        "template",
    )
    assert (
        rec["template"]["integration_device_id"] == rec["template-again"]["integration_device_id"]
    )
    # Whichever of the two the worker handled first created the device: exactly one did.
    created = [rec["template"]["device_created"], rec["template-again"]["device_created"]]
    assert sorted(created) == [False, True]
    assert rec["direct"]["timestamp"].isoformat() == "2024-06-01T10:00:00.250000+00:00"
    assert _devices(env, integration_id) == [
        ("S1:3:77", "S1:3:77", True),
        ("door-1", "Door", False),
        ("gate-9", "gate-9", True),
    ]


async def test_no_fallback_from_a_bad_device_id(env: Pipeline) -> None:
    """A bad `integration_device_id` with a valid external id is rejected and creates nothing;
    so is another integration's device id."""
    integration_id, type_id = await _setup(env)
    other_id, _ = await _setup(env)
    foreign = await env.client.post(
        f"/v1/integrations/{other_id}/devices", json={"name": "Theirs", "external_id": "x"}
    )
    foreign_id = foreign.json()["integration_device"]["id"]
    bad = await _send(
        env,
        integration_id,
        _event(type_id, integration_device_id=2_000_000_000, device_external_id="fresh"),
    )
    theirs = await _send(env, integration_id, _event(type_id, integration_device_id=foreign_id))
    out = await env.outputs([bad, theirs])
    assert [o[1]["error"]["code"] for o in out[bad] + out[theirs]] == ["device_not_found"] * 2
    assert _devices(env, integration_id) == []


async def test_rejection_codes_carry_the_original_payload(env: Pipeline) -> None:
    """Each rejection code, from HTTP or straight from a gateway, with the raw payload, its
    source position and a reason."""
    integration_id, type_id = await _setup(env, "{store}:{meta.site.id}")
    plain = await env.client.post(
        f"/v1/integrations/{integration_id}/event-types",
        json={"name": "plain", "schema": {"type": "object"}},
    )
    plain_type = plain.json()["integration_event_type"]["id"]
    sent = {
        "unknown_event_type": await _send(env, integration_id, _event(2_000_000_000)),
        "invalid_attributes": await _send(
            env, integration_id, _event(type_id, attributes={"store": 1})
        ),
        "device_unresolvable": await _send(env, integration_id, _event(plain_type, attributes={})),
        "template_unresolvable": await _send(
            env,
            integration_id,
            _event(type_id, attributes={"store": "S", "lane": 1, "meta": {"site": {"id": None}}}),
        ),
    }
    keyed = _event(type_id, device_external_id="k")
    first = await env.client.post(
        f"/v1/integrations/{integration_id}/events", json=keyed, headers={"idempotency-key": "abc"}
    )
    again = await env.client.post(
        f"/v1/integrations/{integration_id}/events", json=keyed, headers={"idempotency-key": "abc"}
    )
    assert first.json() == again.json()
    raw = [
        ("invalid_json", b'{"oops', [("integration-id", str(integration_id).encode())]),
        (
            "invalid_request",
            b'{"attributes": {}}',
            [("integration-id", str(integration_id).encode())],
        ),
        ("unknown_integration", orjson_dumps(_event(type_id)), [("integration-id", b"2000000000")]),
        ("no_integration_header", orjson_dumps(_event(type_id)), []),
    ]
    producer = AIOKafkaProducer(bootstrap_servers=env.bootstrap)
    await producer.start()
    try:
        for name, value, headers in raw:
            event_id = f"00000000-0000-4000-8000-{len(sent):012d}"
            await producer.send_and_wait(
                env.settings.raw_topic, value, headers=[*headers, ("event-id", event_id.encode())]
            )
            sent[name] = event_id
    finally:
        await producer.stop()
    out = await env.outputs([*sent.values(), first.json()["event_id"]])
    codes = {name: [o[1]["error"]["code"] for o in out[eid]] for name, eid in sent.items()}
    assert codes == {
        "unknown_event_type": ["unknown_event_type"],
        "invalid_attributes": ["invalid_attributes"],
        "device_unresolvable": ["device_unresolvable"],
        "template_unresolvable": ["template_unresolvable"],
        "invalid_json": ["invalid_json"],
        "invalid_request": ["invalid_request"],
        "unknown_integration": ["unknown_integration"],
        "no_integration_header": ["invalid_request"],
    }
    dup = out[first.json()["event_id"]]
    assert sorted(kind for kind, _ in dup) == ["accepted", "rejected"]
    assert [r["error"]["code"] for kind, r in dup if kind == "rejected"] == ["duplicate"]
    invalid_json = out[sent["invalid_json"]][0][1]
    assert invalid_json["raw"] == '{"oops'
    assert set(invalid_json["source"]) == {"topic", "partition", "offset"}
    attrs = out[sent["invalid_attributes"]][0][1]["error"]
    assert attrs["status"] == 400
    assert {d["field"] for d in attrs["details"]} >= {"attributes.store", "attributes.lane"}


def orjson_dumps(value: Any) -> bytes:
    import orjson

    return orjson.dumps(value)


async def test_a_deleted_device_is_not_resolved_from_memory(env: Pipeline) -> None:
    """The worker keeps resolved devices in memory; deleting one through the API reaches it,
    so the next event with that external id creates a new device."""
    integration_id, type_id = await _setup(env)
    first = await _send(env, integration_id, _event(type_id, device_external_id="lane-7"))
    created = (await env.outputs([first]))[first][0][1]
    path = f"/v1/integrations/{integration_id}/devices/{created['integration_device_id']}"
    assert (await env.client.delete(path)).status_code == 200
    again = await _send(env, integration_id, _event(type_id, device_external_id="lane-7"))
    recreated = (await env.outputs([again]))[again][0][1]
    assert recreated["device_created"] is True
    assert recreated["integration_device_id"] != created["integration_device_id"]
