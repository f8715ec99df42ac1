"""The bad-input corpus (`tests/corpus/*.jsonl`, read by `tests/corpus_cases.py`) against the
real services, in one run: every case goes through HTTP (POST `.../events`, as the one item of
`.../events/import`, or PUT of a stored event) and straight onto the raw topic as a gateway
would produce it, and ends with its documented outcome: the HTTP status and code, the
worker's verdict on what the API took, and the rejection code (or acceptance) of the raw
record. The raw records are produced all at once and their outputs read back together; then
a good event must still pass on every raw partition, nothing may be a 5xx, and nothing may be
logged as an error."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.client import AIOKafkaClient
from aiokafka.errors import KafkaError
from aiokafka.protocol.produce import ProduceRequest
from aiokafka.structs import TopicPartition

from ingest_worker.core.config import Settings
from ingest_worker.core.rejections import Source
from ingest_worker.worker.decode import fallback_event_id
from tests.corpus_cases import (
    BASE_EVENT,
    Case,
    Context,
    RawHeader,
    body,
    event_ids_named,
    http_headers,
    import_body,
    load_cases,
    raw_headers,
)
from tests.integration.apiserver import ADMIN_TOKEN
from tests.integration.kafka_read import header, partitions_of, read_topics
from tests.integration.pipeline_env import Pipeline, collect
from tests.integration.record_batch import record_batch
from tests.integration.test_api_access import _token
from tests.integration.test_worker_hostile import pipeline_on
from tests.integration.worker_env import event_body, import_events, integration_with_type

CASES = load_cases()
RAW_PARTITIONS = 3
HTTP_CONCURRENCY = 8
OUTPUT_TIMEOUT_S = 90.0
# Records this big are produced alone, so the broker's refusal of one refuses no other.
ALONE_BYTES = 256 * 1024
STRICT_SCHEMA = {
    "type": "object",
    "properties": {
        "n": {"type": "integer", "minimum": 0, "maximum": 10},
        "s": {"type": "string", "maxLength": 5},
        "list": {"type": "array", "items": {"type": "string"}},
    },
}
TEMPLATES: dict[str, tuple[dict[str, Any], str]] = {
    "TPL": ({"type": "object", "required": ["store"], "properties": {"store": {}}}, "{store}"),
    "TPL_NESTED": (
        {
            "type": "object",
            "required": ["meta"],
            "properties": {
                "meta": {
                    "required": ["store"],
                    "properties": {"store": {"required": ["id"], "properties": {"id": {}}}},
                }
            },
        },
        "{{{meta.store.id}}}",
    ),
    "TPL_TWO": (
        {"type": "object", "required": ["a", "b"], "properties": {"a": {}, "b": {}}},
        "{a}{b}",
    ),
}

Outputs = dict[str, list[tuple[str, Any]]]


@dataclass
class Setup:
    """What the cases refer to: the placeholders' values, the stored events updates target
    (two per update case: one for PUT, one for the raw topic), and where the outputs of the
    corpus begin on each output partition."""

    values: dict[str, int | str]
    stored: dict[str, tuple[str, str]]  # case name -> (PUT target, raw target) event ids
    stored_keys: dict[str, bytes]  # event id -> its raw record's key
    baseline: dict[tuple[str, int], int] = field(default_factory=dict)

    def context(self, event_id: str) -> Context:
        return Context({**self.values, "EVENT_ID": event_id})


@dataclass(frozen=True)
class Answered:
    """One HTTP request of a case: the outcome and the event ids a 202 named."""

    case: str
    channel: str
    status: int
    outcome: str
    event_ids: list[str]


@dataclass(frozen=True)
class Produced:
    """One raw record of a case: the event ids its outputs may carry, and where it went
    (None: the broker refused it)."""

    case: str
    candidates: frozenset[str]
    partition: int | None


@dataclass
class Observed:
    """Everything the run saw, by case."""

    outcomes: dict[str, dict[str, str]]
    statuses: list[int]
    touched: set[int]  # the raw partitions the cases' records went to
    after: dict[str, str]
    errors: list[str]


@pytest.fixture(scope="module")
async def observed(settings: Settings, kafka_bootstrap: str, api_database: str) -> Observed:
    """The whole corpus, sent once through one API and one worker on fresh topics."""
    with _errors_logged() as errors:
        async with pipeline_on(
            settings, kafka_bootstrap, api_database, partitions=RAW_PARTITIONS
        ) as env:
            setup = await _setup(env)
            answered = await _send_http(env, setup)
            produced = await _produce_raw(env, setup)
            outputs = await _outputs(env, setup.baseline, _wanted(answered, produced))
            after = await _probe_partitions(env, setup)
    outcomes: dict[str, dict[str, str]] = {case.name: {} for case in CASES}
    outcomes |= _outcomes(answered, produced, outputs)
    touched = {p.partition for p in produced if p.partition is not None}
    return Observed(outcomes, [a.status for a in answered], touched, after, errors)


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_case_ends_with_its_documented_outcome(observed: Observed, case: Case) -> None:
    """Over HTTP (and what the worker makes of a 202) and on the raw topic, the case ends as
    its corpus line says."""
    assert observed.outcomes[case.name] == _expected(case)


def test_no_partition_is_blocked(observed: Observed) -> None:
    """After the corpus, which touched every raw partition, a good event is accepted on each
    of them and over HTTP."""
    assert observed.touched == set(range(RAW_PARTITIONS))
    assert observed.after == {
        **{f"partition {p}": "accepted" for p in range(RAW_PARTITIONS)},
        "http": "accepted",
    }


def test_no_answer_is_a_server_error(observed: Observed) -> None:
    """No bad input is answered with a 5xx."""
    assert [s for s in observed.statuses if s >= 500] == []


def test_nothing_is_logged_as_an_error(observed: Observed) -> None:
    """Neither the API nor the worker logs an error (an unhandled exception shows there)."""
    assert observed.errors == []


def test_the_corpus_covers_every_category() -> None:
    """At least 200 cases, each category of the brief with some."""
    found = Counter(case.category for case in CASES)
    assert sum(found.values()) >= 200
    assert set(found) >= {
        "json_syntax",
        "utf8",
        "nul",
        "depth",
        "numbers",
        "bounds",
        "types",
        "unknown_fields",
        "raw_headers",
        "http_headers",
        "compression",
        "template",
        "sizes",
        "isolation",
        "updates",
    }


def _expected(case: Case) -> dict[str, str]:
    """The case's outcome per channel, plus the worker's verdict on each 202 and the raw
    record's external id where the corpus gives one."""
    found = case.expected()
    for channel in case.channels:
        if channel != "raw" and found[channel] == "accepted":
            found[f"worker after {channel}"] = case.expected_worker(channel)
    if "external_id" in case.spec["expect"] and found["raw"] == "accepted":
        found["external_id"] = case.spec["expect"]["external_id"]
    return found


