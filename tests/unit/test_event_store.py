"""The stored events' pure parts: time filters, (timestamp, id) cursors, the list query's
shape per filter, pages and the answer's JSON."""

from __future__ import annotations

import base64
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
import pytest

from ingest_worker.shim import event_store
from ingest_worker.shim.event_store import EventFilter, Position
from ingest_worker.shim.problems import Problem
from ingest_worker.shim.store import Page

T0 = datetime(2024, 6, 1, 10, 0, tzinfo=UTC)
T0_US = 1_717_236_000_000_000  # T0 in epoch microseconds, as `timestamp_us` holds it
T0_MS = T0_US // 1000


def _row(n: int, **fields: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "id": uuid.UUID(int=n),
        "integration_id": 1,
        "event_type_id": 2,
        "device_id": 3,
        "timestamp_us": T0_US + n * 1_000_000,
        "duration_ms": 5000,
        "buffer_ms": 1000,
        "attributes": '{"b": 1, "a": 1.50}',
        "created_ms": T0_MS,
        "updated_ms": T0_MS,
    }
    row.update(fields)
    return row


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-06-01T10:00:00Z", T0),
        ("2024-06-01t10:00:00z", T0),
        ("2024-06-01T12:00:00+02:00", T0),
        ("2024-06-01T12:00:00 02:00", T0),
        ("2024-06-01T07:30:00-02:30", T0),
        ("2024-06-01T10:00:00.000001Z", T0 + timedelta(microseconds=1)),
        ("2024-06-01T10:00:00.1234567Z", T0 + timedelta(microseconds=123456)),
    ],
)
def test_time_filters_take_rfc_3339(text: str, expected: datetime) -> None:
    """`start`/`end` take RFC 3339 in any case and offset (a space standing for the `+` an
    unencoded query string turns into one); fractions past microseconds are cut."""
    assert event_store.parse_time("start", text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "2024-06-01",
        "2024-06-01T10:00:00",
        "2024-06-01 10:00:00Z",
        "2024-02-30T10:00:00Z",
        "2024-06-01T24:00:00Z",
        "0000-06-01T10:00:00Z",
        "2024-06-01T10:00:00+0200",
        "٢٠٢٤-06-01T10:00:00Z",
        "yesterday",
    ],
)
def test_time_filters_refuse_anything_else(text: str) -> None:
    """Dates alone, local times, impossible dates and non-ASCII digits are a 400 naming the
    parameter."""
    with pytest.raises(Problem) as caught:
        event_store.parse_time("end", text)
    assert caught.value.status == 400
    assert [d.field for d in caught.value.details] == ["end"]


def test_epoch_us_is_exact_on_both_sides_of_the_epoch() -> None:
    """Filter times become epoch microseconds exactly, whatever their offset, before 1970
    too (floored, as the stored `timestamp_us` is)."""
    assert event_store.epoch_us(T0) == T0_US
    assert event_store.epoch_us(T0.astimezone(timezone(timedelta(hours=-7)))) == T0_US
    before = datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)
    assert event_store.epoch_us(before) == -1


def test_cursor_round_trips_timestamp_and_id_exactly() -> None:
    """A cursor names its row's timestamp to the microsecond, its id and the direction."""
    row = _row(7, timestamp_us=T0_US + 123456)
    position = event_store.decode_cursor(event_store.encode_cursor(row, "prev"))
    assert position == Position(row["timestamp_us"], row["id"], "prev")


@pytest.mark.parametrize(
    "data",
    [
        {"t": 1, "id": str(uuid.UUID(int=1))},
        {"t": 1, "id": str(uuid.UUID(int=1)), "d": "sideways"},
        {"t": 1.5, "id": str(uuid.UUID(int=1)), "d": "next"},
        {"t": True, "id": str(uuid.UUID(int=1)), "d": "next"},
        {"t": 10**18, "id": str(uuid.UUID(int=1)), "d": "next"},
        {"t": 1, "id": "not-a-uuid", "d": "next"},
        {"t": 1, "id": 5, "d": "next"},
        {"id": 1, "d": "next"},
        [1, 2, 3],
    ],
)
def test_cursors_not_ours_are_400(data: Any) -> None:
    """A cursor that decodes to anything but our (t, id, d) object is a 400 on `cursor`."""
    cursor = base64.urlsafe_b64encode(orjson.dumps(data)).decode()
    with pytest.raises(Problem) as caught:
        event_store.decode_cursor(cursor)
    assert [d.field for d in caught.value.details] == ["cursor"]


def _query(found: EventFilter, position: Position | None = None) -> tuple[str, list[Any]]:
    return event_store.list_query(found, position, 51)


def test_one_device_is_one_ordered_scan() -> None:
    """One device (with or without one type): a plain query ordered by its index, no join."""
    query, params = _query(EventFilter(1, device_ids=(3,), type_ids=(2,)))
    assert "LATERAL" not in query
    assert "device_id = %s" in query
    assert "event_type_id = %s" in query
    assert query.endswith("ORDER BY timestamp_us, id LIMIT %s")
    assert params == [1, 3, 2, 51]


