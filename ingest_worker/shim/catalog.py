"""The shim's copy of what the synchronous checks need (INGEST_API_VALIDATION=sync): whether an
integration exists, its compiled event types, and which integration a device id belongs to.

- Event types are loaded per integration, all at once (one query, concurrent misses share it),
  so an unknown type id costs no query; a type is compiled once per version.
- Devices are loaded by id, in batches with one query in flight: ids asked for meanwhile wait
  for the next batch, so however many misses arrive (random ids included) PostgreSQL sees one
  query at a time. Known ids are kept up to MAX_DEVICES, absent ones up to MAX_ABSENT for
  ABSENT_TTL_S (a new device is not announced, so a miss is only believed briefly).
- Change notifications drop what they name; a lost LISTEN connection drops everything; no
  entry is used past `max_age_s`. A load that raced a notification is used once, not kept.
- PostgreSQL unreachable on a miss raises DependencyUnavailable (the caller publishes
  unchecked); for RETRY_S after a failure, misses do not try again. Logged once per change.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, LiteralString, NamedTuple, Protocol, TypeVar

import orjson
import psycopg
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from ingest_worker.core.changes import CHANNEL
from ingest_worker.core.errors import DependencyUnavailable
from ingest_worker.core.metrics import ApiMetrics
from ingest_worker.core.supervise import Beat
from ingest_worker.core.validate import EventType, StoredKey, compile_stored

log = logging.getLogger(__name__)

LOAD_TIMEOUT_S = 1.0
RETRY_S = 1.0
ABSENT_TTL_S = 2.0
MAX_DEVICES = 100_000
MAX_ABSENT = 50_000
MAX_BATCH = 500
# The LISTEN connection runs a query this often, so a silently dead one is noticed.
LISTEN_PROBE_S = 10.0
APPLICATION_NAME = "ingest-api-catalog"

K = TypeVar("K")
V = TypeVar("V")


@dataclass(frozen=True, slots=True)
class Types:
    """One integration as loaded: whether it exists, and its event types by id."""

    exists: bool
    by_id: dict[int, EventType]
    loaded_at: float


class Owner(NamedTuple):
    """The integration of the device with some id (None: no device has that id)."""

    integration_id: int | None


NO_DEVICE = Owner(None)
_STALE = float("-inf")


class Source(Protocol):
    """Where the catalog loads from; raises DependencyUnavailable when it cannot."""

    async def event_types(self, integration_id: int) -> list[dict[str, Any]] | None:
        """The integration's event type rows; None if the integration does not exist."""
        ...

    async def owners(self, device_ids: list[int]) -> dict[int, int]:
        """{device id: its integration id} of the ids that exist."""
        ...


