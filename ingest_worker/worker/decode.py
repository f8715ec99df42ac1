"""Raw-topic records to events, or to rejections with a reason. Pure.

A gateway may produce to the raw topic directly, so nothing is assumed: a record without
`integration-id`, or whose value is not JSON, or not an event, becomes a rejection, never an
exception.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from ingest_worker.core import shape
from ingest_worker.core.raw import CONTRACT_HEADERS, EVENT_ID_NAMESPACE, OPS, is_traceparent
from ingest_worker.core.rejections import Rejection, Source
from ingest_worker.core.shape import FieldError
from ingest_worker.core.times import RECEIVED_AT_MS, timestamp_micros

Headers = Sequence[tuple[str, bytes | None]]
_CANONICAL_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
MAX_KEY_CHARS = 255
MAX_IMPORT_INDEX = 9999
INT32 = range(-(2**31), 2**31)


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
    idempotency_index: int | None
    traceparent: str | None
    body: dict[str, Any]


class RawChange(NamedTuple):
    """A raw record that is an update or a delete of a stored event (header `op`)."""

    source: Source
    value: bytes
    event_id: str  # the event it changes
    integration_id: int
    op: str  # "update" or "delete"
    received_at_ms: int
    traceparent: str | None
    body: dict[str, Any]  # an update's body; {} for a delete


def decode(
    source: Source, value: bytes | None, headers: Headers | None, timestamp_ms: int
) -> RawEvent | RawChange | Rejection:
    """Read one raw record: headers, JSON, and the shared request shape."""
    found, header_errors = read_headers(headers)
    if "op" in found:
        return decode_change(source, value or b"", found, header_errors, timestamp_ms)
    event_id = _event_id(found.get("event-id"), source)
    payload = value or b""
    integration_id = _in_range(found.get("integration-id"), INT32)
    try:
        if integration_id is None:
            header_errors.append(FieldError("headers.integration-id", "required, an int32"))
        if integration_id is None or header_errors:
            raise _Reject(
                400, "invalid_request", "the record's headers are not valid", header_errors
            )
        body = _body(payload)
        timestamp_us, received_at_ms = _times(body, found.get("received-at"), timestamp_ms)
    except _Reject as why:
        return Rejection(source, payload, event_id, integration_id, *why.args)
    return RawEvent(
        source,
        payload,
        event_id,
        integration_id,
        int(body["integration_event_type_id"]),
        timestamp_us,
        received_at_ms,
        found.get("idempotency-key"),
        _in_range(found.get("idempotency-index"), range(MAX_IMPORT_INDEX + 1)),
        found.get("traceparent"),
        body,
    )


def decode_change(
    source: Source,
    payload: bytes,
    found: dict[str, str],
    header_errors: list[FieldError],
    timestamp_ms: int,
) -> RawChange | Rejection:
    """An update or delete: it names its event by `event-id` (required) and an update's body
    has the update shape; a delete's value is ignored."""
    event_id = _event_id(found.get("event-id"), source)
    integration_id = _in_range(found.get("integration-id"), INT32)
    errors = header_errors + _change_header_errors(found, integration_id)
    try:
        if integration_id is None or errors:
            raise _Reject(400, "invalid_request", "the record's headers are not valid", errors)
        body = _update_body(payload) if found["op"] == "update" else {}
        received_at_ms = _received_at(found.get("received-at"), timestamp_ms)
    except _Reject as why:
        return Rejection(source, payload, event_id, integration_id, *why.args)
    op, trace = found["op"], found.get("traceparent")
    return RawChange(source, payload, event_id, integration_id, op, received_at_ms, trace, body)


def _change_header_errors(found: dict[str, str], integration_id: int | None) -> list[FieldError]:
    errors = []
    if integration_id is None:
        errors.append(FieldError("headers.integration-id", "required, an int32"))
    if found["op"] not in OPS:
        errors.append(FieldError("headers.op", f"must be one of {', '.join(OPS)}"))
    if _uuid_text(found.get("event-id")) is None:
        errors.append(FieldError("headers.event-id", "required with op: the event's UUID"))
    return errors


def _update_body(payload: bytes) -> dict[str, Any]:
    """The value as an update of the shared shape."""
    return _parsed(payload, shape.check_update, "the update is not valid")


class _Reject(Exception):  # noqa: N818 - a verdict, raised to leave decode early
    """(status, code, message, details) of a rejection."""


def _body(payload: bytes) -> dict[str, Any]:
    """The value as an event of the shared request shape."""
    return _parsed(payload, shape.check_event, "the event is not a valid request")


