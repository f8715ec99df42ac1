"""The soak's verifier against the real broker and PostgreSQL: hand-made outputs, committed in
a transaction, with one problem of each kind planted, and one transaction left open."""

from __future__ import annotations

import asyncio
import io
import json
import time
import uuid
from pathlib import Path
from typing import Any

import fastavro
import psycopg
from confluent_kafka import Producer

from soak.ledger import Sent, append
from soak.verify import SCHEMA_PATH, load_schema, verify
from tests.integration.conftest import RUN_ID, NewTopicFactory
from tests.unit.test_soak_verify import sent


def _sent(event_id: str, integration_id: int, **given: Any) -> Sent:
    return sent(event_id, integration_id=integration_id, **given)


def _accepted(event_id: str, integration_id: int, device: str, **given: Any) -> bytes:
    """An accepted record, single-object encoded; attributes carry `seq`."""
    seq = given.pop("seq", 0)
    record = {
        "event_id": event_id,
        "integration_id": integration_id,
        "integration_event_type_id": 1,
        "event_type_version": 1,
        "integration_device_id": 1,
        "device_external_id": device,
        "device_resolution": "external_id",
        "device_created": False,
        "timestamp": 1_700_000_000_000_000,
        "duration_ms": 0,
        "buffer_ms": 0,
        "attributes_json": json.dumps({"seq": seq}),
        "received_at": 1_700_000_000_000,
        "idempotency_key": None,
        "op": "created",
        "revision": 1,
    } | given
    schema = load_schema()
    body = io.BytesIO()
    fastavro.schemaless_writer(
        body, fastavro.parse_schema(json.loads(SCHEMA_PATH.read_text())), record
    )
    return schema.header + body.getvalue()


def _rejected(event_id: str, code: str) -> bytes:
    error = {"status": 400, "code": code, "message": "planted", "details": []}
    return json.dumps({"event_id": event_id, "raw": "{}", "error": error}).encode()


def _plant_database(url: str, stored: list[tuple[str, int, str, bool]]) -> int:
    """An integration with device `dev-a` (not `dev-b`), and the given event rows (id,
    revision, op, current). Returns the integration id."""
    now_ms = int(time.time() * 1000)
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "INSERT INTO integrations (name) VALUES ('soak') RETURNING id"
        ).fetchone()
        assert row is not None
        integration = int(row[0])
        conn.execute(
            "INSERT INTO devices (integration_id, name, external_id) VALUES (%s, 'dev-a', 'dev-a')",
            (integration,),
        )
        for offset, (event_id, revision, op, current) in enumerate(stored):
            conn.execute(
                "INSERT INTO events (integration_id, id, revision, received_at_ms, op, current,"
                " revision_received_at_ms, source_partition, source_offset, created_ms)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, 0, %s, %s)",
                (integration, event_id, revision, now_ms, op, current, now_ms, offset, now_ms),
            )
    return integration


def _committed(bootstrap: str, records: list[tuple[str, int, bytes, bytes]]) -> None:
    """(topic, partition, event id, value) records, committed in one transaction."""
    producer = Producer(
        {"bootstrap.servers": bootstrap, "transactional.id": f"soak-{RUN_ID}-{uuid.uuid4().hex}"}
    )
    producer.init_transactions(30)
    producer.begin_transaction()
    for topic, partition, event_id, value in records:
        producer.produce(
            topic, value, key=event_id, partition=partition, headers=[("event-id", event_id)]
        )
    producer.commit_transaction(30)


def _left_open(bootstrap: str, topic: str, partition: int) -> Producer:
    """A transaction with one record in it, flushed to the broker and neither committed nor
    aborted: a hanging transaction, until the caller aborts it."""
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "transactional.id": f"soak-open-{RUN_ID}-{uuid.uuid4().hex}",
        }
    )
    producer.init_transactions(30)
    producer.begin_transaction()
    producer.produce(topic, b"{}", partition=partition)
    assert producer.flush(30) == 0
    return producer


