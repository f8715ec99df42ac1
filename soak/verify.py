"""Verify a soak run from the outside: compare what the driver sent (the ledger) with what the
output topics and PostgreSQL hold.

Independent of the product on purpose: nothing is imported from `ingest_worker`. The topics
are read with confluent_kafka (`read_committed`, as a downstream consumer reads them), the
accepted records decoded with fastavro from the `.avsc` file and a CRC-64-AVRO fingerprint
computed here, and PostgreSQL queried with psycopg against the tables of the migrations. A
bug shared by the product and its checker would otherwise hide itself.

Call it once the driver has stopped and the workers have drained the raw topic: the topics are
read up to their high watermarks as of that call. A partition whose last stable offset stays
below that mark for `timeout_s` holds a hanging transaction; it is reported, not waited for.

The checks on decoded records (`check_topics`, `check_devices`, `check_store`) are pure and
unit-tested; `verify` adds the reading around them.
"""

from __future__ import annotations

import io
import json
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from itertools import pairwise
from pathlib import Path
from typing import Any, TypeVar

import fastavro
import psycopg
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    IsolationLevel,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, OffsetSpec
from fastavro.schema import to_parsing_canonical_form

from soak.ledger import Sent, read_ledger

SCHEMA_PATH = (
    Path(__file__).resolve().parents[1]
    / "ingest_worker"
    / "core"
    / "schemas"
    / "integration_event.avsc"
)
SINGLE_OBJECT_MARKER = b"\xc3\x01"
MAX_EXAMPLES = 20
# The counters of Verdict that must be zero for a run to pass.
PROBLEMS = (
    "lost",
    "duplicated",
    "misrouted",
    "unexpected",
    "order_violations",
    "revision_errors",
    "hanging_partitions",
    "unread_partitions",
    "undecodable",
    "devices_missing",
    "devices_duplicated",
    "device_flag_errors",
    "store_mismatch",
)
# A ledger op and the changelog op of its accepted record.
CHANGELOG_OP = {"create": "created", "update": "updated", "delete": "deleted"}

# ---------------------------------------------------------------------------------------------
# Avro single-object encoding, checked against a fingerprint computed here.

_CRC64_EMPTY = 0xC15D213AA4D7A795


def _crc64_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        fp = byte
        for _ in range(8):
            fp = (fp >> 1) ^ (_CRC64_EMPTY & -(fp & 1))
        table.append(fp)
    return tuple(table)


_CRC64_TABLE = _crc64_table()


def crc64_avro(data: bytes) -> int:
    """The Avro specification's CRC-64-AVRO (Rabin) fingerprint, written out from the spec so
    that the product's header is checked against something it did not compute itself."""
    fp = _CRC64_EMPTY
    for byte in data:
        fp = (fp >> 8) ^ _CRC64_TABLE[(fp ^ byte) & 0xFF]
    return fp


@dataclass(frozen=True, slots=True)
class AvroSchema:
    """The parsed schema, and the 8 fingerprint bytes (little-endian) records must carry."""

    parsed: Any
    fingerprint: bytes

    @property
    def header(self) -> bytes:
        """Marker and fingerprint: the 10 bytes before every body."""
        return SINGLE_OBJECT_MARKER + self.fingerprint


def load_schema(path: Path = SCHEMA_PATH) -> AvroSchema:
    """The schema of the accepted topic, parsed once for every record."""
    parsed = fastavro.parse_schema(json.loads(path.read_text(encoding="utf-8")))
    canonical = to_parsing_canonical_form(parsed).encode()
    return AvroSchema(parsed, crc64_avro(canonical).to_bytes(8, "little"))


def decode_single_object(value: bytes, schema: AvroSchema) -> dict[str, Any]:
    """One Avro single-object encoded record: marker, fingerprint of exactly this schema, and a
    body that decodes to its end. Raises ValueError otherwise."""
    if value[:2] != SINGLE_OBJECT_MARKER:
        raise ValueError(f"no single-object marker: starts {value[:2].hex() or 'empty'}")
    if value[2:10] != schema.fingerprint:
        raise ValueError(f"fingerprint {value[2:10].hex()}, expected {schema.fingerprint.hex()}")
    body = io.BytesIO(value[10:])
    try:
        record = fastavro.schemaless_reader(body, schema.parsed, None)
    except (EOFError, ValueError, IndexError, UnicodeDecodeError) as exc:
        raise ValueError(f"Avro body does not decode: {exc!r}") from exc
    if not isinstance(record, dict) or body.tell() != len(value) - 10:
        raise ValueError("Avro body does not decode to one whole record")
    return record


