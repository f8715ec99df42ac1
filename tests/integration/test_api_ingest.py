"""Ingest and import over real HTTP: field rules at their boundaries, what lands on the raw
topic, and the failure answers."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import orjson
import pytest

from tests.integration.apiserver import RunningApi
from tests.integration.kafka_read import header, read_topic

INT32_MAX = 2**31 - 1
STORE_SCHEMA = {"type": "object", "required": ["store"], "properties": {"store": {}}}


def event(type_id: int = 1, **fields: Any) -> dict[str, Any]:
    """A valid event of type `type_id`, with some fields replaced (None removes a field). In
    sync mode the API checks the type, so pass one that exists (the `event_type_id` fixture)
    unless the test is about what comes first."""
    base: dict[str, Any] = {
        "integration_event_type_id": type_id,
        "timestamp": "2024-06-01T12:00:00Z",
        "attributes": {"store": "s1"},
        "device_external_id": "lane-1",
    }
    base.update(fields)
    return {k: v for k, v in base.items() if v is not None}


def _events_path(integration_id: int) -> str:
    return f"/v1/integrations/{integration_id}/events"


@pytest.mark.parametrize(
    ("fields", "status"),
    [
        ({"duration": 600000}, 202),
        ({"duration": 600001}, 400),
        ({"duration": 0}, 202),
        ({"duration": -1}, 400),
        ({"buffer": 120000}, 202),
        ({"buffer": 120001}, 400),
        ({"device_external_id": "x" * 255}, 202),
        ({"device_external_id": "x" * 256}, 400),
        ({"device_external_id": "é" * 255}, 202),
        ({"device_external_id": "🚀" * 255}, 202),
        ({"device_external_id": "é" * 256}, 400),
        ({"device_external_id": ""}, 400),
        ({"integration_event_type_id": INT32_MAX}, 404),  # well-shaped: unknown_event_type
        ({"integration_event_type_id": INT32_MAX + 1}, 400),
        ({"integration_device_id": INT32_MAX}, 404),  # well-shaped: device_not_found
        ({"integration_device_id": INT32_MAX + 1}, 400),
        ({"integration_event_type_id": 1.5}, 400),
        ({"integration_event_type_id": "1"}, 400),
        ({"timestamp": "2024-02-29T00:00:00Z"}, 202),
        ({"timestamp": "2024-02-30T00:00:00Z"}, 400),
        ({"timestamp": "2024-06-01T12:00:00.123+02:00"}, 202),
        ({"timestamp": "2024-06-01 12:00"}, 400),
        ({"timestamp": "yesterday"}, 400),
        ({"attributes": []}, 400),
        ({"attributes": None}, 400),
        ({"timestamp": None}, 400),
        ({"integration_event_type_id": None}, 400),
        ({"extra": 1}, 400),
    ],
)
async def test_field_rules_at_their_boundaries(
    api: RunningApi, integration_id: int, fields: dict[str, Any], status: int, event_type_id: int
) -> None:
    """Each field rule holds exactly at its limit (lengths in characters, not bytes); a
    well-shaped id that names nothing gets the synchronous check's 404."""
    async with api.client() as client:
        answer = await client.post(
            _events_path(integration_id), json=event(event_type_id, **fields)
        )
    assert answer.status_code == status, answer.text
    if status == 400:
        assert answer.headers["content-type"] == "application/problem+json"
        assert answer.json()["details"], answer.text


async def test_invalid_request_names_every_field_at_fault(
    admin_client: httpx.AsyncClient, integration_id: int
) -> None:
    """A 400 lists each bad field with a message: missing, unknown and out of range."""
    body = event(timestamp=None, duration=600001, colour="red")
    answer = await admin_client.post(_events_path(integration_id), json=body)
    problem = answer.json()
    assert (answer.status_code, problem["code"], problem["status"]) == (400, "invalid_request", 400)
    fields = {d["field"]: d for d in problem["details"]}
    assert set(fields) == {"timestamp", "duration", "colour"}
    assert fields["duration"]["value"] == 600001
    assert fields["colour"]["message"] == "unknown field"


