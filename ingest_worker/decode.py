"""Raw-topic records to events, or to rejections with a reason. Pure.

A gateway may produce to the raw topic directly, so nothing is assumed: a record without
`integration-id`, or whose value is not JSON, or not an event, becomes a rejection, never an
exception.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

from ingest_worker import shape
from ingest_worker.raw import EVENT_ID_NAMESPACE
from ingest_worker.shape import FieldError

Headers = Sequence[tuple[str, bytes]]
_CANONICAL_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
MAX_KEY_CHARS = 255


class Source(NamedTuple):
    """Where a raw record was read."""

    topic: str
    partition: int
    offset: int


class RawEvent(NamedTuple):
    """A raw record that is a well-formed event of some integration."""

    source: Source
    value: bytes
    event_id: str
    integration_id: int
    event_type_id: int
    timestamp_us: int
    received_at_ms: int
    idempotency_key: str | None
    traceparent: str | None
    body: dict[str, Any]


@dataclass(slots=True)
class Rejection:
    """Why a raw record ends on the rejected topic."""

    source: Source
    value: bytes
    event_id: str
    integration_id: int | None
    status: int
    code: str
    message: str
    details: list[FieldError] = field(default_factory=list)


def decode(
    source: Source, value: bytes | None, headers: Headers, timestamp_ms: int
) -> RawEvent | Rejection:
    """Read one raw record: headers, JSON, and the shared request shape."""
    found = _headers(headers)
    event_id = _event_id(found.get("event-id"), source)
    payload = value or b""
    integration_id = _int32(found.get("integration-id"))

    def reject(
        status: int, code: str, message: str, details: list[FieldError] | None = None
    ) -> Rejection:
        return Rejection(
            source, payload, event_id, integration_id, status, code, message, details or []
        )

    if integration_id is None:
        return reject(
            400,
            "invalid_request",
            "header `integration-id` is missing or not an int32",
            [FieldError("headers.integration-id", "required, an int32")],
        )
    try:
        body = shape.parse_json(payload)
    except shape.BadJsonError as exc:
        return reject(400, "invalid_json", f"the value is not valid JSON: {exc}")
    errors = shape.check_event(body)
    key = found.get("idempotency-key")
    if key is not None and not (1 <= len(key) <= MAX_KEY_CHARS and "\x00" not in key):
        errors.append(FieldError("headers.idempotency-key", "must be 1..255 characters, no NUL"))
    if errors:
        return reject(400, "invalid_request", "the event is not a valid request", errors)
    try:
        timestamp_us = timestamp_micros(body["timestamp"])
    except ValueError as exc:
        return reject(400, "invalid_request", str(exc), [FieldError("timestamp", str(exc))])
    return RawEvent(
        source,
        payload,
        event_id,
        integration_id,
        int(body["integration_event_type_id"]),
        timestamp_us,
        _int(found.get("received-at")) or timestamp_ms,
        key,
        found.get("traceparent"),
        body,
    )


_RFC3339 = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?(?:[Zz]|([+-])(\d{2}):(\d{2}))$"
)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def timestamp_micros(text: str) -> int:
    """An RFC 3339 timestamp (already checked by the shape) as UTC epoch microseconds.

    `datetime.fromisoformat` for the usual forms (fast, C); plain arithmetic for what it
    refuses and RFC 3339 allows: year 0000, the leap second `:60`. Fractions beyond
    microseconds are truncated."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return _timestamp_micros_slow(text)
    if moment.tzinfo is None:  # not RFC 3339; the shape check keeps these out
        return _timestamp_micros_slow(text)
    return (moment - _EPOCH) // _MICROSECOND


def _timestamp_micros_slow(text: str) -> int:
    match = _RFC3339.match(text)
    if match is None:
        raise ValueError(f"not an RFC 3339 timestamp: {text!r}")
    year, month, day, hour, minute, second = (int(match[i]) for i in range(1, 7))
    micros = int((match[7] or "0")[:6].ljust(6, "0"))
    offset_s = 0
    if match[8]:
        offset_s = (int(match[9]) * 3600 + int(match[10]) * 60) * (1 if match[8] == "+" else -1)
    seconds = _days_from_civil(year, month, day) * 86400 + hour * 3600 + minute * 60 + second
    return (seconds - offset_s) * 1_000_000 + micros


def _days_from_civil(year: int, month: int, day: int) -> int:
    """Days since 1970-01-01 in the proleptic Gregorian calendar (H. Hinnant's algorithm)."""
    year -= month <= 2
    era = year // 400
    year_of_era = year - era * 400
    day_of_year = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    day_of_era = year_of_era * 365 + year_of_era // 4 - year_of_era // 100 + day_of_year
    return era * 146097 + day_of_era - 719468


def _headers(headers: Headers) -> dict[str, str]:
    decoded = {}
    for name, value in headers:
        try:
            decoded[name.lower()] = value.decode()
        except (UnicodeDecodeError, AttributeError):
            continue
    return decoded


def _event_id(given: str | None, source: Source) -> str:
    """The producer's event id if it is a UUID; else one derived from the record's position,
    so a replay of the same record gets the same id."""
    if given and _CANONICAL_UUID.match(given):
        return given
    if given:
        try:
            return str(uuid.UUID(given))
        except ValueError:
            pass
    return str(uuid.uuid5(EVENT_ID_NAMESPACE, f"{source.topic}:{source.partition}:{source.offset}"))


def _int(text: str | None) -> int | None:
    if text is None or not text.lstrip("-").isdigit():
        return None
    return int(text)


def _int32(text: str | None) -> int | None:
    value = _int(text)
    if value is None or not -(2**31) <= value < 2**31:
        return None
    return value
