"""No input stops a partition: whatever a raw record holds, the worker's per-record path
(decode, validate, template, encode) turns it into exactly one output record that fits its
topic, and an accepted one always decodes."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingest_worker.core.encode import OutRecord, read_accepted, rejected_value
from ingest_worker.core.limits import record_size
from ingest_worker.core.plan import DeviceRef
from ingest_worker.core.raw import CONTRACT_HEADERS
from ingest_worker.core.rejections import Rejection, Source
from ingest_worker.core.shape import FieldError
from ingest_worker.core.validate import compile_type
from ingest_worker.worker.decode import RawChange, RawEvent, decode
from ingest_worker.worker.pipeline import (
    Accepted,
    InRecord,
    Topics,
    Verdict,
    decode_record,
    output,
    plan,
)
from ingest_worker.worker.resolve import Device
from ingest_worker.worker.revise import Events, revise

SOURCE = Source("raw", 0, 7)
LIMIT = 4096
TOPICS = Topics("accepted", "rejected", LIMIT, LIMIT)
CODES = {
    "invalid_json",
    "invalid_request",
    "unknown_integration",
    "unknown_event_type",
    "invalid_attributes",
    "device_unresolvable",
    "template_unresolvable",
    "record_too_large",
    "unprocessable",
}
TYPES = {
    (1, 1): compile_type(
        {
            "integration_id": 1,
            "id": 1,
            "version": 1,
            "schema": {"type": "object", "properties": {"n": {"type": "integer"}}},
            "external_device_id_template": None,
            "duration_ms": 0,
            "buffer_ms": 0,
        }
    ),
    (1, 2): compile_type(
        {
            "integration_id": 1,
            "id": 2,
            "version": 3,
            "schema": {
                "type": "object",
                "required": ["store"],
                "properties": {"store": {}, "list": {"type": "array", "items": {"type": "string"}}},
            },
            "external_device_id_template": "{store}",
            "duration_ms": 5,
            "buffer_ms": 6,
        }
    ),
}


def good_body(**attributes: Any) -> dict[str, Any]:
    return {
        "integration_event_type_id": 2,
        "timestamp": "2024-01-01T00:00:00Z",
        "attributes": {"store": "S1", **attributes},
    }


def through(
    value: bytes | None, headers: Sequence[tuple[str, bytes | None]]
) -> tuple[OutRecord, Verdict]:
    """One raw record along the worker's pure path; devices are 'found' with id 1."""
    decoded = decode_record(InRecord(SOURCE, value, headers, 1_700_000_000_000))
    if isinstance(decoded, Rejection):
        return output(decoded, TOPICS)
    if isinstance(decoded, RawChange):  # an `op` header: no event is stored here
        return output(revise(decoded, Events({}), TYPES), TOPICS)
    ref = plan(decoded, {1}, TYPES)
    if isinstance(ref, Rejection):
        return output(ref, TOPICS)
    event_type = TYPES[(decoded.integration_id, decoded.event_type_id)]
    return output(Accepted(decoded, event_type, ref, Device(1, ref.external_id, None)), TOPICS)


def assert_one_fitting_output(record: OutRecord) -> dict[str, Any]:
    """The output fits its topic and reads back: Avro for accepted, JSON for rejected."""
    assert record_size(record.key, record.value, record.headers) <= LIMIT
    if record.topic == "accepted":
        return read_accepted(record.value)
    assert record.topic == "rejected"
    document: dict[str, Any] = orjson.loads(record.value)
    assert document["error"]["code"] in CODES
    return document


