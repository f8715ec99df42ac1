"""The bad-input corpus (`tests/corpus/*.jsonl`): loading its cases and turning each into the
bytes sent, with no service involved, so the integration test only sends and compares.

One line of a corpus file is one case:

- `name` (unique), optional `why`; `kind`: `event` (default: an ingest body, sent to
  `.../events`, as the one item of `.../events/import`, and to the raw topic) or `update` (a
  PUT body, sent as PUT of a stored event and as an `op: update` raw record naming one).
- The input, at most one of: `event` / `update` (fields merged over a valid base body,
  `drop` removes some), `body` (any JSON value), `text` (segments, below). None: the base
  body. `literals` puts JSON text verbatim at dotted paths of `event`/`update`/`body`
  (`1e400`, `NaN`, `-0`). `size`: the body is padded to exactly that many bytes where it
  holds `${PAD}`.
- Text segments: a string, `{"repeat": s, "times": n}`, or `{"hex": "ff fe"}` (raw bytes).
  JSON values may hold `{"$repeat": s, "times": n}` (a string), `{"$items": v, "times": n}`
  (a list), `{"$keys": n, "leaf": v}` (an object of n keys), `{"$nest": n, "leaf": v}` (n
  objects `{"a": ...}` deep) and `{"$nest_array": n, "leaf": v}`.
- Placeholders `${NAME}` are filled from the run's context (ids, tokens); a JSON string that is
  exactly one placeholder takes its typed value. `${UNIQUE}` is 8 fresh hex digits each time,
  `${EVENT_ID}` the case's own fresh event id.
- HTTP: `http_headers` ({name: segments, `{"each": [...]}` to repeat it, or null to drop
  it}), `integration` (the path's integration id), `import_as_is` (the body is the import
  envelope itself), `target` (an update of an event that is `missing`: never stored,
  `deleted`, or `rejected`: stored as rejected).
- Raw topic: `raw_headers` (replaces the default `integration-id` and `event-id`; a name may
  be `{"hex": ...}`, a value null or segments; `{"repeat": [name, value], "times": n}` is n
  headers), `raw_headers_add` (appended), `compression`, `raw_null_value` (no value at all).
- `expect`: `http` (`accepted` or `"<status> <code>"`), `import` (`item <status> <code>`
  for an item's error in a 202; default derived from `http`), `put`,
  `raw` (`accepted`, a rejection code, or `refused`: the broker takes no such record; default
  derived from `http`/`put`), `worker` (what the worker makes of an HTTP 202: default
  `accepted`; or per channel), `external_id` (of the accepted raw record).
"""

from __future__ import annotations

import json
import secrets
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

CORPUS_DIR = Path(__file__).parent / "corpus"
BASE_EVENT: dict[str, Any] = {
    "integration_event_type_id": "${TYPE}",
    "timestamp": "2024-06-01T12:00:00Z",
    "attributes": {},
    "device_external_id": "corpus",
}
BASE_UPDATE: dict[str, Any] = {"integration_event_type_id": "${TYPE}", "attributes": {"n": 2}}
CHANNELS = {"event": ("events", "import", "raw"), "update": ("put", "raw")}
_INPUTS = ("event", "update", "body", "text")
_HTTP_ONLY = {"401", "415"}
# Codes that refuse a whole import; any other refusal of a single event is an item's error.
_WHOLE_REQUEST = {"invalid_json", "unauthorized", "not_found", "unsupported_media_type"}
_PAD = "${PAD}"
_LITERAL = "\x01literal-{}\x01"

Json = Any
Segments = str | list[Any]


@dataclass(frozen=True)
class Case:
    """One corpus case, as written in its file."""

    name: str
    category: str
    spec: Mapping[str, Any]

    @property
    def kind(self) -> str:
        kind: str = self.spec.get("kind", "event")
        return kind

    @property
    def channels(self) -> tuple[str, ...]:
        return CHANNELS[self.kind]

    def expected(self) -> dict[str, str]:
        """The documented outcome on every channel of the case."""
        given: Mapping[str, Any] = self.spec["expect"]
        http = given["put" if self.kind == "update" else "http"]
        found = {"raw": given.get("raw") or raw_outcome(http, self.kind)}
        if self.kind == "update":
            return found | {"put": http}
        return found | {"events": http, "import": given.get("import", import_outcome(http))}

    def expected_worker(self, channel: str) -> str:
        """What the worker makes of an event the API answered 202 on `channel`."""
        given = self.spec["expect"].get("worker", "accepted")
        found: str = given.get(channel, "accepted") if isinstance(given, dict) else given
        return found


