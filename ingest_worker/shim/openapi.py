"""The OpenAPI 3.1 document, generated from the schema files the handlers validate with."""

from __future__ import annotations

from functools import cache
from typing import Any

from ingest_worker import __version__
from ingest_worker.core.shape import schema_document

Json = dict[str, Any]

_ID = {"type": "integer", "format": "int32"}
_STAMP = {"type": "string", "format": "date-time"}
_CURSOR = {"type": ["string", "null"]}
_PROBLEM_STATUSES = {
    "400": "Invalid request (see `details`)",
    "401": "Missing, unknown or revoked token",
    "404": "Unknown integration or resource, or not this token's",
    "405": "Method not allowed on this path (see `Allow`)",
    "409": "Conflict: the external id is taken in this integration",
    "413": "Body too large, or (ingest) larger than the raw topic's record limit",
    "415": "Body is not application/json",
    "429": "Rate limited (see `Retry-After`)",
    "503": "Kafka or PostgreSQL unavailable (see `Retry-After`)",
}

_OBJECTS: dict[str, Json] = {
    "problem": {
        "type": "object",
        "required": ["type", "title", "status", "detail", "code", "name", "message"],
        "properties": {
            "type": {"type": "string"},
            "title": {"type": "string"},
            "status": {"type": "integer"},
            "code": {"type": "string"},
            "detail": {"type": "string"},
            "name": {"type": "string", "description": "Spot's member: the title"},
            "message": {"type": "string", "description": "Spot's member: the detail"},
            "details": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["field", "message"],
                    "properties": {
                        "field": {"type": "string"},
                        "message": {"type": "string"},
                        "value": {},
                    },
                },
            },
        },
    },
    "event_accepted": {
        "type": "object",
        "required": ["event_id"],
        "properties": {"event_id": {"type": "string", "format": "uuid"}},
    },
    "import_results": {
        "type": "object",
        "required": ["results"],
        "properties": {
            "results": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["index"],
                    "description": "Published: `index`, `event_id`. Not published: `index`, "
                    "`status` and `code` (what ingesting the item alone would answer: "
                    "`invalid_request`, `body_too_large`, or a synchronous check's code) and "
                    "`errors` (the item's fields at fault).",
                    "properties": {
                        "index": {"type": "integer"},
                        "event_id": {"type": "string", "format": "uuid"},
                        "status": {"type": "integer"},
                        "code": {"type": "string"},
                        "errors": {"type": "array"},
                    },
                },
            }
        },
    },
    "integration_event": {
        "type": "object",
        "description": "A stored event. Listed events have every field; a rejected one (read "
        "by id) has those its record carried, the others null.",
        "required": [
            "id",
            "integration_id",
            "integration_event_type_id",
            "integration_device_id",
            "timestamp",
            "duration",
            "buffer",
            "attributes",
            "created",
            "updated",
        ],
        "properties": {
            "id": {"type": "string", "format": "uuid"},
            "integration_id": _ID,
            "integration_event_type_id": {"type": ["integer", "null"]},
            "integration_device_id": {"type": ["integer", "null"]},
            "timestamp": {"type": ["string", "null"], "format": "date-time"},
            "duration": {"type": ["integer", "null"], "description": "milliseconds"},
            "buffer": {"type": ["integer", "null"], "description": "milliseconds"},
            "attributes": {
                "description": "As stored: a listed event's are an object; a rejected one's "
                "are whatever its record carried (null when it had none)."
            },
            "created": _STAMP,
            "updated": _STAMP,
        },
    },
    "integration_event_fate": {
        "type": "object",
        "required": ["integration_event", "status"],
        "properties": {
            "integration_event": {"$ref": "#/components/schemas/integration_event"},
            "status": {"type": "string", "enum": ["accepted", "rejected"]},
            "error": {
                "type": "object",
                "description": "Why the event was rejected (only when `status` is rejected).",
                "required": ["status", "code", "message"],
                "properties": {
                    "status": {"type": "integer"},
                    "code": {"type": "string"},
                    "message": {"type": "string"},
                    "details": {"type": "array"},
                },
            },
        },
    },
    "integration": {
        "type": "object",
        "required": ["id", "name", "integration_type_id", "created", "updated"],
        "properties": {
            "id": _ID,
            "name": {"type": "string"},
            "integration_type_id": {
                "type": "integer",
                "enum": [1, 2],
                "description": "1 custom, 2 pos",
            },
            "created": _STAMP,
            "updated": _STAMP,
        },
    },
    "event_type": {
        "type": "object",
        "required": ["id", "integration_id", "name", "schema", "duration", "buffer", "version"],
        "properties": {
            "id": _ID,
            "integration_id": _ID,
            "name": {"type": "string"},
            "schema": {"type": "object"},
            "duration": {"type": "integer"},
            "buffer": {"type": "integer"},
            "external_device_id_template": {"type": ["string", "null"]},
            "version": {"type": "integer"},
            "created": _STAMP,
            "updated": _STAMP,
        },
    },
    "device": {
        "type": "object",
        "required": ["id", "integration_id", "name", "tags", "camera_ids", "auto_created"],
        "properties": {
            "id": _ID,
            "integration_id": _ID,
            "name": {"type": "string"},
            "external_id": {"type": ["string", "null"]},
            "tags": {"type": "array", "items": {"type": "string"}},
            "camera_ids": {"type": "array", "items": _ID},
            "auto_created": {"type": "boolean"},
            "created": _STAMP,
            "updated": _STAMP,
        },
    },
    "token": {
        "type": "object",
        "required": ["id", "integration_id", "name", "prefix", "created"],
        "properties": {
            "id": _ID,
            "integration_id": _ID,
            "name": {"type": "string"},
            "prefix": {"type": "string"},
            "token": {"type": "string", "description": "The secret; only in the create answer."},
            "created": _STAMP,
            "revoked": {"type": ["string", "null"], "format": "date-time"},
        },
    },
}


