"""Event type definitions: checked when saved, compiled once per version for the worker. Pure."""

from __future__ import annotations

from typing import Any

import jsonschema_rs

from ingest_worker import template
from ingest_worker.shape import FieldError


def check_definition(definition: dict[str, Any]) -> list[FieldError]:
    """Why an event type cannot be saved: a schema that is not a JSON Schema, or a Device ID
    Template that is malformed or names properties the schema does not require."""
    schema = definition["schema"]
    errors = check_schema(schema)
    text = definition.get("external_device_id_template")
    if text is not None and not errors:
        errors += _check_template(text, schema)
    return errors


def check_schema(schema: dict[str, Any]) -> list[FieldError]:
    """The schema must be valid against its meta-schema and compile (regexes included)."""
    try:
        jsonschema_rs.meta.validate(schema)
        jsonschema_rs.validator_for(schema, validate_formats=True)
    except jsonschema_rs.ValidationError as exc:
        path = ".".join(["schema", *(str(p) for p in exc.instance_path)])
        return [FieldError(path, exc.message)]
    except (ValueError, jsonschema_rs.ReferencingError) as exc:
        return [FieldError("schema", str(exc).splitlines()[0])]
    return []


def _check_template(text: str, schema: dict[str, Any]) -> list[FieldError]:
    try:
        template.check_against_schema(template.parse(text), schema)
    except template.TemplateError as exc:
        return [FieldError("external_device_id_template", str(exc), text)]
    return []


def compile_attributes(schema: dict[str, Any]) -> jsonschema_rs.Validator:
    """The validator of an event type's attributes; build once per type version."""
    return jsonschema_rs.validator_for(schema, validate_formats=True)
