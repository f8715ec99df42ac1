"""Request shape: JSON decoding and the checks of `schemas/*.schema.json`. Pure.

The shim and the worker both use this module with the same schema file, so a request the shim
accepts is a record the worker can read, and a gateway producing straight to the raw topic is
held to the same rules.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

import jsonschema_rs
import orjson

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


class BadJsonError(ValueError):
    """The body is not a JSON document (syntax, encoding, depth or number range)."""


def parse_json(body: bytes) -> Any:
    """Decode a request body; raise BadJsonError with the decoder's reason."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadJsonError(str(exc)) from exc


@cache
def schema_document(name: str) -> JsonObject:
    """A schema file from `schemas/`, parsed once."""
    text = (resources.files("ingest_worker") / "schemas" / name).read_bytes()
    document: JsonObject = orjson.loads(text)
    return document


@cache
def validator(document: str, definition: str) -> jsonschema_rs.Validator:
    """A compiled validator for one `$defs` entry of a schema file, built once."""
    root = schema_document(document)
    schema = {"$schema": root["$schema"], "$defs": root["$defs"], "$ref": f"#/$defs/{definition}"}
    return jsonschema_rs.validator_for(schema, validate_formats=True)


def check(document: str, definition: str, instance: Any, prefix: str = "") -> list[FieldError]:
    """Every way `instance` breaks the schema; empty when valid."""
    compiled = validator(document, definition)
    if compiled.is_valid(instance):
        return []
    return [field_error(error, prefix) for error in compiled.iter_errors(instance)]


def check_event(instance: Any, prefix: str = "") -> list[FieldError]:
    """Errors of one ingest request (or one import item, with its prefix)."""
    return check("ingest_request.schema.json", "event", instance, prefix)


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
    return FieldError(_join(prefix, path), error.message, _short(error.instance))


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