@pytest.mark.parametrize(
    ("headers", "field"),
    [
        ([("integration-id", b"--1")], "headers.integration-id"),
        ([("integration-id", "²".encode())], "headers.integration-id"),
        ([("integration-id", b"9" * 5000)], "headers.integration-id"),
        ([("integration-id", b"1"), ("integration-id", b"1")], "headers.integration-id"),
        ([("integration-id", b"\xff1")], "headers.integration-id"),
        ([("integration-id", None)], "headers.integration-id"),
        (
            [("integration-id", b"1"), ("received-at", b"9223372036854775808")],
            "headers.received-at",
        ),
        ([("integration-id", b"1"), ("received-at", b"--1")], "headers.received-at"),
        ([("integration-id", b"1"), ("received-at", "१२".encode())], "headers.received-at"),
        ([("integration-id", b"1"), ("idempotency-key", b"\xc3")], "headers.idempotency-key"),
        (
            [("integration-id", b"1"), ("Idempotency-Key", b"a"), ("idempotency-key", b"b")],
            "headers.idempotency-key",
        ),
        ([("integration-id", b"1"), ("idempotency-index", b"1")], "headers.idempotency-index"),
        ([("integration-id", b"1"), ("event-id", b"\xfe")], "headers.event-id"),
    ],
)
def test_headers_that_are_not_what_they_claim_are_rejected(
    headers: list[tuple[str, bytes | None]], field: str
) -> None:
    """Odd digits, out-of-range numbers, repeats and non-UTF-8 values name the header."""
    found = decode(SOURCE, orjson.dumps(good_body()), headers, 5)
    assert isinstance(found, Rejection)
    assert found.code == "invalid_request"
    assert field in [d.field for d in found.details]
    assert_one_fitting_output(output(found, TOPICS)[0])


@pytest.mark.parametrize(
    ("timestamp", "received_at"),
    [
        ("9999-12-31T23:59:59.999999Z", b"253402300799999"),
        ("0001-01-01T00:00:00Z", b"-62135596800000"),
    ],
)
def test_timestamps_at_the_edges_of_the_readable_range_are_accepted_and_decode(
    timestamp: str, received_at: bytes
) -> None:
    """The first and last instants a reader's date type holds are accepted and read back."""
    body = {**good_body(), "timestamp": timestamp}
    record, verdict = through(
        orjson.dumps(body), [("integration-id", b"1"), ("received-at", received_at)]
    )
    assert isinstance(verdict, Accepted)
    assert assert_one_fitting_output(record)["received_at"] is not None


@pytest.mark.parametrize(
    "timestamp", ["0000-12-31T23:59:59Z", "9999-12-31T23:59:60Z", "9999-12-31T23:59:59-01:00"]
)
def test_timestamps_no_reader_can_hold_are_rejected(timestamp: str) -> None:
    """Year 0000, and instants past 9999 (a leap second, an offset), name the timestamp."""
    found = decode(
        SOURCE, orjson.dumps({**good_body(), "timestamp": timestamp}), [("integration-id", b"1")], 5
    )
    assert isinstance(found, Rejection)
    assert found.details[0].field == "timestamp"


def test_a_malformed_traceparent_is_dropped_not_passed_on() -> None:
    """A traceparent that is not W3C's form starts no trace and reaches no output."""
    headers = [("integration-id", b"1"), ("traceparent", b"x" * 10_000)]
    record, verdict = through(orjson.dumps(good_body()), headers)
    assert isinstance(verdict, Accepted)
    assert [name for name, _ in record.headers] == ["event-id"]


def nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = {"a": value}
    return value


def test_attributes_at_the_depth_limit_are_accepted_and_one_deeper_is_invalid_json() -> None:
    """The body may nest 128 levels (attributes 127) and still encodes; 129 is refused."""
    headers = [("integration-id", b"1")]
    record, verdict = through(orjson.dumps(good_body(deep=nested(125))), headers)
    assert isinstance(verdict, Accepted), verdict
    deep = json.dumps(good_body(deep=nested(300))).encode()
    record, verdict = through(deep, headers)
    assert isinstance(verdict, Rejection)
    assert verdict.code == "invalid_json"
    assert_one_fitting_output(record)


def test_an_accepted_record_too_large_for_its_topic_becomes_a_cut_rejection() -> None:
    """Re-serialised numbers grow (1E2 is written 100.0): the event is rejected
    `record_too_large`, with the raw body cut to fit and `truncated: true`."""
    body = orjson.dumps(good_body()).replace(
        b'"S1"}', b'"S1","many":[' + b",".join([b"1E2"] * 900) + b"]}"
    )
    assert len(body) < LIMIT
    record, verdict = through(body, [("integration-id", b"1")])
    assert isinstance(verdict, Rejection)
    assert verdict.code == "record_too_large"
    document = assert_one_fitting_output(record)
    assert document["raw"] == body.decode() or document["truncated"] is True


