"""Background tasks that must not die: each runs under a supervisor that restarts it after
any error, with capped exponential backoff, and keeps a health flag for `/readyz`.

A task is a factory `f(beat)` returning a coroutine that runs for as long as the process
does; it calls `beat()` whenever it has shown it works (a load done, a LISTEN in place). A
task is down from a crash (or an unexpected return) until its next beat. Cancellation is
never caught: it stops the supervisor with the task.

The supervised tasks of a process are grouped on a `Board`, one per metrics registry, which
also exports `ingest_background_task_up{task}` and
`ingest_background_task_crashes_total{task}`.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Callable, Coroutine, Iterable
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

log = logging.getLogger(__name__)

Beat = Callable[[], None]
Factory = Callable[[Beat], Coroutine[Any, Any, None]]


class Supervisor:
    """Runs one task forever: restart after a crash, down until it beats again."""

    def __init__(
        self, name: str, factory: Factory, first_backoff_s: float = 0.1, max_backoff_s: float = 10.0
    ) -> None:
        self.name, self._factory = name, factory
        self._first_s, self._max_s = first_backoff_s, max_backoff_s
        self.healthy = True
        self.crashes = 0
        self._worked = False

    def beat(self) -> None:
        """Called by the task: it works (again)."""
        self.healthy = self._worked = True

    async def run(self) -> None:
        failures = 0
        while True:
            self._worked = False
            error = await self._attempt()
            failures = 1 if self._worked else failures + 1
            pause = min(self._max_s, self._first_s * 2.0 ** min(failures - 1, 16))
            self._crashed(error, pause)
            await asyncio.sleep(pause)

    async def _attempt(self) -> Exception | None:
        """Run the task once; the error it ended with (None if it returned)."""
        try:
            await self._factory(self.beat)
        except Exception as exc:
            return exc
        return None

    def _crashed(self, error: Exception | None, pause: float) -> None:
        self.healthy = False
        self.crashes += 1
        log.error(
            "background task crashed; restarting" if error else "background task ended; restarting",
            exc_info=error,
            extra={"task": self.name, "crashes": self.crashes, "retry_in_s": round(pause, 2)},
        )


class Board:
    """The supervised tasks of one process, exported as metrics on its registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.tasks: dict[str, Supervisor] = {}
        registry.register(_Exporter(self))

    def start(self, name: str, factory: Factory, **backoff: float) -> asyncio.Task[None]:
        """Supervise `factory` under `name` (unique on this board) until the returned task
        is cancelled, which also takes it off the board."""
        if name in self.tasks:
            raise ValueError(f"a task named {name} is already supervised")
        supervisor = self.tasks[name] = Supervisor(name, factory, **backoff)
        task = asyncio.create_task(supervisor.run(), name=f"supervised:{name}")
        task.add_done_callback(lambda _: self.tasks.pop(name, None))
        return task

    def states(self) -> dict[str, bool]:
        """Each task's health: True while it works."""
        return {name: s.healthy for name, s in self.tasks.items()}


_boards: weakref.WeakKeyDictionary[CollectorRegistry, Board] = weakref.WeakKeyDictionary()


def board(registry: CollectorRegistry) -> Board:
    """The board of the process that owns `registry` (made on first use)."""
    found = _boards.get(registry)
    if found is None:
        found = _boards[registry] = Board(registry)
    return found


class _Exporter:
    def __init__(self, board: Board) -> None:
        self._board = weakref.ref(board)

    def collect(self) -> Iterable[Metric]:
        found = self._board()
        tasks = found.tasks if found is not None else {}
        up = GaugeMetricFamily(
            "ingest_background_task_up",
            "1 while a supervised background task works; 0 from a crash until it recovers.",
            labels=["task"],
        )
        crashes = CounterMetricFamily(
            "ingest_background_task_crashes",
            "Crashes (or unexpected returns) of each supervised background task.",
            labels=["task"],
        )
        for name, supervisor in tasks.items():
            up.add_metric([name], 1.0 if supervisor.healthy else 0.0)
            crashes.add_metric([name], supervisor.crashes)
        return [up, crashes]
