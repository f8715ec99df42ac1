"""The soak's drive: N uniquely identified events, half through the HTTP shim (imports of up to
100 with an Idempotency-Key each, some single ingests, retried after a 503 with the same key),
half produced straight to the raw topic as a gateway would; about 5% invalid, each with the
code it deserves; and updates and deletes of events stored earlier in the run. Every item
goes to the ledger (`soak.ledger`) with what must come of it.

Ordering: each device key (the raw record's key, `{integration}:{device}`) belongs to one
sender, which sends its items one after another with increasing `seq`; the raw producer is
idempotent, so its records keep their order per partition through retries.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import IO, Any, Literal

import httpx
import orjson
from confluent_kafka import KafkaError, Message, Producer

from ingest_worker.core import raw
from soak import ledger
from soak.faults import Gate
from soak.ledger import Channel, Expect, Sent
from soak.stack import ADMIN_TOKEN, Problems, Stack

log = logging.getLogger(__name__)

Headers = list[tuple[str, str | bytes | None]]

HTTP_SENDERS = 4
INTEGRATIONS = 2
DEVICES_PER_SENDER = 8  # per integration
TEMPLATE_STORES = 10  # per integration, their devices made before the run
IMPORT_MAX = 100
RAW_CHUNK = 50
SINGLE_SHARE = 0.05  # HTTP batches sent as single ingests instead of one import
INVALID_SHARE = 0.05
NEW_DEVICE_USES = 5  # creates naming one new external id, one after another
GIVE_UP_S = 300.0  # longest an HTTP item is retried after 503s
CHANGE_WAIT_S = 120.0  # longest a change waits for its event to be stored, at the end
CHANGE_RETRY_S = 2.0
UNKNOWN_TYPE = 2_000_000_000
RAW_ORPHAN_SHARE = 0.002  # raw updates of events that never existed: event_not_found
TEMPLATE = "T-{store}-{lane}"

# Valid creates, by how the device is named, and their weights.
VALID_KINDS = {"direct": 25, "external": 30, "external_new": 10, "template": 20, "template_new": 15}
INVALID_KINDS = (
    "invalid_attributes",
    "device_not_found",
    "unknown_event_type",
    "template_unresolvable",
    "invalid_json",
)
# What follows an accepted create, by share of such creates.
ChangeKind = Literal["update", "update_invalid", "delete", "update_after_delete"]
CHANGE_PLANS: tuple[tuple[float, tuple[ChangeKind, ...]], ...] = (
    (0.030, ("update",)),
    (0.020, ("update", "delete")),
    (0.015, ("delete",)),
    (0.005, ("update_invalid",)),
)
RAW_ONLY_PLAN: tuple[float, tuple[ChangeKind, ...]] = (0.005, ("delete", "update_after_delete"))

PLAIN_SCHEMA = {
    "type": "object",
    "required": ["seq"],
    "properties": {
        "seq": {"type": "integer"},
        "amount": {"type": "number"},
        "note": {"type": "string"},
    },
}
TEMPLATE_SCHEMA = {
    "type": "object",
    "required": ["seq", "store", "lane"],
    "properties": {
        "seq": {"type": "integer"},
        "store": {"type": ["string", "null"]},
        "lane": {"type": "integer"},
        "amount": {"type": "number"},
        "note": {"type": "string"},
    },
}


# -- the world the run starts from -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Device:
    """A device made before the run."""

    id: int
    external_id: str


@dataclass(frozen=True, slots=True)
class Integration:
    """An integration of the run: a plain event type, a templated one (`T-{store}-{lane}`),
    the stores whose template device exists, and a device of another integration (naming it
    here is `device_not_found`)."""

    id: int
    plain_type: int
    template_type: int
    stores: tuple[str, ...]
    foreign_device: int = 0


@dataclass(frozen=True)
class World:
    """Integrations, and the devices each sender owns in each of them."""

    integrations: tuple[Integration, ...]
    devices: dict[str, dict[int, tuple[Device, ...]]]


def sender_names() -> list[str]:
    return [f"http{n}" for n in range(HTTP_SENDERS)] + ["raw"]


async def prepare(client: httpx.AsyncClient) -> World:
    """Make the integrations, event types and devices the run starts from, through the API.
    Each integration's foreign device is one of the next integration's."""
    made = [await _integration(client, n) for n in range(INTEGRATIONS)]
    owned: dict[str, dict[int, tuple[Device, ...]]] = {name: {} for name in sender_names()}
    for integration in made:
        for name in owned:
            owned[name][integration.id] = await _devices(client, integration.id, name)
    ids = [integration.id for integration in made]
    made = [
        replace(found, foreign_device=owned["raw"][ids[(k + 1) % len(ids)]][0].id)
        for k, found in enumerate(made)
    ]
    return World(tuple(made), owned)


async def _integration(client: httpx.AsyncClient, n: int) -> Integration:
    """One integration with its two event types and its template devices."""
    iid = (await _made(client, "/v1/integrations", {"name": f"soak-{n}"}))["integration"]["id"]
    types = f"/v1/integrations/{iid}/event-types"
    plain = await _made(client, types, {"name": "plain", "schema": PLAIN_SCHEMA})
    body = {"name": "templated", "schema": TEMPLATE_SCHEMA, "external_device_id_template": TEMPLATE}
    templated = await _made(client, types, body)
    stores = tuple(f"s{k}" for k in range(TEMPLATE_STORES))
    for store in stores:
        await _device(client, iid, TEMPLATE.format(store=store, lane=0))
    plain_id = plain["integration_event_type"]["id"]
    template_id = templated["integration_event_type"]["id"]
    return Integration(iid, plain_id, template_id, stores)


async def _devices(client: httpx.AsyncClient, iid: int, owner: str) -> tuple[Device, ...]:
    return tuple([await _device(client, iid, f"{owner}-d{k}") for k in range(DEVICES_PER_SENDER)])


async def _device(client: httpx.AsyncClient, iid: int, external_id: str) -> Device:
    body = {"name": external_id[:40], "external_id": external_id}
    found = await _made(client, f"/v1/integrations/{iid}/devices", body)
    return Device(found["integration_device"]["id"], external_id)


async def _made(client: httpx.AsyncClient, path: str, body: dict[str, Any]) -> Any:
    answer = await client.post(path, json=body)
    if answer.status_code not in (200, 201):
        raise RuntimeError(f"POST {path}: {answer.status_code} {answer.text}")
    return answer.json()


def admin_client(url: str) -> httpx.AsyncClient:
    """A client of the API holding the admin token (one Spot key works everywhere)."""
    headers = {"authorization": f"Bearer {ADMIN_TOKEN}"}
    limits = httpx.Limits(max_connections=HTTP_SENDERS * 2)
    return httpx.AsyncClient(base_url=url, headers=headers, timeout=30, limits=limits)


# -- what each sender makes --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Item:
    """One create as planned: its body (None: a body that is not JSON), its device hint (the
    raw key; None: keyed by the event id) and what must come of it, unless the API refuses it
    at once."""

    integration_id: int
    type_id: int
    body: dict[str, Any] | None
    hint: str | None
    order_key: str | None
    seq: int
    expect: Expect
    code: str | None
    external_id: str | None
    new_device: bool
    changes: tuple[ChangeKind, ...] = ()

    def value(self) -> bytes:
        """The request body / raw value, byte for byte."""
        if self.body is None:
            return b'{"integration_event_type_id": 1, "attri'
        return orjson.dumps(self.body)


@dataclass
class Stored:
    """An acknowledged create whose changes are still to be sent, from `due` on; `key`: its
    raw record's key (the gateway's changes go under it)."""

    event_id: str
    item: Item
    key: bytes
    changes: list[ChangeKind]
    due: float


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def event_body(type_id: int, attributes: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {
        "integration_event_type_id": type_id,
        "timestamp": now_iso(),
        "attributes": attributes,
        **fields,
    }


class Owner:
    """One sender's share of the world and its counters: per device key the next `seq`, its
    current new external id. Makes the sender's creates and changes."""

    def __init__(self, name: str, world: World, rng: random.Random, channel: Channel) -> None:
        self.name, self.world, self.rng, self.channel = name, world, rng, channel
        self._seqs: Counter[str | None] = Counter()
        self._new: dict[int, tuple[str, int]] = {}
        self._made = 0

    def next_seq(self, order_key: str | None) -> int:
        """Per order key, 1, 2, ...; items without one share the sender's own count."""
        self._seqs[order_key] += 1
        return self._seqs[order_key]

    def integration(self) -> Integration:
        return self.rng.choice(self.world.integrations)

    def create(self, integration: Integration, json_ok: bool = True) -> Item:
        """The next create: about 5% invalid (invalid JSON only where `json_ok`)."""
        if self.rng.random() < INVALID_SHARE:
            kinds = [k for k in INVALID_KINDS if json_ok or k != "invalid_json"]
            return self._invalid(integration, self.rng.choice(kinds))
        kinds, weights = list(VALID_KINDS), list(VALID_KINDS.values())
        item = self._valid(integration, self.rng.choices(kinds, weights)[0])
        return replace(item, changes=self._plan())

    def _plan(self) -> tuple[ChangeKind, ...]:
        """The changes that will follow an accepted create (mostly none)."""
        plans = [*CHANGE_PLANS, RAW_ONLY_PLAN] if self.channel == "raw" else list(CHANGE_PLANS)
        roll = self.rng.random()
        for share, plan in plans:
            if roll < share:
                return plan
            roll -= share
        return ()

    def _device(self, integration: Integration) -> Device:
        return self.rng.choice(self.world.devices[self.name][integration.id])

    def _attributes(self, seq: int, **more: Any) -> dict[str, Any]:
        return {"seq": seq, "amount": round(self.rng.uniform(1, 500), 2), **more}

    def _valid(self, integration: Integration, kind: str) -> Item:
        makers: dict[str, Callable[[Integration], Item]] = {
            "direct": self._direct,
            "external": self._external,
            "external_new": self._external_new,
            "template": self._template,
            "template_new": self._template_new,
        }
        return makers[kind](integration)

    def _direct(self, integration: Integration) -> Item:
        device = self._device(integration)
        return self._named(integration, "integration_device_id", device.id, device.external_id)

    def _external(self, integration: Integration) -> Item:
        device = self._device(integration)
        ext = device.external_id
        return self._named(integration, "device_external_id", ext, ext)

    def _external_new(self, integration: Integration) -> Item:
        """A new external id, named by a few creates in a row (the first creates it)."""
        ext, uses = self._new.get(integration.id, ("", 0))
        if uses == 0:
            self._made += 1
            ext, uses = f"{self.name}-n{self._made}", self.rng.randint(1, NEW_DEVICE_USES)
        self._new[integration.id] = (ext, uses - 1)
        return self._named(integration, "device_external_id", ext, ext, new=True)

    def _named(
        self, integration: Integration, field_name: str, value: Any, ext: str, *, new: bool = False
    ) -> Item:
        """A create naming its device (by id or external id): keyed, and ordered, by it."""
        hint = f"{integration.id}:{value}"
        seq = self.next_seq(hint)
        body = event_body(integration.plain_type, self._attributes(seq), **{field_name: value})
        return Item(
            integration.id,
            integration.plain_type,
            body,
            hint,
            hint,
            seq,
            "accepted",
            None,
            ext,
            new,
        )

    def _template(self, integration: Integration) -> Item:
        return self._templated(integration, self.rng.choice(integration.stores), 0, new=False)

    def _template_new(self, integration: Integration) -> Item:
        self._made += 1
        return self._templated(integration, f"{self.name}-t{self._made}", 1, new=True)

    def _templated(self, integration: Integration, store: str, lane: int, *, new: bool) -> Item:
        """Device from the template: keyed by the event id, so no order is promised."""
        seq = self.next_seq(None)
        attributes = self._attributes(seq, store=store, lane=lane)
        body = event_body(integration.template_type, attributes)
        ext = TEMPLATE.format(store=store, lane=lane)
        tid = integration.template_type
        return Item(integration.id, tid, body, None, None, seq, "accepted", None, ext, new)

    def _invalid(self, integration: Integration, code: str) -> Item:
        """An event the worker must reject with `code` (or the API refuse at once). Invalid
        events promise no order."""
        seq = self.next_seq(None)
        makers: dict[str, Callable[[Integration, int], tuple[int, dict[str, Any] | None, Any]]] = {
            "invalid_attributes": self._bad_attributes,
            "device_not_found": self._foreign_device,
            "unknown_event_type": self._unknown_type,
            "template_unresolvable": self._unresolvable,
            "invalid_json": lambda i, _: (i.plain_type, None, None),
        }
        type_id, body, device = makers[code](integration, seq)
        hint = None if device is None else f"{integration.id}:{device}"
        return Item(integration.id, type_id, body, hint, None, seq, "rejected", code, None, False)

    def _bad_attributes(self, integration: Integration, seq: int) -> tuple[int, Any, Any]:
        ext = self._device(integration).external_id
        body = event_body(
            integration.plain_type, {"seq": seq, "amount": "x"}, device_external_id=ext
        )
        return integration.plain_type, body, ext

    def _foreign_device(self, integration: Integration, seq: int) -> tuple[int, Any, Any]:
        """Another integration's device: not found in this one (no fallback, no leak)."""
        device = integration.foreign_device
        body = event_body(integration.plain_type, {"seq": seq}, integration_device_id=device)
        return integration.plain_type, body, device

    def _unknown_type(self, integration: Integration, seq: int) -> tuple[int, Any, Any]:
        ext = self._device(integration).external_id
        return UNKNOWN_TYPE, event_body(UNKNOWN_TYPE, {"seq": seq}, device_external_id=ext), ext

    def _unresolvable(self, integration: Integration, seq: int) -> tuple[int, Any, Any]:
        """The template meets a null store."""
        attributes = {"seq": seq, "store": None, "lane": 0}
        return integration.template_type, event_body(integration.template_type, attributes), None

    def change_body(self, stored: Stored, kind: ChangeKind, seq: int) -> bytes:
        """An update's body (the update carries its own `seq`); a delete's is empty."""
        if kind == "delete":
            return b""
        attributes: dict[str, Any] = {"seq": seq, "note": f"rev-{seq}"}
        if kind == "update_invalid":
            attributes = {"amount": "x"}
        return orjson.dumps(
            {"integration_event_type_id": stored.item.type_id, "attributes": attributes}
        )


