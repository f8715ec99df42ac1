"""Attribute validation against an event type, compiled once per type version. Pure."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jsonschema_rs

from ingest_worker.core import template
from ingest_worker.core.event_types import compile_attributes, recursive
from ingest_worker.core.shape import Errors, errors_of, first_error


@dataclass(frozen=True, slots=True)
class EventType:
    """What the worker needs of an event type: compiled, for one version."""

    integration_id: int
    id: int
    version: int
    validator: jsonschema_rs.Validator
    template: template.Template | None
    duration_ms: int
    buffer_ms: int
    recursive: bool = False


def compile_type(row: dict[str, Any]) -> EventType:
    """An event type row (as saved through the API, so already checked) compiled for use."""
    text = row["external_device_id_template"]
    return EventType(
        integration_id=int(row["integration_id"]),
        id=int(row["id"]),
        version=int(row["version"]),
        validator=compile_attributes(row["schema"]),
        template=template.parse(text) if text else None,
        duration_ms=int(row["duration_ms"]),
        buffer_ms=int(row["buffer_ms"]),
        recursive=recursive(row["schema"]),
    )


StoredKey = tuple[Any, Any, Any]  # integration id, type id, version


def compile_stored(
    row: dict[str, Any], broken: set[StoredKey]
) -> tuple[EventType | None, Exception | None]:
    """A stored event type compiled; if it does not compile, whatever the reason (a row
    written by hand, a schema saved under older rules): None, with the error the first time
    that version fails (`broken` remembers it), so the caller reports it once."""
    try:
        return compile_type(row), None
    except Exception as exc:
        key = (row.get("integration_id"), row.get("id"), row.get("version"))
        if key in broken:
            return None, None
        broken.add(key)
        return None, exc


# Listing every error costs a pass per error, and with a recursive schema that can grow
# exponentially with the instance's nesting (measured: 17 levels, 9 s), while `is_valid` and
# the first error stay cheap. So every error is listed only for small instances of schemas
# without reference cycles; otherwise the first one is, and the total is not counted.
LIST_ALL_ERRORS_MAX_BYTES = 4096


def check_attributes(event_type: EventType, attributes: Any, size_bytes: int) -> Errors:
    """How the attributes (`size_bytes` of JSON at most) break the type's schema, as
    `attributes.<path>` fields (the first MAX_DETAILS), and how many ways in all."""
    validator = event_type.validator
    if validator.is_valid(attributes):
        return Errors([], 0)
    if event_type.recursive or size_bytes > LIST_ALL_ERRORS_MAX_BYTES:
        return first_error(validator, attributes, "attributes")
    return errors_of(validator, attributes, "attributes")
