"""Event ids of the raw-record contract: random ones (batched for imports) and derived ones."""

from __future__ import annotations

import uuid

from ingest_worker.core import raw


def test_random_event_ids_are_distinct_version_4_uuids_in_canonical_text() -> None:
    ids = raw.random_event_ids(2000)
    assert len(set(ids)) == 2000
    for text in ids:
        parsed = uuid.UUID(text)
        assert parsed.version == 4
        assert parsed.variant == uuid.RFC_4122
        assert str(parsed) == text
    assert raw.random_event_ids(0) == []


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