def change_outcome(kind: ChangeKind) -> tuple[Expect, str | None]:
    """What the worker must make of a change of a stored event."""
    if kind == "update_invalid":
        return "rejected", "invalid_attributes"
    if kind == "update_after_delete":
        return "rejected", "event_not_found"
    return "accepted", None


def sent(
    item: Item,
    event_id: str,
    channel: Channel,
    *,
    op: ledger.Op = "create",
    attempts: int = 1,
    acked: bool = True,
) -> Sent:
    """The ledger line of a create as planned (changes and refusals replace fields)."""
    return Sent(
        id=event_id,
        channel=channel,
        op=op,
        integration_id=item.integration_id,
        order_key=item.order_key,
        seq=item.seq,
        expect=item.expect,
        code=item.code,
        external_id=item.external_id if item.expect == "accepted" else None,
        new_device=item.new_device,
        attempts=attempts,
        acked=acked,
    )


# -- pacing ----------------------------------------------------------------------------------


@dataclass
class Pacer:
    """Grants one channel its events: at `rate_per_s` (a token bucket holding a batch or a
    second's worth) until the faults are over, never past the gate they hold, `total` in
    all."""

    total: int
    rate_per_s: float
    gate: Gate
    granted: int = 0
    _tokens: float = 0.0
    _last: float | None = None

    def grant(self, now: float, want: int) -> int:
        """How many of `want` events may go now (0: wait)."""
        last = now if self._last is None else self._last
        burst = max(float(want), self.rate_per_s)
        self._tokens = min(burst, self._tokens + (now - last) * self.rate_per_s)
        self._last = now
        room = self.limit(self.gate.fraction) - self.granted
        n = min(want, room)
        if n <= 0 or (self._tokens < n and not self.gate.unpaced):
            return 0
        self._tokens = max(0.0, self._tokens - n)
        self.granted += n
        return n

    def limit(self, fraction: float) -> int:
        """Events this channel sends up to `fraction` of the run."""
        return min(self.total, int(fraction * self.total))

    def reached(self, fraction: float) -> bool:
        return self.granted >= self.limit(fraction)

    async def take(self, want: int) -> int:
        """Wait for a grant; 0 once the channel has sent its total."""
        while self.granted < self.total:
            n = self.grant(time.monotonic(), want)
            if n:
                return n
            await asyncio.sleep(0.02)
        return 0