# ---------------------------------------------------------------- setup


async def _setup(env: Pipeline) -> Setup:
    """Two integrations (this one with event types, a device and a token; the other one's
    for isolation cases), the stored events the update cases change, and a claimed
    Idempotency-Key; once their outputs are out, the corpus' outputs start after them."""
    client = env.client
    integration, any_type = await integration_with_type(client, {"type": "object"}, None)
    other, other_type = await integration_with_type(client, {"type": "object"}, None)
    values: dict[str, int | str] = {
        "INTEGRATION": integration,
        "TYPE": any_type,
        "STRICT": await _event_type(client, integration, STRICT_SCHEMA, None),
        "OTHER_INTEGRATION": other,
        "OTHER_TYPE": other_type,
        "UNKNOWN_INTEGRATION": 2**31 - 1,
        "DEVICE": await _device(client, integration, "corpus-device"),
        "OTHER_DEVICE": await _device(client, other, "other-device"),
        "ADMIN_TOKEN": ADMIN_TOKEN,
        "TOKEN": (await _token(client, integration))[1],
        "OTHER_TOKEN": (await _token(client, other))[1],
        "CLAIMED_KEY": f"claimed-{uuid.uuid4().hex}",
    }
    for name, (schema, template) in TEMPLATES.items():
        values[name] = await _event_type(client, integration, schema, template)
    setup = await _stored_events(env, values)
    claimed = await client.post(
        f"/v1/integrations/{integration}/events",
        json=event_body(any_type, {}, device_external_id="corpus"),
        headers={"idempotency-key": str(values["CLAIMED_KEY"])},
    )
    assert claimed.status_code == 202, claimed.text
    await _baseline(env, Counter([*setup.stored_keys, claimed.json()["event_id"]]))
    setup.baseline = await _baseline(env, await _unlistable_targets(env, setup))
    return setup


