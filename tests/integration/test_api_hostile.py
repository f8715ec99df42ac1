"""Hostile input over real HTTP: path and query values that must be refused cleanly, records
bigger than the raw topic accepts, import Idempotency-Keys at their limit, clients that leave
mid-body, and imports weighed by their items in the rate limit."""

from __future__ import annotations

import asyncio
import base64
import logging
import uuid
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson
import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from tests.integration.apiserver import ADMIN_TOKEN, RunningApi, running_api
from tests.integration.conftest import RUN_ID
from tests.integration.kafka_read import header, read_topic, read_topics
from tests.integration.pipeline_env import Pipeline
from tests.integration.test_api_ingest import event

HUGE_ID = "9" * 5000
SMALL_TOPIC_BYTES = 20_000


def _errors_logged(caplog: pytest.LogCaptureFixture) -> list[str]:
    """Error records of the API and its server (an unhandled exception shows there)."""
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno >= logging.ERROR and r.name.split(".")[0] in ("ingest_worker", "uvicorn")
    ]


def _assert_problem(answer: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    problem: dict[str, Any] = answer.json()
    assert problem["code"] == code
    assert (problem["name"], problem["message"]) == (problem["title"], problem["detail"])  # Spot's
    return problem


@pytest.mark.parametrize(
    "big",
    [HUGE_ID, "99999999999", "2147483648", "0" * 5000 + "7" * 11],
    ids=["5000-digits", "11-digits", "int32-max-plus-1", "zero-padded-11-digits"],
)
@pytest.mark.parametrize(
    ("method", "template"),
    [
        ("GET", "/v1/integrations/{big}"),
        ("POST", "/v1/integrations/{big}/events"),
        ("POST", "/v1/integrations/{big}/events/import"),
        ("GET", "/v1/integrations/{big}/devices"),
        ("GET", "/v1/integrations/{iid}/devices/{big}"),
        ("PUT", "/v1/integrations/{iid}/devices/{big}/cameras"),
        ("GET", "/v1/integrations/{iid}/event-types/{big}"),
        ("DELETE", "/v1/integrations/{iid}/tokens/{big}"),
    ],
)
async def test_path_ids_beyond_int32_are_404(
    admin_client: httpx.AsyncClient,
    integration_id: int,
    caplog: pytest.LogCaptureFixture,
    method: str,
    template: str,
    big: str,
) -> None:
    """A path id of any length beyond int32 (5,000 digits too) is a 404 problem, not a 500."""
    path = template.format(big=big, iid=integration_id)
    answer = await admin_client.request(method, path, json={"camera_ids": []})
    _assert_problem(answer, 404, "not_found")
    assert _errors_logged(caplog) == []


async def test_leading_zeros_still_name_the_id(
    admin_client: httpx.AsyncClient, integration_id: int
) -> None:
    """Zeros before an id do not count toward its length: 0...0<id> is that id."""
    answer = await admin_client.get(f"/v1/integrations/{'0' * 5000}{integration_id}")
    assert answer.status_code == 200, answer.text
    assert answer.json()["integration"]["id"] == integration_id


@pytest.mark.parametrize(
    "value",
    ["²", "٣", "9" * 5000, "1e2", "-1", "+5", " 5", "", "0x10"],
    ids=[
        "superscript",
        "arabic-indic",
        "5000-digits",
        "exponent",
        "negative",
        "plus",
        "space",
        "empty",
        "hex",
    ],
)
async def test_limit_must_be_ascii_digits(
    admin_client: httpx.AsyncClient,
    integration_id: int,
    caplog: pytest.LogCaptureFixture,
    value: str,
) -> None:
    """`limit` is ASCII digits only: superscripts, other scripts' digits and 5,000 digits are
    a 400 naming `limit`, never a 500."""
    for path in ("/v1/integrations", f"/v1/integrations/{integration_id}/devices"):
        answer = await admin_client.get(path, params={"limit": value})
        problem = _assert_problem(answer, 400, "invalid_request")
        assert [d["field"] for d in problem["details"]] == ["limit"]
    assert _errors_logged(caplog) == []


@pytest.mark.parametrize("name", ["external_id", "cursor", "limit"])
async def test_nul_in_a_query_value_is_400_naming_it(
    admin_client: httpx.AsyncClient,
    integration_id: int,
    caplog: pytest.LogCaptureFixture,
    name: str,
) -> None:
    """A query value holding NUL (which PostgreSQL text cannot store) is a 400 naming the
    parameter, never a 500."""
    answer = await admin_client.get(
        f"/v1/integrations/{integration_id}/devices", params={name: "a\x00b"}
    )
    problem = _assert_problem(answer, 400, "invalid_request")
    assert [d["field"] for d in problem["details"]] == [name]
    assert "NUL" in problem["details"][0]["message"]
    assert _errors_logged(caplog) == []


def _cursor(data: Any) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(data)).decode()