def _ref(name: str) -> Json:
    return {"$ref": f"#/components/schemas/{name}"}


def _envelope(key: str, name: str) -> Json:
    return {"type": "object", "required": [key], "properties": {key: _ref(name)}}


def _list_envelope(key: str, name: str) -> Json:
    return {
        "type": "object",
        "required": [key, "prev", "next"],
        "properties": {
            "prev": _CURSOR,
            "next": _CURSOR,
            key: {"type": "array", "items": _ref(name)},
        },
    }


def _rewrite_refs(node: Any) -> Any:
    """`#/$defs/x` (schema files) becomes `#/components/schemas/x` (OpenAPI)."""
    if isinstance(node, dict):
        return {
            k: (v.replace("#/$defs/", "#/components/schemas/") if k == "$ref" else _rewrite_refs(v))
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [_rewrite_refs(v) for v in node]
    return node


def _components() -> Json:
    schemas: Json = {}
    for file in ("ingest_request.schema.json", "management.schema.json"):
        schemas.update(_rewrite_refs(schema_document(file)["$defs"]))
    schemas.update(_OBJECTS)
    return schemas


def _params(*names: str) -> list[Json]:
    return [{"name": n, "in": "path", "required": True, "schema": _ID} for n in names]


_LIST_PARAMS = [
    {"name": "cursor", "in": "query", "required": False, "schema": {"type": "string"}},
    {
        "name": "limit",
        "in": "query",
        "required": False,
        "schema": {"type": "integer", "minimum": 1, "maximum": 100},
    },
]


def _op(
    summary: str,
    params: list[Json],
    ok: tuple[str, Json],
    body: str | None = None,
    headers: list[Json] | None = None,
) -> Json:
    responses: Json = {
        ok[0]: {"description": "OK", "content": {"application/json": {"schema": ok[1]}}}
    }
    for status, text in _PROBLEM_STATUSES.items():
        responses[status] = {
            "description": text,
            "content": {"application/problem+json": {"schema": _ref("problem")}},
        }
    operation: Json = {
        "summary": summary,
        "parameters": params + (headers or []),
        "responses": responses,
        "security": [{"bearer": []}],
    }
    if body is not None:
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": _ref(body)}},
        }
    return operation