async def _event_type(
    client: httpx.AsyncClient, integration: int, schema: dict[str, Any], template: str | None
) -> int:
    body_: dict[str, Any] = {"name": "corpus", "schema": schema}
    if template:
        body_["external_device_id_template"] = template
    made = await client.post(f"/v1/integrations/{integration}/event-types", json=body_)
    assert made.status_code == 200, made.text
    found: int = made.json()["integration_event_type"]["id"]
    return found


async def _device(client: httpx.AsyncClient, integration: int, external_id: str) -> int:
    made = await client.post(
        f"/v1/integrations/{integration}/devices", json={"name": "d", "external_id": external_id}
    )
    assert made.status_code == 200, made.text
    found: int = made.json()["integration_device"]["id"]
    return found


async def _stored_events(env: Pipeline, values: dict[str, int | str]) -> Setup:
    """Two stored events per update case (one for PUT, one for the raw topic), imported at
    once."""
    updates = [case.name for case in CASES if case.kind == "update"]
    externals = [f"stored-{n}" for n in range(2 * len(updates))]
    events = [
        event_body(int(values["TYPE"]), {"n": 1, "keep": "x"}, device_external_id=e)
        for e in externals
    ]
    ids = await import_events(env.client, int(values["INTEGRATION"]), events)
    keys = {i: f"{values['INTEGRATION']}:{e}".encode() for i, e in zip(ids, externals, strict=True)}
    pairs = {name: (ids[2 * n], ids[2 * n + 1]) for n, name in enumerate(updates)}
    return Setup(values, pairs, keys)


async def _unlistable_targets(env: Pipeline, setup: Setup) -> Counter[str]:
    """The targets of update cases about events no longer or never listable: deleted (over
    HTTP), or stored as rejected (a raw record naming another integration's device). The
    outputs to wait for: each deleted event's second one, each rejected event's first."""
    wanted: Counter[str] = Counter()
    for case in CASES:
        target = case.spec.get("target")
        if target == "deleted":
            for event_id in setup.stored[case.name]:
                await _delete(env, setup, event_id)
                wanted[event_id] = 2
        elif target == "rejected":
            setup.stored[case.name] = (await _rejected(env, setup), await _rejected(env, setup))
            wanted.update(setup.stored[case.name])
    return wanted


async def _delete(env: Pipeline, setup: Setup, event_id: str) -> None:
    integration = setup.values["INTEGRATION"]
    deleted = await env.client.delete(f"/v1/integrations/{integration}/events/{event_id}")
    assert deleted.status_code == 202, deleted.text