@pytest.mark.parametrize(
    ("found", "keys", "column"),
    [
        (EventFilter(1, device_ids=(3, 4)), "SELECT unnest(%s::integer[])", "device_id"),
        (EventFilter(1, type_ids=(2, 5)), "SELECT unnest(%s::integer[])", "event_type_id"),
        (EventFilter(1, camera_ids=(9,)), "camera_ids && %s::integer[]", "device_id"),
        (EventFilter(1, device_ids=(3, 4), type_ids=(2, 5)), "unnest", "device_id"),
    ],
)
def test_several_keys_merge_one_scan_each(found: EventFilter, keys: str, column: str) -> None:
    """Several devices, several types or some cameras: one limited scan per key (a lateral
    join), merged in order; types filter the device scans when both are given."""
    query, _ = _query(found)
    assert keys in query.split("CROSS JOIN LATERAL")[0]
    assert f"WHERE {column} = k.v AND" in query
    assert query.count("LIMIT %s") == 2
    assert ("event_type_id = ANY" in query) == (column == "device_id" and len(found.type_ids) > 1)


def test_cameras_and_devices_both_narrow_the_devices() -> None:
    """Cameras and devices both given: the devices with one of the cameras among those ids."""
    query, params = _query(EventFilter(1, device_ids=(3,), camera_ids=(9,)))
    assert "camera_ids && %s::integer[] AND id = ANY(%s::integer[])" in query
    assert params[:3] == [1, [9], [3]]
    assert "device_id = %s" not in query


def test_time_range_and_position_bound_the_scan() -> None:
    """`start` inclusive, `end` exclusive, and the cursor as a row comparison on (timestamp,
    id), descending for `prev`: all in epoch microseconds on the bare column."""
    end = T0 + timedelta(days=1)
    position = Position(T0_US, uuid.UUID(int=1), "prev")
    query, params = _query(EventFilter(1, start=T0, end=end), position)
    assert "timestamp_us >= %s AND timestamp_us < %s AND (timestamp_us, id) < (%s, %s)" in query
    assert query.endswith("ORDER BY timestamp_us DESC, id DESC LIMIT %s")
    assert params == [1, T0_US, T0_US + 86_400_000_000, T0_US, uuid.UUID(int=1), 51]


def test_page_cursors_forward_and_back() -> None:
    """Forward: `next` while more rows came than the limit, `prev` when rows lie before.
    Backward: rows come descending and are put back in order; `prev` while more came."""
    rows = [_row(n) for n in range(4)]
    first = event_store.page(rows, 3, None, beyond=False)
    assert [i["id"] for i in first.items] == [str(uuid.UUID(int=n)) for n in range(3)]
    assert first.prev is None
    assert event_store.decode_cursor(first.next) == Position(
        rows[2]["timestamp_us"], rows[2]["id"], "next"
    )
    back = event_store.page(rows[::-1], 3, Position(T0_US, uuid.UUID(int=9), "prev"), beyond=True)
    assert [i["id"] for i in back.items] == [str(uuid.UUID(int=n)) for n in (1, 2, 3)]
    assert event_store.decode_cursor(back.prev) == Position(
        rows[1]["timestamp_us"], rows[1]["id"], "prev"
    )
    assert back.next is not None
    assert event_store.page([], 3, None, beyond=True) == Page([], None, None)


def test_turned_looks_back_from_the_row_nearest_the_cursor() -> None:
    """Whether a page has rows on its other side is asked from its first fetched row, the
    other way."""
    rows = [_row(5), _row(6)]
    turned = event_store.turned(rows, Position(T0_US, uuid.UUID(int=1), "next"))
    assert turned == Position(rows[0]["timestamp_us"], rows[0]["id"], "prev")


def test_item_embeds_attributes_as_stored_and_prints_times_in_utc() -> None:
    """Attributes are embedded byte for byte (no re-parse); times (stored as epoch
    microseconds or milliseconds) are RFC 3339 UTC, ms, cut as a timestamptz's were."""
    stamp = datetime(2024, 6, 1, 12, 0, 0, 123456, tzinfo=timezone(timedelta(hours=2)))
    item = event_store.item(_row(1, timestamp_us=event_store.epoch_us(stamp)))
    text = orjson.dumps(item)
    assert b'"attributes":{"b": 1, "a": 1.50}' in text
    assert item["timestamp"] == "2024-06-01T10:00:00.123Z"
    assert (item["created"], item["updated"]) == ("2024-06-01T10:00:00.000Z",) * 2
    before = event_store.item(_row(1, timestamp_us=-1, created_ms=-1, updated_ms=1))
    assert before["timestamp"] == before["created"] == "1969-12-31T23:59:59.999Z"
    assert before["updated"] == "1970-01-01T00:00:00.001Z"
    empty = event_store.item(_row(1, attributes=None, timestamp_us=None))
    assert (empty["attributes"], empty["timestamp"]) == (None, None)


def test_fate_by_latest_revision() -> None:
    """Deleted or none: no fate; rejected: the reason (details only when there are some);
    else accepted."""
    assert event_store.fate(None) is None
    assert event_store.fate(_row(1, op="deleted", error=None)) is None
    accepted = event_store.fate(_row(1, op="updated", error=None))
    assert accepted is not None
    assert accepted["status"] == "accepted"
    assert "error" not in accepted
    error = {"status": 404, "code": "unknown_event_type", "message": "no", "details": []}
    rejected = event_store.fate(_row(1, op="rejected", error=error))
    assert rejected is not None
    assert rejected["error"] == {"status": 404, "code": "unknown_event_type", "message": "no"}
