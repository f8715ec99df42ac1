"""One poll batch, from raw records to output records: decode, validate, resolve devices in a
single PostgreSQL transaction, encode. Kafka stays outside: the caller emits and commits."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import orjson
import psycopg
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from ingest_worker.core import encode
from ingest_worker.core import plan as core_plan
from ingest_worker.core.encode import OutRecord
from ingest_worker.core.errors import DependencyUnavailable, is_recoverable
from ingest_worker.core.limits import DEFAULT_MAX_MESSAGE_BYTES, record_size
from ingest_worker.core.plan import DeviceRef, device_in_integration
from ingest_worker.core.rejections import Rejection, Source
from ingest_worker.core.times import RECEIVED_AT_MS
from ingest_worker.core.validate import EventType
from ingest_worker.worker import resolve, store
from ingest_worker.worker.catalog import Catalog, TypeKey
from ingest_worker.worker.decode import (
    Headers,
    RawChange,
    RawEvent,
    decode,
    fallback_event_id,
)
from ingest_worker.worker.resolve import Claim, ClaimKey, Device
from ingest_worker.worker.revise import (
    Events,
    Revised,
    Revision,
    avro_fields,
    refused,
    reject,
    rejected_revision,
    revise,
)

log = logging.getLogger(__name__)

MAX_TX_ATTEMPTS = 5


class InRecord(NamedTuple):
    """What the pipeline needs of a consumed record."""

    source: Source
    value: bytes | None
    headers: Headers | None  # None: the client could not read them
    timestamp_ms: int
    key: bytes | None = None


@dataclass(frozen=True, slots=True)
class Topics:
    """The output topics and the largest record each accepts (`max.message.bytes`)."""

    accepted: str
    rejected: str
    accepted_max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    rejected_max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES


@dataclass(frozen=True, slots=True)
class Policy:
    """Limits a batch applies: how long an Idempotency-Key claim holds, the most devices
    auto-created per integration (0: no limit), and whether events are stored."""

    idempotency_ttl_s: float = 86400.0
    max_auto_devices: int = 0
    store_events: bool = True


@dataclass
class Outcome:
    """Output records in input order, and counts by (outcome, code)."""

    records: list[OutRecord] = field(default_factory=list)
    counts: Counter[tuple[str, str]] = field(default_factory=Counter)


class Accepted(NamedTuple):
    event: RawEvent
    event_type: EventType
    ref: DeviceRef
    device: Device


Verdict = Accepted | Revised | Rejection
Decoded = RawEvent | RawChange | Rejection
Item = tuple[InRecord, Decoded]
Decided = dict[Source, tuple[OutRecord, Verdict]]


@dataclass
class Storing:
    """The batches' store writes and commits, left to finish while the loop goes on: the
    Kafka commit of a batch's outputs waits for them, and so does a batch that changes
    stored events (it must read what earlier batches stored). Others go ahead: PostgreSQL
    orders what they share (a device or a claim being inserted waits for its commit).
    `isolate`: a write PostgreSQL refused for its data; until the next Kafka commit,
    batches run whole again, so the record at fault is found (and rejected alone)."""

    tasks: list[asyncio.Task[Decided]] = field(default_factory=list)
    isolate: bool = False

    def pending(self) -> list[asyncio.Task[Decided]]:
        """The writes not known to have succeeded."""
        self.tasks = [t for t in self.tasks if not _succeeded(t)]
        return list(self.tasks)

    async def settled(self, tasks: list[asyncio.Task[Decided]] | None = None) -> None:
        """Wait for these writes (all those in flight by default); DependencyUnavailable if
        one failed."""
        for task in self.pending() if tasks is None else tasks:
            try:
                await asyncio.shield(task)
            except (psycopg.errors.DataError, psycopg.errors.IntegrityError) as exc:
                self.isolate = True
                raise DependencyUnavailable(f"PostgreSQL refused a batch's rows: {exc}") from exc

    async def drop(self) -> None:
        """Forget the writes in flight once they are over (a failure is handled: its batch
        is put back)."""
        tasks, self.tasks = self.tasks, []
        for task in tasks:
            with suppress(Exception):
                await task


def _succeeded(task: asyncio.Task[Decided]) -> bool:
    return task.done() and not task.cancelled() and task.exception() is None


async def process(
    records: Sequence[InRecord],
    pool: AsyncConnectionPool[Any],
    catalog: Catalog,
    topics: Topics,
    policy: Policy = Policy(),
    storing: Storing | None = None,
) -> Outcome:
    """Every record of the batch ends as exactly one output record, in input order. With
    `storing`, the batch's transaction ends (its store write and commit) after this returns;
    the caller commits the outputs only once that write is settled (`Storing.pending`)."""
    items = [(r, decode_record(r)) for r in records]
    if storing is not None and (storing.isolate or any(isinstance(d, RawChange) for _, d in items)):
        await storing.settled()  # earlier batches' rows, before this batch reads any
    if any(not isinstance(d, Rejection) for _, d in items) or policy.store_events:
        decided = await _decide_isolating(pool, catalog, items, topics, policy, storing)
    else:  # nothing to resolve, nothing to store
        decided = {d.source: output(d, topics) for _, d in items if isinstance(d, Rejection)}
    outcome = Outcome()
    for _, item in items:
        record, verdict = decided[item.source]
        outcome.records.append(record)
        outcome.counts[_count_key(verdict)] += 1
    return outcome


def decode_record(record: InRecord) -> Decoded:
    """`decode`, with any unexpected failure a rejection of this record alone."""
    try:
        return decode(record.source, record.value, record.headers, record.timestamp_ms)
    except BaseException as exc:
        if not is_recoverable(exc):
            raise
        event_id = fallback_event_id(record.source)
        return unprocessable(record.source, record.value or b"", event_id, None, "decode", exc)


def unprocessable(
    source: Source,
    value: bytes,
    event_id: str,
    integration_id: int | None,
    stage: str,
    exc: BaseException,
) -> Rejection:
    """The rejection of a record that broke a stage unexpectedly; logged once, with where it
    came from, so the cause can be found."""
    log.warning(
        "record unprocessable",
        extra={"stage": stage, "source": list(source), "error": repr(exc)[:500]},
    )
    message = f"the record could not be processed ({stage}: {type(exc).__name__})"
    return Rejection(source, value, event_id, integration_id, 422, "unprocessable", message)


def _unprocessable_event(event: RawEvent | RawChange, stage: str, exc: BaseException) -> Rejection:
    return unprocessable(
        event.source, event.value, event.event_id, event.integration_id, stage, exc
    )


async def _decide_isolating(
    pool: AsyncConnectionPool[Any],
    catalog: Catalog,
    items: list[Item],
    topics: Topics,
    policy: Policy,
    storing: Storing | None = None,
) -> Decided:
    """The batch transaction; if PostgreSQL refuses the batch's data (a constraint, a value it
    cannot store), the batch is split in halves, each its own transaction, until the record
    it refuses is alone: that one is rejected (and not stored), the others go on. Side
    effects are idempotent, so the halves commit apart safely."""
    try:
        return await _run(pool, catalog, items, topics, policy, storing)
    except (psycopg.errors.DataError, psycopg.errors.IntegrityError) as exc:
        if len(items) == 1:
            item = items[0][1]
            if not isinstance(item, Rejection):
                item = _unprocessable_event(item, "store", exc)
            return {item.source: output(item, topics)}
        half = len(items) // 2
        first = await _decide_isolating(pool, catalog, items[:half], topics, policy)
        return first | await _decide_isolating(pool, catalog, items[half:], topics, policy)


async def _run(
    pool: AsyncConnectionPool[Any],
    catalog: Catalog,
    items: list[Item],
    topics: Topics,
    policy: Policy,
    storing: Storing | None,
) -> Decided:
    """The batch transaction, whole; or, with `storing`, until its outputs are known: its
    store write and commit then go on in `storing` (PostgreSQL works on them while the worker
    polls, decodes and resolves the next batch)."""
    if storing is None or storing.isolate:
        return await _transaction(pool, catalog, items, topics, policy, None)
    ready: asyncio.Future[Decided] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(_transaction(pool, catalog, items, topics, policy, ready))
    await asyncio.wait([task, ready], return_when=asyncio.FIRST_COMPLETED)
    if not ready.done():
        return await task  # it failed before the outputs were known: raises
    storing.tasks.append(task)
    return ready.result()


async def _transaction(
    pool: AsyncConnectionPool[Any],
    catalog: Catalog,
    items: list[Item],
    topics: Topics,
    policy: Policy,
    ready: asyncio.Future[Decided] | None,
) -> Decided:
    """The batch transaction, retried whole on deadlock or serialization failure while its
    outputs are not yet out (`ready`, once set, means they are)."""
    for attempt in range(1, MAX_TX_ATTEMPTS + 1):
        try:
            return await _attempt(pool, catalog, items, (topics, policy), ready)
        except (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure) as exc:
            if ready is not None and ready.done():
                raise DependencyUnavailable(f"the batch's commit failed: {exc}") from exc
            log.warning("batch transaction retried", extra={"attempt": attempt, "error": str(exc)})
        except (psycopg.errors.DataError, psycopg.errors.IntegrityError):
            raise  # the batch's data: `_decide_isolating` (or `Storing`) finds the record
        except (psycopg.Error, PoolTimeout) as exc:
            raise _unavailable(exc) from exc
    raise DependencyUnavailable("batch transaction kept deadlocking")


def _unavailable(exc: psycopg.Error | PoolTimeout) -> DependencyUnavailable:
    if isinstance(exc, psycopg.OperationalError):  # AdminShutdown included
        return DependencyUnavailable(f"PostgreSQL unavailable: {exc}")
    if isinstance(exc, PoolTimeout):
        return DependencyUnavailable(f"no PostgreSQL connection: {exc}")
    # read-only after a failover, a missing migration...
    return DependencyUnavailable(f"PostgreSQL cannot run the batch: {exc!r}")


async def _attempt(
    pool: AsyncConnectionPool[Any],
    catalog: Catalog,
    items: list[Item],
    rules: tuple[Topics, Policy],
    ready: asyncio.Future[Decided] | None,
) -> Decided:
    """One try of the batch transaction; `ready` learns the outputs before the store write."""
    async with pool.connection() as conn, conn.transaction():
        decided, learned, rows = await _decide(conn, catalog, items, *rules)
        if ready is not None:
            ready.set_result(decided)
        await store.write(conn, rows)
    now = time.monotonic()  # committed: the devices exist, so remember them
    for device, integration_id in learned:
        catalog.remember_device(device, integration_id, now)
    return decided


async def _decide(
    conn: psycopg.AsyncConnection[Any],
    catalog: Catalog,
    items: list[Item],
    topics: Topics,
    policy: Policy,
) -> tuple[Decided, list[tuple[Device, int]], list[Revision]]:
    """Each record's output and verdict, the revisions to store, and the devices the batch
    loaded (for the catalog, once committed)."""
    events = [d for _, d in items if isinstance(d, RawEvent)]
    changes = [d for _, d in items if isinstance(d, RawChange)]
    named = {i for _, d in items if (i := d.integration_id) is not None}
    known, types, verdicts, learned = await _resolve_events(
        conn, catalog, (events, changes, named), policy
    )
    now_ms = int(time.time() * 1000)
    decided, created = _outputs(items, verdicts, topics, now_ms)
    if not policy.store_events:
        for change in changes:
            decided[change.source] = output(_store_disabled(change), topics)
        return decided, learned, []
    topic = changes[0].source.topic if changes else ""
    stored = await store.load(conn, {(c.integration_id, c.event_id) for c in changes}, topic)
    view = Events(stored, changing=bool(changes))
    rows = _revisions(items, (decided, created, now_ms), view, types, topics)
    return decided, learned, [r for r in rows if r.integration_id in known]


def _outputs(
    items: list[Item], verdicts: Mapping[Source, Verdict], topics: Topics, now_ms: int
) -> tuple[Decided, dict[Source, Revision]]:
    """The output of every record but the changes, and revision 1 of each accepted event
    (built once: its record is encoded from it, and it is what is stored)."""
    decided: Decided = {}
    created: dict[Source, Revision] = {}
    days = days_kept(now_ms)
    for record, item in items:
        if isinstance(item, RawChange):
            continue
        verdict = verdicts[item.source] if isinstance(item, RawEvent) else item
        revision = None
        if isinstance(verdict, Accepted):
            revision = created[item.source] = created_revision(verdict, record.key, days)
        decided[item.source] = output(verdict, topics, revision)
    return decided, created


async def _resolve_events(
    conn: psycopg.AsyncConnection[Any],
    catalog: Catalog,
    batch: tuple[list[RawEvent], list[RawChange], set[int]],
    policy: Policy,
) -> tuple[set[int], dict[TypeKey, EventType], dict[Source, Verdict], list[tuple[Device, int]]]:
    """Which of the integrations named (by any record) exist, the event types the batch
    names, the verdict of each event, and the devices loaded."""
    events, changes, named = batch
    keys: set[TypeKey] = {(e.integration_id, e.event_type_id) for e in events}
    keys |= {(c.integration_id, c.body["integration_event_type_id"]) for c in changes if c.body}
    catalog.expire(time.monotonic())
    known, types = await catalog.fill(conn, named, keys, time.monotonic())
    planned: dict[Source, DeviceRef | Rejection] = {e.source: plan(e, known, types) for e in events}
    devices = await _devices(conn, catalog, events, planned, policy.max_auto_devices)
    verdicts = {e.source: verdict(e, planned[e.source], devices, types) for e in events}
    keyed = [
        e
        for e in events
        if e.idempotency_key is not None and isinstance(verdicts[e.source], Accepted)
    ]
    claims = await resolve.claim_keys(conn, keyed, policy.idempotency_ttl_s)
    for e in keyed:
        verdicts[e.source] = claimed(e, verdicts[e.source], claims)
    return known, types, verdicts, devices.learned


def _revisions(
    items: list[Item],
    outputs: tuple[Decided, Mapping[Source, Revision], int],
    events: Events,
    types: Mapping[TypeKey, EventType],
    topics: Topics,
) -> list[Revision]:
    """In input order: each event's revision 1 (or 0, rejected), and each change applied to
    the event as the batch has left it so far (its output decided here: a change that
    would not fit its topic changes nothing)."""
    decided, created, now_ms = outputs
    rows: list[Revision] = []
    for record, item in items:
        if isinstance(item, RawChange):
            decided[item.source] = out = output(_revised(item, events, types), topics)
            if isinstance(out[1], Revised) and not out[1].replayed:
                events.add(out[1].revision)
            continue
        final = decided[item.source][1]
        if isinstance(final, Accepted):
            rows.append(created[item.source])
            events.created(created[item.source])
        elif isinstance(final, Rejection) and not _is_change(record):
            event = item if isinstance(item, RawEvent) else None
            row = rejected_revision(final, event, record.key, _received_ms(record))
            rows += [] if row is None else [_within_days(row, now_ms)]
    return rows + events.added


def _within_days(row: Revision, now_ms: int) -> Revision:
    return row._replace(received_at_ms=stored_day(row.received_at_ms, now_ms))


def _is_change(record: InRecord) -> bool:
    return any(name.lower() == "op" for name, _ in record.headers or ())


def _revised(
    change: RawChange, events: Events, types: Mapping[TypeKey, EventType]
) -> Revised | Rejection:
    """`revise`, with any unexpected failure a rejection of this record alone."""
    try:
        return revise(change, events, types)
    except BaseException as exc:
        if not is_recoverable(exc):
            raise
        return _unprocessable_event(change, "revise", exc)


DAY_MS = 86_400_000


def stored_day(received_at_ms: int, now_ms: int) -> int:
    """The partition key of a new stored event: when it was received, kept within the days
    that always have a partition (yesterday to tomorrow), so a far-off `received-at` from a
    gateway never fills the default partition; stored events are kept from then on."""
    first, last = days_kept(now_ms)
    return min(max(received_at_ms, first), last)


def days_kept(now_ms: int) -> tuple[int, int]:
    """The first and last millisecond a new row's partition key may take (`stored_day`)."""
    today = now_ms - now_ms % DAY_MS
    return today - DAY_MS, today + 2 * DAY_MS - 1