async def _rejected(env: Pipeline, setup: Setup) -> str:
    """A raw record the worker rejects and stores as such (`device_not_found`): its id."""
    event_id = str(uuid.uuid4())
    value = event_body(int(setup.values["TYPE"]), {}, integration_device_id=0)
    headers = [
        ("integration-id", str(setup.values["INTEGRATION"]).encode()),
        ("event-id", event_id.encode()),
    ]
    producer = AIOKafkaProducer(bootstrap_servers=env.bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(
            env.settings.raw_topic, orjson.dumps(value), key=event_id.encode(), headers=headers
        )
    finally:
        await producer.stop()
    return event_id


async def _baseline(env: Pipeline, wanted: Counter[str]) -> dict[tuple[str, int], int]:
    """Once each event id in `wanted` has that many outputs: the offset after the last
    output on each output partition."""

    def enough(records: list[Any]) -> bool:
        found = Counter((header(r, "event-id") or b"").decode() for r in records)
        return all(found[i] >= n for i, n in wanted.items())

    topics = [env.settings.accepted_topic, env.settings.rejected_topic]
    records = await read_topics(env.bootstrap, topics, until=enough, timeout_s=60)
    assert enough(records), "the setup's events never came out"
    baseline: dict[tuple[str, int], int] = {}
    for r in records:
        key = (r.topic, r.partition)
        baseline[key] = max(baseline.get(key, 0), r.offset + 1)
    return baseline


# ---------------------------------------------------------------- HTTP


async def _send_http(env: Pipeline, setup: Setup) -> list[Answered]:
    """Every case on each of its HTTP channels, a few requests at a time."""
    gate = asyncio.Semaphore(HTTP_CONCURRENCY)
    async with env.api.client(token=None) as client:

        async def one(case: Case, channel: str) -> Answered:
            async with gate:
                return await _request(client, setup, case, channel)

        return await asyncio.gather(
            *(one(c, ch) for c in CASES for ch in c.channels if ch != "raw")
        )


async def _request(client: httpx.AsyncClient, setup: Setup, case: Case, channel: str) -> Answered:
    ctx = setup.context(str(uuid.uuid4()))
    content = body(case, ctx)
    integration = ctx.text(case.spec.get("integration", "${INTEGRATION}"))
    path = f"/v1/integrations/{integration}/events"
    method = "POST"
    if channel == "import":
        content, path = import_body(case, content), f"{path}/import"
    elif channel == "put":
        method, path = "PUT", f"{path}/{_update_target(setup, case, 0)}"
    try:
        answer = await client.request(
            method, path, content=content, headers=http_headers(case, ctx)
        )
    except httpx.TransportError as exc:
        return Answered(case.name, channel, 0, f"no answer: {exc!r}", [])
    outcome, ids = _http_outcome(answer)
    return Answered(case.name, channel, answer.status_code, outcome, ids)


def _update_target(setup: Setup, case: Case, which: int) -> str:
    """The stored event an update case changes on PUT (0) or the raw topic (1); a fresh id
    for an event that is not stored at all."""
    if case.spec.get("target") == "missing":
        return str(uuid.uuid4())
    return setup.stored[case.name][which]


def _http_outcome(answer: httpx.Response) -> tuple[str, list[str]]:
    """`accepted` (with the event ids) or `<status> <code>`; an import's item results as
    `accepted` or `item <status> <code>`, merged when they agree."""
    if answer.status_code != 202:
        return f"{answer.status_code} {_problem_code(answer)}", []
    document = answer.json()
    if "results" not in document:
        return "accepted", [document["event_id"]]
    results = document["results"]
    items = {"accepted" if "event_id" in r else f"item {r['status']} {r['code']}" for r in results}
    ids = [r["event_id"] for r in results if "event_id" in r]
    return (items.pop() if len(items) == 1 else f"mixed {sorted(items)}"), ids


def _problem_code(answer: httpx.Response) -> str:
    try:
        return str(answer.json()["code"])
    except (ValueError, KeyError, TypeError):
        return "?"


# ---------------------------------------------------------------- raw topic


@dataclass(frozen=True)
class RawRecord:
    """A raw record to produce for a case."""

    case: str
    key: bytes | None
    value: bytes | None
    headers: list[RawHeader]
    compression: str | None

    @property
    def unreadable(self) -> bool:
        """Whether a header name is not UTF-8 (no client library writes that)."""
        return any(isinstance(name, bytes) for name, _ in self.headers)

    @property
    def alone(self) -> bool:
        """Whether the record is big enough to be produced on its own."""
        return len(self.value or b"") >= ALONE_BYTES


def _raw_record(setup: Setup, case: Case) -> RawRecord:
    event_id = _update_target(setup, case, 1) if case.kind == "update" else str(uuid.uuid4())
    ctx = setup.context(event_id)
    value = None if case.spec.get("raw_null_value") else body(case, ctx)
    key = setup.stored_keys.get(event_id, event_id.encode())
    return RawRecord(case.name, key, value, raw_headers(case, ctx), case.spec.get("compression"))


async def _produce_raw(env: Pipeline, setup: Setup) -> list[Produced]:
    """Every case's raw record: by codec through a producer, big ones alone, those whose
    header names are not UTF-8 in hand-built batches."""
    records = [_raw_record(setup, c) for c in CASES if "raw" in c.channels]
    hand_built = [r for r in records if r.unreadable]
    produced = [
        await _produce_hand_built(env, r, n % RAW_PARTITIONS) for n, r in enumerate(hand_built)
    ]
    by_codec: dict[str | None, list[RawRecord]] = {}
    for r in records:
        if not r.unreadable:
            by_codec.setdefault(r.compression, []).append(r)
    for codec, group in by_codec.items():
        produced += await _produce_group(env, codec, group)
    return produced


async def _produce_group(
    env: Pipeline, codec: str | None, records: list[RawRecord]
) -> list[Produced]:
    """One producer for a codec (the broker, not the client, judges a record's size)."""
    producer = AIOKafkaProducer(
        bootstrap_servers=env.bootstrap,
        compression_type=codec,
        max_request_size=64 * 1024 * 1024,
        linger_ms=5,
    )
    await producer.start()
    try:
        small = [r for r in records if not r.alone]
        sent = [await _send(producer, env, r) for r in small]
        found = [_produced(r, m) for r, m in zip(small, await _settle(sent), strict=True)]
        for r in records:
            if r.alone:
                found.append(_produced(r, (await _settle([await _send(producer, env, r)]))[0]))
        return found
    finally:
        await producer.stop()


async def _send(producer: Any, env: Pipeline, record: RawRecord) -> Any:
    """The delivery future of one record (or the client's refusal, as a failed future)."""
    try:
        return await producer.send(
            env.settings.raw_topic, record.value, key=record.key, headers=record.headers
        )
    except KafkaError as exc:
        failed: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        failed.set_exception(exc)
        return failed


async def _settle(futures: Sequence[Any]) -> list[Any]:
    """Record metadata, or the exception that refused the record."""
    return list(await asyncio.gather(*futures, return_exceptions=True))


def _produced(record: RawRecord, metadata: Any) -> Produced:
    if isinstance(metadata, BaseException):
        return Produced(record.case, frozenset(), None)
    source = Source(metadata.topic, metadata.partition, metadata.offset)
    return _located(record, source)


def _located(record: RawRecord, source: Source) -> Produced:
    """The ids the record's outputs may carry: its own `event-id`, or the one the worker
    derives from its position."""
    named = set(event_ids_named(record.headers))
    return Produced(record.case, frozenset({fallback_event_id(source), *named}), source.partition)


async def _produce_hand_built(env: Pipeline, record: RawRecord, partition: int) -> Produced:
    """A record whose header names are not UTF-8, which no client writes: a hand-built
    batch in Kafka's own produce request (as `produce_unreadable_header_key` does for a
    fixed record), answering where it was written."""
    headers = [(n if isinstance(n, bytes) else n.encode(), v or b"") for n, v in record.headers]
    topic = env.settings.raw_topic
    client = AIOKafkaClient(bootstrap_servers=env.bootstrap)
    await client.bootstrap()
    try:
        cluster = await client.fetch_all_metadata()
        leader = cluster.leader_for_partition(TopicPartition(topic, partition))
        batch = record_batch(record.value or b"", headers)
        answer = await client.send(
            leader, ProduceRequest(None, -1, 10_000, [(topic, [(partition, batch)])])
        )
    finally:
        await client.close()
    _, error, offset = answer.topics[0][1][0][:3]
    assert error == 0, answer
    return _located(record, Source(topic, partition, int(offset)))


# ---------------------------------------------------------------- outputs


def _wanted(answered: list[Answered], produced: list[Produced]) -> list[frozenset[str]]:
    """For each record sent, the ids one of which its output must carry."""
    wanted = [p.candidates for p in produced if p.partition is not None]
    return wanted + [frozenset({i}) for a in answered for i in a.event_ids]


async def _outputs(
    env: Pipeline, baseline: dict[tuple[str, int], int], wanted: list[frozenset[str]]
) -> Outputs:
    """The corpus' outputs (after the setup's), by event id, once every record has one (or
    the time is up: what is missing then is reported by case)."""

    def fresh(records: list[Any]) -> list[Any]:
        return [r for r in records if r.offset >= baseline.get((r.topic, r.partition), 0)]

    def seen(records: list[Any]) -> bool:
        ids = {(header(r, "event-id") or b"").decode() for r in fresh(records)}
        return all(ids & w for w in wanted)

    records = await read_topics(
        env.bootstrap,
        [env.settings.accepted_topic, env.settings.rejected_topic],
        until=seen,
        timeout_s=OUTPUT_TIMEOUT_S,
        grace_s=1.0,
    )
    return collect(fresh(records), env.settings.accepted_topic)


def _outcomes(
    answered: list[Answered], produced: list[Produced], outputs: Outputs
) -> dict[str, dict[str, str]]:
    """Per case: each channel's outcome, the worker's verdict on what HTTP took, and the
    raw record's external id where the corpus expects one."""
    found: dict[str, dict[str, str]] = {}
    for a in answered:
        found.setdefault(a.case, {})[a.channel] = a.outcome
        if a.event_ids:
            verdicts = {_verdict([*outputs.get(i, [])]) for i in a.event_ids}
            merged = verdicts.pop() if len(verdicts) == 1 else f"mixed {sorted(verdicts)}"
            found[a.case][f"worker after {a.channel}"] = merged
    cases = {c.name: c for c in CASES}
    for p in produced:
        mine = [o for i in sorted(p.candidates) for o in outputs.get(i, [])]
        found.setdefault(p.case, {})["raw"] = "refused" if p.partition is None else _verdict(mine)
        if "external_id" in cases[p.case].spec["expect"] and mine and mine[0][0] == "accepted":
            found[p.case]["external_id"] = mine[0][1]["device_external_id"]
    return found


def _verdict(outputs: list[tuple[str, Any]]) -> str:
    """`accepted`, the rejection code, `missing`, or all of them when more than one."""
    codes = [o["error"]["code"] if kind == "rejected" else kind for kind, o in outputs]
    return " + ".join(codes) if codes else "missing"


# ---------------------------------------------------------------- afterwards


async def _probe_partitions(env: Pipeline, setup: Setup) -> dict[str, str]:
    """A good event on every raw partition (produced there) and one over HTTP: their fate."""
    ctx = setup.context("")
    good = orjson.dumps(ctx.json(BASE_EVENT))
    integration = str(setup.values["INTEGRATION"]).encode()
    producer = AIOKafkaProducer(bootstrap_servers=env.bootstrap)
    await producer.start()
    ids = {f"partition {p}": str(uuid.uuid4()) for p in range(RAW_PARTITIONS)}
    try:
        for p in range(RAW_PARTITIONS):
            event_id = ids[f"partition {p}"]
            headers = [("integration-id", integration), ("event-id", event_id.encode())]
            await producer.send_and_wait(env.settings.raw_topic, good, partition=p, headers=headers)
    finally:
        await producer.stop()
    assert sorted(await partitions_of(env.bootstrap, env.settings.raw_topic)) == list(
        range(RAW_PARTITIONS)
    )
    sent = await env.client.post(
        f"/v1/integrations/{integration.decode()}/events",
        content=good,
        headers={"content-type": "application/json"},
    )
    ids["http"] = sent.json().get("event_id", "none")
    out = await env.outputs(ids.values(), timeout_s=30)
    return {where: _verdict(out.get(i, [])) for where, i in ids.items()}


# ---------------------------------------------------------------- logs


class _ErrorRecords(logging.Handler):
    """Keeps the API's and the worker's error records."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.found: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.split(".")[0] in ("ingest_worker", "uvicorn"):
            self.found.append(f"{record.name}: {record.getMessage()}")


@contextmanager
def _errors_logged() -> Iterator[list[str]]:
    """The error records logged in the block."""
    handler = _ErrorRecords()
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield handler.found
    finally:
        root.removeHandler(handler)
