"""Stored-event decisions (pure): updates and deletes applied to an event's latest revision,
every rejection code a change can get, replays recognised by their raw record, and which
revision is current."""

from __future__ import annotations

from typing import Any

import orjson

from ingest_worker.core.plan import DeviceRef
from ingest_worker.core.rejections import Rejection, Source
from ingest_worker.core.validate import compile_type
from ingest_worker.worker.decode import RawChange, RawEvent, decode
from ingest_worker.worker.pipeline import DAY_MS, Accepted, created_revision, plan, stored_day
from ingest_worker.worker.resolve import Device
from ingest_worker.worker.revise import (
    Events,
    Revised,
    Revision,
    avro_fields,
    rejected_revision,
    revise,
    superseded,
)
from ingest_worker.worker.store import COLUMN_NAMES, _row

CURRENT = COLUMN_NAMES.index("current")
EVENT_ID = "6f0b5e4e-7f47-4d1c-9a57-2c1f0e0b7a11"
SCHEMA = {
    "type": "object",
    "required": ["store"],
    "properties": {"store": {"type": "string"}, "n": {"type": "integer"}},
}
TYPES = {
    (1, t): compile_type(
        {
            "integration_id": 1,
            "id": t,
            "version": 3,
            "schema": SCHEMA,
            "external_device_id_template": None,
            "duration_ms": 100,
            "buffer_ms": 10,
        }
    )
    for t in (2, 5)
}


def _created(offset: int = 1, **attributes: Any) -> Revision:
    """Revision 1 of an event of device 9, through the worker's own decisions."""
    body = {
        "integration_event_type_id": 2,
        "timestamp": "2024-06-01T12:00:00Z",
        "attributes": {"store": "S1", **attributes},
        "device_external_id": "S1",
        "duration": 700,
    }
    headers = [("integration-id", b"1"), ("event-id", EVENT_ID.encode())]
    event = decode(Source("raw", 0, offset), orjson.dumps(body), headers, 1_000)
    assert isinstance(event, RawEvent)
    ref = plan(event, {1}, TYPES)
    assert isinstance(ref, DeviceRef)
    return created_revision(Accepted(event, TYPES[1, 2], ref, Device(9, "S1", None)), b"1:S1")


def _change(op: str, offset: int, body: dict[str, Any] | None = None) -> RawChange:
    headers = [("integration-id", b"1"), ("event-id", EVENT_ID.encode()), ("op", op.encode())]
    value = orjson.dumps(body) if body is not None else b""
    found = decode(Source("raw", 0, offset), value, [*headers, ("received-at", b"2000")], 0)
    assert isinstance(found, RawChange), found
    return found


def _update(offset: int, type_id: int = 2, **attributes: Any) -> RawChange:
    return _change(
        "update", offset, {"integration_event_type_id": type_id, "attributes": attributes}
    )


def _code(outcome: Revised | Rejection) -> str:
    return outcome.code if isinstance(outcome, Rejection) else outcome.revision.op


def test_an_update_merges_attributes_shallowly_and_keeps_timestamp_and_device() -> None:
    """The given keys overwrite, the others stay; revision 2; duration kept unless given;
    the type named by the update is the one validated and recorded."""
    base = _created(n=1)
    out = revise(_update(5, type_id=5, n=2), Events({base.key: [base]}), TYPES)
    assert isinstance(out, Revised)
    rev = out.revision
    assert orjson.loads(rev.attributes_json or "") == {"store": "S1", "n": 2}
    assert (rev.revision, rev.op, rev.event_type_id, rev.duration_ms) == (2, "updated", 5, 700)
    assert (rev.timestamp_us, rev.device_id, rev.received_at_ms) == (
        base.timestamp_us,
        base.device_id,
        base.received_at_ms,
    )
    assert (rev.revision_received_at_ms, rev.source.offset) == (2000, 5)
    fields = avro_fields(rev)
    assert (fields["op"], fields["revision"], fields["received_at"]) == ("updated", 2, 2000)


def test_a_delete_carries_the_last_state() -> None:
    """A delete is the next revision, with the state it deletes."""
    base = _created(n=1)
    events = Events({base.key: [base]})
    updated = revise(_update(5, n=4), events, TYPES)
    assert isinstance(updated, Revised)
    events.add(updated.revision)
    out = revise(_change("delete", 6), events, TYPES)
    assert isinstance(out, Revised)
    assert (out.revision.op, out.revision.revision) == ("deleted", 3)
    assert out.revision.attributes_json == updated.revision.attributes_json


def test_every_rejection_a_change_can_get() -> None:
    """No stored event, a deleted one: `event_not_found`; an unknown type:
    `unknown_event_type`; merged attributes breaking the schema: `invalid_attributes`, with
    the field at fault."""
    base = _created()
    assert _code(revise(_update(5, n=1), Events({}), TYPES)) == "event_not_found"
    assert _code(revise(_change("delete", 5), Events({}), TYPES)) == "event_not_found"
    gone = base._replace(revision=2, op="deleted")
    deleted = Events({base.key: [base, gone]})
    assert _code(revise(_update(6, n=1), deleted, TYPES)) == "event_not_found"
    stored = Events({base.key: [base]})
    assert _code(revise(_update(5, type_id=77, n=1), stored, TYPES)) == "unknown_event_type"
    broken = revise(_update(5, n="x"), stored, TYPES)
    assert isinstance(broken, Rejection)
    assert (broken.code, broken.status) == ("invalid_attributes", 400)
    assert broken.details[0].field == "attributes.n"