class Catalog:
    """The cache, its loads, and whether PostgreSQL answered the last one."""

    def __init__(
        self,
        source: Source,
        max_age_s: float,
        metrics: ApiMetrics,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.source, self.max_age_s, self.metrics, self.clock = source, max_age_s, metrics, clock
        self._types: dict[int, Types] = {}
        self._owners: dict[int, tuple[Owner, float]] = {}
        self._absent: dict[int, float] = {}
        self._types_epoch = self._devices_epoch = 0
        self._loading: dict[int, asyncio.Future[Types]] = {}
        self._devices = Batcher(self._load_owners, MAX_BATCH)
        self._broken: set[StoredKey] = set()
        self.reachable, self._retry_at = True, _STALE

    # --- hits: no I/O -------------------------------------------------------------------------

    def types(self, integration_id: int, now: float) -> Types | None:
        """The integration as cached, or None when it must be loaded."""
        found = self._types.get(integration_id)
        return found if found is not None and now - found.loaded_at <= self.max_age_s else None

    def owner(self, device_id: int, now: float) -> Owner | None:
        """Which integration has this device id, as cached; None when it must be loaded."""
        found = self._owners.get(device_id)
        if found is not None and now - found[1] <= self.max_age_s:
            return found[0]
        absent_at = self._absent.get(device_id)
        if absent_at is not None and now - absent_at <= ABSENT_TTL_S:
            return NO_DEVICE
        return None

    # --- misses ---------------------------------------------------------------------------------

    async def load_types(self, integration_id: int, now: float) -> Types:
        """Load the integration (concurrent callers share one load)."""
        running = self._loading.get(integration_id)
        if running is None:
            running = asyncio.ensure_future(self._load_types(integration_id, now))
            self._loading[integration_id] = running
            running.add_done_callback(lambda done: self._loaded(integration_id, done))
        return await asyncio.shield(running)

    async def load_owners(self, device_ids: Iterable[int]) -> dict[int, Owner]:
        """Load these device ids (in the next batch)."""
        return await self._devices.get(device_ids)

    def _loaded(self, integration_id: int, done: asyncio.Future[Types]) -> None:
        self._loading.pop(integration_id, None)
        if not done.cancelled():
            done.exception()  # retrieved here, so a load nobody awaits any more is not logged

    async def _load_types(self, integration_id: int, now: float) -> Types:
        epoch = self._types_epoch
        rows = await self._attempt(
            "event_types", lambda: self.source.event_types(integration_id), now
        )
        old = self._types.get(integration_id)
        found = Types(rows is not None, self._compile(rows or [], old), now)
        # An integration that does not exist is not remembered: one created a moment later
        # would be refused until its change notification arrived.
        if epoch == self._types_epoch and rows is not None:
            self._types[integration_id] = found
        return found

    async def _load_owners(self, device_ids: list[int]) -> dict[int, Owner]:
        now, epoch = self.clock(), self._devices_epoch
        found = await self._attempt("devices", lambda: self.source.owners(device_ids), now)
        owners = {i: Owner(found.get(i)) for i in device_ids}
        if epoch == self._devices_epoch:
            for device_id, owner in owners.items():
                self._remember(device_id, owner, now)
        return owners

    async def _attempt(self, kind: str, load: Callable[[], Awaitable[V]], now: float) -> V:
        """Run one load, unless PostgreSQL failed less than RETRY_S ago; track reachability."""
        if now < self._retry_at:
            raise DependencyUnavailable("PostgreSQL failed a moment ago")
        try:
            async with asyncio.timeout(LOAD_TIMEOUT_S):
                found = await load()
        except (DependencyUnavailable, TimeoutError) as exc:
            self.metrics.catalog_loads.labels(kind, "failed").inc()
            self._unreachable(now, exc)
            raise DependencyUnavailable(f"catalog load failed: {exc!r}") from exc
        self.metrics.catalog_loads.labels(kind, "ok").inc()
        self._reached()
        return found

    def _unreachable(self, now: float, exc: BaseException) -> None:
        self._retry_at = now + RETRY_S
        if self.reachable:
            self.reachable = False
            log.warning(
                "catalog: PostgreSQL unreachable; events it cannot check are published unchecked",
                extra={"error": repr(exc)[:500]},
            )

    def _reached(self) -> None:
        self._retry_at = _STALE
        if not self.reachable:
            self.reachable = True
            log.info("catalog: PostgreSQL reachable again; synchronous checks resume")

    def _compile(self, rows: list[dict[str, Any]], old: Types | None) -> dict[int, EventType]:
        """Compiled types by id; a version compiled before is reused; a row that does not
        compile is left out (the worker rejects its events as `unknown_event_type` too)."""
        found: dict[int, EventType] = {}
        for row in rows:
            before = old.by_id.get(int(row["id"])) if old is not None else None
            if before is not None and before.version == int(row["version"]):
                found[before.id] = before
            elif (compiled := self._compiled(row)) is not None:
                found[compiled.id] = compiled
        return found

    def _compiled(self, row: dict[str, Any]) -> EventType | None:
        compiled, failure = compile_stored(row, self._broken)
        if failure is not None:
            log.error(
                "event type does not compile; its events are refused",
                extra={
                    "integration_id": row.get("integration_id"),
                    "id": row.get("id"),
                    "error": repr(failure)[:500],
                },
            )
        return compiled

    def _remember(self, device_id: int, owner: Owner, now: float) -> None:
        if owner.integration_id is None:
            _put(self._absent, device_id, now, MAX_ABSENT)
        else:
            self._absent.pop(device_id, None)
            _put(self._owners, device_id, (owner, now), MAX_DEVICES)

    # --- changes --------------------------------------------------------------------------------

    def on_change(self, payload: str) -> None:
        """Apply one `ingest_changes` notification: drop what it names. A payload of any other
        shape clears everything."""
        try:
            note = orjson.loads(payload)
        except orjson.JSONDecodeError:
            note = None
        if not (isinstance(note, dict) and self._apply(note)):
            self.clear()

    def _apply(self, note: dict[str, Any]) -> bool:
        """Drop what a well-formed note names; False if it is not well formed."""
        table = note.get("table")
        key = note.get("integration_id") if table == "event_types" else note.get("id")
        if table not in ("event_types", "integrations", "devices"):
            return isinstance(table, str)  # api_tokens and the like: nothing held here
        if type(key) is not int:
            return False
        if table == "devices":
            self.forget_device(key)
        else:
            self.forget_types(key, drop=table == "integrations" and note.get("op") == "DELETE")
        return True

    def forget_types(self, integration_id: int, *, drop: bool = False) -> None:
        """Make the integration load again on its next use; its compiled types stay for reuse
        unless `drop`."""
        self._types_epoch += 1
        found = self._types.pop(integration_id, None)
        if found is not None and not drop:
            self._types[integration_id] = Types(found.exists, found.by_id, _STALE)

    def forget_device(self, device_id: int) -> None:
        self._devices_epoch += 1
        self._owners.pop(device_id, None)
        self._absent.pop(device_id, None)

    def clear(self) -> None:
        """Forget everything (a notification may have been missed)."""
        self._types_epoch += 1
        self._devices_epoch += 1
        self._types.clear()
        self._owners.clear()
        self._absent.clear()


def _put(entries: dict[K, V], key: K, value: V, limit: int) -> None:
    """Insert as the newest entry, dropping the oldest when `limit` is reached."""
    entries.pop(key, None)
    if len(entries) >= limit:
        del entries[next(iter(entries))]
    entries[key] = value


class Batcher:
    """Loads owners of device ids in batches of at most `max_batch`, one batch in flight;
    ids asked for meanwhile join the next batch. A caller that leaves does not cancel a
    batch others wait on."""

    def __init__(
        self, load: Callable[[list[int]], Awaitable[dict[int, Owner]]], max_batch: int
    ) -> None:
        self._load, self._max = load, max_batch
        self._waiting: dict[int, asyncio.Future[Owner]] = {}
        self._queue: list[int] = []
        self._task: asyncio.Task[None] | None = None

    async def get(self, device_ids: Iterable[int]) -> dict[int, Owner]:
        """The owner of each id; raises what the batch's load raised."""
        futures = {i: self._future(i) for i in device_ids}
        if self._task is None and self._queue:
            self._task = asyncio.create_task(self._drain())
        if futures:
            await asyncio.wait(futures.values())
        return {i: f.result() for i, f in futures.items()}

    def _future(self, device_id: int) -> asyncio.Future[Owner]:
        found = self._waiting.get(device_id)
        if found is None:
            found = self._waiting[device_id] = asyncio.get_running_loop().create_future()
            found.add_done_callback(_retrieve)
            self._queue.append(device_id)
        return found

    async def _drain(self) -> None:
        try:
            while self._queue:
                batch, self._queue = self._queue[: self._max], self._queue[self._max :]
                try:
                    found = await self._load(batch)
                except Exception as exc:
                    for future in self._take(batch):
                        future.set_exception(exc)
                else:
                    for device_id, future in zip(batch, self._take(batch), strict=True):
                        future.set_result(found[device_id])
        finally:
            self._task = None

    def _take(self, batch: list[int]) -> list[asyncio.Future[Owner]]:
        return [self._waiting.pop(device_id) for device_id in batch]


def _retrieve(future: asyncio.Future[Any]) -> None:
    """Mark a failure seen, so one nobody awaits any more is not logged as never retrieved."""
    if not future.cancelled():
        future.exception()


class PgSource:
    """The catalog's queries, on the API's pool; every failure is DependencyUnavailable."""

    def __init__(self, pool: AsyncConnectionPool[Any]) -> None:
        self._pool = pool

    async def event_types(self, integration_id: int) -> list[dict[str, Any]] | None:
        query = (
            "SELECT i.id AS found, t.* FROM integrations i "
            "LEFT JOIN event_types t ON t.integration_id = i.id WHERE i.id = %s"
        )
        rows = await self._fetch(query, (integration_id,))
        return None if not rows else [row for row in rows if row["id"] is not None]

    async def owners(self, device_ids: list[int]) -> dict[int, int]:
        query = "SELECT id, integration_id FROM devices WHERE id = ANY(%s)"
        return {row["id"]: row["integration_id"] for row in await self._fetch(query, (device_ids,))}

    async def _fetch(self, query: LiteralString, params: tuple[Any, ...]) -> list[dict[str, Any]]:
        try:
            async with self._pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
                await cur.execute(query, params)
                rows: list[dict[str, Any]] = await cur.fetchall()
                return rows
        except (psycopg.Error, PoolTimeout) as exc:
            raise DependencyUnavailable(f"PostgreSQL unavailable: {exc}") from exc


async def follow_changes(
    catalog: Catalog, database_url: str, retry_s: float = 2.0, on_listening: Beat | None = None
) -> None:
    """Apply change notifications as they come; on a lost connection forget everything (a
    notification may have been missed) and listen again. `on_listening` is called each time
    the LISTEN is in place."""
    while True:
        try:
            await _listen(catalog, database_url, on_listening)
        except psycopg.OperationalError as exc:
            log.warning("catalog: change notifications lost, retrying", extra={"error": str(exc)})
        catalog.clear()
        await asyncio.sleep(retry_s)


async def _listen(catalog: Catalog, database_url: str, on_listening: Beat | None) -> None:
    async with await psycopg.AsyncConnection.connect(
        database_url, autocommit=True, application_name=APPLICATION_NAME
    ) as conn:
        await conn.execute(f"LISTEN {CHANNEL}")
        catalog.clear()
        if on_listening is not None:
            on_listening()
        while True:
            async for note in conn.notifies(timeout=LISTEN_PROBE_S):
                catalog.on_change(note.payload)
            await conn.execute("SELECT 1")  # a dead connection fails here