def test_a_huge_rejection_is_cut_to_fit_and_reports_its_first_error() -> None:
    """100,000 validation errors in a large body: the first error only (not counted), and
    the raw body cut (`truncated`, the original size given), within the topic's limit."""
    body = orjson.dumps(good_body(list=list(range(100_000))))
    record, verdict = through(body, [("integration-id", b"1")])
    assert isinstance(verdict, Rejection)
    assert verdict.code == "invalid_attributes"
    document = assert_one_fitting_output(record)
    assert document["truncated"] is True
    assert document["raw_bytes"] == len(body)
    assert body.decode().startswith(document["raw"])
    assert document["error"]["details_total"] is None
    assert len(document["error"]["details"]) == 1


def test_a_small_body_lists_its_first_hundred_errors_and_counts_all() -> None:
    """500 validation errors in a small body: 100 details and `details_total` 500."""
    body = orjson.dumps(good_body(list=[0] * 500))
    _, verdict = through(body, [("integration-id", b"1")])
    assert isinstance(verdict, Rejection)
    document = orjson.loads(rejected_value(verdict))
    assert document["error"]["details_total"] == 500
    assert len(document["error"]["details"]) == 100


def test_a_recursive_schema_reports_the_first_error_of_a_deep_instance_at_once() -> None:
    """Listing every error of a deeply nested instance against a recursive schema costs
    exponential time; such a schema reports its first error only, so 120 levels return."""
    schema = {
        "type": "object",
        "required": ["store"],
        "properties": {"store": {}, "t": {"$ref": "#/$defs/t"}},
        "$defs": {"t": {"type": "array", "items": {"allOf": [{"$ref": "#/$defs/t"}] * 2}}},
    }
    row = {"integration_id": 1, "id": 9, "version": 1, "schema": schema}
    event_type = compile_type(
        {**row, "external_device_id_template": None, "duration_ms": 0, "buffer_ms": 0}
    )
    assert event_type.recursive
    deep: Any = [1]
    for _ in range(120):
        deep = [deep]
    body = orjson.dumps({**good_body(t=deep), "integration_event_type_id": 9})
    decoded = decode(SOURCE, body, [("integration-id", b"1")], 5)
    assert isinstance(decoded, RawEvent)
    verdict = plan(decoded, {1}, {(1, 9): event_type})
    assert isinstance(verdict, Rejection)
    assert (verdict.code, len(verdict.details), verdict.counted) == ("invalid_attributes", 1, False)


def test_binary_raw_values_are_cut_as_base64() -> None:
    """A non-UTF-8 value too large to embed is cut, still base64 of its first bytes."""
    rejection = Rejection(SOURCE, b"\xff" * 50_000, "e", None, 400, "invalid_json", "bad")
    document = orjson.loads(rejected_value(rejection, 3000))
    assert document["raw_encoding"] == "base64"
    assert document["truncated"] is True
    assert len(rejected_value(rejection, 3000)) <= 3000


def test_a_message_json_cannot_write_still_gives_a_rejection() -> None:
    """Text orjson refuses (a lone surrogate) in a message or detail leaves a bare rejection."""
    rejection = Rejection(
        SOURCE, b"{}", "e", 1, 400, "invalid_request", "bad \ud800", [FieldError("f", "\ud800")]
    )
    document = orjson.loads(rejected_value(rejection))
    assert document["error"]["code"] == "invalid_request"
    assert document["raw"] == "{}"


def test_an_unexpected_failure_while_decoding_is_a_rejection() -> None:
    """A header list the decoder cannot read is one `unprocessable` rejection, not a crash."""
    record, verdict = through(b"{}", [(None, b"1")])  # type: ignore[list-item]
    assert isinstance(verdict, Rejection)
    assert verdict.code == "unprocessable"
    assert_one_fitting_output(record)


