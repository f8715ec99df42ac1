"""The soak's verifier on hand-made records: each problem kind is found, a clean run passes, the
Avro single-object decode, the ledger file and the report (README markers included)."""

from __future__ import annotations

import io
import json
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import fastavro
import pytest
from fastavro.schema import fingerprint, to_parsing_canonical_form

from soak import report
from soak.ledger import Sent, append, from_json, read_ledger
from soak.verify import (
    MAX_EXAMPLES,
    PROBLEMS,
    Accepted,
    Rejected,
    Verdict,
    check_devices,
    check_store,
    check_topics,
    crc64_avro,
    decode_single_object,
    expected_store,
    load_schema,
    new_device_keys,
    rejected_from,
)

SCHEMA_FILE = Path(__file__).resolve().parents[2] / "schemas" / "integration_event.avsc"


def ids(count: int) -> list[str]:
    """Fresh event ids."""
    return [str(uuid.uuid4()) for _ in range(count)]


def sent(event_id: str, **given: Any) -> Sent:
    """A ledger item: an acked HTTP create expected to be accepted, unless told otherwise."""
    fields: dict[str, Any] = {
        "id": event_id,
        "channel": "http",
        "op": "create",
        "integration_id": 1,
        "order_key": None,
        "seq": 0,
        "expect": "accepted",
        "code": None,
        "external_id": None,
        "new_device": False,
        "attempts": 1,
        "acked": True,
    }
    return Sent(**(fields | given))


def acc(event_id: str, offset: int, **given: Any) -> Accepted:
    """An accepted record: a creation, revision 1, on partition 0, unless told otherwise."""
    seq = given.pop("seq", None)
    fields: dict[str, Any] = {
        "event_id": event_id,
        "partition": 0,
        "offset": offset,
        "op": "created",
        "revision": 1,
        "integration_id": 1,
        "external_id": None,
        "device_created": False,
        "attributes_json": json.dumps({} if seq is None else {"seq": seq}),
    }
    return Accepted(**(fields | given))


def rej(event_id: str, offset: int, code: str, partition: int = 0) -> Rejected:
    """A rejected record."""
    return Rejected(event_id, partition, offset, code)


def judge(
    items: Sequence[Sent], accepted: Sequence[Accepted] = (), rejected: Sequence[Rejected] = ()
) -> Verdict:
    """The topic checks' verdict."""
    verdict = Verdict()
    check_topics(items, accepted, rejected, verdict)
    return verdict


def found(verdict: Verdict) -> dict[str, int]:
    """The problem counters that are not zero."""
    return {kind: n for kind, n in verdict.problems().items() if n}


def test_a_clean_run_passes() -> None:
    """Creates (accepted, rejected), a change chain, ordered devices, a refused item and an
    unacked one without output: nothing to report."""
    a, b, c, d, e, f = ids(6)
    items = [
        sent(a, order_key="dev1", seq=1, external_id="dev1", new_device=True),
        sent(b, channel="raw", order_key="dev1", seq=2, external_id="dev1"),
        sent(c, channel="raw", expect="rejected", code="invalid_attributes"),
        sent(a, op="update", order_key="dev1", seq=3),
        sent(a, op="delete", order_key="dev1", seq=4),
        sent(d, expect="refused", code="400", acked=False),
        sent(e, acked=False),
        sent(f, channel="raw", op="update", expect="rejected", code="event_not_found"),
    ]
    accepted = [
        acc(a, 0, seq=1, external_id="dev1", device_created=True),
        acc(b, 1, seq=2, external_id="dev1"),
        acc(a, 2, op="updated", revision=2, external_id="dev1"),
        acc(a, 3, op="deleted", revision=3, external_id="dev1"),
    ]
    rejected = [rej(c, 0, "invalid_attributes"), rej(f, 1, "event_not_found")]
    verdict = judge(items, accepted, rejected)
    assert verdict.ok, verdict.examples
    assert verdict.sent == {
        "http/create": 3,
        "http/delete": 1,
        "http/update": 1,
        "raw/create": 2,
        "raw/update": 1,
    }
    assert (verdict.acked, verdict.outputs) == (6, 6)