# ---------------------------------------------------------------------------------------------
# Output records as the checks see them.


@dataclass(frozen=True, slots=True)
class Accepted:
    """One record of the accepted topic (the event changelog), the fields the checks read."""

    event_id: str
    partition: int
    offset: int
    op: str
    revision: int
    integration_id: int
    external_id: str | None
    device_created: bool
    attributes_json: str


@dataclass(frozen=True, slots=True)
class Rejected:
    """One record of the rejected topic: whose it is and why."""

    event_id: str
    partition: int
    offset: int
    code: str


Output = Accepted | Rejected
R = TypeVar("R", Accepted, Rejected)


def where(record: Output) -> tuple[int, int]:
    """(partition, offset): topic order within a partition."""
    return record.partition, record.offset


def _at(record: Output) -> str:
    kind = f"{record.op} r{record.revision}" if isinstance(record, Accepted) else record.code
    return f"{kind} at {record.partition}@{record.offset}"


def normal_id(text: str) -> str:
    """A UUID in its canonical form (the ledger, headers and Avro may spell it differently);
    any other text as it is."""
    try:
        return str(uuid.UUID(text))
    except ValueError:
        return text


def accepted_from(record: Mapping[str, Any], partition: int, offset: int) -> Accepted:
    """The checked fields of a decoded accepted record."""
    return Accepted(
        event_id=normal_id(str(record["event_id"])),
        partition=partition,
        offset=offset,
        op=str(record["op"]),
        revision=int(record["revision"]),
        integration_id=int(record["integration_id"]),
        external_id=record["device_external_id"],
        device_created=bool(record["device_created"]),
        attributes_json=str(record["attributes_json"]),
    )


def rejected_from(
    value: bytes, event_id_header: bytes | None, partition: int, offset: int
) -> Rejected:
    """A rejected record: the JSON value's error code; the event id from the `event-id` header,
    else from the value. Raises ValueError when it is not such a record."""
    try:
        document = json.loads(value)
        code = document["error"]["code"]
        event_id = event_id_header.decode() if event_id_header else document["event_id"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"not a rejection: {exc!r}") from exc
    if not isinstance(code, str) or not isinstance(event_id, str):
        raise ValueError("a rejection's code and event id are strings")
    return Rejected(normal_id(event_id), partition, offset, code)


def attribute_seq(record: Accepted) -> int | None:
    """The `seq` the driver put in the attributes, if any."""
    try:
        attributes = json.loads(record.attributes_json)
    except ValueError:
        return None
    seq = attributes.get("seq") if isinstance(attributes, dict) else None
    return seq if isinstance(seq, int) and not isinstance(seq, bool) else None


# ---------------------------------------------------------------------------------------------
# The verdict.


@dataclass
class Verdict:
    """Counts of what was sent and read, and of every problem kind, with a few examples each."""

    sent: dict[str, int] = field(default_factory=dict)
    acked: int = 0
    outputs: int = 0
    lost: int = 0
    duplicated: int = 0
    misrouted: int = 0
    unexpected: int = 0
    order_violations: int = 0
    revision_errors: int = 0
    hanging_partitions: int = 0
    unread_partitions: int = 0
    undecodable: int = 0
    devices_missing: int = 0
    devices_duplicated: int = 0
    device_flag_errors: int = 0
    store_mismatch: int = 0
    examples: dict[str, list[str]] = field(default_factory=dict)

    def note(self, kind: str, example: str) -> None:
        """Count one problem of `kind` (a name in PROBLEMS) and keep its example if room."""
        if kind not in PROBLEMS:
            raise ValueError(f"unknown problem kind {kind!r}")
        setattr(self, kind, getattr(self, kind) + 1)
        shown = self.examples.setdefault(kind, [])
        if len(shown) < MAX_EXAMPLES:
            shown.append(example)

    @property
    def ok(self) -> bool:
        """Whether no problem of any kind was found."""
        return not any(self.problems().values())

    def problems(self) -> dict[str, int]:
        """Every problem counter by name, zeros included."""
        return {kind: int(getattr(self, kind)) for kind in PROBLEMS}

    def as_dict(self) -> dict[str, Any]:
        """Everything, as JSON-ready values."""
        found = {f.name: getattr(self, f.name) for f in fields(self)}
        return {"ok": self.ok, **found}


