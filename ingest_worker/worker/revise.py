"""Stored events and their revisions: the row each decision stores, updates and deletes
applied to an event's last revision, and the changelog record of a revision. Pure.

A revision is one row of the `events` table (migration 0007): 0 a rejected event, 1 the
accepted event, then one per update, and a delete last. Every revision of an event keeps the
event's first `received_at` (its partition) and names the raw record that made it (`source`),
so a replayed batch recognises its own changes and stores nothing twice.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import orjson

from ingest_worker.core.plan import UNKNOWN_EVENT_TYPE, Refusal, update_refusal
from ingest_worker.core.rejections import Rejection, Source
from ingest_worker.core.validate import EventType
from ingest_worker.worker.decode import RawChange, RawEvent

EventKey = tuple[int, str]  # integration id, event id


class Revision(NamedTuple):
    """One stored revision of an event (a row of `events`)."""

    integration_id: int
    event_id: str
    revision: int
    received_at_ms: int  # when the event was first received: its partition
    op: str  # rejected, created, updated, deleted
    event_type_id: int | None
    event_type_version: int | None
    device_id: int | None
    device_external_id: str | None
    device_resolution: str | None
    timestamp_us: int | None
    duration_ms: int | None
    buffer_ms: int | None
    attributes_json: str | None
    revision_received_at_ms: int
    idempotency_key: str | None
    traceparent: str | None
    raw_key: bytes | None
    source: Source
    error_json: str | None
    created_ms: int | None = None  # None: stored now

    @property
    def key(self) -> EventKey:
        return (self.integration_id, self.event_id)


def avro_fields(rev: Revision, *, device_created: bool = False) -> dict[str, Any]:
    """The changelog record of an accepted revision (created, updated or deleted)."""
    return {
        "event_id": rev.event_id,
        "integration_id": rev.integration_id,
        "integration_event_type_id": rev.event_type_id,
        "event_type_version": rev.event_type_version,
        "integration_device_id": rev.device_id,
        "device_external_id": rev.device_external_id,
        "device_resolution": rev.device_resolution,
        "device_created": device_created,
        "timestamp": rev.timestamp_us,
        "duration_ms": rev.duration_ms,
        "buffer_ms": rev.buffer_ms,
        "attributes_json": rev.attributes_json,
        "received_at": rev.revision_received_at_ms,
        "idempotency_key": rev.idempotency_key,
        "op": rev.op,
        "revision": rev.revision,
    }


def rejected_revision(
    rejection: Rejection, event: RawEvent | None, raw_key: bytes | None, received_at_ms: int
) -> Revision | None:
    """The row of a rejected event, so its sender can look up why; None when there is nothing
    to store under (no integration id) or it is not this event's fate (`duplicate`: the
    event id is the accepted original's)."""
    if rejection.integration_id is None or rejection.code == "duplicate":
        return None
    error = {
        "status": rejection.status,
        "code": rejection.code,
        "message": rejection.message,
        "details": [d.as_json() for d in rejection.details],
    }
    known = event if event is not None and event.event_id == rejection.event_id else None
    return Revision(
        rejection.integration_id,
        rejection.event_id,
        0,
        known.received_at_ms if known else received_at_ms,
        "rejected",
        known.event_type_id if known else None,
        None,
        None,
        None,
        None,
        known.timestamp_us if known else None,
        _whole(known.body.get("duration")) if known else None,
        _whole(known.body.get("buffer")) if known else None,
        orjson.dumps(known.body["attributes"]).decode() if known else None,
        known.received_at_ms if known else received_at_ms,
        known.idempotency_key if known else None,
        known.traceparent if known else None,
        raw_key,
        rejection.source,
        orjson.dumps(error, option=orjson.OPT_NON_STR_KEYS).decode(),
    )


@dataclass(frozen=True, slots=True)
class Revised:
    """A change applied: the revision it made (`replayed`: already stored by an earlier
    run of this very record, so emitted again and stored nothing)."""

    change: RawChange
    revision: Revision
    replayed: bool = False