# -- the shared bookkeeping ---------------------------------------------------------------


@dataclass
class Record:
    """The ledger file, what the shim answered (time, status: for the broker outages), and
    counts for the run's summary."""

    file: IO[str]
    problems: Problems
    answers: list[tuple[float, int]] = field(default_factory=list)
    stats: Counter[str] = field(default_factory=Counter)

    def write(self, line: Sent) -> None:
        ledger.append(self.file, line)
        self.stats[f"{line.channel}.{line.op}.{line.expect}"] += 1
        if not line.acked:
            self.stats[f"{line.channel}.unacked"] += 1

    def answered(self, status: int) -> None:
        self.answers.append((time.monotonic(), status))


# -- HTTP -------------------------------------------------------------------------------------


@dataclass
class Answer:
    """An HTTP exchange after its retries: the last response (None: none usable), tries."""

    response: httpx.Response | None
    attempts: int


class HttpSender:
    """One HTTP sender: its devices' items one request after another."""

    def __init__(
        self, owner: Owner, client: httpx.AsyncClient, pacer: Pacer, record: Record, batch: int
    ) -> None:
        self.owner, self.client, self.pacer, self.record = owner, client, pacer, record
        self.batch, self._requests = batch, 0
        self.pending: list[Stored] = []

    async def run(self) -> None:
        """Creates until the channel's share is sent, the due changes between them; then the
        changes left, for a while."""
        while n := await self.pacer.take(self.batch):
            integration = self.owner.integration()
            if self.owner.rng.random() < SINGLE_SHARE:
                for item in [self.owner.create(integration) for _ in range(n)]:
                    await self._single(item)
            else:
                await self._import([self.owner.create(integration, False) for _ in range(n)])
            await self._changes(time.monotonic())
        await self._last_changes()

    def _key(self) -> str:
        self._requests += 1
        return f"soak-{self.owner.name}-{self._requests}"

    async def _post(self, path: str, content: bytes, key: str) -> Answer:
        """POST with the Idempotency-Key; after a 503 (or no answer) the same request again,
        after Retry-After, until a final answer or GIVE_UP_S."""
        headers = {"content-type": "application/json", "idempotency-key": key}
        return await self._until_final(
            lambda: self.client.post(path, content=content, headers=headers), True
        )

    async def _until_final(
        self, send: Callable[[], Awaitable[httpx.Response]], unknown_ok: bool
    ) -> Answer:
        """Send until an answer other than 503. `unknown_ok`: whether a try whose fate is
        unknown (no answer, or a 503 from Kafka) may be repeated (with an Idempotency-Key);
        else only a 503 that published nothing (PostgreSQL down) is."""
        deadline, attempts = time.monotonic() + GIVE_UP_S, 0
        while True:
            attempts += 1
            try:
                response = await send()
            except httpx.TransportError as exc:
                self.record.stats["http.transport_error"] += 1
                if not unknown_ok or time.monotonic() > deadline:
                    log.warning("HTTP request given up: %r", exc)
                    return Answer(None, attempts)
                await asyncio.sleep(1.0)
                continue
            self.record.answered(response.status_code)
            if response.status_code != 503:
                self._check_final(response)
                return Answer(response, attempts)
            wait_s = self._retry_after(response)
            if time.monotonic() > deadline or not (unknown_ok or _code(response) == "unavailable"):
                return Answer(None, attempts)
            await asyncio.sleep(wait_s)

    def _retry_after(self, response: httpx.Response) -> float:
        self.record.stats[f"http.503.{_code(response)}"] += 1
        value = response.headers.get("retry-after")
        if value is None or not value.isdigit():
            self.record.problems.add(f"a 503 without a valid Retry-After: {response.text}")
            return 1.0
        return float(value)

    def _check_final(self, response: httpx.Response) -> None:
        if response.status_code >= 500:
            self.record.problems.add(
                f"{response.request.method} {response.request.url.path}: "
                f"{response.status_code} {response.text[:300]}"
            )

    async def _import(self, items: list[Item]) -> None:
        """One import; a result per item: published (acked) or refused at once."""
        iid, key = items[0].integration_id, self._key()
        content = orjson.dumps({"integration_events": [item.body for item in items]})
        answer = await self._post(f"/v1/integrations/{iid}/events/import", content, key)
        results = _results(answer.response, len(items))
        for index, (item, result) in enumerate(zip(items, results, strict=True)):
            self._settle(item, result, raw.event_id(iid, key, index), answer.attempts)

    async def _single(self, item: Item) -> None:
        """One ingest; 202 {"event_id"} or refused at once."""
        key = self._key()
        answer = await self._post(
            f"/v1/integrations/{item.integration_id}/events", item.value(), key
        )
        result = _results(answer.response, 1)[0]
        self._settle(item, result, raw.event_id(item.integration_id, key), answer.attempts)

    def _settle(
        self, item: Item, result: dict[str, Any] | None, derived: str, attempts: int
    ) -> None:
        """The ledger line of one create from its result (None: never acknowledged; its id is
        the one the key derives)."""
        if result is None:
            self.record.write(sent(item, derived, "http", attempts=attempts, acked=False))
        elif "event_id" in result:
            self.record.write(sent(item, result["event_id"], "http", attempts=attempts))
            if item.changes:
                self.pending.append(_stored(result["event_id"], item, b"", 5.0))
        else:
            self._refused(item, str(result.get("code")), attempts)

    def _refused(self, item: Item, code: str, attempts: int) -> None:
        if item.expect == "accepted":
            self.record.problems.add(f"a valid event was refused ({code}): {item.body}")
        line = sent(item, str(uuid.uuid4()), "http", attempts=attempts)
        self.record.write(replace(line, expect="refused", code=code, external_id=None))

    async def _changes(self, now: float) -> None:
        """Send the changes that are due (the event must be stored first: the API answers
        404 until it is)."""
        for stored in [s for s in self.pending if s.due <= now]:
            if not await self._is_stored(stored):
                stored.due = time.monotonic() + CHANGE_RETRY_S
                continue
            await self._change(stored)

    async def _last_changes(self) -> None:
        deadline = time.monotonic() + CHANGE_WAIT_S
        while self.pending and time.monotonic() < deadline:
            await self._changes(time.monotonic())
            await asyncio.sleep(0.5)
        self.record.stats["http.changes_dropped"] += sum(len(s.changes) for s in self.pending)

    async def _is_stored(self, stored: Stored) -> bool:
        path = f"/v1/integrations/{stored.item.integration_id}/events/{stored.event_id}"
        try:
            answer = await self.client.get(path)
        except httpx.TransportError:
            return False
        return answer.status_code == 200 and answer.json().get("status") == "accepted"

    async def _change(self, stored: Stored) -> None:
        """The next change of a stored event: PUT or DELETE. Only a 503 that published nothing
        is retried (a change has no Idempotency-Key); a change of unknown fate ends the
        event's changes."""
        kind = stored.changes.pop(0)
        seq = self.owner.next_seq(stored.item.order_key)
        path = f"/v1/integrations/{stored.item.integration_id}/events/{stored.event_id}"
        body = self.owner.change_body(stored, kind, seq)
        headers = {"content-type": "application/json"}
        answer = await self._until_final(
            lambda: self.client.request(
                "DELETE" if kind == "delete" else "PUT",
                path,
                content=body or None,
                headers=headers,
            ),
            False,
        )
        self._settle_change(stored, kind, seq, answer.response)
        if not stored.changes or answer.response is None or answer.response.status_code >= 500:
            self.pending.remove(stored)

    def _settle_change(
        self, stored: Stored, kind: ChangeKind, seq: int, response: httpx.Response | None
    ) -> None:
        """The change's ledger line: published (202), refused at once (4xx), or of unknown
        fate (no final answer, or a 5xx: a problem of its own)."""
        known = response is not None and response.status_code < 500
        line = change_line(stored, kind, seq, "http", acked=known)
        if response is not None and known and response.status_code != 202:
            line = replace(line, expect="refused", code=_code(response), external_id=None)
            if change_outcome(kind)[0] == "accepted":
                self.record.problems.add(
                    f"a valid {kind} was refused: {response.status_code} {response.text[:300]}"
                )
                stored.changes.clear()
        self.record.write(line)


