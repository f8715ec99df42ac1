"""Attribute validation against an event type, compiled once per type version. Pure."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jsonschema_rs

from ingest_worker import template
from ingest_worker.event_types import compile_attributes
from ingest_worker.shape import Errors, errors_of


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
    )


def check_attributes(event_type: EventType, attributes: Any) -> Errors:
    """How the attributes break the type's schema, as `attributes.<path>` fields (the first
    MAX_DETAILS), and how many ways in all."""
    return errors_of(event_type.validator, attributes, "attributes")