def import_outcome(http: str) -> str:
    """The import's outcome with the input as its one item, when a single ingest of it has
    `http`: the same refusal of the whole request, or `item <status> <code>` in a 202."""
    if http == "accepted" or http.split(" ", 1)[1] in _WHOLE_REQUEST:
        return http
    return f"item {http}"


def raw_outcome(http: str, kind: str) -> str:
    """The raw topic's outcome of an input whose HTTP outcome is `http`: the same code, with
    the API's answers that have no raw-topic meaning mapped to the worker's."""
    if http == "accepted":
        return "accepted"
    status, code = http.split(" ", 1)
    if status in _HTTP_ONLY:
        raise ValueError(f"{http}: give the raw outcome explicitly")
    if code == "not_found":
        return "event_not_found" if kind == "update" else "unknown_integration"
    return "refused" if code == "body_too_large" else code


def load_cases(directory: Path = CORPUS_DIR) -> list[Case]:
    """Every case of every corpus file, in file and line order; names must be unique."""
    cases: list[Case] = []
    for path in sorted(directory.glob("*.jsonl")):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if line.strip():
                cases.append(_case(path, number, line))
    names = [c.name for c in cases]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise ValueError(f"corpus names used twice: {duplicated}")
    return cases


def _case(path: Path, number: int, line: str) -> Case:
    spec = json.loads(line)
    given = [key for key in _INPUTS if key in spec]
    if len(given) > 1 or "expect" not in spec or spec.get("kind", "event") not in CHANNELS:
        raise ValueError(f"{path.name}:{number}: one input at most, `expect`, a known kind")
    case = Case(spec["name"], path.stem, spec)
    case.expected()  # fails early on an expectation that cannot be derived
    return case


class Context:
    """The run's values for placeholders: ids, tokens, keys."""

    def __init__(self, values: Mapping[str, int | str]) -> None:
        self.values = dict(values)

    def text(self, template: str) -> str:
        """`template` with every `${NAME}` filled in (`${PAD}` is left for `pad`)."""
        out, start = [], 0
        while (at := template.find("${", start)) != -1:
            end = template.index("}", at)
            name = template[at + 2 : end]
            out += [template[start:at], self._value(name)]
            start = end + 1
        return "".join([*out, template[start:]])

    def _value(self, name: str) -> str:
        if name == "UNIQUE":
            return secrets.token_hex(4)
        if name == "PAD":
            return _PAD
        return str(self.values[name])

    def segments(self, given: Segments | None) -> bytes:
        """Text segments as bytes."""
        if given is None:
            return b""
        parts = [given] if isinstance(given, str) else given
        return b"".join(self._segment(part) for part in parts)

    def _segment(self, part: Json) -> bytes:
        if isinstance(part, str):
            return self.text(part).encode()
        if "hex" in part:
            return bytes.fromhex(part["hex"])
        return self.text(part["repeat"]).encode() * int(part["times"])

    def json(self, value: Json) -> Json:
        """A JSON value with its macros expanded and placeholders filled."""
        if isinstance(value, str):
            exact = value[2:-1] if value.startswith("${") and value.endswith("}") else None
            if exact is not None and "${" not in value[2:] and exact in self.values:
                return self.values[exact]
            return self.text(value)
        if isinstance(value, list):
            return [self.json(v) for v in value]
        if isinstance(value, dict):
            return self._macro(value)
        return value

    def _macro(self, value: dict[str, Json]) -> Json:
        if "$repeat" in value:
            return self.text(value["$repeat"]) * int(value["times"])
        if "$items" in value:
            return [self.json(value["$items"]) for _ in range(int(value["times"]))]
        if "$keys" in value:
            return {f"k{i}": self.json(value["leaf"]) for i in range(int(value["$keys"]))}
        if "$nest" in value or "$nest_array" in value:
            return _nested(self.json(value["leaf"]), value)
        return {self.text(k): self.json(v) for k, v in value.items()}


