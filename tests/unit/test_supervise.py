"""Background tasks without services: the supervisor, with pure asyncio tasks, and the
catalog follower's handling of whatever a notification holds."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import pytest
from prometheus_client import CollectorRegistry

from ingest_worker.core.supervise import Beat, Supervisor, board
from ingest_worker.core.validate import compile_type
from ingest_worker.worker.catalog import Catalog
from ingest_worker.worker.resolve import Device


def _retries(caplog: pytest.LogCaptureFixture) -> list[float]:
    return [
        r.__dict__["retry_in_s"] for r in caplog.records if r.name == "ingest_worker.core.supervise"
    ]


async def _until(condition: Callable[[], bool]) -> None:
    """Let the loop run until `condition()` holds, for at most about 5 s."""
    for _ in range(5000):
        if condition():
            return
        await asyncio.sleep(0.001)
    raise AssertionError("the condition never held")


async def test_a_crashed_task_is_restarted_and_down_until_it_beats(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A task that raises is logged once with its exception, restarted, down in between,
    and up again once the new run beats."""
    seen: list[bool] = []
    working = asyncio.Event()

    async def task(beat: Beat) -> None:
        seen.append(supervisor.healthy)
        if len(seen) == 1:
            raise RuntimeError("boom")
        beat()
        working.set()
        await asyncio.Event().wait()

    supervisor = Supervisor("t", task, first_backoff_s=0.01)
    running = asyncio.create_task(supervisor.run())
    async with asyncio.timeout(5):
        await working.wait()
    assert seen == [True, False]
    assert supervisor.healthy
    assert supervisor.crashes == 1
    [record] = [r for r in caplog.records if r.name == "ingest_worker.core.supervise"]
    assert record.levelno == logging.ERROR
    assert record.exc_info is not None
    assert isinstance(record.exc_info[1], RuntimeError)
    assert record.__dict__["task"] == "t"
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running


async def test_cancellation_is_never_swallowed() -> None:
    """Cancelling the supervisor cancels the task inside and ends the supervisor, with no
    restart."""
    calls: list[int] = []
    started = asyncio.Event()

    async def task(_: Beat) -> None:
        calls.append(1)
        started.set()
        await asyncio.sleep(3600)

    running = asyncio.create_task(Supervisor("t", task, first_backoff_s=0.0).run())
    await started.wait()
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    assert running.cancelled()
    assert calls == [1]


async def test_backoff_doubles_up_to_the_cap_and_resets_after_a_beat(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Crash after crash waits 0.01, 0.02, 0.04, 0.04 s (capped); a run that beat before
    crashing starts the series again."""
    calls: list[int] = []

    async def task(beat: Beat) -> None:
        calls.append(1)
        if len(calls) == 5:
            beat()
        raise ValueError(len(calls))

    supervisor = Supervisor("t", task, first_backoff_s=0.01, max_backoff_s=0.04)
    running = asyncio.create_task(supervisor.run())
    await _until(lambda: len(_retries(caplog)) >= 6)
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    assert _retries(caplog)[:6] == [0.01, 0.02, 0.04, 0.04, 0.01, 0.02]
    assert not supervisor.healthy


async def test_a_task_that_returns_is_restarted_too(caplog: pytest.LogCaptureFixture) -> None:
    """Returning is not how a background task ends: it is logged, marked down and run again."""
    calls: list[int] = []

    async def task(_: Beat) -> None:
        calls.append(1)
        if len(calls) > 1:
            await asyncio.sleep(3600)

    supervisor = Supervisor("t", task, first_backoff_s=0.0)
    running = asyncio.create_task(supervisor.run())
    await _until(lambda: len(calls) == 2)
    assert not supervisor.healthy
    assert [r.getMessage() for r in caplog.records if r.name == "ingest_worker.core.supervise"] == [
        "background task ended; restarting"
    ]
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running


async def test_the_board_reports_states_and_metrics() -> None:
    """States and `ingest_background_task_up` follow a crash and a recovery; a cancelled
    task leaves the board; a name is supervised once at a time."""
    registry = CollectorRegistry()
    tasks = board(registry)
    assert board(registry) is tasks
    release = asyncio.Event()
    beats: list[Beat] = []

    async def task(beat: Beat) -> None:
        beats.append(beat)
        if len(beats) == 1:
            await release.wait()
            raise OSError("lost")
        beat()
        await asyncio.sleep(3600)

    running = tasks.start("refresh", task, first_backoff_s=0.05)
    with pytest.raises(ValueError, match="already supervised"):
        tasks.start("refresh", task)
    await _until(lambda: len(beats) == 1)
    assert tasks.states() == {"refresh": True}
    release.set()
    await _until(lambda: not tasks.states()["refresh"])
    assert registry.get_sample_value("ingest_background_task_up", {"task": "refresh"}) == 0
    assert registry.get_sample_value("ingest_background_task_crashes_total", {"task": "refresh"})
    await _until(lambda: tasks.states()["refresh"])
    assert registry.get_sample_value("ingest_background_task_up", {"task": "refresh"}) == 1
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    assert tasks.states() == {}


def _full_catalog() -> Catalog:
    catalog = Catalog(max_age_s=30)
    catalog.integrations = {1: 0.0, 2: 0.0}
    row = {"integration_id": 1, "id": 7, "version": 1, "schema": {}, "duration_ms": 0}
    row |= {"buffer_ms": 0, "external_device_id_template": None}
    catalog.types = {(1, 7): (compile_type(row), 0.0)}
    catalog.remember_device(Device(5, "door", None), 1, 0.0)
    return catalog


@pytest.mark.parametrize(
    "payload",
    [
        "[1]",
        "1",
        "null",
        '"text"',
        "{",
        "[" * 5000 + "]" * 5000,
        '{"table": ["event_types"]}',
        '{"table": {"nested": {"junk": [1]}}, "id": 1}',
        '{"table": "event_types", "id": "7", "integration_id": 1}',
        '{"table": "event_types", "id": 7, "integration_id": null}',
        '{"table": "event_types", "id": 7.0, "integration_id": 1}',
        '{"table": "integrations", "op": "DELETE", "id": true}',
        '{"table": "devices", "id": [5]}',
        '{"table": "devices"}',
    ],
)
def test_a_notification_of_unknown_shape_clears_the_catalog(payload: str) -> None:
    """Whatever the payload holds, applying it never raises; one the catalog cannot read
    clears everything, as a missed notification would."""
    catalog = _full_catalog()
    catalog.on_change(payload)
    assert (catalog.integrations, catalog.types, catalog.devices, catalog.device_keys) == (
        {},
        {},
        {},
        {},
    )


def test_well_formed_notifications_drop_only_what_they_name() -> None:
    """A type, a deleted integration or a device is dropped alone; an update of an
    integration and a token change drop nothing."""
    catalog = _full_catalog()
    catalog.on_change('{"table": "api_tokens", "op": "INSERT", "id": 3, "integration_id": 1}')
    catalog.on_change('{"table": "integrations", "op": "UPDATE", "id": 1}')
    assert set(catalog.integrations) == {1, 2}
    catalog.on_change('{"table": "event_types", "op": "UPDATE", "id": 7, "integration_id": 1}')
    catalog.on_change('{"table": "integrations", "op": "DELETE", "id": 2}')
    catalog.on_change('{"table": "devices", "op": "DELETE", "id": 5, "integration_id": 1}')
    assert (catalog.integrations, catalog.types, catalog.devices, catalog.device_keys) == (
        {1: 0.0},
        {},
        {},
        {},
    )