# ---------------------------------------------------------------------------------------------
# Matching outputs to ledger items (pure).


@dataclass(eq=False, slots=True)
class _Slot:
    """A ledger item, the output matched to it, and the extra outputs its retries allow."""

    item: Sent
    output: Output | None = None
    extras: int = 0

    @property
    def open(self) -> bool:
        return self.output is None


def _first(slots: Iterable[_Slot], wanted: Callable[[_Slot], bool]) -> _Slot | None:
    """The first slot wanted, acked ones before unacked ones (an acked item is owed an output;
    an unacked one may have none)."""
    candidates = [s for s in slots if wanted(s)]
    return next((s for s in candidates if s.item.acked), candidates[0] if candidates else None)


def _by_id(records: Iterable[R]) -> dict[str, list[R]]:
    """Records by event id, each list in topic order."""
    grouped: dict[str, list[R]] = defaultdict(list)
    for record in sorted(records, key=where):
        grouped[record.event_id].append(record)
    return grouped


def count_sent(items: Sequence[Sent], verdict: Verdict) -> None:
    """Items by `channel/op`, and how many were acked."""
    verdict.sent = dict(sorted(Counter(f"{i.channel}/{i.op}" for i in items).items()))
    verdict.acked = sum(i.acked for i in items)


def match_outputs(
    items: Sequence[Sent],
    accepted: Sequence[Accepted],
    rejected: Sequence[Rejected],
    verdict: Verdict,
) -> list[tuple[Accepted, Sent]]:
    """Match every output to the ledger item it answers; note what is lost, duplicated,
    misrouted or unexpected. Returns the accepted records that answer an item expecting them."""
    slots: dict[str, list[_Slot]] = defaultdict(list)
    for item in items:
        slots[normal_id(item.id)].append(_Slot(item))
    matched: list[tuple[Accepted, Sent]] = []
    for event_id, records in _by_id(accepted).items():
        for op in CHANGELOG_OP:
            of_op = [r for r in records if r.op == CHANGELOG_OP[op]]
            mine = [s for s in slots.get(event_id, []) if s.item.op == op]
            matched += _place_accepted(mine, of_op, verdict)
    for record in sorted(rejected, key=where):
        _place_rejection(slots.get(record.event_id, []), record, verdict)
    _note_lost(slots, verdict)
    return matched


def _aligned(slots: Sequence[_Slot], count: int) -> list[_Slot]:
    """The items expecting acceptance that `count` records answer, in send order: every acked
    one, and as many unacked ones (earliest first) as there are records to spare."""
    spare = count - sum(s.item.acked for s in slots)
    chosen = []
    for slot in slots:
        if slot.item.acked or spare > 0:
            chosen.append(slot)
            spare -= not slot.item.acked
    return chosen


def _place_accepted(
    slots: Sequence[_Slot], records: Sequence[Accepted], verdict: Verdict
) -> list[tuple[Accepted, Sent]]:
    """Accepted records of one event and op, in topic order, against its items of that op."""
    if records and not slots:
        for record in records:
            verdict.note("unexpected", f"{record.event_id}: {_at(record)}, never sent")
        return []
    wanted = _aligned([s for s in slots if s.item.expect == "accepted"], len(records))
    matched = []
    for record, slot in zip(records, wanted, strict=False):
        slot.output = record
        matched.append((record, slot.item))
        _check_content(record, slot.item, verdict)
    for record in records[len(wanted) :]:
        _place_surplus_accepted(slots, record, verdict)
    return matched