def _received_ms(record: InRecord) -> int:
    """When a record that is no event was received, as far as it says: its timestamp, or
    the epoch when that is outside what PostgreSQL stores."""
    return record.timestamp_ms if record.timestamp_ms in RECEIVED_AT_MS else 0


def _store_disabled(change: RawChange) -> Rejection:
    return reject(
        change,
        501,
        "event_store_disabled",
        "events are not stored here (INGEST_EVENT_STORE=off), so they cannot be changed",
    )


def claimed(event: RawEvent, verdict: Verdict, claims: Mapping[ClaimKey, Claim]) -> Verdict:
    """An accepted event whose Idempotency-Key another raw record claimed is a duplicate; a
    claim this very record made (a replay of it) is not."""
    if event.idempotency_key is None or not isinstance(verdict, Accepted):
        return verdict
    if claims.get(resolve.claim_key(event)) == Claim(*event.source):
        return verdict
    return reject(
        event, 409, "duplicate", "this Idempotency-Key was already used in this integration"
    )


def plan(
    event: RawEvent, known: set[int], types: dict[TypeKey, EventType]
) -> DeviceRef | Rejection:
    """Integration, event type, attributes, then which device: or the first reason to reject
    (an unexpected failure included)."""
    try:
        return _plan(event, known, types)
    except BaseException as exc:
        if not is_recoverable(exc):
            raise
        return _unprocessable_event(event, "validate", exc)