def test_an_acked_item_without_output_is_lost() -> None:
    """An acked create and an acked update that nothing answered; an unacked one is owed
    nothing."""
    a, b = ids(2)
    items = [sent(a), sent(a, op="update"), sent(b, acked=False)]
    verdict = judge(items)
    assert found(verdict) == {"lost": 2}
    assert not verdict.ok


@pytest.mark.parametrize("acked", [True, False])
def test_a_second_accepted_record_is_a_duplicate(acked: bool) -> None:
    """Two `created` records of one event: duplicated (and its changelog repeats revision 1),
    whether or not the item was acked."""
    (a,) = ids(1)
    verdict = judge([sent(a, acked=acked)], [acc(a, 0), acc(a, 1)])
    assert found(verdict) == {"duplicated": 1, "revision_errors": 1}


def test_a_second_expected_rejection_is_a_duplicate() -> None:
    """The same rejection twice for a create tried once."""
    (a,) = ids(1)
    item = sent(a, expect="rejected", code="device_not_found")
    verdict = judge([item], rejected=[rej(a, 0, "device_not_found"), rej(a, 1, "device_not_found")])
    assert found(verdict) == {"duplicated": 1}


@pytest.mark.parametrize(
    ("attempts", "duplicates", "problems"),
    [
        (1, 1, {"duplicated": 1}),
        (2, 1, {}),
        (3, 2, {}),
        (2, 2, {"duplicated": 1}),
    ],
)
def test_duplicate_rejections_need_retries(
    attempts: int, duplicates: int, problems: dict[str, int]
) -> None:
    """A retried create may add one `duplicate` rejection per extra try, never more."""
    (a,) = ids(1)
    rejected = [rej(a, n, "duplicate") for n in range(duplicates)]
    verdict = judge([sent(a, attempts=attempts)], [acc(a, 0)], rejected)
    assert found(verdict) == problems


def test_a_retried_rejected_create_may_be_rejected_again() -> None:
    """A rejected event claims no Idempotency-Key, so its retry is rejected the same way."""
    (a,) = ids(1)
    item = sent(a, expect="rejected", code="device_not_found", attempts=2)
    twice = [rej(a, 0, "device_not_found"), rej(a, 1, "device_not_found")]
    assert judge([item], rejected=twice).ok


@pytest.mark.parametrize(
    ("item", "accepted", "rejected"),
    [
        ({"expect": "rejected", "code": "invalid_attributes"}, True, None),
        ({}, False, "device_not_found"),
        ({"expect": "rejected", "code": "invalid_attributes"}, False, "device_not_found"),
        ({"external_id": "dev1"}, True, None),
        ({"expect": "refused", "code": "400", "acked": False}, True, None),
        ({"expect": "refused", "code": "404", "acked": False}, False, "unknown_integration"),
    ],
    ids=[
        "accepted-not-rejected",
        "rejected-not-accepted",
        "other-code",
        "other-device",
        "refused-accepted",
        "refused-rejected",
    ],
)
def test_misrouted_outputs(item: dict[str, Any], accepted: bool, rejected: str | None) -> None:
    """Accepted where a rejection was due, rejected where acceptance was, another code,
    another device, or any output of a refused item."""
    (a,) = ids(1)
    outputs = [acc(a, 0, external_id="dev2")] if accepted else []
    verdict = judge([sent(a, **item)], outputs, [rej(a, 0, rejected)] if rejected else [])
    assert found(verdict) == {"misrouted": 1}


def test_attributes_of_another_event_are_misrouted() -> None:
    """A create's record must carry the seq the driver put in its attributes."""
    (a,) = ids(1)
    verdict = judge([sent(a, seq=7)], [acc(a, 0, seq=8)])
    assert found(verdict) == {"misrouted": 1}