async def test_accepted_event_is_on_the_raw_topic_byte_for_byte(
    api: RunningApi, admin_client: httpx.AsyncClient, integration_id: int, event_type_id: int
) -> None:
    """A 202'd event is on the raw topic with the body unchanged, the device-hint key and
    every documented header; the caller's traceparent is carried through."""
    body = (
        b'{"integration_event_type_id": %d,  "timestamp": "2024-06-01T12:00:00Z", '
        b'"attributes": {"b": 1, "a": [1.50, 2]}, "device_external_id": "door-9"}'
    ) % event_type_id
    trace = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    answer = await admin_client.post(
        _events_path(integration_id),
        content=body,
        headers={"content-type": "application/json", "traceparent": trace},
    )
    assert answer.status_code == 202, answer.text
    event_id = answer.json()["event_id"]
    assert uuid.UUID(event_id)

    records = await read_topic(
        api.bootstrap,
        api.settings.raw_topic,
        until=lambda rs: any(header(r, "event-id") == event_id.encode() for r in rs),
    )
    (record,) = [r for r in records if header(r, "event-id") == event_id.encode()]
    assert record.value == body
    assert record.key == f"{integration_id}:door-9".encode()
    assert header(record, "integration-id") == str(integration_id).encode()
    assert header(record, "traceparent") == trace.encode()
    assert int(header(record, "received-at") or b"0") > 1_700_000_000_000
    assert header(record, "idempotency-key") is None


async def test_rejected_request_publishes_nothing(
    api: RunningApi, admin_client: httpx.AsyncClient, integration_id: int, event_type_id: int
) -> None:
    """A 4xx'd event never reaches the raw topic; a later good one of the same device does."""
    bad = await admin_client.post(
        _events_path(integration_id),
        json=event(event_type_id, duration=600001, device_external_id="probe"),
    )
    good = await admin_client.post(
        _events_path(integration_id), json=event(event_type_id, device_external_id="probe")
    )
    assert (bad.status_code, good.status_code) == (400, 202)
    key = f"{integration_id}:probe".encode()
    records = await read_topic(
        api.bootstrap,
        api.settings.raw_topic,
        until=lambda rs: any(r.key == key for r in rs),
    )
    assert [orjson.loads(r.value).get("duration") for r in records if r.key == key] == [None]


async def test_key_is_the_device_id_then_the_event_id(
    api: RunningApi, admin_client: httpx.AsyncClient, integration_id: int
) -> None:
    """The key is `{integration}:{device id}` when given (it wins over the external id), and the
    event id when the device comes from a template."""
    typed = await admin_client.post(
        f"/v1/integrations/{integration_id}/event-types",
        json={"name": "t", "schema": STORE_SCHEMA, "external_device_id_template": "{store}"},
    )
    type_id = typed.json()["integration_event_type"]["id"]
    made = await admin_client.post(
        f"/v1/integrations/{integration_id}/devices", json={"name": "d", "external_id": "d-1"}
    )
    device_id = made.json()["integration_device"]["id"]
    direct = await admin_client.post(
        _events_path(integration_id), json=event(type_id, integration_device_id=device_id)
    )
    templated = await admin_client.post(
        _events_path(integration_id), json=event(type_id, device_external_id=None)
    )
    ids = {direct.json()["event_id"].encode(), templated.json()["event_id"].encode()}
    records = await read_topic(
        api.bootstrap,
        api.settings.raw_topic,
        until=lambda rs: ids <= {header(r, "event-id") for r in rs},
    )
    keys = {header(r, "event-id"): r.key for r in records if header(r, "event-id") in ids}
    assert keys[direct.json()["event_id"].encode()] == f"{integration_id}:{device_id}".encode()
    templated_id = templated.json()["event_id"].encode()
    assert keys[templated_id] == templated_id