def _check_content(record: Accepted, item: Sent, verdict: Verdict) -> None:
    """The accepted record belongs to the item: its device's external id, and the seq the
    driver put in a create's attributes."""
    if item.external_id is not None and record.external_id != item.external_id:
        verdict.note(
            "misrouted",
            f"{record.event_id}: {_at(record)} on device {record.external_id!r}, "
            f"expected {item.external_id!r}",
        )
    seq = attribute_seq(record) if record.op == "created" else None
    if seq is not None and seq != item.seq:
        verdict.note(
            "misrouted", f"{record.event_id}: {_at(record)} has seq {seq}, sent {item.seq}"
        )


def _place_surplus_accepted(slots: Sequence[_Slot], record: Accepted, verdict: Verdict) -> None:
    """An accepted record beyond those expected: misrouted if its item expected a rejection or
    was refused, allowed once per extra try of a change, else a duplicate."""
    slot = _first(slots, lambda s: s.open and s.item.expect != "accepted")
    if slot is not None:
        slot.output = record
        why = f"{slot.item.expect} {slot.item.code}"
        verdict.note("misrouted", f"{record.event_id}: {_at(record)}, expected {why}")
        return
    slot = _first(slots, lambda s: s.item.op != "create" and s.extras + 1 < s.item.attempts)
    if slot is not None:  # a retried PUT/DELETE whose first try was durable: applied twice
        slot.extras += 1
        return
    verdict.note("duplicated", f"{record.event_id}: another {_at(record)}")


def _place_rejection(slots: Sequence[_Slot], record: Rejected, verdict: Verdict) -> None:
    """A rejection, against the items of its event (a create and its changes share an id)."""
    if not slots:
        verdict.note("unexpected", f"{record.event_id}: {_at(record)}, never sent")
        return
    code = record.code
    slot = _first(slots, lambda s: s.open and s.item.expect == "rejected" and s.item.code == code)
    if slot is not None:
        slot.output = record
        return
    if _retry_allows(slots, code):
        return
    slot = _first(slots, lambda s: s.open and s.item.expect == "rejected")
    slot = slot or _first(slots, lambda s: s.open)
    if slot is None:
        verdict.note("duplicated", f"{record.event_id}: another output, {_at(record)}")
        return
    slot.output = record
    why = f"{slot.item.expect} {slot.item.code or ''}".rstrip()
    verdict.note("misrouted", f"{record.event_id} ({slot.item.op}): {_at(record)}, expected {why}")


def _retry_allows(slots: Sequence[_Slot], code: str) -> bool:
    """Whether a retried create explains this rejection: each try after the first may yield
    one more, a `duplicate` (the first try was accepted and claimed the key) or the same
    rejection again (a rejected event claims no key)."""

    def explains(slot: _Slot) -> bool:
        again = slot.item.expect == "rejected" and slot.item.code == code and not slot.open
        return (
            slot.item.op == "create"
            and slot.extras + 1 < slot.item.attempts
            and (code == "duplicate" or again)
        )

    slot = _first(slots, explains)
    if slot is None:
        return False
    slot.extras += 1
    return True


def _note_lost(slots: Mapping[str, Sequence[_Slot]], verdict: Verdict) -> None:
    """Acked items that nothing answered (a refused item is owed nothing)."""
    for event_id, mine in slots.items():
        for slot in mine:
            if slot.open and slot.item.acked and slot.item.expect != "refused":
                why = f"{slot.item.expect} {slot.item.code or ''}".rstrip()
                verdict.note("lost", f"{event_id} ({slot.item.channel} {slot.item.op}): {why}")


# ---------------------------------------------------------------------------------------------
# Order and revisions (pure).


def check_order(matched: Sequence[tuple[Accepted, Sent]], verdict: Verdict) -> None:
    """Per order key (one device, one sender), accepted records in topic order carry
    increasing seq: the seq in a create's attributes, else the ledger's."""
    by_key: dict[str, list[tuple[Accepted, int]]] = defaultdict(list)
    for record, item in matched:
        if item.order_key is not None:
            seq = attribute_seq(record) if record.op == "created" else None
            by_key[item.order_key].append((record, item.seq if seq is None else seq))
    for key, seen in sorted(by_key.items()):
        _check_sequence(key, sorted(seen, key=lambda pair: where(pair[0])), verdict)