@pytest.mark.parametrize(
    "cursor",
    [
        _cursor({"id": 1e300, "d": "next"}),
        _cursor({"id": 2**40, "d": "next"}),
        _cursor({"id": -1, "d": "prev"}),
        _cursor({"id": True, "d": "next"}),
        _cursor({"id": 2.5, "d": "next"}),
        _cursor({"id": "9" * 5000, "d": "next"}),
        _cursor({"id": 1, "d": "sideways"}),
        _cursor([1, "next"]),
        _cursor("x"),
        "%%%",
        "é" * 10,
        "A" * 5000,
    ],
    ids=[
        "float-huge",
        "over-int32",
        "negative",
        "bool",
        "fraction",
        "digits-string",
        "direction",
        "list",
        "string",
        "not-base64",
        "non-ascii",
        "long",
    ],
)
async def test_cursor_not_of_ours_is_400(
    admin_client: httpx.AsyncClient,
    integration_id: int,
    caplog: pytest.LogCaptureFixture,
    cursor: str,
) -> None:
    """A cursor is only what a list answered: another id type or range, another direction or
    not base64 JSON at all is a 400 naming `cursor`."""
    for path in ("/v1/integrations", f"/v1/integrations/{integration_id}/devices"):
        answer = await admin_client.get(path, params={"cursor": cursor})
        problem = _assert_problem(answer, 400, "invalid_request")
        assert [d["field"] for d in problem["details"]] == ["cursor"]
    assert _errors_logged(caplog) == []


@pytest.fixture
async def small_api(api: RunningApi, integration_id: int) -> AsyncIterator[RunningApi]:
    """An API whose raw topic (one partition, this test's alone) takes records of at most
    SMALL_TOPIC_BYTES bytes."""
    topic = f"test.{RUN_ID}.small.{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=api.bootstrap)
    await admin.start()
    try:
        config = {"max.message.bytes": str(SMALL_TOPIC_BYTES)}
        await admin.create_topics([NewTopic(topic, 1, 1, topic_configs=config)])
    finally:
        await admin.close()
    async with running_api(api.settings, api.bootstrap, api.database_url, raw_topic=topic) as own:
        yield own


async def test_event_over_the_topic_record_limit_is_413(
    small_api: RunningApi, integration_id: int, event_type_id: int
) -> None:
    """A body under the HTTP limit that the raw topic cannot hold is a 413 naming the topic's
    limit (a 503 would have the client retry forever); a smaller one on the same topic is a
    202."""
    path = f"/v1/integrations/{integration_id}/events"
    async with small_api.client() as client:
        big = await client.post(
            path, json=event(event_type_id, attributes={"pad": "x" * SMALL_TOPIC_BYTES})
        )
        small = await client.post(path, json=event(event_type_id, attributes={"pad": "x" * 1000}))
    problem = _assert_problem(big, 413, "body_too_large")
    assert str(SMALL_TOPIC_BYTES) in problem["detail"]
    assert small.status_code == 202, small.text


async def test_import_item_over_the_topic_record_limit_gets_its_own_error(
    small_api: RunningApi, integration_id: int, event_type_id: int
) -> None:
    """An import item too big for the raw topic gets a per-item error and is not published;
    the other items are, and only they are on the topic."""
    items = [
        event(event_type_id, attributes={"pad": "x" * SMALL_TOPIC_BYTES}),
        event(event_type_id, device_external_id="fits"),
    ]
    async with small_api.client() as client:
        answer = await client.post(
            f"/v1/integrations/{integration_id}/events/import", json={"integration_events": items}
        )
    assert answer.status_code == 202, answer.text
    too_big, fits = answer.json()["results"]
    assert too_big["index"] == 0
    assert "event_id" not in too_big
    assert [e["field"] for e in too_big["errors"]] == ["integration_events.0"]
    assert str(SMALL_TOPIC_BYTES) in too_big["errors"][0]["message"]
    event_id = fits["event_id"].encode()
    records = await read_topics(
        small_api.bootstrap,
        [small_api.settings.raw_topic],
        until=lambda rs: any(header(r, "event-id") == event_id for r in rs),
        grace_s=1.0,
    )
    assert [header(r, "event-id") for r in records] == [event_id]