def _plan(
    event: RawEvent, known: set[int], types: dict[TypeKey, EventType]
) -> DeviceRef | Rejection:
    if event.integration_id not in known:
        return reject(event, 404, "unknown_integration", "no such integration")
    event_type = types.get((event.integration_id, event.event_type_id))
    planned = core_plan.plan(event.body, len(event.value), event_type)
    return planned if isinstance(planned, DeviceRef) else refused(event, planned)


@dataclass(frozen=True, slots=True)
class Devices:
    """The devices a batch names, as loaded: by id (with their integration), by (integration,
    external id), the external ids refused by the auto-create cap, and what was loaded."""

    direct: dict[int, tuple[Device, int]]
    external: dict[tuple[int, str], Device]
    refused: set[tuple[int, str]]
    learned: list[tuple[Device, int]]  # loaded from PostgreSQL: (device, its integration)


async def _devices(
    conn: psycopg.AsyncConnection[Any],
    catalog: Catalog,
    events: list[RawEvent],
    planned: dict[Source, DeviceRef | Rejection],
    max_auto: int,
) -> Devices:
    """Devices named by the batch: from the catalog's copy, else in one query per kind."""
    direct_ids: set[int] = set()
    wanted: dict[tuple[int, str], str] = {}
    for e in events:
        ref = planned[e.source]
        if isinstance(ref, DeviceRef) and ref.device_id is not None:
            direct_ids.add(ref.device_id)
        elif isinstance(ref, DeviceRef) and ref.external_id is not None:
            wanted.setdefault((e.integration_id, ref.external_id), e.event_id)
    direct = {i: found for i in direct_ids if (found := catalog.device_by_id(i)) is not None}
    external = {k: hit for k in wanted if (hit := catalog.device_by_key(k)) is not None}
    loaded_direct = await resolve.direct_devices(conn, direct_ids - direct.keys())
    loaded = await resolve.external_devices(
        conn, {k: v for k, v in wanted.items() if k not in external}, max_auto
    )
    learned = [*loaded_direct.values()]
    learned += [(device, key[0]) for key, device in loaded.devices.items()]
    return Devices(direct | loaded_direct, external | loaded.devices, loaded.refused, learned)