def test_an_unexpected_failure_while_encoding_is_a_rejection() -> None:
    """A value no Avro long can hold fails the encoder; the event is rejected, not emitted."""
    decoded = decode(SOURCE, orjson.dumps(good_body()), [("integration-id", b"1")], 5)
    assert isinstance(decoded, RawEvent)
    event = decoded._replace(received_at_ms=2**70)
    ref = DeviceRef("template", external_id="S1")
    record, verdict = output(Accepted(event, TYPES[(1, 2)], ref, Device(1, "S1", None)), TOPICS)
    assert isinstance(verdict, Rejection)
    assert verdict.code == "unprocessable"
    assert_one_fitting_output(record)


SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**64), max_value=2**64)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=50)
)
JSON = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5)
    ),
    max_leaves=30,
)
HEADER_NAMES = st.sampled_from([*sorted(CONTRACT_HEADERS), "Integration-ID", "other"])
HEADER_VALUES = st.one_of(
    st.none(),
    st.binary(max_size=40),
    st.sampled_from(
        [b"1", b"--1", "²".encode(), b"9" * 5000, b"2147483648", b"-9223372036854775809"]
    ),
    st.integers().map(lambda n: str(n).encode()),
)


@st.composite
def raw_values(draw: st.DrawFn) -> bytes | None:
    """Bytes, any JSON, deep nesting, or an event with arbitrary attributes and fields."""
    kind = draw(st.sampled_from(["bytes", "json", "deep", "event"]))
    if kind == "bytes":
        return draw(st.none() | st.binary(max_size=3000))
    if kind == "json":
        return json.dumps(draw(JSON)).encode()
    if kind == "deep":
        depth = draw(st.integers(min_value=1, max_value=400))
        return b"[" * depth + b"]" * depth
    body: dict[str, Any] = {
        "integration_event_type_id": draw(st.sampled_from([1, 2, 3])),
        "timestamp": draw(st.sampled_from(["2024-01-01T00:00:00Z", "0000-01-01T00:00:60Z", "x"])),
        "attributes": {"store": draw(JSON), **draw(st.dictionaries(st.text(max_size=5), JSON))},
    }
    extra = draw(
        st.dictionaries(
            st.sampled_from(["duration", "buffer", "device_external_id", "integration_device_id"]),
            JSON,
            max_size=2,
        )
    )
    return json.dumps({**body, **extra}).encode()


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw_values(), st.lists(st.tuples(HEADER_NAMES, HEADER_VALUES), max_size=6))
def test_any_raw_record_gives_exactly_one_output_that_fits_and_decodes(
    value: bytes | None, headers: list[tuple[str, bytes | None]]
) -> None:
    """Arbitrary bytes, headers and JSON (deep, wide, huge numbers, odd strings) each give
    one output record within the topic's limit; an accepted one decodes with fastavro."""
    record, _ = through(value, [("integration-id", b"1"), *headers])
    assert_one_fitting_output(record)


def test_an_event_id_with_a_trailing_newline_is_replaced_not_kept() -> None:
    """A UUID plus a newline is not a UUID: the record's position names the event instead,
    and the accepted record decodes."""
    headers = [
        ("integration-id", b"1"),
        ("event-id", b"123e4567-e89b-12d3-a456-426614174000\n"),
    ]
    record, verdict = through(orjson.dumps(good_body()), headers)
    assert isinstance(verdict, Accepted)
    assert verdict.event.event_id != "123e4567-e89b-12d3-a456-426614174000\n"
    assert_one_fitting_output(record)


@pytest.mark.parametrize("record_ms", [253_402_300_800_000, 2**63 - 1, -(2**63)])
def test_a_record_timestamp_no_reader_can_hold_is_rejected(record_ms: int) -> None:
    """Without received-at, the record's own timestamp stands in; one past year 9999 (a
    gateway writing microseconds, say) is rejected instead of encoded."""
    found = decode(SOURCE, orjson.dumps(good_body()), [("integration-id", b"1")], record_ms)
    assert isinstance(found, Rejection)
    assert found.details[0].field == "headers.received-at"