def _check_sequence(key: str, seen: Sequence[tuple[Accepted, int]], verdict: Verdict) -> None:
    partitions = sorted({record.partition for record, _ in seen})
    if len(partitions) > 1:
        verdict.note("order_violations", f"{key}: one device on partitions {partitions}")
    for (before, seq_before), (after, seq_after) in pairwise(seen):
        if after.partition == before.partition and seq_after <= seq_before:
            verdict.note(
                "order_violations",
                f"{key}: seq {seq_after} ({after.event_id} at {after.offset}) after seq "
                f"{seq_before} ({before.event_id} at {before.offset}), partition {after.partition}",
            )


def check_revisions(accepted: Sequence[Accepted], verdict: Verdict) -> None:
    """Each event's changelog, in topic order: created as revision 1, then one more per
    record, nothing after its delete, all on one partition."""
    for event_id, records in _by_id(accepted).items():
        partitions = sorted({r.partition for r in records})
        if len(partitions) > 1:
            verdict.note("revision_errors", f"{event_id}: changelog on partitions {partitions}")
            continue
        previous: Accepted | None = None
        for record in records:
            problem = _revision_problem(record, previous)
            if problem:
                verdict.note("revision_errors", f"{event_id}: {_at(record)} {problem}")
            previous = record


def _revision_problem(record: Accepted, previous: Accepted | None) -> str | None:
    if previous is not None and previous.op == "deleted":
        return "after the delete"
    expected = 1 if previous is None else previous.revision + 1
    if record.revision != expected:
        return f"where revision {expected} was due"
    if (record.op == "created") != (expected == 1):
        return "created must be revision 1, and only it"
    return None


def check_topics(
    items: Sequence[Sent],
    accepted: Sequence[Accepted],
    rejected: Sequence[Rejected],
    verdict: Verdict,
) -> None:
    """Every check that needs only the ledger and the decoded output records."""
    count_sent(items, verdict)
    verdict.outputs = len(accepted) + len(rejected)
    matched = match_outputs(items, accepted, rejected, verdict)
    check_order(matched, verdict)
    check_revisions(accepted, verdict)


# ---------------------------------------------------------------------------------------------
# PostgreSQL: devices and stored events (pure checks on rows read below).

DeviceKey = tuple[int, str]


def new_device_keys(items: Sequence[Sent], accepted: Sequence[Accepted]) -> set[DeviceKey]:
    """(integration, external id) of devices new to the run that an accepted create names."""
    wanted = {
        (i.integration_id, i.external_id)
        for i in items
        if i.op == "create" and i.new_device and i.external_id is not None
    }
    return {
        (r.integration_id, r.external_id)
        for r in accepted
        if r.op == "created"
        and r.external_id is not None
        and (r.integration_id, r.external_id) in wanted
    }


def check_devices(
    keys: set[DeviceKey],
    rows: Mapping[DeviceKey, int],
    accepted: Sequence[Accepted],
    verdict: Verdict,
) -> None:
    """Each new device exists exactly once in PostgreSQL, and exactly one accepted record says
    it created it."""
    flags = Counter(
        (r.integration_id, r.external_id) for r in accepted if r.device_created and r.external_id
    )
    for key in sorted(keys):
        count = rows.get(key, 0)
        if count == 0:
            verdict.note("devices_missing", f"integration {key[0]} device {key[1]!r}: no row")
        elif count > 1:
            verdict.note("devices_duplicated", f"integration {key[0]} device {key[1]!r}: {count}")
        if flags[key] != 1:
            verdict.note(
                "device_flag_errors",
                f"integration {key[0]} device {key[1]!r}: device_created on {flags[key]} records",
            )


def expected_store(accepted: Sequence[Accepted], integration_ids: set[int]) -> dict[str, int]:
    """Event id -> revision of its current stored row, as the changelog says: its last record,
    unless that is a delete."""
    last: dict[str, Accepted] = {}
    for record in sorted(accepted, key=where):
        if record.integration_id in integration_ids:
            last[record.event_id] = record
    return {event_id: r.revision for event_id, r in last.items() if r.op != "deleted"}


