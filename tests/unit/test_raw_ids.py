"""Event ids of the raw-record contract: random ones (batched for imports) and derived ones."""

from __future__ import annotations

import time
import uuid

from ingest_worker.core import raw


def test_random_event_ids_are_distinct_version_7_uuids_in_canonical_text() -> None:
    ids = raw.random_event_ids(2000)
    assert len(set(ids)) == 2000
    for text in ids:
        parsed = uuid.UUID(text)
        assert parsed.version == 7
        assert parsed.variant == uuid.RFC_4122
        assert str(parsed) == text
    assert raw.random_event_ids(0) == []


def test_random_event_ids_start_with_their_millisecond_and_sort_by_it() -> None:
    """RFC 9562: the first 48 bits are the Unix time in ms; the rest stays random."""
    (first,) = raw.random_event_ids(1, now_ms=0x0123456789AB)
    assert first.startswith("01234567-89ab-7")
    later = raw.random_event_ids(50, now_ms=0x0123456789AC)
    assert all(first < text for text in later)
    assert len({text[15:] for text in later}) == 50  # random past the time and version
    (now,) = raw.random_event_ids(1)
    assert abs((uuid.UUID(now).int >> 80) - time.time_ns() // 1_000_000) < 60_000


def test_a_single_random_id_is_a_version_7_uuid_too() -> None:
    """One id is built another way (the single-event route's): same form, still random."""
    ids = [raw.random_event_ids(1)[0] for _ in range(2000)]
    assert len(set(ids)) == 2000
    for text in ids:
        parsed = uuid.UUID(text)
        assert (parsed.version, parsed.variant, str(parsed)) == (7, uuid.RFC_4122, text)
    assert len({text[15:] for text in ids}) == 2000


def test_a_random_id_names_the_event_only_without_a_key() -> None:
    given = raw.random_event_ids(1)[0]
    trace = raw.traceparent(None)

    def build(key: str | None) -> raw.RawRecord:
        return raw.build(
            7,
            {},
            b"{}",
            received_at_ms=1,
            idempotency_key=key,
            trace=trace,
            index=3,
            random_id=given,
        )

    keyless, keyed = build(None), build("k")
    assert keyless.event_id == given
    assert keyed.event_id == raw.event_id(7, "k", 3) != given
    assert raw.event_id(7, None) != raw.event_id(7, None)