def verdict(
    event: RawEvent,
    ref: DeviceRef | Rejection,
    devices: Devices,
    types: dict[TypeKey, EventType],
) -> Verdict:
    """The event's fate once the batch's devices are loaded: accepted with its device, or
    why not (a direct id of no device of its integration, an external id past the
    auto-create cap, an integration deleted during the batch)."""
    if isinstance(ref, Rejection):
        return ref
    event_type = types[event.integration_id, event.event_type_id]
    if ref.device_id is not None:
        found = devices.direct.get(ref.device_id)
        refusal = device_in_integration(found and found[1], event.integration_id)
        if found is None or refusal is not None:
            return refused(event, refusal or core_plan.DEVICE_NOT_FOUND)
        return Accepted(event, event_type, ref, found[0])
    key = (event.integration_id, str(ref.external_id))
    device = devices.external.get(key)
    if device is None and key in devices.refused:
        return reject(
            event, 403, "device_limit_reached", "the integration has its most auto-created devices"
        )
    if device is None:  # its integration was deleted during the batch
        return reject(event, 404, "unknown_integration", "no such integration")
    return Accepted(event, event_type, ref, device)


def output(
    verdict: Verdict, topics: Topics, revision: Revision | None = None
) -> tuple[OutRecord, Verdict]:
    """The one output record of a verdict, within its topic's size limit: an accepted event
    (or change) that cannot be encoded, or would not fit, becomes a rejection (which always
    fits)."""
    if not isinstance(verdict, Rejection):
        try:
            record = _accepted_record(verdict, topics, revision)
        except BaseException as exc:
            if not is_recoverable(exc):
                raise
            verdict = _unprocessable_event(_raw(verdict), "encode", exc)
        else:
            if record_size(record.key, record.value, record.headers) <= topics.accepted_max_bytes:
                return record, verdict
            verdict = _too_large(_raw(verdict))
    return _rejected_record(verdict, topics), verdict