async def test_verify_finds_the_planted_problems(
    kafka_bootstrap: str, new_topic: NewTopicFactory, database_url: str, tmp_path: Path
) -> None:
    """One of each: lost, duplicated, misrouted, out of order, revision gap, undecodable, a
    missing device, a stored event missing, a hanging transaction; the rest is clean and
    found so (a retried create's `duplicate` rejection among it)."""
    accepted_topic, rejected_topic = await new_topic(partitions=2), await new_topic(partitions=2)
    a, b, c, d, e, f, g, h = (str(uuid.uuid4()) for _ in range(8))
    # c's row is missing from the store; h was updated once (revision 2 lost below).
    stored = [(x, 1, "created", True) for x in (a, b, f, g)] + [
        (h, 1, "created", False),
        (h, 3, "updated", True),
    ]
    integration = await asyncio.to_thread(_plant_database, database_url, stored)
    ledger = tmp_path / "ledger.jsonl"
    for item in [
        _sent(a, integration, order_key="dev-a", seq=1, external_id="dev-a", new_device=True),
        _sent(b, integration, channel="raw", order_key="dev-a", seq=2, external_id="dev-a"),
        _sent(c, integration, order_key="dev-a", seq=3, external_id="dev-a"),
        _sent(d, integration),  # lost
        _sent(e, integration, channel="raw", expect="rejected", code="invalid_attributes"),
        _sent(f, integration),  # a duplicate rejection without a retry
        _sent(g, integration, attempts=2),  # a duplicate rejection with one: fine
        _sent(h, integration, external_id="dev-b", new_device=True),  # no device row
        _sent(h, integration, op="update", seq=1),
    ]:
        append(ledger, item)
    acc, rej = accepted_topic, rejected_topic
    await asyncio.to_thread(
        _committed,
        kafka_bootstrap,
        [
            (acc, 0, a.encode(), _accepted(a, integration, "dev-a", seq=1, device_created=True)),
            (acc, 0, c.encode(), _accepted(c, integration, "dev-a", seq=3)),  # before b
            (acc, 0, b.encode(), _accepted(b, integration, "dev-a", seq=2)),
            (acc, 0, f.encode(), _accepted(f, integration, "dev-a")),
            (acc, 0, g.encode(), _accepted(g, integration, "dev-a")),
            (acc, 1, h.encode(), _accepted(h, integration, "dev-b", device_created=True)),
            (acc, 1, h.encode(), _accepted(h, integration, "dev-b", op="updated", revision=3)),
            (acc, 1, b"?", b"\xc3\x01" + bytes(8) + b"junk"),  # undecodable
            (rej, 0, e.encode(), _rejected(e, "unknown_event_type")),  # misrouted: other code
            (rej, 0, f.encode(), _rejected(f, "duplicate")),  # duplicated
            (rej, 1, g.encode(), _rejected(g, "duplicate")),
        ],
    )
    hanging = await asyncio.to_thread(_left_open, kafka_bootstrap, rejected_topic, 1)
    try:
        verdict = await asyncio.to_thread(
            verify, ledger, kafka_bootstrap, accepted_topic, rejected_topic, database_url, 3
        )
    finally:
        await asyncio.to_thread(hanging.abort_transaction, 30)
    planted = {
        "lost": 1,
        "duplicated": 1,
        "misrouted": 1,
        "order_violations": 1,
        "revision_errors": 1,
        "undecodable": 1,
        "devices_missing": 1,
        "store_mismatch": 1,
    }
    found = {k: n for k, n in verdict.problems().items() if n}
    assert found == planted | {"hanging_partitions": 1}, verdict.examples
    assert verdict.examples["lost"][0].startswith(d)
    assert verdict.examples["store_mismatch"][0].startswith(c)
    assert f"{rejected_topic}[1]" in verdict.examples["hanging_partitions"][0]
    assert (verdict.outputs, verdict.acked) == (11, 9)
    # Aborted, the transaction hangs no more: every partition is read to its end, past the
    # markers, long before the timeout.
    started = time.monotonic()
    again = await asyncio.to_thread(
        verify, ledger, kafka_bootstrap, accepted_topic, rejected_topic, database_url, 60
    )
    assert time.monotonic() - started < 10
    assert {k: n for k, n in again.problems().items() if n} == planted, again.examples
    assert again.outputs == 11