async def test_body_of_exactly_the_body_limit_is_413_not_503(
    api: RunningApi, admin_client: httpx.AsyncClient, integration_id: int, event_type_id: int
) -> None:
    """A body of exactly INGEST_MAX_BODY_BYTES passes the HTTP limit but, with its headers,
    not the default topic's record limit: 413, never 503."""
    limit = api.settings.max_body_bytes
    empty = len(orjson.dumps(event(event_type_id, attributes={"pad": ""})))
    body = orjson.dumps(event(event_type_id, attributes={"pad": "x" * (limit - empty)}))
    assert len(body) == limit
    answer = await admin_client.post(
        f"/v1/integrations/{integration_id}/events",
        content=body,
        headers={"content-type": "application/json"},
    )
    _assert_problem(answer, 413, "body_too_large")


async def _import(
    client: httpx.AsyncClient, integration_id: int, items: list[dict[str, Any]], key: str
) -> list[dict[str, Any]]:
    answer = await client.post(
        f"/v1/integrations/{integration_id}/events/import",
        json={"integration_events": items},
        headers={"idempotency-key": key},
    )
    assert answer.status_code == 202, answer.text
    results: list[dict[str, Any]] = answer.json()["results"]
    return results


async def test_import_with_a_255_character_key(
    api: RunningApi, admin_client: httpx.AsyncClient, integration_id: int, event_type_id: int
) -> None:
    """A 255-character Idempotency-Key serves every item of an import: distinct event ids, the
    same ones on a retry, and each record carries the key unchanged with its item index."""
    key = "k" * 255
    items = [event(event_type_id, device_external_id=f"long-key-{i}") for i in range(3)]
    first = await _import(admin_client, integration_id, items, key)
    again = await _import(admin_client, integration_id, items, key)
    ids = [r["event_id"] for r in first]
    assert len(set(ids)) == 3
    assert [r["event_id"] for r in again] == ids
    wanted = {i.encode() for i in ids}
    records = await read_topic(
        api.bootstrap,
        api.settings.raw_topic,
        until=lambda rs: wanted <= {header(r, "event-id") for r in rs},
    )
    found = {
        (header(r, "event-id"), header(r, "idempotency-key"), header(r, "idempotency-index"))
        for r in records
        if header(r, "event-id") in wanted
    }
    assert found == {(ids[i].encode(), key.encode(), str(i).encode()) for i in range(3)}


async def test_single_key_never_names_an_import_item(
    admin_client: httpx.AsyncClient, integration_id: int, event_type_id: int
) -> None:
    """An ingest with key `abc:0` and item 0 of an import with key `abc` get different ids."""
    single = await admin_client.post(
        f"/v1/integrations/{integration_id}/events",
        json=event(event_type_id),
        headers={"idempotency-key": "abc:0"},
    )
    assert single.status_code == 202, single.text
    (item,) = await _import(admin_client, integration_id, [event(event_type_id)], "abc")
    assert single.json()["event_id"] != item["event_id"]


async def test_worker_accepts_import_items_under_a_255_character_key(env: Pipeline) -> None:
    """End to end, every item of an import under a 255-character key is accepted by the worker
    (none rejected for its key)."""
    made = await env.client.post("/v1/integrations", json={"name": "keys"})
    integration_id = made.json()["integration"]["id"]
    typed = await env.client.post(
        f"/v1/integrations/{integration_id}/event-types",
        json={"name": "t", "schema": {"type": "object"}},
    )
    type_id = typed.json()["integration_event_type"]["id"]
    items = [event(integration_event_type_id=type_id, device_external_id=f"d{i}") for i in (0, 1)]
    results = await _import(env.client, integration_id, items, "z" * 255)
    outputs = await env.outputs([r["event_id"] for r in results])
    assert {eid: [kind for kind, _ in found] for eid, found in outputs.items()} == {
        r["event_id"]: ["accepted"] for r in results
    }