def _raw(verdict: Accepted | Revised) -> RawEvent | RawChange:
    return verdict.event if isinstance(verdict, Accepted) else verdict.change


def _too_large(raw: RawEvent | RawChange) -> Rejection:
    return reject(raw, 413, "record_too_large", "the accepted record exceeds the topic's limit")


def _rejected_record(rejection: Rejection, topics: Topics) -> OutRecord:
    key = headers_value = rejection.event_id.encode()
    headers = [("event-id", headers_value)]
    room = topics.rejected_max_bytes - record_size(key, b"", headers)
    return OutRecord(topics.rejected, key, encode.rejected_value(rejection, room), headers)


def _accepted_record(
    verdict: Accepted | Revised, topics: Topics, revision: Revision | None
) -> OutRecord:
    if isinstance(verdict, Accepted):
        revision, trace = revision or created_revision(verdict), verdict.event.traceparent
        created = verdict.device.created_by_event == verdict.event.event_id
    else:
        revision, trace, created = verdict.revision, verdict.change.traceparent, False
    headers = [("event-id", revision.event_id.encode())]
    if trace:
        headers.append(("traceparent", trace.encode()))
    return OutRecord(
        topics.accepted,
        str(revision.device_id).encode(),
        encode.accepted_value(avro_fields(revision, device_created=created)),
        headers,
    )


