"""The worker's copy of integrations and event types: loaded per batch for what it lacks,
dropped on change notifications, and never older than `max_age_s`."""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, TypeGuard

import orjson
import psycopg
from psycopg.rows import dict_row

from ingest_worker.core.changes import CHANNEL
from ingest_worker.core.supervise import Beat
from ingest_worker.core.validate import EventType, StoredKey, compile_stored
from ingest_worker.worker.resolve import Device

log = logging.getLogger(__name__)

TypeKey = tuple[int, int]
_TABLES = frozenset({"event_types", "integrations", "devices"})


@dataclass
class Catalog:
    """Known integrations, compiled event types and resolved devices, each with the time it
    was loaded. Devices are immutable in what the worker reads (id, integration, external id,
    creator), so only deletion has to reach the copy. At most `max_devices` devices are held:
    past that, those loaded longest ago go first (one batched query loads them again)."""

    max_age_s: float
    max_devices: int = 100_000
    integrations: dict[int, float] = field(default_factory=dict)
    types: dict[TypeKey, tuple[EventType, float]] = field(default_factory=dict)
    # Oldest first: evicting from the front of a plain dict walks every slot freed there.
    devices: OrderedDict[int, tuple[Device, int, float]] = field(default_factory=OrderedDict)
    device_keys: dict[tuple[int, str], int] = field(default_factory=dict)
    swept_at: float = 0.0
    broken: set[StoredKey] = field(default_factory=set)

    def on_change(self, payload: str) -> None:
        """Apply one `ingest_changes` notification: drop what it names. A payload of any
        other shape clears everything (whatever changed, nothing stale is kept)."""
        try:
            note = orjson.loads(payload)
        except orjson.JSONDecodeError:
            note = None
        if not (isinstance(note, dict) and self._apply(note)):
            self.clear()

    def _apply(self, note: dict[str, Any]) -> bool:
        """Drop what a well-formed note names; False if the note is not well formed. Notes
        about tables the catalog does not hold (api_tokens) change nothing."""
        table, key = note.get("table"), note.get("id")
        if not isinstance(table, str):
            return False
        if table not in _TABLES:
            return True
        if not _is_id(key):
            return False
        if table == "event_types":
            integration_id = note.get("integration_id")
            if not _is_id(integration_id):
                return False
            self.types.pop((integration_id, key), None)
        elif table == "integrations":
            if note.get("op") == "DELETE":
                self.integrations.pop(key, None)
        else:
            self.forget_device(key)
        return True

    def clear(self) -> None:
        self.integrations.clear()
        self.types.clear()
        self.devices.clear()
        self.device_keys.clear()

    def expire(self, now: float) -> None:
        """Forget entries older than max_age_s (in case a notification was lost); sweeps at
        most twice per max_age_s, so calling it per batch is cheap."""
        if now - self.swept_at < self.max_age_s / 2:
            return
        self.swept_at, cutoff = now, now - self.max_age_s
        self.integrations = {k: t for k, t in self.integrations.items() if t >= cutoff}
        self.types = {k: v for k, v in self.types.items() if v[1] >= cutoff}
        for device_id in [d for d, (_, _, t) in self.devices.items() if t < cutoff]:
            self.forget_device(device_id)

    def remember_device(self, device: Device, integration_id: int, now: float) -> None:
        if self.max_devices <= 0:
            return
        self.forget_device(device.id)  # held again: the newest
        self.devices[device.id] = (device, integration_id, now)
        if device.external_id is not None:
            self.device_keys[(integration_id, device.external_id)] = device.id
        while len(self.devices) > self.max_devices:
            self.forget_device(next(iter(self.devices)))

    def forget_device(self, device_id: int) -> None:
        found = self.devices.pop(device_id, None)
        if found is None or found[0].external_id is None:
            return
        key = (found[1], found[0].external_id)
        if self.device_keys.get(key) == device_id:  # not a newer device with the same key
            del self.device_keys[key]

    def device_by_key(self, key: tuple[int, str]) -> Device | None:
        device_id = self.device_keys.get(key)
        return None if device_id is None else self.devices[device_id][0]

    def device_by_id(self, device_id: int) -> tuple[Device, int] | None:
        found = self.devices.get(device_id)
        return None if found is None else (found[0], found[1])

    def _compiled(self, row: dict[str, Any]) -> EventType | None:
        """A stored event type, compiled; None if it does not compile (logged once per
        version)."""
        compiled, failure = compile_stored(row, self.broken)
        if failure is not None:
            log.error(
                "event type does not compile; its events are rejected",
                extra={
                    "integration_id": row.get("integration_id"),
                    "id": row.get("id"),
                    "version": row.get("version"),
                    "error": repr(failure),
                },
            )
        return compiled

    async def fill(
        self,
        conn: psycopg.AsyncConnection[Any],
        integration_ids: set[int],
        keys: set[TypeKey],
        now: float,
    ) -> tuple[set[int], dict[TypeKey, EventType]]:
        """Load, in one query each, the integrations and event types not held yet; return
        those of `integration_ids` and `keys` that exist, as a snapshot for one batch."""
        missing_ids = sorted(i for i in integration_ids if i not in self.integrations)
        missing_keys = sorted(k for k in keys if k not in self.types)
        async with conn.cursor(row_factory=dict_row) as cur:
            if missing_ids:
                await cur.execute("SELECT id FROM integrations WHERE id = ANY(%s)", (missing_ids,))
                self.integrations.update({row["id"]: now for row in await cur.fetchall()})
            if missing_keys:
                await cur.execute(
                    """
                    SELECT t.* FROM event_types t
                    JOIN unnest(%s::int[], %s::int[]) AS k (integration_id, id)
                      ON t.integration_id = k.integration_id AND t.id = k.id
                    """,
                    ([k[0] for k in missing_keys], [k[1] for k in missing_keys]),
                )
                for row in await cur.fetchall():
                    compiled = self._compiled(row)
                    if compiled is not None:
                        self.types[(compiled.integration_id, compiled.id)] = (compiled, now)
        known = {i for i in integration_ids if i in self.integrations}
        types = {k: self.types[k][0] for k in keys if k in self.types}
        return known, types


def _is_id(value: object) -> TypeGuard[int]:
    return type(value) is int


async def follow_changes(
    catalog: Catalog, database_url: str, retry_s: float = 2.0, on_listening: Beat | None = None
) -> None:
    """Apply change notifications as they come; on a lost connection, forget everything (a
    notification may have been missed) and listen again. `on_listening` is called each time
    the LISTEN is in place."""
    while True:
        try:
            async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
                await conn.execute(f"LISTEN {CHANNEL}")
                catalog.clear()
                if on_listening is not None:
                    on_listening()
                async for note in conn.notifies():
                    catalog.on_change(note.payload)
        except psycopg.OperationalError as exc:
            log.warning("catalog: database unavailable, retrying", extra={"error": str(exc)})
            catalog.clear()
            await asyncio.sleep(retry_s)
