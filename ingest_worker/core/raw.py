"""The raw-topic record the shim publishes: key, value and headers per DESIGN.md. Pure."""

from __future__ import annotations

import os
import re
import secrets
import time
import uuid
from dataclasses import dataclass
from typing import Any

# Namespace of event ids derived from (integration id, Idempotency-Key).
EVENT_ID_NAMESPACE = uuid.UUID("6f0b5e4e-7f47-4d1c-9a57-2c1f0e0b7a11")
# Namespace of an import item's event id (integration id, item index, the import's key): its
# own, so no single event's key can ever name the same id as an import item.
IMPORT_ITEM_NAMESPACE = uuid.UUID("3d6b1f0a-2c4e-4b8f-9f6d-8a0c5e7d1b24")
# The headers of the raw-topic contract: each may appear once, as UTF-8.
CONTRACT_HEADERS = frozenset(
    {
        "integration-id",
        "event-id",
        "received-at",
        "idempotency-key",
        "idempotency-index",
        "traceparent",
        "op",
    }
)
# The `op` header of a change to a stored event; a record without one is an ingest.
OPS = ("update", "delete")
_TRACEPARENT = re.compile(r"^00-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-[0-9a-f]{2}$")

Headers = list[tuple[str, bytes]]


@dataclass(frozen=True, slots=True)
class RawRecord:
    """One record for the raw topic."""

    key: bytes
    value: bytes
    headers: Headers
    event_id: str


def event_id(integration_id: int, idempotency_key: str | None, index: int | None = None) -> str:
    """Random, or derived from the key (and, for an import item, its index) so a retried
    request gets the same id."""
    if idempotency_key is None:
        return random_event_ids(1)[0]
    if index is None:
        return str(uuid.uuid5(EVENT_ID_NAMESPACE, f"{integration_id}:{idempotency_key}"))
    return str(uuid.uuid5(IMPORT_ITEM_NAMESPACE, f"{integration_id}:{index}:{idempotency_key}"))


def random_event_ids(count: int, now_ms: int | None = None) -> list[str]:
    """`count` time-ordered random UUIDs (version 7, RFC 9562) as text: the Unix time in ms
    (`now_ms`, else the clock's), then 74 random bits, from one read of the OS's randomness
    (an import's ids at a fifth of `str(uuid.uuid4())`'s CPU each: 0.5 against 2.7 µs).
    Ids minted close together sort together, so the event store's primary key takes them
    near its right edge instead of at random pages: PostgreSQL spent 15-25% less CPU per
    stored event than with version 4 ids, in three alternated pairs of worker runs."""
    ms = time.time_ns() // 1_000_000 if now_ms is None else now_ms
    if count == 1:  # the single-event route: 1.9 µs this way, 3.4 the way below
        return [_one_event_id(ms)]
    stamp = f"{ms & 0xFFFF_FFFF_FFFF:012x}"
    head = f"{stamp[:8]}-{stamp[8:]}-"  # the same for every id of the call
    raw = bytearray(os.urandom(10 * count))  # per id: version and 12 bits, variant and 62
    raw[0::10] = bytes(b & 0x0F | 0x70 for b in raw[0::10])  # version 7
    raw[2::10] = bytes(b & 0x3F | 0x80 for b in raw[2::10])  # RFC 9562 variant
    h = raw.hex()
    return [
        f"{head}{h[i : i + 4]}-{h[i + 4 : i + 8]}-{h[i + 8 : i + 20]}"
        for i in range(0, 20 * count, 20)
    ]


def _one_event_id(ms: int) -> str:
    """One version 7 UUID as text, built as an integer: time, version, 12 random bits,
    variant, 62 random bits."""
    r = int.from_bytes(os.urandom(10), "big")
    value = (ms & 0xFFFF_FFFF_FFFF) << 80 | 0x7000 << 64 | (r >> 64 & 0xFFF) << 64
    value |= 1 << 63 | r & 0x3FFF_FFFF_FFFF_FFFF
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def device_hint(integration_id: int, event: dict[str, Any]) -> str | None:
    """`{integration}:{device id or external id}`, so one device's events stay in order."""
    device = event.get("integration_device_id")
    if device is None:
        device = event.get("device_external_id")
    return None if device is None else f"{integration_id}:{device}"


def build_change(
    integration_id: int,
    event_id: str,
    op: str,
    value: bytes,
    *,
    key: bytes,
    received_at_ms: int,
    trace: str,
) -> RawRecord:
    """The record of an update or delete of a stored event: keyed like the event itself (its
    raw record's key), so it lands on the event's partition, after it."""
    headers: Headers = [
        ("integration-id", str(integration_id).encode()),
        ("event-id", event_id.encode()),
        ("op", op.encode()),
        ("received-at", str(received_at_ms).encode()),
        ("traceparent", trace.encode()),
    ]
    return RawRecord(key, value, headers, event_id)


def is_traceparent(text: str) -> bool:
    """Whether `text` is a well-formed W3C traceparent (version 00)."""
    return _TRACEPARENT.fullmatch(text) is not None


def traceparent(given: str | None) -> str:
    """The caller's W3C traceparent if well formed, else a fresh one."""
    if given is not None and is_traceparent(given):
        return given
    ids = secrets.token_hex(24)
    return f"00-{ids[:32]}-{ids[32:]}-01"


def build(
    integration_id: int,
    event: dict[str, Any],
    value: bytes,
    *,
    received_at_ms: int,
    idempotency_key: str | None,
    trace: str,
    index: int | None = None,
    random_id: str | None = None,
) -> RawRecord:
    """The record for one event whose body (`value`) is published byte for byte; `index` is
    an import item's position, claimed with the import's key as the pair (key, index).
    Without a key, the event's id is `random_id` if given (from `random_event_ids`)."""
    if idempotency_key is None and random_id is not None:
        eid = random_id
    else:
        eid = event_id(integration_id, idempotency_key, index)
    hint = device_hint(integration_id, event)
    headers: Headers = [
        ("integration-id", str(integration_id).encode()),
        ("event-id", eid.encode()),
        ("received-at", str(received_at_ms).encode()),
        ("traceparent", trace.encode()),
    ]
    if idempotency_key is not None:
        headers.append(("idempotency-key", idempotency_key.encode()))
        if index is not None:
            headers.append(("idempotency-index", str(index).encode()))
    key = (hint or eid).encode()
    return RawRecord(key, value, headers, eid)