def test_outputs_of_ids_never_sent_are_unexpected() -> None:
    """Every output must answer something the driver sent."""
    a, b = ids(2)
    verdict = judge([], [acc(a, 0)], [rej(b, 0, "invalid_json")])
    assert found(verdict) == {"unexpected": 2}


def test_order_violation() -> None:
    """One device's events, accepted in the reverse of the order sent."""
    a, b, c = ids(3)
    items = [sent(x, order_key="dev1", seq=n) for n, x in enumerate((a, b, c), 1)]
    verdict = judge(items, [acc(a, 0, seq=1), acc(c, 1, seq=3), acc(b, 2, seq=2)])
    assert found(verdict) == {"order_violations": 1}
    assert "seq 2" in verdict.examples["order_violations"][0]


def test_one_device_on_two_partitions_is_an_order_violation() -> None:
    """A device's records must share a partition to be ordered at all."""
    a, b = ids(2)
    items = [sent(a, order_key="dev1", seq=1), sent(b, order_key="dev1", seq=2)]
    verdict = judge(items, [acc(a, 0, seq=1), acc(b, 0, seq=2, partition=1)])
    assert found(verdict) == {"order_violations": 1}


def test_records_without_order_key_may_come_in_any_order() -> None:
    """No order key, no order promised."""
    a, b = ids(2)
    verdict = judge([sent(a, seq=1), sent(b, seq=2)], [acc(b, 0, seq=2), acc(a, 1, seq=1)])
    assert verdict.ok


@pytest.mark.parametrize(
    ("revisions", "ops"),
    [
        ((1, 3), ("created", "updated")),
        ((1, 2, 2), ("created", "updated", "updated")),
        ((1, 2, 3), ("created", "deleted", "updated")),
        ((1, 2), ("created", "created")),
    ],
    ids=["gap", "repeat", "after-delete", "created-twice"],
)
def test_revision_errors(revisions: tuple[int, ...], ops: tuple[str, ...]) -> None:
    """An event's changelog counts 1, 2, 3 ... from its creation and ends at its delete."""
    (a,) = ids(1)
    accepted = [
        acc(a, n, revision=r, op=op) for n, (r, op) in enumerate(zip(revisions, ops, strict=True))
    ]
    verdict = Verdict()
    check_topics([], accepted, [], verdict)
    assert verdict.revision_errors == 1


def test_a_retried_change_may_apply_twice() -> None:
    """An update tried twice (the first durable after all) may yield two changelog records;
    tried once, the second is a duplicate."""
    (a,) = ids(1)
    records = [acc(a, 0), acc(a, 1, op="updated", revision=2), acc(a, 2, op="updated", revision=3)]
    assert judge([sent(a), sent(a, op="update", attempts=2)], records).ok
    once = judge([sent(a), sent(a, op="update")], records)
    assert found(once) == {"duplicated": 1}


def test_unacked_changes_are_matched_around_acked_ones() -> None:
    """Of two updates, the first unacked and lost, the acked second's record answers it."""
    (a,) = ids(1)
    items = [
        sent(a, order_key="k", seq=1),
        sent(a, op="update", acked=False, order_key="k", seq=2),
        sent(a, op="update", order_key="k", seq=3),
    ]
    assert judge(items, [acc(a, 0, seq=1), acc(a, 1, op="updated", revision=2)]).ok


def test_examples_are_capped() -> None:
    """Counts stay whole; examples stop at MAX_EXAMPLES."""
    verdict = Verdict()
    for n in range(MAX_EXAMPLES + 5):
        verdict.note("lost", str(n))
    assert verdict.lost == MAX_EXAMPLES + 5
    assert len(verdict.examples["lost"]) == MAX_EXAMPLES
    with pytest.raises(ValueError, match="unknown problem"):
        verdict.note("fine", "x")


