"""The soak's fault schedule: a pure function of the seed and the run's size, holding the
issue's minimum counts on a full run and one fault of each kind on a small one."""

from __future__ import annotations

from collections import Counter

import pytest

from soak.faults import FIRST_AT, KINDS, LAST_AT, Fault, counts, planned_s, schedule

FULL = 200_000
SMALL = 3_000


def _kinds(faults: list[Fault]) -> Counter[str]:
    return Counter(f.kind for f in faults)


@pytest.mark.parametrize("events", [SMALL, FULL])
def test_same_seed_same_schedule(events: int) -> None:
    """A seed and a size give one schedule, every time; another seed another one."""
    assert schedule(7, events) == schedule(7, events)
    assert schedule(7, events) != schedule(8, events)


@pytest.mark.parametrize("seed", range(20))
def test_full_run_has_the_minimum_counts(seed: int) -> None:
    """At least 10 kill -9s of a worker, SIGTERMs, two scale cycles (each four rebalances),
    each of the three brokers killed once, and PostgreSQL stopped twice (once fast, once
    crashed); kill -9 replacements under both kinds of transactional id."""
    faults = schedule(seed, FULL)
    found = _kinds(faults)
    assert found["worker_kill9"] >= 10
    assert found["worker_sigterm"] >= 2
    assert found["scale"] * 4 >= 3
    assert sorted(f.target for f in faults if f.kind == "broker_kill9") == [1, 2, 3]
    assert sorted(f.mode or "" for f in faults if f.kind == "postgres_restart") == [
        "crash",
        "fast",
    ]
    assert {f.mode for f in faults if f.kind == "worker_kill9"} == {"same_id", "new_id"}


@pytest.mark.parametrize("seed", range(20))
def test_small_run_has_one_fault_of_each_kind(seed: int) -> None:
    """The small soak of `make test`: one of each kind, the broker on any node."""
    faults = schedule(seed, SMALL)
    assert _kinds(faults) == Counter(KINDS)
    assert all(f.target in (1, 2, 3) for f in faults if f.kind == "broker_kill9")


@pytest.mark.parametrize(("seed", "events"), [(s, e) for s in range(10) for e in (SMALL, FULL)])
def test_faults_start_in_order_within_the_drive(seed: int, events: int) -> None:
    """Start points increase and leave load before the first fault and after the last; every
    fault holds its target down for a while."""
    faults = schedule(seed, events)
    starts = [f.at for f in faults]
    assert starts == sorted(starts)
    assert min(starts) >= FIRST_AT
    assert max(starts) <= LAST_AT
    assert all(f.hold_s > 0 for f in faults)
    assert len(faults) == sum(counts(events).values())


def test_the_drive_is_paced_to_span_the_faults() -> None:
    """A full run's faults take minutes, a small run's about a minute and a half: the pace
    the drive gets from them."""
    assert 300 < planned_s(schedule(1, FULL), FULL) < 900
    assert 40 < planned_s(schedule(1, SMALL), SMALL) < 120
