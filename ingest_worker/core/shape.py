"""Request shape: JSON decoding and the checks of `schemas/*.schema.json`. Pure.

The shim and the worker both use this module with the same schema file, so a request the shim
accepts is a record the worker can read, and a gateway producing straight to the raw topic is
held to the same rules.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from importlib import resources
from itertools import islice
from typing import Any, NamedTuple

import jsonschema_rs
import orjson

from ingest_worker.core.times import timestamp_error

JsonObject = dict[str, Any]


@dataclass(frozen=True, slots=True)
class FieldError:
    """One reason a request is invalid: the field (dotted path), why, and the value if short."""

    field: str
    message: str
    value: Any = None

    def as_json(self) -> JsonObject:
        entry: JsonObject = {"field": self.field, "message": self.message}
        if self.value is not None:
            entry["value"] = self.value
        return entry


# The deepest nesting any JSON body may have, counted in objects and arrays from the root
# (`{"attributes": {}}` is 2). The shim and the worker both parse through `parse_json`, so
# they agree; it leaves room under orjson's serialisation limit (254) for the envelopes a
# stored value is later answered in, and keeps every recursive consumer shallow.
MAX_JSON_DEPTH = 128
# At most this many per-field errors are reported for one body; the total is given beside.
MAX_DETAILS = 100


class BadJsonError(ValueError):
    """The body is not a JSON document (syntax, encoding, depth or number range)."""


def parse_json(body: bytes) -> Any:
    """Decode a request body; raise BadJsonError with the decoder's reason, or when it nests
    deeper than MAX_JSON_DEPTH."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadJsonError(str(exc)) from exc
    # Only a body with more opening brackets than the limit can nest deeper than it (a
    # count in C, so most bodies skip the walk).
    if body.count(b"{") + body.count(b"[") > MAX_JSON_DEPTH and too_deep(document, MAX_JSON_DEPTH):
        raise BadJsonError(f"nesting deeper than {MAX_JSON_DEPTH} levels")
    return document


def too_deep(document: Any, limit: int) -> bool:
    """Whether objects and arrays nest more than `limit` levels (iterative: no recursion)."""
    stack: list[tuple[Any, int]] = [(document, 1)]
    while stack:
        node, depth = stack.pop()
        for child in node.values() if isinstance(node, dict) else node:
            if isinstance(child, dict | list):
                if depth >= limit:
                    return True
                stack.append((child, depth + 1))
    return False


@cache
def schema_document(name: str) -> JsonObject:
    """A schema file from `schemas/`, parsed once."""
    text = (resources.files("ingest_worker.core") / "schemas" / name).read_bytes()
    document: JsonObject = orjson.loads(text)
    return document


@cache
def validator(document: str, definition: str) -> jsonschema_rs.Validator:
    """A compiled validator for one `$defs` entry of a schema file, built once."""
    root = schema_document(document)
    schema = {"$schema": root["$schema"], "$defs": root["$defs"], "$ref": f"#/$defs/{definition}"}
    return jsonschema_rs.validator_for(schema, validate_formats=True)


def check(document: str, definition: str, instance: Any, prefix: str = "") -> list[FieldError]:
    """How `instance` breaks the schema (at most MAX_DETAILS ways); empty when valid."""
    return errors_of(validator(document, definition), instance, prefix).errors


class Errors(NamedTuple):
    """The first MAX_DETAILS errors of an instance, and how many there are in all (None: not
    counted)."""

    errors: list[FieldError]
    total: int | None


def first_error(compiled: jsonschema_rs.Validator, instance: Any, prefix: str = "") -> Errors:
    """The first error only (cheap whatever the schema), the total not counted."""
    try:
        compiled.validate(instance)
    except jsonschema_rs.ValidationError as error:
        return Errors([field_error(error, prefix)], None)
    return Errors([], 0)


def errors_of(compiled: jsonschema_rs.Validator, instance: Any, prefix: str = "") -> Errors:
    """Validate; keep the first MAX_DETAILS errors, count the rest without building them."""
    if compiled.is_valid(instance):
        return Errors([], 0)
    found = compiled.iter_errors(instance)
    errors = [field_error(error, prefix) for error in islice(found, MAX_DETAILS)]
    return Errors(errors, len(errors) + sum(1 for _ in found))


def check_event(instance: Any, prefix: str = "") -> list[FieldError]:
    """Errors of one ingest request (or one import item, with its prefix): the schema's, and
    a timestamp of the right form outside the years every reader holds."""
    errors = check("ingest_request.schema.json", "event", instance, prefix)
    if errors:
        return errors
    problem = timestamp_error(instance["timestamp"])
    return [] if problem is None else [FieldError(_join(prefix, ["timestamp"]), problem)]


def check_update(instance: Any) -> list[FieldError]:
    """Errors of an event update (the body of PUT .../events/{event_id})."""
    return check("ingest_request.schema.json", "update", instance)


def check_import(instance: Any) -> list[FieldError]:
    """Errors of the import envelope (its items are checked one by one with check_event)."""
    return check("ingest_request.schema.json", "import", instance)


def field_error(error: jsonschema_rs.ValidationError, prefix: str) -> FieldError:
    path = [str(part) for part in error.instance_path]
    kind = error.kind
    if isinstance(kind, jsonschema_rs.ValidationErrorKind.AdditionalProperties):
        path.append(str(kind.unexpected[0]))
        return FieldError(_join(prefix, path), "unknown field")
    if isinstance(kind, jsonschema_rs.ValidationErrorKind.Required):
        path.append(str(kind.property))
        return FieldError(_join(prefix, path), "is required")
    if isinstance(kind, jsonschema_rs.ValidationErrorKind.MaxLength):
        return FieldError(_join(prefix, path), f"must be at most {kind.limit} characters")
    if isinstance(kind, jsonschema_rs.ValidationErrorKind.MinLength):
        return FieldError(_join(prefix, path), f"must be at least {kind.limit} characters")
    return FieldError(_join(prefix, path), _cut(error.message), _short(error.instance))


MAX_MESSAGE_CHARS = 300


def _cut(message: str) -> str:
    """A validator's message, which quotes the offending value, kept short."""
    return message if len(message) <= MAX_MESSAGE_CHARS else message[:MAX_MESSAGE_CHARS] + "…"


def _join(prefix: str, path: list[str]) -> str:
    parts = [prefix, *path] if prefix else path
    return ".".join(parts) if parts else "(body)"


def _short(value: Any) -> Any:
    """The offending value, if it is small enough to echo back."""
    if isinstance(value, bool | int | float) or value is None:
        return value
    if isinstance(value, str) and len(value) <= 300:
        return value
    return None
