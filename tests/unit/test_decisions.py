"""The worker's per-record decisions once a batch's devices and claims are known (pure):
`verdict` and `claimed`, for the codes that need PostgreSQL's answers."""

from __future__ import annotations

from typing import Any

import orjson

from ingest_worker.core.rejections import Rejection, Source
from ingest_worker.core.validate import compile_type
from ingest_worker.worker.decode import RawEvent, decode
from ingest_worker.worker.pipeline import Accepted, Devices, claimed, plan, verdict
from ingest_worker.worker.resolve import Claim, Device

SOURCE = Source("raw", 0, 7)
TYPE = compile_type(
    {
        "integration_id": 1,
        "id": 2,
        "version": 1,
        "schema": {"type": "object", "required": ["store"], "properties": {"store": {}}},
        "external_device_id_template": "{store}",
        "duration_ms": 0,
        "buffer_ms": 0,
    }
)
TYPES = {(1, 2): TYPE}


def _event(key: str | None = None, **fields: Any) -> RawEvent:
    body = {
        "integration_event_type_id": 2,
        "timestamp": "2024-06-01T12:00:00Z",
        "attributes": {"store": "S1"},
        **fields,
    }
    headers = [("integration-id", b"1")]
    if key is not None:
        headers.append(("idempotency-key", key.encode()))
    found = decode(SOURCE, orjson.dumps(body), headers, 5)
    assert isinstance(found, RawEvent)
    return found


def _devices(**overrides: Any) -> Devices:
    values: dict[str, Any] = {"direct": {}, "external": {}, "refused": set(), "learned": []}
    return Devices(**{**values, **overrides})


def _code(outcome: object) -> str:
    return outcome.code if isinstance(outcome, Rejection) else "accepted"


def test_a_direct_device_of_another_integration_is_not_found() -> None:
    """`integration_device_id` must name a device of the event's own integration."""
    event = _event(integration_device_id=9)
    ref = plan(event, {1}, TYPES)
    theirs = _devices(direct={9: (Device(9, None, None), 2)})
    ours = _devices(direct={9: (Device(9, None, None), 1)})
    assert _code(verdict(event, ref, _devices(), TYPES)) == "device_not_found"
    assert _code(verdict(event, ref, theirs, TYPES)) == "device_not_found"
    assert _code(verdict(event, ref, ours, TYPES)) == "accepted"


def test_an_external_id_past_the_auto_create_cap_is_refused() -> None:
    """A device the cap kept from being created rejects `device_limit_reached`; a device
    gone with its integration during the batch, `unknown_integration`."""
    event = _event()
    ref = plan(event, {1}, TYPES)
    refused = _devices(refused={(1, "S1")})
    found = _devices(external={(1, "S1"): Device(4, "S1", None)})
    assert _code(verdict(event, ref, refused, TYPES)) == "device_limit_reached"
    assert _code(verdict(event, ref, _devices(), TYPES)) == "unknown_integration"
    assert _code(verdict(event, ref, found, TYPES)) == "accepted"


def test_a_key_claimed_by_another_record_is_a_duplicate_but_not_a_replay() -> None:
    """An Idempotency-Key claimed by another raw record makes the event a `duplicate`; the
    claim of this very record (a replay after a crash) keeps it accepted."""
    event = _event(key="k1")
    ref = plan(event, {1}, TYPES)
    accepted = verdict(event, ref, _devices(external={(1, "S1"): Device(4, "S1", None)}), TYPES)
    assert isinstance(accepted, Accepted)
    mine = {(1, "k1", -1): Claim(*SOURCE)}
    other = {(1, "k1", -1): Claim("raw", 1, 3)}
    assert claimed(event, accepted, mine) is accepted
    assert _code(claimed(event, accepted, other)) == "duplicate"
    unkeyed = _event()
    assert claimed(unkeyed, accepted, other) is accepted