def test_a_replayed_change_is_given_back_as_stored() -> None:
    """A change whose raw record made a stored revision is that revision again, even when
    later revisions followed; nothing new is made."""
    base = _created()
    events = Events({base.key: [base]})
    second = revise(_update(5, n=1), events, TYPES)
    assert isinstance(second, Revised)
    third = revise(_update(6, n=2), Events({base.key: [base, second.revision]}), TYPES)
    assert isinstance(third, Revised)
    replay = Events({base.key: [base, second.revision, third.revision]})
    again = revise(_update(5, n=1), replay, TYPES)
    assert isinstance(again, Revised)
    assert again.replayed
    assert again.revision == second.revision
    assert replay.added == []


def test_a_replayed_create_does_not_hide_later_revisions() -> None:
    """An event created again by a replay, with revision 2 already stored: a new change
    follows revision 2."""
    base = _created()
    later = base._replace(revision=2, op="updated", source=Source("raw", 0, 9))
    events = Events({base.key: [base, later]})
    events.created(_created())
    out = revise(_update(10, n=5), events, TYPES)
    assert isinstance(out, Revised)
    assert out.revision.revision == 3


def test_only_the_newest_accepted_revision_is_current() -> None:
    """Rows written together: the newest revision of each event is current unless it is a
    delete; a rejection never is."""
    base = _created()
    second = base._replace(revision=2, op="updated")
    rows = [base, second]
    newest = superseded(rows)
    assert newest == {base.key: (base.received_at_ms, 2)}
    assert [_row(r, newest, 0)[CURRENT] for r in rows] == [False, True]
    gone = second._replace(revision=3, op="deleted")
    assert _row(gone, superseded([gone]), 0)[CURRENT] is False


def test_rows_of_new_events_alone_are_current_as_superseded_would_say() -> None:
    """A batch without changes skips `superseded` (store.write): its rows, written with no
    newest revisions, are current exactly where they would be with them."""
    created = _created()
    twice = [created, created._replace(received_at_ms=created.received_at_ms + 1)]
    refused = created._replace(event_id="other", revision=0, op="rejected")
    rows = [*twice, refused]
    assert [_row(r, {}, 0)[CURRENT] for r in rows] == [
        _row(r, superseded(rows), 0)[CURRENT] for r in rows
    ]
    assert [_row(r, {}, 0)[CURRENT] for r in rows] == [True, True, False]


def test_a_rejection_is_stored_unless_it_has_no_integration_or_is_a_duplicate() -> None:
    """Revision 0 with the error; nothing for a duplicate (the id is the original's) or for
    a record naming no integration."""
    source = Source("raw", 0, 3)
    rejection = Rejection(source, b"{}", EVENT_ID, 1, 400, "invalid_json", "bad")
    row = rejected_revision(rejection, None, b"k", 1234)
    assert row is not None
    assert (row.revision, row.op, row.received_at_ms, row.raw_key) == (0, "rejected", 1234, b"k")
    assert orjson.loads(row.error_json or "")["code"] == "invalid_json"
    duplicate = Rejection(source, b"{}", EVENT_ID, 1, 409, "duplicate", "again")
    assert rejected_revision(duplicate, None, None, 0) is None
    nowhere = Rejection(source, b"{}", EVENT_ID, None, 400, "invalid_request", "no id")
    assert rejected_revision(nowhere, None, None, 0) is None


def test_a_replayed_change_is_judged_against_what_came_before_it() -> None:
    """A change rejected the first time, replayed after a later record of its partition
    stored a revision (a delete): it is judged against the revisions made before it, so it
    is rejected again, with the same code, and the later revision is not built upon."""
    base = _created(offset=1)
    later_delete = base._replace(revision=2, op="deleted", source=Source("raw", 0, 6))
    events = Events({base.key: [base, later_delete]})
    again = revise(_update(5, n="x"), events, TYPES)
    assert isinstance(again, Rejection)
    assert again.code == "invalid_attributes"
    assert events.added == []


def test_a_far_off_received_at_is_stored_within_the_days_kept() -> None:
    """The partition key of a new row stays within yesterday to tomorrow (UTC days), so a
    gateway's far-off `received-at` never lands in the default partition."""
    now = 1_764_201_600_000 + 3_600_000  # 2025-11-27 01:00 UTC
    today = 1_764_201_600_000
    assert stored_day(now, now) == now
    assert stored_day(0, now) == today - DAY_MS
    assert stored_day(10**15, now) == today + 2 * DAY_MS - 1
    assert stored_day(today - DAY_MS, now) == today - DAY_MS
