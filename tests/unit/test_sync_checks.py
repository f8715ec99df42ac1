"""The decision the synchronous checks share with the worker (core/plan.py): statuses, codes
and messages of each refusal, device resolution order, and agreement with the worker's own
planning; and how a refusal names the fields at fault."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from ingest_worker.core.plan import (
    DEVICE_NOT_FOUND,
    DeviceRef,
    Refusal,
    device_in_integration,
    plan,
)
from ingest_worker.core.rejections import Rejection, Source
from ingest_worker.core.validate import EventType, compile_type
from ingest_worker.shim.checks import errors
from ingest_worker.worker import pipeline
from ingest_worker.worker.decode import RawEvent

SCHEMA = {
    "type": "object",
    "required": ["store", "lane"],
    "properties": {"store": {"type": "string"}, "lane": {"type": "integer", "minimum": 0}},
}


def event_type(template: str | None = "{store}:{lane}", schema: Any = None) -> EventType:
    """A compiled event type 5 of integration 1."""
    row = {
        "integration_id": 1,
        "id": 5,
        "version": 1,
        "schema": SCHEMA if schema is None else schema,
        "external_device_id_template": template,
        "duration_ms": 0,
        "buffer_ms": 0,
    }
    return compile_type(row)


def body(**fields: Any) -> dict[str, Any]:
    """A well-shaped event of type 5, some fields replaced (None removes one)."""
    base: dict[str, Any] = {
        "integration_event_type_id": 5,
        "timestamp": "2024-06-01T12:00:00Z",
        "attributes": {"store": "s1", "lane": 3},
    }
    base.update(fields)
    return {k: v for k, v in base.items() if v is not None}


def decide(event: dict[str, Any], found: EventType | None) -> DeviceRef | Refusal:
    return plan(event, len(orjson.dumps(event)), found)


CASES: list[tuple[str, dict[str, Any], EventType | None, tuple[int, str, str] | DeviceRef]] = [
    (
        "unknown type",
        body(),
        None,
        (404, "unknown_event_type", "no such event type in this integration"),
    ),
    (
        "bad attributes",
        body(attributes={"store": 1, "lane": -1}),
        event_type(),
        (400, "invalid_attributes", "the attributes do not match the event type's schema"),
    ),
    (
        "direct",
        body(integration_device_id=7, device_external_id="x"),
        event_type(),
        DeviceRef("direct", device_id=7),
    ),
    ("external", body(device_external_id="x"), event_type(), DeviceRef("external_id", None, "x")),
    ("template", body(), event_type(), DeviceRef("template", None, "s1:3")),
    (
        "no way",
        body(),
        event_type(template=None),
        (400, "device_unresolvable", "no device id, external id or template"),
    ),
    (
        "template null",
        body(attributes={"store": "s1", "lane": 3, "x": None}),
        event_type(template="{x}", schema={"type": "object"}),
        (400, "template_unresolvable", "attribute 'x' is null, not a string, number or boolean"),
    ),
]


@pytest.mark.parametrize(("name", "event", "found", "expected"), CASES, ids=[c[0] for c in CASES])
def test_each_decision_with_its_status_code_and_message(
    name: str,
    event: dict[str, Any],
    found: EventType | None,
    expected: tuple[int, str, str] | DeviceRef,
) -> None:
    """Unknown type, attributes, then the device: the first reason to refuse, with the
    documented status, code and message, or the device named (id over external id over
    template, no fallback)."""
    decided = decide(event, found)
    if isinstance(expected, DeviceRef):
        assert decided == expected
    else:
        assert isinstance(decided, Refusal)
        assert (decided.status, decided.code, decided.message) == expected


@pytest.mark.parametrize(("name", "event", "found", "expected"), CASES, ids=[c[0] for c in CASES])
def test_the_worker_decides_the_same(
    name: str,
    event: dict[str, Any],
    found: EventType | None,
    expected: tuple[int, str, str] | DeviceRef,
) -> None:
    """The worker's own planning of the same record ends the same way: the shim never refuses
    what the worker would accept, nor with another code."""
    value = orjson.dumps(event)
    raw = RawEvent(Source("raw", 0, 1), value, "e", 1, 5, 0, 0, None, None, None, event)
    types = {} if found is None else {(1, 5): found}
    by_worker = pipeline.plan(raw, {1}, types)
    by_shim = decide(event, found)
    if isinstance(by_shim, Refusal):
        assert isinstance(by_worker, Rejection)
        shim_view = (by_shim.status, by_shim.code, by_shim.message, by_shim.errors.errors)
        assert shim_view == (by_worker.status, by_worker.code, by_worker.message, by_worker.details)
    else:
        assert not isinstance(by_worker, Rejection)
        assert tuple(by_worker) == tuple(by_shim)


def test_invalid_attributes_name_each_field() -> None:
    """The attributes' errors are the worker's: `attributes.<path>`, each with a message."""
    decided = decide(body(attributes={"store": 1, "lane": -1}), event_type())
    assert isinstance(decided, Refusal)
    assert sorted(e.field for e in decided.errors.errors) == ["attributes.lane", "attributes.store"]
    assert decided.errors.total == 2


@pytest.mark.parametrize(
    ("owner", "refused"), [(1, False), (2, True), (None, True)], ids=["own", "other", "none"]
)
def test_a_direct_device_must_be_of_the_integration(owner: int | None, refused: bool) -> None:
    """Another integration's device and no device at all are the same 404."""
    assert device_in_integration(owner, 1) == (DEVICE_NOT_FOUND if refused else None)


def test_refusals_name_the_field_at_fault_under_an_item_prefix() -> None:
    """In an import item, each refusal names the item's field (the whole item when no single
    field is at fault), with the value where it is an id."""
    event = body(integration_device_id=9)
    prefix = "integration_events.3"
    unknown = decide(event, None)
    assert isinstance(unknown, Refusal)
    assert [e.as_json() for e in errors(unknown, event, prefix)] == [
        {
            "field": "integration_events.3.integration_event_type_id",
            "message": "no such event type in this integration",
            "value": 5,
        }
    ]
    assert errors(DEVICE_NOT_FOUND, event, prefix)[0].value == 9
    no_way = decide(body(), event_type(template=None))
    assert isinstance(no_way, Refusal)
    assert errors(no_way, body(), prefix)[0].field == prefix
    assert errors(no_way, body())[0].field == "(body)"
    bad = decide(body(attributes={"store": "s", "lane": -1}), event_type())
    assert isinstance(bad, Refusal)
    assert [e.field for e in errors(bad, body(), prefix)] == [f"{prefix}.attributes.lane"]