@dataclass
class Events:
    """The batch's view of stored events: every revision loaded of the events its changes
    name, and the latest revision the batch made (or created) of each, in input order."""

    stored: dict[EventKey, list[Revision]]
    changing: bool = True  # False: the batch has no change, so what it creates is not kept
    added: list[Revision] = field(default_factory=list)
    fresh: dict[EventKey, Revision] = field(default_factory=dict)

    def created(self, revision: Revision) -> None:
        """An event accepted by this batch; a replay of one already stored changes nothing."""
        if self.changing and not self.stored.get(revision.key):
            self.fresh.setdefault(revision.key, revision)

    def base(self, change: RawChange) -> Revision | None:
        """The revision a change applies to: the latest one made before it. A replayed
        change (of a batch whose PostgreSQL transaction committed and whose Kafka one did
        not) must not see what later records of its partition stored since: it is judged
        again exactly as it was the first time."""
        key = (change.integration_id, change.event_id)
        if key in self.fresh:
            return self.fresh[key]
        earlier = [r for r in self.stored.get(key, ()) if not _made_later(r.source, change.source)]
        return max(earlier, key=lambda r: r.revision, default=None)

    def made_by(self, change: RawChange) -> Revision | None:
        """The stored revision this very raw record made before (a replay), if any."""
        for rev in self.stored.get((change.integration_id, change.event_id), ()):
            if rev.source == change.source:
                return rev
        return None

    def add(self, revision: Revision) -> None:
        self.fresh[revision.key] = revision
        self.added.append(revision)


def _made_later(made: Source, by: Source) -> bool:
    """Whether record `made` comes after record `by` in one raw partition."""
    return made.partition == by.partition and made.topic == by.topic and made.offset > by.offset


def revise(
    change: RawChange, events: Events, types: Mapping[tuple[int, int], EventType]
) -> Revised | Rejection:
    """Apply one update or delete to its event's latest revision, or say why not. A change
    this record already made (a replay) is given back as it was stored."""
    again = events.made_by(change)
    if again is not None:
        return Revised(change, again, replayed=True)
    base = events.base(change)
    if base is None or base.op not in ("created", "updated"):
        return reject(change, 404, "event_not_found", "no such stored event in this integration")
    if change.op == "delete":
        return Revised(change, _next(base, change, op="deleted"))
    return _updated(change, base, types)


def _updated(
    change: RawChange, base: Revision, types: Mapping[tuple[int, int], EventType]
) -> Revised | Rejection:
    """The shallow merge of the update's attributes over the stored ones, validated against
    the event type it names; timestamp and device never change."""
    body = change.body
    event_type = types.get((change.integration_id, body["integration_event_type_id"]))
    merged = {**orjson.loads(base.attributes_json or "{}"), **body["attributes"]}
    text = orjson.dumps(merged).decode()
    refusal = update_refusal(merged, len(text), event_type)
    if refusal is not None or event_type is None:
        return refused(change, refusal or UNKNOWN_EVENT_TYPE)
    revision = _next(
        base,
        change,
        op="updated",
        event_type_id=event_type.id,
        event_type_version=event_type.version,
        duration_ms=int(body.get("duration", base.duration_ms or 0)),
        buffer_ms=int(body.get("buffer", base.buffer_ms or 0)),
        attributes_json=text,
    )
    return Revised(change, revision)


def refused(raw: RawEvent | RawChange, refusal: Refusal) -> Rejection:
    """The rejection of a record refused by a shared decision (core/plan.py)."""
    errors, total = refusal.errors
    return Rejection(
        raw.source,
        raw.value,
        raw.event_id,
        raw.integration_id,
        refusal.status,
        refusal.code,
        refusal.message,
        errors,
        total,
        counted=total is not None,
    )


def _next(base: Revision, change: RawChange, **changed: Any) -> Revision:
    return base._replace(
        revision=base.revision + 1,
        revision_received_at_ms=change.received_at_ms,
        traceparent=change.traceparent,
        source=change.source,
        **changed,
    )


def superseded(added: Iterable[Revision]) -> dict[EventKey, tuple[int, int]]:
    """Per event given a new revision: (its partition key, its newest revision). Older
    revisions stop being current."""
    newest: dict[EventKey, tuple[int, int]] = {}
    for rev in added:
        key = (rev.integration_id, rev.event_id)  # not `rev.key`: a property is slower
        if rev.revision > newest.get(key, (0, 0))[1]:
            newest[key] = (rev.received_at_ms, rev.revision)
    return newest


def reject(raw: RawEvent | RawChange, status: int, code: str, message: str) -> Rejection:
    """The rejection of a decoded record: status, stable code, message."""
    return Rejection(raw.source, raw.value, raw.event_id, raw.integration_id, status, code, message)


def _whole(value: float | None) -> int | None:
    """A duration the shape let through as a whole-number float (`100.0`), as the integer
    the store's column holds."""
    return None if value is None else int(value)