# ---------------------------------------------------------------------------------------------
# PostgreSQL checks on rows given by hand.


def test_devices_missing_duplicated_and_flags() -> None:
    """Each new device named by an accepted create has one row and one `device_created`."""
    a, b, c, d = ids(4)
    items = [
        sent(a, external_id="one", new_device=True),
        sent(b, external_id="two", new_device=True),
        sent(c, external_id="three", new_device=True),
        sent(d, external_id="old"),
    ]
    accepted = [
        acc(a, 0, external_id="one", device_created=True),
        acc(b, 1, external_id="two", device_created=True),
        acc(c, 2, external_id="three"),
        acc(d, 3, external_id="old"),
    ]
    keys = new_device_keys(items, accepted)
    assert keys == {(1, "one"), (1, "two"), (1, "three")}
    verdict = Verdict()
    check_devices(keys, {(1, "one"): 1, (1, "two"): 2}, accepted, verdict)
    assert found(verdict) == {
        "devices_missing": 1,
        "devices_duplicated": 1,
        "device_flag_errors": 1,
    }


def test_store_matches_the_changelog() -> None:
    """Current rows: the accepted, not deleted events at their last revision, and no others."""
    a, b, c, d = ids(4)
    accepted = [
        acc(a, 0),
        acc(a, 1, op="updated", revision=2),
        acc(b, 2),
        acc(b, 3, op="deleted", revision=2),
        acc(c, 4),
        acc(d, 5, integration_id=2),
    ]
    expected = expected_store(accepted, {1})
    assert expected == {a: 2, c: 1}
    good = Verdict()
    check_store(expected, [(a, 2), (c.upper(), 1)], good)
    assert good.ok
    bad = Verdict()
    check_store(expected, [(a, 1), (b, 1), (c, 1), (c, 1)], bad)
    assert bad.store_mismatch == 3


# ---------------------------------------------------------------------------------------------
# Decoding.


def test_crc64_avro_matches_the_specification() -> None:
    """The fingerprint written from the spec gives the spec's value for `"int"`."""
    assert crc64_avro(b'"int"') == 0x7275D51A3F395C8F


def _record(**given: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "event_id": str(uuid.uuid4()),
        "integration_id": 7,
        "integration_event_type_id": 2,
        "event_type_version": 1,
        "integration_device_id": 3,
        "device_external_id": "dev1",
        "device_resolution": "template",
        "device_created": True,
        "timestamp": 1_700_000_000_000_000,
        "duration_ms": 0,
        "buffer_ms": 0,
        "attributes_json": '{"seq": 4}',
        "received_at": 1_700_000_000_000,
        "idempotency_key": None,
        "op": "updated",
        "revision": 2,
    }
    return fields | given


def _single_object(record: dict[str, Any]) -> bytes:
    """Encoded with fastavro, header from fastavro's own fingerprint: not the verifier's."""
    schema = fastavro.parse_schema(json.loads(SCHEMA_FILE.read_text()))
    body = io.BytesIO()
    fastavro.schemaless_writer(body, schema, record)
    hexprint = fingerprint(to_parsing_canonical_form(schema), "CRC-64-AVRO")
    return b"\xc3\x01" + bytes.fromhex(hexprint) + body.getvalue()


def test_single_object_decode() -> None:
    """Marker, fingerprint and body of a record encoded independently decode to it."""
    record = _record()
    decoded = decode_single_object(_single_object(record), load_schema())
    assert str(decoded["event_id"]) == record["event_id"]
    assert (decoded["op"], decoded["revision"], decoded["attributes_json"]) == (
        "updated",
        2,
        '{"seq": 4}',
    )