def accepted_fields(verdict: Accepted) -> dict[str, Any]:
    """The Avro record of an accepted event, defaults applied."""
    created = verdict.device.created_by_event == verdict.event.event_id
    return avro_fields(created_revision(verdict), device_created=created)


def created_revision(
    verdict: Accepted, raw_key: bytes | None = None, days: tuple[int, int] | None = None
) -> Revision:
    """Revision 1 of an accepted event: what is stored (`days` keeps its partition key
    within the days kept, `days_kept`), and what its changelog record says."""
    event, body, event_type = verdict.event, verdict.event.body, verdict.event_type
    received = event.received_at_ms
    return Revision._make(  # _make: tuple's own constructor, a third of the cost here
        (
            event.integration_id,
            event.event_id,
            1,
            received if days is None else min(max(received, days[0]), days[1]),
            "created",
            event.event_type_id,
            event_type.version,
            verdict.device.id,
            verdict.device.external_id,
            verdict.ref.method,
            event.timestamp_us,
            int(body.get("duration", event_type.duration_ms)),
            int(body.get("buffer", event_type.buffer_ms)),
            orjson.dumps(body["attributes"]).decode(),
            event.received_at_ms,
            event.idempotency_key,
            event.traceparent,
            raw_key,
            event.source,
            None,
            None,
        )
    )


def _count_key(verdict: Verdict) -> tuple[str, str]:
    if isinstance(verdict, Rejection):
        return ("rejected", verdict.code)
    if isinstance(verdict, Revised):
        return ("accepted", verdict.revision.op)
    return ("accepted", verdict.ref.method)