def check_store(
    expected: Mapping[str, int], rows: Iterable[tuple[str, int]], verdict: Verdict
) -> None:
    """The current rows of `events` are the accepted, not deleted events, at their last
    revision: one each, none more."""
    found: dict[str, list[int]] = defaultdict(list)
    for event_id, revision in rows:
        found[normal_id(event_id)].append(revision)
    for event_id in sorted(expected.keys() | found.keys()):
        want = [expected[event_id]] if event_id in expected else []
        if sorted(found.get(event_id, [])) != want:
            verdict.note(
                "store_mismatch",
                f"{event_id}: current revisions {found.get(event_id, [])} stored, "
                f"{want} by the topic",
            )


_DEVICE_ROWS = """
    SELECT integration_id, external_id, count(*)
    FROM devices
    JOIN unnest(%s::integer[], %s::text[]) AS wanted (integration_id, external_id)
        USING (integration_id, external_id)
    GROUP BY integration_id, external_id
"""
_CURRENT_ROWS = "SELECT id::text, revision FROM events WHERE integration_id = ANY(%s) AND current"


def check_database(
    conn: psycopg.Connection[Any],
    items: Sequence[Sent],
    accepted: Sequence[Accepted],
    verdict: Verdict,
) -> None:
    """Devices and stored events of the ledger's integrations against the accepted topic."""
    keys = new_device_keys(items, accepted)
    ordered = sorted(keys)
    found = conn.execute(
        _DEVICE_ROWS, ([k[0] for k in ordered], [k[1] for k in ordered])
    ).fetchall()
    check_devices(keys, {(int(i), str(e)): int(n) for i, e, n in found}, accepted, verdict)
    integrations = {i.integration_id for i in items}
    rows = conn.execute(_CURRENT_ROWS, (sorted(integrations),)).fetchall()
    expected = expected_store(accepted, integrations)
    check_store(expected, [(str(e), int(r)) for e, r in rows], verdict)


# ---------------------------------------------------------------------------------------------
# Reading the topics: read_committed, up to the high watermarks of the moment it starts.

Partition = tuple[str, int]


@dataclass(frozen=True, slots=True)
class RawOutput:
    """One consumed record, its Optional fields settled."""

    topic: str
    partition: int
    offset: int
    value: bytes
    event_id_header: bytes | None


@dataclass
class _Reading:
    """Where each partition must be read to, what is still short of it, and what was read."""

    ends: dict[Partition, int]
    pending: set[Partition]
    records: list[RawOutput] = field(default_factory=list)

    def take(self, message: Message) -> None:
        """Keep a record below its partition's end; an end-of-partition event at or past the
        end finishes the partition (read_committed: the end is the last stable offset)."""
        part = (message.topic() or "", message.partition() or 0)
        offset, error = message.offset() or 0, message.error()
        if error is None:
            if offset < self.ends[part]:
                self.records.append(_raw_output(message, part, offset))
            if offset + 1 >= self.ends[part]:
                self.pending.discard(part)
        elif error.code() == KafkaError._PARTITION_EOF:
            if offset >= self.ends[part]:
                self.pending.discard(part)
        elif error.fatal():
            raise KafkaException(error)

    def reached(self, positions: Iterable[TopicPartition]) -> None:
        """Partitions whose position got to the end (past a closing transaction marker)."""
        for tp in positions:
            if tp.offset >= self.ends[(tp.topic, tp.partition)]:
                self.pending.discard((tp.topic, tp.partition))


def _raw_output(message: Message, part: Partition, offset: int) -> RawOutput:
    header = None
    headers = message.headers() or []
    for name, value in headers.items() if isinstance(headers, dict) else headers:
        if name == "event-id":
            header = value.encode() if isinstance(value, str) else value
    return RawOutput(part[0], part[1], offset, message.value() or b"", header)


def _partitions(admin: AdminClient, topics: Sequence[str]) -> list[Partition]:
    found = admin.list_topics(timeout=30).topics
    missing = [t for t in topics if t not in found]
    if missing:
        raise RuntimeError(f"topics not found: {missing}")
    return [(t, p) for t in topics for p in sorted(found[t].partitions)]