@pytest.mark.parametrize(
    ("mangle", "message"),
    [
        (lambda v: b"\xc3\x00" + v[2:], "marker"),
        (lambda v: v[:2] + bytes(8) + v[10:], "fingerprint"),
        (lambda v: v + b"\x00", "whole record"),
        (lambda v: v[:-3], "decode"),
        (lambda v: b"", "marker"),
    ],
    ids=["marker", "fingerprint", "trailing", "short", "empty"],
)
def test_single_object_decode_refuses(mangle: Any, message: str) -> None:
    """Anything but this schema's single-object encoding, whole, is refused."""
    with pytest.raises(ValueError, match=message):
        decode_single_object(mangle(_single_object(_record())), load_schema())


def test_rejected_from_json_and_header() -> None:
    """The code from the JSON error; the event id from the header, else from the value."""
    (a,) = ids(1)
    value = json.dumps({"event_id": a, "error": {"status": 400, "code": "invalid_json"}}).encode()
    assert rejected_from(value, None, 1, 5) == Rejected(a, 1, 5, "invalid_json")
    assert rejected_from(value, a.upper().encode(), 1, 5).event_id == a
    with pytest.raises(ValueError, match="not a rejection"):
        rejected_from(b"{", None, 0, 0)


# ---------------------------------------------------------------------------------------------
# The ledger file and the report.


def test_ledger_round_trip(tmp_path: Path) -> None:
    """Appended by path or by open file, read back equal and in order."""
    path = tmp_path / "ledger.jsonl"
    first, second = sent("a", order_key="k", seq=1), sent("b", expect="refused", code="404")
    append(path, first)
    with path.open("a") as file:
        append(file, second)
    assert read_ledger(path) == [first, second]


def test_ledger_refuses_bad_lines(tmp_path: Path) -> None:
    """A line of the wrong shape fails with its number; an HTTP status as a number is text."""
    path = tmp_path / "ledger.jsonl"
    append(path, sent("a"))
    good = json.loads(path.read_text())
    assert from_json(good | {"code": 404}).code == "404"
    path.write_text(path.read_text() + json.dumps(good | {"attempts": True}) + "\n")
    with pytest.raises(ValueError, match=r"line 2.*attempts"):
        read_ledger(path)
    with pytest.raises(ValueError, match="channel"):
        from_json(good | {"channel": "smoke"})


def test_report_files(tmp_path: Path) -> None:
    """results.md holds the table, results.json the whole verdict."""
    verdict = judge([sent("a")])
    md, data = report.write(verdict, {"kill_worker": 3}, 42, 1, 12.3, tmp_path / "out")
    text = md.read_text()
    assert "| lost | 1 |" in text
    assert "**FAIL**" in text
    assert "kill_worker 3" in text
    loaded = json.loads(data.read_text())
    assert loaded["verdict"]["ok"] is False
    assert loaded["verdict"]["lost"] == 1
    assert loaded["seed"] == 42
    assert set(PROBLEMS) <= set(loaded["verdict"])


def test_readme_markers_replaced(tmp_path: Path) -> None:
    """Only the text between the markers changes, and again on the next run."""
    readme = tmp_path / "README.md"
    start, end = report.README_START, report.README_END
    readme.write_text(f"# Title\n\n{start}\nold table\n{end}\n\nafter\n")
    report.update_readme(readme, "| new | 1 |\n")
    assert readme.read_text() == f"# Title\n\n{start}\n| new | 1 |\n{end}\n\nafter\n"
    report.update_readme(readme, "| newer | 2 |")
    assert readme.read_text() == f"# Title\n\n{start}\n| newer | 2 |\n{end}\n\nafter\n"


@pytest.mark.parametrize(
    "text",
    [
        "no markers",
        f"{report.README_END} x {report.README_START}",
        f"{report.README_START} {report.README_START} {report.README_END}",
    ],
    ids=["none", "reversed", "twice"],
)
def test_readme_markers_must_be_there(text: str) -> None:
    """No markers, or markers out of place: an error, never a guess."""
    with pytest.raises(ValueError, match="soak-results"):
        report.replace_between_markers(text, "table")
