"""What an event's type and device decide, before any device is found or created: the event
type, the attributes against its schema, then which device the event names. Pure.

The worker decides this for every raw record; the shim decides it at once, from its cached
catalog, when INGEST_API_VALIDATION is `sync`. Both call these functions, so they answer with
the same statuses, codes and messages.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, NamedTuple

from ingest_worker.core import template
from ingest_worker.core.shape import Errors
from ingest_worker.core.validate import EventType, check_attributes

Method = Literal["direct", "external_id", "template"]
_NO_ERRORS = Errors([], 0)


class Refusal(NamedTuple):
    """Why an event cannot be accepted: status, stable code, message, and (for
    `invalid_attributes`) the attributes' errors."""

    status: int
    code: str
    message: str
    errors: Errors = _NO_ERRORS


class DeviceRef(NamedTuple):
    """What an event names: a device id (direct) or an external id (given or templated)."""

    method: Method
    device_id: int | None = None
    external_id: str | None = None


UNKNOWN_EVENT_TYPE = Refusal(404, "unknown_event_type", "no such event type in this integration")
DEVICE_NOT_FOUND = Refusal(404, "device_not_found", "no such device in this integration")
DEVICE_UNRESOLVABLE = Refusal(400, "device_unresolvable", "no device id, external id or template")
INVALID_ATTRIBUTES = "the attributes do not match the event type's schema"
INVALID_UPDATE = "the updated attributes do not match the event type's schema"


def plan(
    body: Mapping[str, Any], size_bytes: int, event_type: EventType | None
) -> DeviceRef | Refusal:
    """For a well-shaped event (`size_bytes` of JSON) and its type (None: the integration has
    none of that id): the device it names, or the first reason to refuse it."""
    if event_type is None:
        return UNKNOWN_EVENT_TYPE
    errors = check_attributes(event_type, body["attributes"], size_bytes)
    if errors.errors:
        return Refusal(400, "invalid_attributes", INVALID_ATTRIBUTES, errors)
    return device_ref(body, event_type)


def device_ref(body: Mapping[str, Any], event_type: EventType) -> DeviceRef | Refusal:
    """The device an event names, in order with no fallback: its `integration_device_id`, its
    `device_external_id`, the type's template; or why it names none."""
    if "integration_device_id" in body:
        return DeviceRef("direct", device_id=int(body["integration_device_id"]))
    if "device_external_id" in body:
        return DeviceRef("external_id", external_id=str(body["device_external_id"]))
    if event_type.template is None:
        return DEVICE_UNRESOLVABLE
    try:
        external_id = template.evaluate(event_type.template, body["attributes"])
    except template.Unresolvable as exc:
        return Refusal(400, "template_unresolvable", str(exc))
    return DeviceRef("template", external_id=external_id)


def device_in_integration(owner: int | None, integration_id: int) -> Refusal | None:
    """A direct device id must name a device of the event's integration; `owner` is the
    integration of the device with that id (None: no device has it)."""
    return None if owner == integration_id else DEVICE_NOT_FOUND


def update_refusal(
    merged: Mapping[str, Any], size_bytes: int, event_type: EventType | None
) -> Refusal | None:
    """Why an update cannot apply, or None: the event type it names (None: the integration
    has none of that id), and its attributes merged over the stored ones (`size_bytes` of
    JSON) against that type's schema."""
    if event_type is None:
        return UNKNOWN_EVENT_TYPE
    errors = check_attributes(event_type, merged, size_bytes)
    return Refusal(400, "invalid_attributes", INVALID_UPDATE, errors) if errors.errors else None
