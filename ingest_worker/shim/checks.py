"""The synchronous checks (INGEST_API_VALIDATION=sync): what the shim refuses at once, from its
catalog, with the worker's statuses, codes and messages (core/plan.py decides for both).

A refused single event is the Problem of its code; a refused import item is
`{"index", "status", "code", "errors"}`, its errors naming the item's fields. When the catalog
cannot reach PostgreSQL on a miss, the event is published unchecked: the worker decides.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.types import Message, Receive, Scope, Send

from ingest_worker.core.errors import DependencyUnavailable
from ingest_worker.core.metrics import ApiMetrics
from ingest_worker.core.plan import (
    DeviceRef,
    Refusal,
    device_in_integration,
    plan,
    update_refusal,
)
from ingest_worker.core.shape import FieldError
from ingest_worker.shim.catalog import Catalog, Owner, Types
from ingest_worker.shim.problems import Problem, not_found

Event = Mapping[str, Any]
SizedEvent = tuple[Event, int]  # an event and its size as JSON, in bytes
# The field each refusal is about (invalid_attributes names its own; "": the whole event).
_FIELDS = {
    "unknown_event_type": "integration_event_type_id",
    "device_not_found": "integration_device_id",
    "template_unresolvable": "attributes",
}


async def check_now(
    catalog: Catalog, metrics: ApiMetrics, integration_id: int, event: Event, size_bytes: int
) -> None:
    """Raise the Problem of a refused event; return if it passes or cannot be checked now."""
    try:
        found = await refusal(catalog, integration_id, event, size_bytes)
    except DependencyUnavailable:
        metrics.unchecked.inc()
        return
    if found is not None:
        metrics.invalid.inc()
        metrics.refused.labels(found.code).inc()
        raise Problem(found.status, found.code, found.message, errors(found, event))


async def refusal(
    catalog: Catalog, integration_id: int, event: Event, size_bytes: int
) -> Refusal | None:
    """Why the event is refused, or None; DependencyUnavailable when the catalog cannot
    tell; a 404 Problem when the integration is gone."""
    now = catalog.clock()
    planned = _plan(await _types(catalog, integration_id, now), event, size_bytes)
    if isinstance(planned, Refusal) or planned.device_id is None:
        return planned if isinstance(planned, Refusal) else None
    owner = catalog.owner(planned.device_id, now)
    if owner is None:
        owner = (await catalog.load_owners([planned.device_id]))[planned.device_id]
    return device_in_integration(owner.integration_id, integration_id)


async def check_update_now(
    catalog: Catalog, metrics: ApiMetrics, integration_id: int, update: Event, stored: str
) -> None:
    """Raise the Problem of an update that cannot apply to the stored attributes (`stored`,
    JSON text): an unknown event type, or merged attributes against its schema. Returns if
    it passes or cannot be checked now (the worker decides)."""
    try:
        types = await _types(catalog, integration_id, catalog.clock())
    except DependencyUnavailable:
        metrics.unchecked.inc()
        return
    merged = {**orjson.loads(stored or "{}"), **update["attributes"]}
    event_type = types.by_id.get(int(update["integration_event_type_id"]))
    found = update_refusal(merged, len(orjson.dumps(merged)), event_type)
    if found is not None:
        metrics.invalid.inc()
        metrics.refused.labels(found.code).inc()
        raise Problem(found.status, found.code, found.message, errors(found, update))


async def check_items(
    catalog: Catalog, metrics: ApiMetrics, integration_id: int, items: Mapping[int, SizedEvent]
) -> dict[int, Refusal]:
    """The refused items of an import by index, from its shape-checked items ({index: (event,
    its size in bytes)}); the devices they name are loaded together. An item the catalog
    cannot check is counted and passes."""
    now = catalog.clock()
    try:
        types = await _types(catalog, integration_id, now)
    except DependencyUnavailable:
        metrics.unchecked.inc(len(items))
        return {}
    planned = {i: _plan(types, event, size) for i, (event, size) in items.items()}
    refused = {i: p for i, p in planned.items() if isinstance(p, Refusal)}
    direct = _direct(planned)
    owners = await _owners(catalog, metrics, direct, now)  # a device not in it: not checked
    owned = {
        i: device_in_integration(owners[d].integration_id, integration_id)
        for i, d in direct.items()
        if d in owners
    }
    refused |= {i: found for i, found in owned.items() if found is not None}
    for found in refused.values():
        metrics.refused.labels(found.code).inc()
    return refused


def _plan(types: Types, event: Event, size_bytes: int) -> DeviceRef | Refusal:
    return plan(event, size_bytes, types.by_id.get(int(event["integration_event_type_id"])))


def _direct(planned: Mapping[int, DeviceRef | Refusal]) -> dict[int, int]:
    """{item index: device id} of the items that name their device by id."""
    found: dict[int, int] = {}
    for index, ref in planned.items():
        if isinstance(ref, DeviceRef) and ref.device_id is not None:
            found[index] = ref.device_id
    return found


async def _owners(
    catalog: Catalog, metrics: ApiMetrics, direct: Mapping[int, int], now: float
) -> dict[int, Owner]:
    """The owners of the items' device ids: cached, else loaded in one go; when they cannot
    be loaded, the items naming them are counted unchecked."""
    cached = {d: o for d in set(direct.values()) if (o := catalog.owner(d, now)) is not None}
    missing = set(direct.values()) - cached.keys()
    if not missing:
        return cached
    try:
        return cached | await catalog.load_owners(missing)
    except DependencyUnavailable:
        metrics.unchecked.inc(sum(1 for d in direct.values() if d in missing))
        return cached


async def _types(catalog: Catalog, integration_id: int, now: float) -> Types:
    types = catalog.types(integration_id, now)
    if types is None:
        types = await catalog.load_types(integration_id, now)
    if not types.exists:
        raise not_found()
    return types


def errors(found: Refusal, event: Event, prefix: str = "") -> list[FieldError]:
    """The fields at fault in a refusal, under `prefix` (an import item's path)."""
    if found.errors.errors:
        return [FieldError(_join(prefix, e.field), e.message, e.value) for e in found.errors.errors]
    name = _FIELDS.get(found.code, "")
    value = event.get(name) if name != "attributes" else None
    return [FieldError(_join(prefix, name) or "(body)", found.message, value)]


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix and name else prefix or name


# Management writes that change what the catalog holds: an integration, its event types, a
# device. Group 1: the integration id; 2: the resource; 3: the item id.
_WRITES = re.compile(
    r"/v1/integrations/([0-9]{1,10})(?:/(event-types|devices)(?:/([0-9]{1,10}))?)?"
)
_WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


class OwnWrites:
    """Management writes this process answers reach its catalog before their answer leaves,
    so a client that changes an event type or deletes a device, then ingests, is checked
    against the change (other processes learn it from the change notification)."""

    def __init__(self, app: Starlette) -> None:
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        match = _write(scope)
        if match is None:
            await self._app(scope, receive, send)
            return

        async def forget_then_send(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] < 300:
                self._forget(match)
            await send(message)

        await self._app(scope, receive, forget_then_send)

    def _forget(self, match: re.Match[str]) -> None:
        deps = getattr(self._app.state, "deps", None)
        found: Catalog | None = None if deps is None else deps.catalog
        if found is None:
            return
        if match[2] == "devices" and match[3] is not None:
            found.forget_device(int(match[3]))
        elif match[2] != "devices":
            found.forget_types(int(match[1]))


def _write(scope: Scope) -> re.Match[str] | None:
    if scope["type"] != "http" or scope["method"] not in _WRITE_METHODS:
        return None
    return _WRITES.fullmatch(scope["path"])
