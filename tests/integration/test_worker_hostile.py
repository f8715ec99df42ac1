"""No input stops a partition, against the real services: hostile records produced straight
to the raw topic, compressed gateway batches, outputs too large for their topics, and the
limits on growth (claim expiry, the auto-created device cap). In each, the worker stays up,
the partition moves on, and the next good event is accepted."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import psycopg
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from ingest_worker.core.config import Settings
from ingest_worker.core.rejections import Source
from ingest_worker.worker.decode import fallback_event_id
from tests.integration.apiserver import running_api
from tests.integration.kafka_read import header, read_topics
from tests.integration.pipeline_env import Pipeline, collect, fresh_settings, running_worker
from tests.integration.record_batch import record_batch
from tests.integration.worker_env import event_body, integration_with_type

SCHEMA = {
    "type": "object",
    "required": ["store"],
    "properties": {
        "store": {"type": "string"},
        "list": {"type": "array", "items": {"type": "string"}},
    },
}


@asynccontextmanager
async def pipeline_on(
    base: Settings,
    bootstrap: str,
    database_url: str,
    *,
    partitions: int = 1,
    output_configs: dict[str, str] | None = None,
    **overrides: Any,
) -> AsyncIterator[Pipeline]:
    """An API and a worker on fresh topics; the output topics get `output_configs`."""
    settings = fresh_settings(base, **overrides)
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics(
            [
                NewTopic(settings.raw_topic, partitions, 1),
                NewTopic(settings.accepted_topic, 1, 1, topic_configs=output_configs or {}),
                NewTopic(settings.rejected_topic, 1, 1, topic_configs=output_configs or {}),
            ]
        )
    finally:
        await admin.close()
    async with (
        running_api(settings, bootstrap, database_url) as api,
        api.client() as client,
        running_worker(settings, bootstrap, database_url),
    ):
        yield Pipeline(api, settings, client)


async def produce(
    env: Pipeline,
    records: list[tuple[bytes, list[tuple[str, bytes]]]],
    compression: str | None = None,
) -> list[str]:
    """Produce raw records as a gateway would, each with a fresh event id; return the ids."""
    producer = AIOKafkaProducer(bootstrap_servers=env.bootstrap, compression_type=compression)
    await producer.start()
    ids = []
    try:
        for value, headers in records:
            event_id = str(uuid.uuid4())
            await producer.send_and_wait(
                env.settings.raw_topic, value, headers=[*headers, ("event-id", event_id.encode())]
            )
            ids.append(event_id)
    finally:
        await producer.stop()
    return ids


def nested(depth: int) -> Any:
    value: Any = "x"
    for _ in range(depth):
        value = {"a": value}
    return value


def codes(outputs: list[tuple[str, Any]]) -> list[str]:
    return [o["error"]["code"] if kind == "rejected" else kind for kind, o in outputs]


async def test_hostile_raw_records_each_get_one_output_and_the_partition_moves_on(
    settings: Settings, kafka_bootstrap: str, api_database: str
) -> None:
    """Deep nesting, bad integer headers, non-UTF-8 and repeated headers, 100,000 validation
    errors: each one rejected once with its code, and the good event after them accepted."""
    async with pipeline_on(settings, kafka_bootstrap, api_database) as env:
        integration_id, type_id = await integration_with_type(env.client, SCHEMA, "{store}")
        iid = str(integration_id).encode()
        good = json.dumps(event_body(type_id, {"store": "S1"})).encode()
        cases: list[tuple[str, bytes, list[tuple[str, bytes]]]] = [
            (
                "invalid_json",
                json.dumps(event_body(type_id, nested(300))).encode(),
                [("integration-id", iid)],
            ),
            ("invalid_request", good, [("integration-id", b"--1")]),
            ("invalid_request", good, [("integration-id", "²".encode())]),
            ("invalid_request", good, [("integration-id", b"9" * 5000)]),
            (
                "invalid_request",
                good,
                [("integration-id", iid), ("received-at", str(2**64).encode())],
            ),
            ("invalid_request", good, [("integration-id", iid), ("idempotency-key", b"\xff\xfe")]),
            ("invalid_request", good, [("integration-id", iid), ("integration-id", iid)]),
            (
                "invalid_attributes",
                json.dumps(event_body(type_id, {"store": "S1", "list": [0] * 100_000})).encode(),
                [("integration-id", iid)],
            ),
            ("accepted", good, [("integration-id", iid)]),
        ]
        ids = await produce(env, [(value, headers) for _, value, headers in cases])
        out = await env.outputs(ids)
    assert [codes(out[i]) for i in ids] == [[code] for code, _, _ in cases]
    many = out[ids[7]][0][1]["error"]
    assert many["details_total"] is None  # a large body: its first error only
    assert many["details"][0]["field"].startswith("attributes.list.")


@pytest.mark.parametrize("codec", ["gzip", "snappy", "lz4", "zstd"])
async def test_compressed_gateway_batches_are_consumed(
    settings: Settings, kafka_bootstrap: str, api_database: str, codec: str
) -> None:
    """A gateway producing with any codec Kafka supports gets its events accepted."""
    async with pipeline_on(settings, kafka_bootstrap, api_database) as env:
        integration_id, type_id = await integration_with_type(env.client, SCHEMA, "{store}")
        good = json.dumps(event_body(type_id, {"store": codec})).encode()
        headers = [("integration-id", str(integration_id).encode())]
        ids = await produce(env, [(good, headers), (good, headers)], compression=codec)
        out = await env.outputs(ids)
    assert [codes(out[i]) for i in ids] == [["accepted"], ["accepted"]]


async def test_outputs_too_large_for_their_topics_become_rejections_cut_to_fit(
    settings: Settings, kafka_bootstrap: str, api_database: str
) -> None:
    """With 12,000-byte output topics: an event whose re-serialised attributes outgrow the
    accepted topic is rejected `record_too_large`, a rejection embedding a large body is cut
    (`truncated: true`), and the event after them is accepted."""
    configs = {"max.message.bytes": "12000"}
    async with pipeline_on(settings, kafka_bootstrap, api_database, output_configs=configs) as env:
        integration_id, type_id = await integration_with_type(env.client, SCHEMA, "{store}")
        headers = [("integration-id", str(integration_id).encode())]
        grows = b'{"integration_event_type_id": %d, "timestamp": "2024-06-01T12:00:00Z", ' % type_id
        grows += b'"attributes": {"store": "S", "n": [' + b",".join([b"1E2"] * 2500) + b"]}}"
        big_bad = json.dumps(event_body(type_id, {"store": 1, "pad": "p" * 30_000})).encode()
        good = json.dumps(event_body(type_id, {"store": "S"})).encode()
        ids = await produce(env, [(grows, headers), (big_bad, headers), (good, headers)])
        out = await env.outputs(ids)
    assert [codes(out[i]) for i in ids] == [
        ["record_too_large"],
        ["invalid_attributes"],
        ["accepted"],
    ]
    cut = out[ids[1]][0][1]
    assert cut["truncated"] is True
    assert cut["raw_bytes"] == len(big_bad)
    assert big_bad.decode().startswith(cut["raw"])


async def test_import_keys_of_255_characters_and_single_keys_never_collide(
    settings: Settings, kafka_bootstrap: str, api_database: str
) -> None:
    """An import whose Idempotency-Key has 255 characters gets every item accepted, and a
    single event keyed "abc:0" is not mistaken for item 0 of an import keyed "abc"."""
    async with pipeline_on(settings, kafka_bootstrap, api_database) as env:
        integration_id, type_id = await integration_with_type(env.client, SCHEMA, "{store}")
        path = f"/v1/integrations/{integration_id}/events"
        items = {"integration_events": [event_body(type_id, {"store": f"S{i}"}) for i in range(3)]}
        long_key = await env.client.post(
            path + "/import", json=items, headers={"idempotency-key": "k" * 255}
        )
        imported = await env.client.post(
            path + "/import", json=items, headers={"idempotency-key": "abc"}
        )
        single = await env.client.post(
            path, json=event_body(type_id, {"store": "X"}), headers={"idempotency-key": "abc:0"}
        )
        ids = [r["event_id"] for r in long_key.json()["results"] + imported.json()["results"]]
        ids.append(single.json()["event_id"])
        out = await env.outputs(ids)
    assert len(set(ids)) == 7
    assert [codes(out[i]) for i in ids] == [["accepted"]] * 7


async def test_expired_claims_free_their_key(
    settings: Settings, kafka_bootstrap: str, api_database: str
) -> None:
    """With INGEST_IDEMPOTENCY_TTL_S=1, a key used again two seconds later is accepted again
    (a fresh claim); the claims table keeps one row for it."""
    async with pipeline_on(settings, kafka_bootstrap, api_database, idempotency_ttl_s=1.0) as env:
        integration_id, type_id = await integration_with_type(env.client, SCHEMA, "{store}")
        path = f"/v1/integrations/{integration_id}/events"
        body, key = event_body(type_id, {"store": "S"}), {"idempotency-key": "once"}
        first = (await env.client.post(path, json=body, headers=key)).json()["event_id"]
        await env.outputs([first])
        await asyncio.sleep(2.5)
        second = (await env.client.post(path, json=body, headers=key)).json()["event_id"]
        records = await read_topics(
            env.bootstrap,
            [env.settings.accepted_topic, env.settings.rejected_topic],
            until=lambda rs: sum(header(r, "event-id") == first.encode() for r in rs) >= 2,
            timeout_s=60,
        )
    assert second == first
    assert codes(collect(records, env.settings.accepted_topic)[first]) == ["accepted", "accepted"]
    with psycopg.connect(api_database) as conn:
        rows = conn.execute(
            "SELECT count(*) FROM idempotency_claims WHERE integration_id = %s", (integration_id,)
        ).fetchone()
    assert rows == (1,)


async def test_auto_created_devices_stop_at_the_cap(
    settings: Settings, kafka_bootstrap: str, api_database: str
) -> None:
    """With INGEST_MAX_AUTO_DEVICES=2, five new external ids create two devices; the other
    three are rejected `device_limit_reached`, and the existing devices keep working."""
    async with pipeline_on(settings, kafka_bootstrap, api_database, max_auto_devices=2) as env:
        integration_id, type_id = await integration_with_type(env.client, SCHEMA, "{store}")
        path = f"/v1/integrations/{integration_id}/events"
        items = {"integration_events": [event_body(type_id, {"store": f"S{i}"}) for i in range(5)]}
        answer = await env.client.post(path + "/import", json=items)
        ids = [r["event_id"] for r in answer.json()["results"]]
        out = await env.outputs(ids)
        made = [o for i in ids for kind, o in out[i] if kind == "accepted"]
        again = await env.client.post(
            path, json=event_body(type_id, {"store": made[0]["device_external_id"]})
        )
        reuse = (await env.outputs([again.json()["event_id"]]))[again.json()["event_id"]]
    assert (
        sorted(c for i in ids for c in codes(out[i]))
        == ["accepted"] * 2 + ["device_limit_reached"] * 3
    )
    assert codes(reuse) == ["accepted"]
    with psycopg.connect(api_database) as conn:
        count = conn.execute(
            "SELECT count(*) FROM devices WHERE integration_id = %s", (integration_id,)
        ).fetchone()
    assert count == (2,)


def nots(count: int) -> dict[str, Any]:
    """A schema nested `count` levels of `not` deep around `{"type": "object"}`."""
    schema: dict[str, Any] = {"type": "object"}
    for _ in range(count):
        schema = {"not": schema}
    return schema


async def test_a_schema_at_the_depth_limit_is_saved_read_and_applied(
    settings: Settings, kafka_bootstrap: str, api_database: str
) -> None:
    """An event type whose body nests exactly 128 levels is saved, read back alone and in
    its list, and validates events in the worker; one level more is `invalid_json`."""
    async with pipeline_on(settings, kafka_bootstrap, api_database) as env:
        made = await env.client.post("/v1/integrations", json={"name": "deep"})
        integration_id = made.json()["integration"]["id"]
        path = f"/v1/integrations/{integration_id}/event-types"
        deepest = {"name": "deep", "schema": nots(126)}
        saved = await env.client.post(path, json=deepest)
        too_deep = await env.client.post(path, json={"name": "x", "schema": nots(127)})
        type_id = saved.json()["integration_event_type"]["id"]
        alone = await env.client.get(f"{path}/{type_id}")
        listed = await env.client.get(path)
        sent = await env.client.post(
            f"/v1/integrations/{integration_id}/events",
            json=event_body(type_id, {"any": 1}, device_external_id="d"),
        )
        event_id = sent.json()["event_id"]
        out = await env.outputs([event_id])
    assert (saved.status_code, alone.status_code, listed.status_code) == (200, 200, 200)
    assert alone.json()["integration_event_type"]["schema"] == nots(126)
    assert too_deep.json()["code"] == "invalid_json"
    assert codes(out[event_id]) == ["accepted"]


async def test_a_record_the_database_refuses_is_rejected_alone(
    settings: Settings, kafka_bootstrap: str, database_url: str
) -> None:
    """A record PostgreSQL refuses (here a CHECK constraint on the external id) is isolated
    from its batch and rejected `unprocessable`; the events around it are accepted."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("ALTER TABLE devices ADD CONSTRAINT refuse CHECK (external_id <> 'refused')")
    async with pipeline_on(settings, kafka_bootstrap, database_url) as env:
        integration_id, type_id = await integration_with_type(env.client, SCHEMA, "{store}")
        stores = ["a", "b", "refused", "c", "d"]
        items = {"integration_events": [event_body(type_id, {"store": s}) for s in stores]}
        answer = await env.client.post(
            f"/v1/integrations/{integration_id}/events/import", json=items
        )
        ids = [r["event_id"] for r in answer.json()["results"]]
        out = await env.outputs(ids)
    assert [codes(out[i]) for i in ids] == [["accepted"]] * 2 + [["unprocessable"]] + [
        ["accepted"]
    ] * 2