async def _send_then_vanish(url: str, path: str, body: bytes, declared: int) -> None:
    """Send the request line, headers and `body` declaring `declared` bytes, then close."""
    where = urlsplit(url)
    host, port = where.hostname or "127.0.0.1", where.port or 80
    reader, writer = await asyncio.open_connection(host, port)
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
        f"Authorization: Bearer {ADMIN_TOKEN}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {declared}\r\n\r\n"
    )
    writer.write(head.encode() + body)
    await writer.drain()
    await asyncio.sleep(0.3)
    writer.close()
    await writer.wait_closed()
    del reader


@pytest.mark.parametrize("route", ["events", "events/import", "devices"])
async def test_client_gone_mid_body_publishes_nothing(
    api: RunningApi,
    admin_client: httpx.AsyncClient,
    integration_id: int,
    caplog: pytest.LogCaptureFixture,
    route: str,
    event_type_id: int,
) -> None:
    """A client that closes before its declared Content-Length arrived (the part sent being
    valid JSON) has nothing published or stored, and nothing logged as an error; the API
    serves on."""
    marker, device = uuid.uuid4().hex, f"gone-{uuid.uuid4().hex}"
    one = event(event_type_id, device_external_id=device, attributes={"marker": marker})
    body = {
        "events": one,
        "events/import": {"integration_events": [one]},
        "devices": {"name": "gone", "external_id": marker},
    }[route]
    payload = orjson.dumps(body)
    assert len(payload) < 500
    await _send_then_vanish(api.url, f"/v1/integrations/{integration_id}/{route}", payload, 500)
    await asyncio.sleep(0.5)
    after = await admin_client.post(
        f"/v1/integrations/{integration_id}/events",
        json=event(event_type_id, device_external_id=device),
    )
    assert after.status_code == 202, after.text
    after_id = after.json()["event_id"].encode()
    records = await read_topic(
        api.bootstrap,
        api.settings.raw_topic,
        until=lambda rs: any(header(r, "event-id") == after_id for r in rs),
    )
    assert [r for r in records if marker.encode() in r.value] == []
    devices = await admin_client.get(
        f"/v1/integrations/{integration_id}/devices", params={"external_id": marker}
    )
    assert devices.json()["integration_devices"] == []
    assert _errors_logged(caplog) == []


async def test_import_spends_one_token_per_item(
    api: RunningApi, integration_id: int, event_type_id: int
) -> None:
    """An import of N items spends N tokens: past the burst it is a 429 with Retry-After, and
    what it spent is gone for single events too; an import larger than the whole burst still
    passes on a full bucket."""
    path = f"/v1/integrations/{integration_id}/events"
    three = {"integration_events": [event(event_type_id)] * 3}
    async with (
        running_api(
            api.settings, api.bootstrap, api.database_url, rate_limit_per_s=0.01, rate_limit_burst=5
        ) as limited,
        limited.client() as client,
    ):
        first = await client.post(f"{path}/import", json=three)
        second = await client.post(f"{path}/import", json=three)
        single = await client.post(path, json=event(event_type_id))
        last = await client.post(path, json=event(event_type_id))
    assert [first.status_code, second.status_code, single.status_code] == [202, 429, 202]
    _assert_problem(second, 429, "rate_limited")
    assert int(second.headers["retry-after"]) >= 1
    assert last.status_code == 429
    async with (
        running_api(
            api.settings, api.bootstrap, api.database_url, rate_limit_per_s=0.01, rate_limit_burst=5
        ) as limited,
        limited.client() as client,
    ):
        many = await client.post(
            f"{path}/import", json={"integration_events": [event(event_type_id)] * 8}
        )
        after = await client.post(path, json=event(event_type_id))
    assert many.status_code == 202, many.text
    assert after.status_code == 429


@pytest.mark.parametrize(
    "template",
    ["/v1/integrations", "/v1/integrations/{iid}/devices", "/v1/integrations/{iid}/event-types"],
)
async def test_head_on_a_list_answers_like_get_without_a_body(
    admin_client: httpx.AsyncClient,
    integration_id: int,
    caplog: pytest.LogCaptureFixture,
    template: str,
) -> None:
    """HEAD (which HTTP allows wherever GET is) answers GET's status, not a 500."""
    answer = await admin_client.head(template.format(iid=integration_id))
    assert answer.status_code == 200
    assert answer.content == b""
    assert _errors_logged(caplog) == []
