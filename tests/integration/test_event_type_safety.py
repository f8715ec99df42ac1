"""Event types never reach outside their schema: saving one fetches no reference over HTTP
and reads no file, no pattern can backtrack, internal references still work, and the worker
compiles stored types under the same rules."""

from __future__ import annotations

import http.server
import socket
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import psycopg
import pytest
from psycopg.types.json import Jsonb

from ingest_worker.core.event_types import (
    BAD_PATTERN,
    EXTERNAL_REF,
    RECURSIVE_REF,
    UNKNOWN_META_SCHEMA,
)
from tests.integration.pipeline_env import Pipeline
from tests.integration.worker_env import event_body, integration_with_type


class _Schema(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b'{"type": "string"}'
        self.send_response(200)
        self.send_header("content-type", "application/schema+json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class Loopback(http.server.ThreadingHTTPServer):
    """An HTTP server on 127.0.0.1 that serves a schema at any path and counts every
    connection made to it."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Schema)
        self.connections = 0
        self.url = f"http://127.0.0.1:{self.server_port}"

    def verify_request(self, request: Any, client_address: Any) -> bool:
        self.connections += 1
        return True


@pytest.fixture
def loopback() -> Iterator[Loopback]:
    """A counting loopback server, served from a thread (a fetch made by the API would block
    the event loop the API runs on, so the server must not share it)."""
    server = Loopback()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def _external(url: str) -> list[tuple[dict[str, Any], str, str]]:
    """(schema, field named in the answer, message) for each way to point outside."""
    return [
        ({"$ref": f"{url}/root.json"}, "schema.$ref", EXTERNAL_REF),
        (
            {"type": "object", "properties": {"a": {"$ref": f"{url}/nested.json"}}},
            "schema.properties.a.$ref",
            EXTERNAL_REF,
        ),
        (
            {"$id": f"{url}/base/", "properties": {"a": {"$ref": "relative.json"}}},
            "schema.properties.a.$ref",
            EXTERNAL_REF,
        ),
        ({"$dynamicRef": f"{url}/dynamic.json"}, "schema.$dynamicRef", EXTERNAL_REF),
        ({"$schema": f"{url}/meta"}, "schema.$schema", UNKNOWN_META_SCHEMA),
        (
            {"$defs": {"e": {"$id": f"{url}/e.json", "$schema": f"{url}/meta2"}}},
            "schema.$defs.e.$schema",
            UNKNOWN_META_SCHEMA,
        ),
        (
            {"$defs": {"e": {"$id": f"{url}/e.json", "$ref": "other.json"}}},
            "schema.$defs.e.$ref",
            EXTERNAL_REF,
        ),
        (
            {"$schema": "https://json-schema.org/draft/2019-09/schema", "$recursiveRef": url},
            "schema.$recursiveRef",
            RECURSIVE_REF,
        ),
        ({"$ref": "file:///etc/passwd"}, "schema.$ref", EXTERNAL_REF),
        ({"$ref": "file:///etc/hostname"}, "schema.$ref", EXTERNAL_REF),
        ({"$ref": "file:///no/such/file.json"}, "schema.$ref", EXTERNAL_REF),
    ]


def _details(answer: httpx.Response) -> list[tuple[str, str]]:
    assert answer.status_code == 400, answer.text
    body = answer.json()
    assert body["code"] == "invalid_request", body
    return [(d["field"], d["message"]) for d in body["details"]]


async def test_no_reference_is_fetched_on_save(
    admin_client: httpx.AsyncClient, integration_id: int, loopback: Loopback
) -> None:
    """Every way of pointing a schema at a loopback server or a local file answers 400 naming
    the field, the same for files that exist and files that do not, and the server sees no
    connection, on create and on replace."""
    path = f"/v1/integrations/{integration_id}/event-types"
    kept = await admin_client.post(path, json={"name": "ok", "schema": {"type": "object"}})
    assert kept.status_code == 200, kept.text
    type_path = f"{path}/{kept.json()['integration_event_type']['id']}"
    for schema, field, message in _external(loopback.url):
        created = await admin_client.post(path, json={"name": "t", "schema": schema})
        assert _details(created) == [(field, message)], schema
        replaced = await admin_client.put(type_path, json={"name": "t", "schema": schema})
        assert _details(replaced) == [(field, message)], schema
    assert loopback.connections == 0
    assert _still_listening(loopback)


def _still_listening(loopback: Loopback) -> bool:
    """The counter works: a direct connection is counted."""
    before = loopback.connections
    with socket.create_connection(("127.0.0.1", loopback.server_port), timeout=5) as conn:
        conn.sendall(b"GET / HTTP/1.0\r\n\r\n")
        conn.recv(1024)
    return loopback.connections == before + 1


@pytest.mark.parametrize(
    ("schema", "field"),
    [
        ({"type": "string", "pattern": "(?<=(a+)+)b"}, "schema.pattern"),
        (
            {"type": "object", "properties": {"code": {"type": "string", "pattern": "(a)\\1"}}},
            "schema.properties.code.pattern",
        ),
        (
            {"type": "object", "patternProperties": {"(?=x)y": {}}},
            "schema.patternProperties.(?=x)y",
        ),
    ],
)
async def test_backtracking_patterns_are_refused_on_save(
    admin_client: httpx.AsyncClient, integration_id: int, schema: dict[str, Any], field: str
) -> None:
    """Lookaround and backreferences (what makes a pattern backtrack) answer 400 naming the
    pattern's field."""
    answer = await admin_client.post(
        f"/v1/integrations/{integration_id}/event-types", json={"name": "t", "schema": schema}
    )
    assert _details(answer) == [(field, BAD_PATTERN)]


@pytest.mark.parametrize(
    "schema",
    [
        {
            "type": "object",
            "$defs": {"store": {"type": "string", "pattern": "^[a-z]{2,5}\\d$"}},
            "properties": {"store": {"$ref": "#/$defs/store"}, "name": {"pattern": "\\p{L}+"}},
        },
        {"$ref": "https://json-schema.org/draft/2020-12/schema"},
        {"$schema": "http://json-schema.org/draft-07/schema#", "type": "object"},
    ],
)
async def test_internal_references_and_ordinary_patterns_are_saved(
    admin_client: httpx.AsyncClient, integration_id: int, schema: dict[str, Any]
) -> None:
    """`#/$defs/...`, the bundled 2020-12 meta-schema, a bundled `$schema`, and ordinary
    patterns (counted repetition, Unicode classes) save as before."""
    answer = await admin_client.post(
        f"/v1/integrations/{integration_id}/event-types", json={"name": "t", "schema": schema}
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["integration_event_type"]["schema"] == schema


@pytest.fixture
def env(async_env: Pipeline) -> Pipeline:
    """This module's pipeline tests send the worker what the API would refuse at once in sync
    mode."""
    return async_env


async def test_a_stored_type_that_reaches_outside_is_never_fetched_by_the_worker(
    env: Pipeline, loopback: Loopback, caplog: pytest.LogCaptureFixture
) -> None:
    """Types written straight to the database (a remote `$ref`, a lookaround pattern) do not
    compile on the worker: their events are rejected as `unknown_event_type`, nothing is
    fetched, the failure is logged, and the worker goes on with the next event."""
    integration_id, good = await integration_with_type(env.client, {"type": "object"}, None)
    remote = await _stored_type(env, integration_id, {"$ref": f"{loopback.url}/x.json"})
    lookaround = await _stored_type(env, integration_id, {"pattern": "(?<=(a+)+)b"})
    path = f"/v1/integrations/{integration_id}/events"
    ids = []
    for type_id in (remote, lookaround, good):
        body = event_body(type_id, {"a": "x"}, device_external_id="d")
        answer = await env.client.post(path, json=body)
        assert answer.status_code == 202, answer.text
        ids.append(answer.json()["event_id"])
    out = await env.outputs(ids)
    assert [out[i][0][1]["error"]["code"] for i in ids[:2]] == ["unknown_event_type"] * 2
    assert out[ids[2]][0][0] == "accepted"
    assert loopback.connections == 0
    logged = {r.__dict__.get("id") for r in caplog.records if "does not compile" in r.getMessage()}
    assert {remote, lookaround} <= logged


async def _stored_type(env: Pipeline, integration_id: int, schema: dict[str, Any]) -> int:
    async with await psycopg.AsyncConnection.connect(env.api.database_url) as conn:
        cur = await conn.execute(
            "INSERT INTO event_types (integration_id, name, schema) VALUES (%s, 'raw', %s) "
            "RETURNING id",
            (integration_id, Jsonb(schema)),
        )
        row = await cur.fetchone()
    assert row is not None
    type_id: int = row[0]
    return type_id