async def produce_unreadable_header_key(bootstrap: str, topic: str, partition: int) -> None:
    """Write one record whose header name is not UTF-8 to `partition`: a hand-built record
    batch in Kafka's own produce request."""
    from aiokafka.client import AIOKafkaClient
    from aiokafka.protocol.produce import ProduceRequest
    from aiokafka.structs import TopicPartition

    batch = record_batch(b"{}", [(b"\xff\xfe-integration-id", b"1")])
    client = AIOKafkaClient(bootstrap_servers=bootstrap)
    await client.bootstrap()
    try:
        cluster = await client.fetch_all_metadata()
        leader = cluster.leader_for_partition(TopicPartition(topic, partition))
        answer = await client.send(
            leader, ProduceRequest(None, -1, 10_000, [(topic, [(partition, batch)])])
        )
        assert answer.topics[0][1][0][1] == 0, answer
    finally:
        await client.close()


async def test_an_unreadable_header_key_is_rejected_and_its_partition_goes_on(
    settings: Settings, kafka_bootstrap: str, api_database: str
) -> None:
    """A record whose header name is not UTF-8 (the Kafka client cannot read its headers) is
    rejected `invalid_request`; every event around it, on its partition too, comes out once."""
    async with pipeline_on(settings, kafka_bootstrap, api_database, partitions=3) as env:
        integration_id, type_id = await integration_with_type(env.client, SCHEMA, "{store}")
        value = json.dumps(event_body(type_id, {"store": "S"})).encode()
        iid = str(integration_id).encode()
        producer = AIOKafkaProducer(bootstrap_servers=env.bootstrap, linger_ms=50)
        await producer.start()
        ids = [str(uuid.uuid4()) for _ in range(600)]
        try:
            for round_ in range(3):
                sent = [
                    await producer.send(
                        env.settings.raw_topic,
                        value,
                        partition=n % 3,
                        headers=[("integration-id", iid), ("event-id", event_id.encode())],
                    )
                    for n, event_id in enumerate(ids[round_ * 200 : (round_ + 1) * 200])
                ]
                await asyncio.gather(*sent)
                if round_ == 0:
                    await produce_unreadable_header_key(env.bootstrap, env.settings.raw_topic, 1)
        finally:
            await producer.stop()
        bad = fallback_event_id(
            Source(env.settings.raw_topic, 1, sum(1 for n in range(200) if n % 3 == 1))
        )
        out = await env.outputs([*ids, bad])
    assert [codes(out[i]) for i in ids] == [["accepted"]] * 600
    assert codes(out[bad]) == ["invalid_request"]
    assert out[bad][0][1]["error"]["details"][0]["field"] == "headers"