def _nested(leaf: Json, spec: Mapping[str, Json]) -> Json:
    node = leaf
    for _ in range(int(spec.get("$nest", spec.get("$nest_array", 0)))):
        node = {"a": node} if "$nest" in spec else [node]
    return node


def body(case: Case, ctx: Context) -> bytes:
    """The bytes of the case's input (an ingest or update body)."""
    spec = case.spec
    if "text" in spec:
        return pad(ctx.segments(spec["text"]), spec.get("size"))
    if "body" in spec:
        document = ctx.json(spec["body"])
    else:
        base = BASE_UPDATE if case.kind == "update" else BASE_EVENT
        merged = {**base, **spec.get("event", spec.get("update", {}))}
        document = ctx.json({k: v for k, v in merged.items() if k not in spec.get("drop", [])})
    return pad(_with_literals(document, spec.get("literals", {}), ctx), spec.get("size"))


def _with_literals(document: Json, literals: Mapping[str, str], ctx: Context) -> bytes:
    """`document` as JSON, with the given JSON texts verbatim at their dotted paths."""
    for index, path in enumerate(literals):
        *parents, last = path.split(".")
        node = document
        for name in parents:
            node = node.setdefault(name, {})
        node[last] = _LITERAL.format(index)
    text = orjson.dumps(document)
    for index, literal in enumerate(literals.values()):
        marker = orjson.dumps(_LITERAL.format(index))
        text = text.replace(marker, ctx.text(literal).encode())
    return text


def pad(data: bytes, size: int | None) -> bytes:
    """`data` with `${PAD}` replaced by as many `x` as make it `size` bytes (or removed)."""
    marker = _PAD.encode()
    if size is None:
        return data.replace(marker, b"")
    room = size - (len(data) - len(marker))
    if marker not in data or room < 0:
        raise ValueError(f"cannot pad to {size} bytes")
    return data.replace(marker, b"x" * room)


def import_body(case: Case, single: bytes) -> bytes:
    """The import request of the case: its body as the one item (spliced as text, so even
    bytes that are not JSON travel as they are), or the body itself with `import_as_is`."""
    if case.spec.get("import_as_is"):
        return single
    return b'{"integration_events":[' + single + b"]}"


def http_headers(case: Case, ctx: Context) -> list[tuple[bytes, bytes]]:
    """The request's headers: JSON content type and the admin token, as the case changes
    them (`{"each": [...]}` repeats a header; null drops it)."""
    headers: dict[str, Json] = {
        "content-type": "application/json",
        "authorization": "Bearer ${ADMIN_TOKEN}",
    }
    headers |= {k.lower(): v for k, v in case.spec.get("http_headers", {}).items()}
    return [
        (name.encode(), ctx.segments(one))
        for name, value in headers.items()
        if value is not None
        for one in (value["each"] if isinstance(value, dict) else [value])
    ]


RawHeader = tuple[str | bytes, bytes | None]


def raw_headers(case: Case, ctx: Context) -> list[RawHeader]:
    """The raw record's headers: by default `integration-id` and `event-id` (plus `op` for
    an update), as the case replaces or extends them."""
    default: list[list[Json]] = [["integration-id", "${INTEGRATION}"], ["event-id", "${EVENT_ID}"]]
    if case.kind == "update":
        default.append(["op", "update"])
    given = case.spec.get("raw_headers", default) + case.spec.get("raw_headers_add", [])
    pairs = [p for entry in given for p in _repeated(entry)]
    return [(_header_name(name, ctx), _header_value(value, ctx)) for name, value in pairs]


def _repeated(entry: Json) -> list[Json]:
    return [entry["repeat"]] * int(entry["times"]) if isinstance(entry, dict) else [entry]


def _header_name(name: Json, ctx: Context) -> str | bytes:
    return bytes.fromhex(name["hex"]) if isinstance(name, dict) else ctx.text(name)


def _header_value(value: Json, ctx: Context) -> bytes | None:
    return None if value is None else ctx.segments(value)


def event_ids_named(headers: list[RawHeader]) -> Iterator[str]:
    """The UUIDs the record's `event-id` headers (any case) could name its outputs by."""
    for name, value in headers:
        if isinstance(name, str) and name.lower() == "event-id" and value:
            try:
                yield str(uuid.UUID(value.decode()))
            except ValueError:
                continue
