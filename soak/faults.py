"""The soak's faults: a seeded schedule (pure, so a run can be replayed and the minimum counts
tested) and the injector that inflicts it on the stack while the drive goes on.

Modelled on Kafka's transactions system test: workers killed -9 mid-batch and SIGTERMed, the
group scaled 1 -> 3 -> 1, each broker killed -9 once and restarted, PostgreSQL stopped and
started, and the shim kept answering through the broker outages. Faults run one after another,
each waiting for the stack to be whole again (a killed broker rejoins every ISR before the
next fault), so the three-node cluster never loses its `min.insync.replicas=2`.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Literal, Protocol, get_args

from soak.stack import Stack

log = logging.getLogger(__name__)

Kind = Literal["worker_kill9", "worker_sigterm", "scale", "broker_kill9", "postgres_restart"]
KINDS: tuple[Kind, ...] = get_args(Kind)
# PostgreSQL's stop: a fast shutdown (SIGINT) or a crash (SIGKILL of every backend). A killed
# worker's replacement: under the same transactional id (a StatefulSet's pod: it fences the
# open transaction at once) or a new one (the default, per pid: the broker aborts the open
# transaction at its timeout, and the partitions' next owner waits for that).
Mode = Literal["fast", "crash", "same_id", "new_id"]

# From this many events on, a run is a full soak: the minimum counts.
FULL_EVENTS = 50_000
FULL_COUNTS: dict[Kind, int] = {
    "worker_kill9": 12,
    "worker_sigterm": 4,
    "scale": 2,  # each 2 -> 1 -> 3 -> 1 -> 2: four rebalances
    "broker_kill9": 3,  # each node once: every partition leader and the coordinators hit
    "postgres_restart": 2,
}
SMALL_COUNTS: dict[Kind, int] = dict.fromkeys(KINDS, 1)
BROKER_NODES = (1, 2, 3)
# Faults start between these fractions of the events sent: load before, drain after.
FIRST_AT, LAST_AT = 0.05, 0.85
# How long a fault keeps its target down (s): full run, small run.
HOLD_S: dict[Kind, tuple[tuple[float, float], tuple[float, float]]] = {
    "worker_kill9": ((1.0, 3.0), (0.5, 1.0)),  # before the replacement starts
    "worker_sigterm": ((1.0, 3.0), (0.5, 1.0)),
    "scale": ((6.0, 10.0), (3.0, 3.0)),  # each step of the cycle
    "broker_kill9": ((10.0, 20.0), (6.0, 6.0)),
    "postgres_restart": ((5.0, 15.0), (4.0, 4.0)),
}
# What a fault costs beyond its hold (s), full run and small run: the drive is paced so that
# it spans the faults.
OVERHEAD_S: dict[Kind, tuple[float, float]] = {
    "worker_kill9": (14.0, 6.0),  # waiting for lag, a new process
    "worker_sigterm": (6.0, 5.0),
    "scale": (16.0, 10.0),  # processes started and stopped
    "broker_kill9": (35.0, 22.0),  # a JVM start and every ISR whole again
    "postgres_restart": (4.0, 3.0),
}
GAP_S = 2.0  # the drive alone between two faults
MID_BATCH_WAIT_S = 15.0  # longest wait for a victim with lag before killing it anyway


@dataclass(frozen=True, slots=True)
class Fault:
    """One fault of the schedule.

    `at`: the fraction of the run's events sent when it starts; `target`: the broker's node
    id, or for a worker fault a pick among the running workers (index modulo their count);
    `hold_s`: how long the target stays down (a scale: each step); `mode`: how PostgreSQL
    stops, or under which transactional id a killed worker is replaced (see Mode)."""

    at: float
    kind: Kind
    target: int = 0
    hold_s: float = 0.0
    mode: Mode | None = None


def counts(events: int) -> dict[Kind, int]:
    """How many faults of each kind a run of `events` gets."""
    return dict(FULL_COUNTS if events >= FULL_EVENTS else SMALL_COUNTS)


def schedule(seed: int, events: int) -> list[Fault]:
    """The run's faults in the order they start: kinds shuffled by `seed`, spread evenly
    (with a seeded jitter) between FIRST_AT and LAST_AT of the events; the brokers killed in
    a seeded order (each once in a full run), PostgreSQL's stops alternating between a fast
    shutdown and a crash. Pure: the same seed and size give the same schedule."""
    rng = random.Random(seed)  # noqa: S311 - a schedule, not a secret
    kinds = [kind for kind, n in counts(events).items() for _ in range(n)]
    rng.shuffle(kinds)
    full = events >= FULL_EVENTS
    nodes = rng.sample(BROKER_NODES, len(BROKER_NODES))
    stops: list[Mode] = rng.sample(["fast", "crash"], 2)
    # A small run replaces under the same id only: the other way waits out a transaction.
    ids: list[Mode] = rng.sample(["same_id", "new_id"], 2) if full else ["same_id"]
    seen: Counter[Kind] = Counter()
    faults = []
    for at, kind in zip(_positions(rng, len(kinds)), kinds, strict=True):
        low, high = HOLD_S[kind][0 if full else 1]
        hold_s, nth = round(rng.uniform(low, high), 1), seen[kind]
        seen[kind] += 1
        if kind == "broker_kill9":
            faults.append(Fault(at, kind, nodes[nth % len(nodes)], hold_s))
        elif kind == "postgres_restart":
            faults.append(Fault(at, kind, 0, hold_s, stops[nth % len(stops)]))
        elif kind == "worker_kill9":
            faults.append(Fault(at, kind, rng.randrange(1000), hold_s, ids[nth % len(ids)]))
        else:
            faults.append(Fault(at, kind, rng.randrange(1000), hold_s))
    return faults


def _positions(rng: random.Random, n: int) -> list[float]:
    """n increasing fractions in [FIRST_AT, LAST_AT]: even spacing, jittered within a third
    of a step so that the order holds."""
    if n == 1:
        return [round(rng.uniform(FIRST_AT, LAST_AT), 4)]
    step = (LAST_AT - FIRST_AT) / (n - 1)
    jitter = step / 3
    spots = [FIRST_AT + i * step + rng.uniform(-jitter, jitter) for i in range(n)]
    return [round(min(LAST_AT, max(FIRST_AT, s)), 4) for s in spots]


def planned_s(faults: list[Fault], events: int) -> float:
    """About how long the faults take, one after another: the drive is paced to last that
    long, so that every fault meets load."""
    size = 0 if events >= FULL_EVENTS else 1
    steps = {"scale": 4}
    return sum(f.hold_s * steps.get(f.kind, 1) + OVERHEAD_S[f.kind][size] + GAP_S for f in faults)


# -- the injector -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Injected:
    """One fault as it happened: its kind as counted (a kill -9 that met no lag counts as
    `worker_kill9_idle`), and its span (monotonic seconds)."""

    kind: str
    started: float
    ended: float
    detail: str


@dataclass
class Gate:
    """How far the drive may go (a fraction of its events): the injector holds it at the next
    fault's start until the fault before is over, so that no fault is left without load.
    Once the last fault is over, the drive is no longer paced (`unpaced`)."""

    fraction: float = 0.0
    unpaced: bool = False


@dataclass
class Injector:
    """Inflicts a schedule on a stack, one fault after another; keeps what it did."""

    stack: Stack
    done: list[Injected] = field(default_factory=list)
    outages: list[tuple[float, float]] = field(default_factory=list)

    async def run(self, faults: list[Fault], gate: Gate, drive: Progress, stall_s: float) -> None:
        """Each fault once the drive has reached its start (the gate holds the drive there);
        the gate opened to the next fault's start meanwhile, and to the end after the last."""
        for index, fault in enumerate(faults):
            gate.fraction = fault.at
            await _until_reached(drive, fault.at, stall_s)
            gate.fraction = faults[index + 1].at if index + 1 < len(faults) else 1.0
            await self.inject(fault)
            await self.stack.workers.replace_crashed()
            await asyncio.sleep(GAP_S)
        gate.fraction, gate.unpaced = 1.0, True

    async def inject(self, fault: Fault) -> None:
        """One fault, start to recovery."""
        started = time.monotonic()
        log.info("fault %s starts", fault.kind, extra={"fault": repr(fault)})
        action: dict[Kind, Callable[[Fault], Awaitable[tuple[str, str]]]] = {
            "worker_kill9": self._worker_kill9,
            "worker_sigterm": self._worker_sigterm,
            "scale": self._scale,
            "broker_kill9": self._broker_kill9,
            "postgres_restart": self._postgres_restart,
        }
        kind, detail = await action[fault.kind](fault)
        self.done.append(Injected(kind, started, time.monotonic(), detail))
        log.info("fault %s done: %s", kind, detail)

    async def _worker_kill9(self, fault: Fault) -> tuple[str, str]:
        """Wait until the victim has lag (it is mid-batch), kill -9 it, then replace it."""
        workers = self.stack.workers
        victim = workers.pick(fault.target)
        busy = await self._until_busy(victim, MID_BATCH_WAIT_S)
        workers.kill(victim)
        await asyncio.sleep(fault.hold_s)
        await workers.start(victim, new_id=fault.mode == "new_id")
        kind = "worker_kill9" if busy else "worker_kill9_idle"
        return kind, f"slot {victim}, mid-batch: {busy}, replaced: {fault.mode}"

    async def _until_busy(self, slot: int, timeout_s: float) -> bool:
        """Wait until the worker is mid-batch: it emitted records since the last look and
        the group has records not committed yet (read, or written in a transaction still
        open). False if that is not seen within timeout_s."""
        workers, deadline = self.stack.workers, time.monotonic() + timeout_s
        before = await workers.processed(slot)
        while time.monotonic() < deadline:
            await asyncio.sleep(0.02)
            behind, now = await self.stack.behind(), await workers.processed(slot)
            if behind and before is not None and now is not None and now > before:
                return True
            before = now
        return False

    async def _worker_sigterm(self, fault: Fault) -> tuple[str, str]:
        """SIGTERM (the batch in hand is finished, the group left), then a replacement."""
        workers = self.stack.workers
        victim = workers.pick(fault.target)
        await workers.terminate(victim)
        await asyncio.sleep(fault.hold_s)
        await workers.start(victim)
        return "worker_sigterm", f"slot {victim}"

    async def _scale(self, fault: Fault) -> tuple[str, str]:
        """From the usual size to 1, to 3, to 1 and back: a rebalance at each step."""
        workers = self.stack.workers
        sizes = [1, 3, 1, workers.base_size]
        for size in sizes:
            await workers.scale(size)
            await asyncio.sleep(fault.hold_s)
        return "scale", f"sizes {' -> '.join(map(str, sizes))}"

    async def _broker_kill9(self, fault: Fault) -> tuple[str, str]:
        """kill -9 one node, hold it down, start it on its data, wait until every ISR is full
        again. The span counts as an outage for the shim's answers."""
        cluster = self.stack.cluster
        started = time.monotonic()
        cluster.kill(fault.target)
        await asyncio.sleep(fault.hold_s)
        cluster.spawn(fault.target)  # on this (the main) thread: the JVM dies with its thread
        await asyncio.to_thread(cluster.wait_started, fault.target)
        await asyncio.to_thread(cluster.wait_healthy, 240)
        self.outages.append((started, time.monotonic()))
        return "broker_kill9", f"node {fault.target}, down {fault.hold_s}s"

    async def _postgres_restart(self, fault: Fault) -> tuple[str, str]:
        """Stop PostgreSQL (fast shutdown or crash), hold it down, start it again on the same
        data and port."""
        postgres = self.stack.postgres
        if fault.mode == "crash":
            postgres.kill()
        else:
            postgres.stop()
        await asyncio.sleep(fault.hold_s)
        postgres.spawn()  # on this (the main) thread, like the brokers
        await asyncio.to_thread(postgres.wait_started)
        return "postgres_restart", f"{fault.mode}, down {fault.hold_s}s"

    def counts(self, http_answers: list[tuple[float, int]]) -> dict[str, int]:
        """Faults injected, by kind: a scale cycle counts as the rebalances it caused; the
        shim's broker outages are those during which it answered requests."""
        found = Counter(d.kind for d in self.done if d.kind != "scale")
        found["scale_rebalance"] = self.stack.workers.rebalances
        found["shim_broker_outage"] = sum(
            1 for start, end in self.outages if any(start <= t <= end for t, _ in http_answers)
        )
        return dict(found)


class Progress(Protocol):
    """How far the drive is: the fraction of its events sent, and whether every channel has
    sent its share up to a fraction (each stops at the gate: a whole share of its own)."""

    def progress(self) -> float: ...

    def reached(self, fraction: float) -> bool: ...


async def _until_reached(drive: Progress, at: float, stall_s: float) -> None:
    """Wait until the drive has sent `at` of its events; fail if it makes no progress for
    `stall_s` (a stuck drive is a finding, not something to wait out)."""
    last, since = drive.progress(), time.monotonic()
    while not drive.reached(at):
        if (now := drive.progress()) > last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since > stall_s:
            raise DriveStalledError(f"the drive sent nothing for {stall_s}s at {now:.1%}")
        await asyncio.sleep(0.1)


class DriveStalledError(RuntimeError):
    """The drive stopped sending while a fault waited for it."""