def _offsets(
    admin: AdminClient, parts: Sequence[Partition], isolation: IsolationLevel
) -> dict[Partition, int]:
    """Latest offsets: the high watermark (read_uncommitted) or the last stable offset."""
    latest = OffsetSpec.latest()  # type: ignore[no-untyped-call]  # untyped in confluent_kafka
    wanted = {TopicPartition(t, p): latest for t, p in parts}
    futures = admin.list_offsets(wanted, isolation_level=isolation, request_timeout=30)
    return {(tp.topic, tp.partition): int(f.result().offset) for tp, f in futures.items()}


def read_outputs(
    bootstrap: str, topics: Sequence[str], timeout_s: float
) -> tuple[list[RawOutput], list[str], list[str]]:
    """Every committed record of `topics` up to their high watermarks as of now. Returns the
    records and the partitions not read to that end in `timeout_s`: hanging transactions
    (last stable offset below the mark), and others (read too slowly)."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    parts = _partitions(admin, topics)
    ends = _offsets(admin, parts, IsolationLevel.READ_UNCOMMITTED)
    reading = _Reading(ends, {p for p in parts if ends[p] > 0})
    _consume(bootstrap, reading, time.monotonic() + timeout_s)
    if not reading.pending:
        return reading.records, [], []
    stable = _offsets(admin, sorted(reading.pending), IsolationLevel.READ_COMMITTED)
    hanging = [
        f"{t}[{p}]: last stable offset {stable[(t, p)]} < high watermark {ends[(t, p)]}"
        f" after {timeout_s:g} s"
        for t, p in sorted(reading.pending)
        if stable[(t, p)] < ends[(t, p)]
    ]
    unread = [
        f"{t}[{p}]: not read to {ends[(t, p)]} in {timeout_s:g} s"
        for t, p in sorted(reading.pending)
        if stable[(t, p)] >= ends[(t, p)]
    ]
    return reading.records, hanging, unread


def _consume(bootstrap: str, reading: _Reading, deadline: float) -> None:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"soak-verify-{uuid.uuid4().hex}",
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "check.crcs": True,
        }
    )
    try:
        consumer.assign(
            [TopicPartition(t, p, OFFSET_BEGINNING) for t, p in sorted(reading.pending)]
        )
        while reading.pending and time.monotonic() < deadline:
            for message in consumer.consume(1000, timeout=0.5):
                reading.take(message)
            pending = [TopicPartition(t, p) for t, p in reading.pending]
            reading.reached(consumer.position(pending) if pending else [])
    finally:
        consumer.close()


def decode_outputs(
    records: Sequence[RawOutput], accepted_topic: str, schema: AvroSchema, verdict: Verdict
) -> tuple[list[Accepted], list[Rejected]]:
    """Decode each record for its topic; an undecodable one is a problem, not a crash."""
    accepted: list[Accepted] = []
    rejected: list[Rejected] = []
    for raw in records:
        try:
            if raw.topic == accepted_topic:
                decoded = decode_single_object(raw.value, schema)
                accepted.append(accepted_from(decoded, raw.partition, raw.offset))
            else:
                rejected.append(
                    rejected_from(raw.value, raw.event_id_header, raw.partition, raw.offset)
                )
        except (ValueError, KeyError, TypeError) as exc:
            verdict.note("undecodable", f"{raw.topic}[{raw.partition}]@{raw.offset}: {exc}")
    return accepted, rejected


def verify(
    ledger: Path,
    bootstrap: str,
    accepted_topic: str,
    rejected_topic: str,
    database_url: str,
    timeout_s: float = 300,
    *,
    schema_path: Path = SCHEMA_PATH,
) -> Verdict:
    """Read the ledger, both output topics and PostgreSQL, and judge the run."""
    items = read_ledger(ledger)
    schema = load_schema(schema_path)
    verdict = Verdict()
    records, hanging, unread = read_outputs(bootstrap, [accepted_topic, rejected_topic], timeout_s)
    for text in hanging:
        verdict.note("hanging_partitions", text)
    for text in unread:
        verdict.note("unread_partitions", text)
    accepted, rejected = decode_outputs(records, accepted_topic, schema, verdict)
    check_topics(items, accepted, rejected, verdict)
    verdict.outputs = len(records)  # the undecodable ones too
    with psycopg.connect(database_url) as conn:
        check_database(conn, items, accepted, verdict)
    return verdict