def change_line(
    stored: Stored, kind: ChangeKind, seq: int, channel: Channel, *, acked: bool
) -> Sent:
    """The ledger line of a change of a stored event (its id is the event's)."""
    expect, code = change_outcome(kind)
    item = replace(stored.item, seq=seq, expect=expect, code=code)
    op: ledger.Op = "delete" if kind == "delete" else "update"
    return sent(item, stored.event_id, channel, op=op, acked=acked)


def _stored(event_id: str, item: Item, key: bytes, delay_s: float) -> Stored:
    return Stored(event_id, item, key, list(item.changes), time.monotonic() + delay_s)


def _results(response: httpx.Response | None, count: int) -> list[dict[str, Any] | None]:
    """Per item: the import's result, a single ingest's answer as one, or None (no final
    answer: the items may or may not have been published)."""
    if response is None or response.status_code >= 500:
        return [None] * count
    document = _json(response)
    if response.status_code == 202 and "results" in document:
        return list(document["results"])
    if response.status_code == 202:
        return [document]
    return [{"code": document.get("code", str(response.status_code))}] * count


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        found = response.json()
    except ValueError:
        return {}
    return found if isinstance(found, dict) else {}


def _code(response: httpx.Response) -> str:
    return str(_json(response).get("code", response.status_code))