def _crud(base: str, ids: tuple[str, ...], item: str, one: str, many: str, body: str) -> Json:
    """Paths of one management resource: collection and item."""
    item_ids = (*ids, item)
    return {
        base: {
            "post": _op(f"Create {one}", _params(*ids), ("200", _envelope(one, _short(one))), body),
            "get": _op(
                f"List {many}",
                _params(*ids) + _LIST_PARAMS,
                ("200", _list_envelope(many, _short(one))),
            ),
        },
        f"{base}/{{{item}}}": {
            "get": _op(f"Read {one}", _params(*item_ids), ("200", _envelope(one, _short(one)))),
            "delete": _op(
                f"Delete {one}", _params(*item_ids), ("200", _envelope(one, _short(one)))
            ),
        },
    }


def _short(envelope_key: str) -> str:
    return {
        "integration": "integration",
        "integration_event_type": "event_type",
        "integration_device": "device",
        "integration_token": "token",
    }[envelope_key]


_IDEMPOTENCY = [
    {
        "name": "Idempotency-Key",
        "in": "header",
        "required": False,
        "schema": {"type": "string", "minLength": 1, "maxLength": 255},
    }
]


_STORE_OFF = {
    "description": "The event store is off (`event_store_disabled`)",
    "content": {"application/problem+json": {"schema": _ref("problem")}},
}
_EVENT_ID = {
    "name": "event_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "format": "uuid"},
}


def _ids_param(name: str, what: str) -> Json:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": f"{what}: repeated keys or comma lists; any of them matches",
        "style": "form",
        "explode": True,
        "schema": {
            "type": "array",
            "items": {"type": "integer", "minimum": 0, "maximum": 2**31 - 1},
        },
    }


def _time_param(name: str, what: str) -> Json:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": f"{what}, RFC 3339",
        "schema": {"type": "string", "format": "date-time"},
    }


_EVENT_FILTERS = [
    _ids_param("integrationEventTypeIds", "event type ids"),
    _ids_param("integrationDeviceIds", "device ids"),
    _ids_param("cameraIds", "camera ids (those the events' devices have now)"),
    _time_param("start", "events at or after this time"),
    _time_param("end", "events before this time"),
]


def _stored(operation: Json) -> Json:
    """An operation of the event store: 501 when it is off."""
    operation["responses"]["501"] = _STORE_OFF
    return operation


def _add_event_store(paths: Json, events: str) -> None:
    """The stored-event operations: list (beside ingest's POST), fate, update, delete."""
    paths[events]["get"] = _stored(
        _op(
            "List stored events (accepted, not deleted), by timestamp then id",
            _params("integration_id") + _EVENT_FILTERS + _LIST_PARAMS,
            ("200", _list_envelope("integration_events", "integration_event")),
        )
    )
    item = [*_params("integration_id"), _EVENT_ID]
    accepted = ("202", _ref("event_accepted"))
    paths[f"{events}/{{event_id}}"] = {
        "get": _stored(
            _op("Read a stored event's fate", item, ("200", _ref("integration_event_fate")))
        ),
        "put": _stored(_update_checks(_op("Update a stored event", item, accepted, "update"))),
        "delete": _stored(_op("Delete a stored event", item, accepted)),
    }


# With INGEST_API_VALIDATION=sync (the default), ingest also answers these at once.
_SYNC_CHECKS = {
    "400": "Invalid request (`invalid_request`, `invalid_json`); in sync mode also "
    "`invalid_attributes` (see `details`), `device_unresolvable`, `template_unresolvable`",
    "404": "Unknown integration or not this token's (`not_found`); in sync mode also "
    "`unknown_event_type`, `device_not_found`",
}


def _update_checks(operation: Json) -> Json:
    """PUT of a stored event: with synchronous checks, the worker's codes at once."""
    responses = operation["responses"]
    responses["400"]["description"] = (
        "Invalid request (`invalid_request`, `invalid_json`); in sync mode also "
        "`invalid_attributes`: the given attributes, merged over the stored ones, against "
        "the type's schema (see `details`)"
    )
    responses["404"]["description"] = (
        "Unknown integration, event not stored (or deleted); in sync mode also `unknown_event_type`"
    )
    return operation