async def test_idempotency_key_gives_the_same_event_id(
    api: RunningApi, admin_client: httpx.AsyncClient, integration_id: int, event_type_id: int
) -> None:
    """The same Idempotency-Key in the same integration yields the same event id and the key
    travels as a header; another key yields another id."""
    path = _events_path(integration_id)
    first = await admin_client.post(
        path, json=event(event_type_id), headers={"idempotency-key": "k-1"}
    )
    again = await admin_client.post(
        path, json=event(event_type_id), headers={"idempotency-key": "k-1"}
    )
    other = await admin_client.post(
        path, json=event(event_type_id), headers={"idempotency-key": "k-2"}
    )
    for answer in (first, again, other):
        assert answer.status_code == 202, answer.text
    assert first.json()["event_id"] == again.json()["event_id"] != other.json()["event_id"]
    too_long = await admin_client.post(
        path, json=event(event_type_id), headers={"idempotency-key": "k" * 256}
    )
    assert too_long.status_code == 400
    event_id = first.json()["event_id"].encode()
    records = await read_topic(
        api.bootstrap,
        api.settings.raw_topic,
        until=lambda rs: any(header(r, "event-id") == event_id for r in rs),
    )
    assert {header(r, "idempotency-key") for r in records if header(r, "event-id") == event_id} == {
        b"k-1"
    }


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b'{"integration_event_type_id": 1,', "invalid_json"),
        (b"[" * 5000 + b"]" * 5000, "invalid_json"),
        (b'{"attributes": "\xff\xfe"}', "invalid_json"),
        (b'{"duration": 1e999}', "invalid_json"),
        (b"", "invalid_json"),
        (
            b'{"integration_event_type_id": 123456789012345678901234567890, "timestamp": '
            b'"2024-06-01T12:00:00Z", "attributes": {}}',
            "invalid_request",
        ),
        (b"null", "invalid_request"),
        (b'"just a string"', "invalid_request"),
    ],
)
async def test_malformed_bodies_get_a_400_with_a_reason(
    admin_client: httpx.AsyncClient, integration_id: int, body: bytes, reason: str
) -> None:
    """Broken JSON, deep nesting, invalid UTF-8 and huge numbers: 400 with a code, never 500."""
    answer = await admin_client.post(
        _events_path(integration_id), content=body, headers={"content-type": "application/json"}
    )
    assert answer.status_code == 400, answer.text
    assert answer.json()["code"] == reason
    assert answer.json()["detail"]


async def test_non_json_content_type_is_415(
    admin_client: httpx.AsyncClient, integration_id: int
) -> None:
    """A body not declared as application/json is refused before it is read."""
    answer = await admin_client.post(
        _events_path(integration_id), content=b"a=1", headers={"content-type": "text/plain"}
    )
    assert answer.status_code == 415
    assert answer.headers["content-type"] == "application/problem+json"


async def test_body_over_the_limit_is_413(
    api: RunningApi, admin_client: httpx.AsyncClient, integration_id: int
) -> None:
    """A body over the configured limit is refused, declared length or not."""
    limit = api.settings.max_body_bytes
    padding = "x" * limit
    answer = await admin_client.post(
        _events_path(integration_id), json=event(attributes={"pad": padding})
    )
    assert answer.status_code == 413
    assert answer.json()["code"] == "body_too_large"

    async def chunks() -> Any:
        for _ in range(limit // 65536 + 2):
            yield b" " * 65536

    streamed = await admin_client.post(
        _events_path(integration_id), content=chunks(), headers={"content-type": "application/json"}
    )
    assert streamed.status_code == 413


async def test_import_answers_per_item_and_publishes_the_valid_ones(
    api: RunningApi, admin_client: httpx.AsyncClient, integration_id: int, event_type_id: int
) -> None:
    """Valid items get event ids and are published; invalid ones get their errors, in order."""
    items = [
        event(event_type_id, device_external_id="i-0"),
        event(event_type_id, duration=600001),
        event(event_type_id, device_external_id="i-2"),
    ]
    answer = await admin_client.post(
        f"/v1/integrations/{integration_id}/events/import", json={"integration_events": items}
    )
    assert answer.status_code == 202, answer.text
    results = answer.json()["results"]
    assert [r["index"] for r in results] == [0, 1, 2]
    assert "event_id" in results[0]
    assert "event_id" in results[2]
    assert results[1]["errors"][0]["field"] == "integration_events.1.duration"
    ids = {results[0]["event_id"].encode(), results[2]["event_id"].encode()}
    records = await read_topic(
        api.bootstrap,
        api.settings.raw_topic,
        until=lambda rs: ids <= {header(r, "event-id") for r in rs},
    )
    published = {
        header(r, "event-id"): orjson.loads(r.value)
        for r in records
        if header(r, "event-id") in ids  # the topic also holds other tests' records
    }
    assert published[results[0]["event_id"].encode()] == items[0]


@pytest.mark.parametrize(
    "body",
    [{"integration_events": []}, {"integration_events": [{}] * 1001}, {"events": []}, []],
)
async def test_import_envelope_rules(
    admin_client: httpx.AsyncClient, integration_id: int, body: Any
) -> None:
    """1..1000 items under `integration_events`, nothing else."""
    answer = await admin_client.post(f"/v1/integrations/{integration_id}/events/import", json=body)
    assert answer.status_code == 400, answer.text