# -- the raw topic ----------------------------------------------------------------------------


def gateway_producer(bootstrap: str) -> Producer:
    """A gateway's producer: idempotent, acks=all, Java's partitioner, lz4; a record is
    retried for five minutes before its delivery fails."""
    return Producer(
        {
            "bootstrap.servers": bootstrap,
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,
            "compression.type": "lz4",
            "partitioner": "murmur2_random",
            "message.timeout.ms": 300_000,
            "reconnect.backoff.max.ms": 1000,
            "logger": logging.getLogger("soak.gateway"),
        }
    )


class RawSender:
    """The gateway: creates and changes produced straight to the raw topic, each written to
    the ledger when its delivery is reported."""

    def __init__(
        self, owner: Owner, producer: Producer, topic: str, pacer: Pacer, record: Record
    ) -> None:
        self.owner, self.producer, self.topic = owner, producer, topic
        self.pacer, self.record = pacer, record
        self.pending: list[Stored] = []

    async def run(self) -> None:
        """Creates in chunks as the pacer allows, due changes between them; then the changes
        left and every delivery report."""
        while n := await self.pacer.take(RAW_CHUNK):
            for _ in range(n):
                await self._create(self.owner.create(self.owner.integration()))
            await self._changes(time.monotonic())
            self.producer.poll(0)
        deadline = time.monotonic() + CHANGE_WAIT_S
        while (self.pending or len(self.producer)) and time.monotonic() < deadline:
            await self._changes(time.monotonic())
            self.producer.poll(0)
            await asyncio.sleep(0.05)
        while len(self.producer):  # every record is reported by its message timeout
            self.producer.poll(0)
            await asyncio.sleep(0.1)
        self.record.stats["raw.changes_dropped"] += sum(len(s.changes) for s in self.pending)

    async def _create(self, item: Item) -> None:
        event_id = str(uuid.uuid4())
        key = (item.hint or event_id).encode()
        if self.owner.rng.random() < RAW_ORPHAN_SHARE:
            await self._orphan(item)

        def report(error: KafkaError | None, _: Message) -> None:
            self.record.write(sent(item, event_id, "raw", acked=error is None))
            if error is None and item.changes:
                self.pending.append(_stored(event_id, item, key, 0.5))

        await self._produce(key, item.value(), _headers(item.integration_id, event_id), report)

    async def _orphan(self, item: Item) -> None:
        """An update of an event that never existed: `event_not_found`."""
        event_id = str(uuid.uuid4())
        orphan = replace(item, hint=None, order_key=None, changes=("update_after_delete",))
        stored = _stored(event_id, orphan, event_id.encode(), 0.0)
        await self._change(stored)

    async def _changes(self, now: float) -> None:
        for stored in [s for s in self.pending if s.due <= now]:
            await self._change(stored)
            if not stored.changes:
                self.pending.remove(stored)

    async def _change(self, stored: Stored) -> None:
        """The next change, produced under the event's own key (its partition, after it)."""
        kind = stored.changes.pop(0)
        seq = self.owner.next_seq(stored.item.order_key)
        op = "delete" if kind == "delete" else "update"
        headers = [*_headers(stored.item.integration_id, stored.event_id), ("op", op.encode())]
        stored.due = time.monotonic() + 0.5

        def report(error: KafkaError | None, _: Message) -> None:
            self.record.write(change_line(stored, kind, seq, "raw", acked=error is None))

        body = self.owner.change_body(stored, kind, seq)
        await self._produce(stored.key, body, headers, report)

    async def _produce(
        self,
        key: bytes,
        value: bytes,
        headers: Headers,
        report: Callable[[KafkaError | None, Message], None],
    ) -> None:
        while True:
            try:
                self.producer.produce(self.topic, value, key, headers=headers, on_delivery=report)
                return
            except BufferError:  # the local queue is full: let librdkafka send some
                self.producer.poll(0)
                await asyncio.sleep(0.01)


