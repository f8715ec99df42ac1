"""The ledger: what the soak's driver sent, the contract between the driver and the verifier.

A JSON Lines file, one object per item the driver sent (written as it goes, so a crash keeps
what was sent before it):

    {"id": str,                 the event id; for op update/delete, the stored event's id
     "channel": "http" | "raw", the public API, or a gateway producing to the raw topic
     "op": "create" | "update" | "delete",
     "integration_id": int,
     "order_key": str | null,   a device key: items with the same key were sent one after
                                another by one sender, so their accepted records must keep
                                that order (seq increasing in topic order); null: no order
     "seq": int,                per order_key, increasing; a create also carries it in its
                                attributes as "seq"
     "expect": "accepted" | "rejected" | "refused",
                                refused: the HTTP API answered 4xx at once, so no output may
                                ever appear for that item
     "code": str | null,        the rejection code (rejected) or HTTP error code (refused,
                                a number is read as its text); null when accepted is expected
     "external_id": str | null, the external id the device must end with (explicit or
                                rendered by the event type's template), when known
     "new_device": bool,        the external id did not exist before the run
     "attempts": int,           HTTP tries with the same Idempotency-Key: a retry after a 503
                                whose first try was in fact durable yields one more
                                `duplicate` rejection of the same event id (or the same
                                rejection again, for an event rejected anyway: only an
                                accepted event claims its key); a retried update or delete
                                may be applied once more (one more changelog record). Each
                                allowed only when attempts > 1, once per extra try
     "acked": bool}             HTTP 202 / raw delivery acknowledged: only acked items are
                                owed an output; an output of an unacked item may still
                                appear, at most once

Updates and deletes of one event are sent in order by one sender. Pure apart from the file
helpers; no import from the product, so the check stays independent of it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any, Literal, TypeVar, cast, get_args

Channel = Literal["http", "raw"]
Op = Literal["create", "update", "delete"]
Expect = Literal["accepted", "rejected", "refused"]

_CHANNELS: tuple[str, ...] = get_args(Channel)
_OPS: tuple[str, ...] = get_args(Op)
_EXPECTS: tuple[str, ...] = get_args(Expect)

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Sent:
    """One item the driver sent, and what must come of it."""

    id: str
    channel: Channel
    op: Op
    integration_id: int
    order_key: str | None
    seq: int
    expect: Expect
    code: str | None
    external_id: str | None
    new_device: bool
    attempts: int
    acked: bool


def to_line(sent: Sent) -> str:
    """One ledger line, newline included: compact JSON in the field order above."""
    return json.dumps(asdict(sent), separators=(",", ":"), ensure_ascii=False) + "\n"


def from_json(document: Any) -> Sent:
    """A ledger item from its parsed JSON, checked field by field: a driver bug must surface
    as a clear error here, not as a mysterious verdict."""
    if not isinstance(document, dict):
        raise ValueError("a ledger line must be a JSON object")
    return Sent(
        id=_typed(document, "id", str),
        channel=cast(Channel, _choice(document, "channel", _CHANNELS)),
        op=cast(Op, _choice(document, "op", _OPS)),
        integration_id=_typed(document, "integration_id", int),
        order_key=_optional(document, "order_key"),
        seq=_typed(document, "seq", int),
        expect=cast(Expect, _choice(document, "expect", _EXPECTS)),
        code=_code(document.get("code")),
        external_id=_optional(document, "external_id"),
        new_device=_typed(document, "new_device", bool),
        attempts=_typed(document, "attempts", int),
        acked=_typed(document, "acked", bool),
    )


def _typed(document: dict[str, Any], name: str, kind: type[T]) -> T:
    value = document.get(name)
    # bool is an int in Python; a JSON true is never a count or an id.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ValueError(f"ledger field {name!r} must be {kind.__name__}, got {value!r}")
    return value


def _optional(document: dict[str, Any], name: str) -> str | None:
    if name not in document:
        raise ValueError(f"ledger field {name!r} is missing")
    value = document[name]
    if value is not None and not isinstance(value, str):
        raise ValueError(f"ledger field {name!r} must be a string or null, got {value!r}")
    return value


def _code(value: Any) -> str | None:
    """The expected code: a rejection code, or the HTTP status a refusal answered (a driver
    may write it as a number)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if value is not None and not isinstance(value, str):
        raise ValueError(f"ledger field 'code' must be a string, a number or null, got {value!r}")
    return value


def _choice(document: dict[str, Any], name: str, allowed: tuple[str, ...]) -> str:
    value = _typed(document, name, str)
    if value not in allowed:
        raise ValueError(f"ledger field {name!r} must be one of {allowed}, got {value!r}")
    return value


def parse_lines(lines: Iterator[str] | list[str]) -> list[Sent]:
    """Ledger items from lines of text; blank lines are skipped, a bad one raises with its
    line number."""
    items = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            items.append(from_json(json.loads(line)))
        except ValueError as exc:
            raise ValueError(f"ledger line {number}: {exc}") from exc
    return items


def read_ledger(path: Path | str) -> list[Sent]:
    """Every item of a ledger file, in the order the driver wrote them."""
    with Path(path).open(encoding="utf-8") as file:
        return parse_lines(iter(file))


def append(target: Path | str | IO[str], sent: Sent) -> None:
    """Add one item: to an open text file (kept open by a driver writing many), or to the file
    at a path (opened, appended, closed). Flushed either way, so a killed driver leaves every
    line it wrote whole."""
    if isinstance(target, (Path, str)):
        with Path(target).open("a", encoding="utf-8") as file:
            file.write(to_line(sent))
        return
    target.write(to_line(sent))
    target.flush()