def _add_sync_checks(responses: Json) -> None:
    for status, text in _SYNC_CHECKS.items():
        responses[status]["description"] = text


def _paths() -> Json:
    events = "/v1/integrations/{integration_id}/events"
    paths: Json = {
        events: {
            "post": _op(
                "Ingest one event",
                _params("integration_id"),
                ("202", _ref("event_accepted")),
                "event",
                _IDEMPOTENCY,
            )
        },
        f"{events}/import": {
            "post": _op(
                "Import many events",
                _params("integration_id"),
                ("202", _ref("import_results")),
                "import",
                _IDEMPOTENCY,
            )
        },
    }
    _add_event_store(paths, events)
    _add_sync_checks(paths[events]["post"]["responses"])
    paths.update(
        _crud(
            "/v1/integrations",
            (),
            "integration_id",
            "integration",
            "integrations",
            "integration_input",
        )
    )
    paths["/v1/integrations/{integration_id}"]["put"] = _op(
        "Rename integration",
        _params("integration_id"),
        ("200", _envelope("integration", "integration")),
        "integration_input",
    )
    types = "/v1/integrations/{integration_id}/event-types"
    paths.update(
        _crud(
            types,
            ("integration_id",),
            "type_id",
            "integration_event_type",
            "integration_event_types",
            "event_type_input",
        )
    )
    paths[f"{types}/{{type_id}}"]["put"] = _op(
        "Replace event type",
        _params("integration_id", "type_id"),
        ("200", _envelope("integration_event_type", "event_type")),
        "event_type_input",
    )
    devices = "/v1/integrations/{integration_id}/devices"
    paths.update(
        _crud(
            devices,
            ("integration_id",),
            "device_id",
            "integration_device",
            "integration_devices",
            "device_input",
        )
    )
    paths[devices]["get"]["parameters"].append(
        {
            "name": "external_id",
            "in": "query",
            "required": False,
            "schema": {
                "type": "string",
                "minLength": 1,
                "maxLength": 255,
                "pattern": "^[^\\u0000]*$",
            },
        }
    )
    paths[devices]["get"]["parameters"] += [
        {
            "name": name,
            "in": "query",
            "required": False,
            "description": f"{what}: repeated keys or comma lists; any of them matches",
            "style": "form",
            "explode": True,
            "schema": {"type": "array", "items": item},
        }
        for name, what, item in (
            ("tags", "tags", {"type": "string", "pattern": "^[^\\u0000,]+$"}),
            ("camera_ids", "camera ids", {"type": "integer", "minimum": 0, "maximum": 2**31 - 1}),
        )
    ]
    device_ok = ("200", _envelope("integration_device", "device"))
    paths[f"{devices}/{{device_id}}"]["put"] = _op(
        "Update device name and tags",
        _params("integration_id", "device_id"),
        device_ok,
        "device_update",
    )
    paths[f"{devices}/{{device_id}}/cameras"] = {
        "put": _op(
            "Replace device cameras",
            _params("integration_id", "device_id"),
            device_ok,
            "device_cameras",
        )
    }
    tokens = "/v1/integrations/{integration_id}/tokens"
    token_paths = _crud(
        tokens,
        ("integration_id",),
        "token_id",
        "integration_token",
        "integration_tokens",
        "token_input",
    )
    del token_paths[f"{tokens}/{{token_id}}"]["get"]
    token_paths[f"{tokens}/{{token_id}}"]["delete"]["summary"] = "Revoke token"
    paths.update(token_paths)
    return paths


@cache
def document() -> Json:
    """The whole OpenAPI document, built once."""
    return {
        "openapi": "3.1.0",
        "info": {"title": "ingest-worker", "version": __version__},
        "jsonSchemaDialect": "https://json-schema.org/draft/2020-12/schema",
        "paths": _paths(),
        "components": {
            "schemas": _components(),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