def _headers(integration_id: int, event_id: str) -> Headers:
    return [
        ("integration-id", str(integration_id).encode()),
        ("event-id", event_id.encode()),
        ("received-at", str(time.time_ns() // 1_000_000).encode()),
    ]


# -- the drive ------------------------------------------------------------------------------


def import_size(events: int) -> int:
    """Items per import: 100 on a full run; smaller on a small one, so that the shim gets
    requests all along (a broker outage must meet some)."""
    return max(5, min(IMPORT_MAX, events // 300))


@dataclass
class Drive:
    """Both channels of a run and their pacing."""

    http: Pacer
    raw: Pacer
    record: Record
    senders: Sequence[Callable[[], Awaitable[None]]]

    def progress(self) -> float:
        """The fraction of the run's creates sent so far."""
        return (self.http.granted + self.raw.granted) / max(1, self.http.total + self.raw.total)

    def reached(self, fraction: float) -> bool:
        """Whether both channels have sent their share up to `fraction`."""
        return self.http.reached(fraction) and self.raw.reached(fraction)

    async def run(self) -> None:
        await asyncio.gather(*(send() for send in self.senders))


def drive(
    stack: Stack,
    world: World,
    client: httpx.AsyncClient,
    producer: Producer,
    record: Record,
    *,
    events: int,
    rate_per_s: float,
    gate: Gate,
    seed: int,
) -> Drive:
    """The senders of a run of `events` creates, half over HTTP, half to the raw topic."""
    http_total = events // 2
    http = Pacer(http_total, rate_per_s / 2, gate)
    raw_pacer = Pacer(events - http_total, rate_per_s / 2, gate)
    names = sender_names()
    owners = [Owner(n, world, _rng(seed, n), "http") for n in names[:-1]]
    batch = import_size(events)
    senders = [HttpSender(o, client, http, record, batch).run for o in owners]
    gateway = Owner(names[-1], world, _rng(seed, names[-1]), "raw")
    senders.append(RawSender(gateway, producer, stack.settings.raw_topic, raw_pacer, record).run)
    return Drive(http, raw_pacer, record, senders)


def _rng(seed: int, sender: str) -> random.Random:
    """A sender's own random source, from the run's seed: its mix of events is repeatable."""
    return random.Random(f"{seed}-{sender}")  # noqa: S311 - a load pattern, not a secret