def _parsed(
    payload: bytes, check: Callable[[Any], list[FieldError]], invalid: str
) -> dict[str, Any]:
    """The value as JSON that `check` finds no fault with."""
    try:
        body = shape.parse_json(payload)
    except shape.BadJsonError as exc:
        raise _Reject(400, "invalid_json", f"the value is not valid JSON: {exc}", []) from exc
    errors = check(body)
    if errors:
        raise _Reject(400, "invalid_request", invalid, errors)
    parsed: dict[str, Any] = body
    return parsed


def _times(body: dict[str, Any], received_at: str | None, record_ms: int) -> tuple[int, int]:
    """(event timestamp in µs, received-at in ms), both within what every reader holds; the
    record's own timestamp stands in for a missing received-at."""
    try:  # the shape checked its form and range; a parse failure is still a rejection
        timestamp_us = timestamp_micros(body["timestamp"])
    except ValueError as exc:
        raise _Reject(
            400, "invalid_request", str(exc), [FieldError("timestamp", str(exc))]
        ) from exc
    return timestamp_us, _received_at(received_at, record_ms)


def _received_at(received_at: str | None, record_ms: int) -> int:
    """The received-at header in ms, or the record's own timestamp when there is none; both
    within years 1..9999."""
    received_at_ms = _in_range(received_at, RECEIVED_AT_MS)
    if received_at is not None and received_at_ms is None:
        message = "must be epoch milliseconds, years 0001 to 9999"
        raise _Reject(400, "invalid_request", message, [FieldError("headers.received-at", message)])
    if received_at_ms is None and record_ms not in RECEIVED_AT_MS:
        message = "no received-at header, and the record's timestamp is outside years 0001..9999"
        raise _Reject(400, "invalid_request", message, [FieldError("headers.received-at", message)])
    return record_ms if received_at_ms is None else received_at_ms


def read_headers(headers: Headers | None) -> tuple[dict[str, str], list[FieldError]]:
    """The contract's headers (names in any case) as text, and what is wrong with them:
    repeated, not UTF-8, or not of their form. Other headers are ignored. None: the Kafka
    client could not read them (a header name that is not UTF-8)."""
    found: dict[str, str] = {}
    errors: list[FieldError] = []
    if headers is None:
        return found, [FieldError("headers", "unreadable: a header name is not UTF-8")]
    for name, value in headers:
        lowered = name if name in CONTRACT_HEADERS else name.lower()
        if lowered not in CONTRACT_HEADERS:
            continue
        if lowered in found:
            if lowered == "traceparent":  # tracing only: two make none, and reject nothing
                found[lowered] = ""
            else:
                errors.append(FieldError(f"headers.{lowered}", "must appear once"))
            continue
        try:
            found[lowered] = (value or b"").decode()
        except UnicodeDecodeError:
            errors.append(FieldError(f"headers.{lowered}", "must be UTF-8"))
            found[lowered] = ""
    return found, errors + _header_form_errors(found)


def _header_form_errors(found: dict[str, str]) -> list[FieldError]:
    errors = []
    key, index = found.get("idempotency-key"), found.get("idempotency-index")
    if key is not None and not (1 <= len(key) <= MAX_KEY_CHARS and "\x00" not in key):
        errors.append(FieldError("headers.idempotency-key", "must be 1..255 characters, no NUL"))
    if index is not None and (key is None or _in_range(index, range(MAX_IMPORT_INDEX + 1)) is None):
        errors.append(FieldError("headers.idempotency-index", "0..9999, with an idempotency-key"))
    traceparent = found.get("traceparent")
    if traceparent is not None and not is_traceparent(traceparent):
        del found["traceparent"]  # tracing only: a malformed one starts no trace, rejects nothing
    return errors


def _event_id(given: str | None, source: Source) -> str:
    """The producer's event id if it is a UUID; else one derived from the record's position,
    so a replay of the same record gets the same id."""
    return _uuid_text(given) or fallback_event_id(source)


def _uuid_text(given: str | None) -> str | None:
    """`given` as a canonical UUID, or None if it is none."""
    if given and _CANONICAL_UUID.fullmatch(given):
        return given
    if given:
        try:
            return str(uuid.UUID(given))
        except ValueError:
            pass
    return None


def fallback_event_id(source: Source) -> str:
    """The event id of a record that carries none: derived from its position, so a replay of
    the same record gets the same id."""
    return str(uuid.uuid5(EVENT_ID_NAMESPACE, f"{source.topic}:{source.partition}:{source.offset}"))


def _in_range(text: str | None, bounds: range) -> int | None:
    """A decimal integer of ASCII digits (an optional minus, at most 19 digits) within
    `bounds`, else None."""
    if text is None:
        return None
    digits = text[1:] if text[:1] == "-" else text
    if not (0 < len(digits) <= 19 and digits.isascii() and digits.isdigit()):
        return None
    value = int(text)
    return value if value in bounds else None
