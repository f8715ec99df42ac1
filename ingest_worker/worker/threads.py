"""A one-thread executor whose thread never holds the process back.

librdkafka has been seen to hold a call past its timeout while a broker was frozen or
restarting. The worker then gives that client up and goes on with a fresh one, but a
`ThreadPoolExecutor`'s threads are joined at interpreter exit, so the abandoned call would
keep a stopped worker from ever exiting. This executor's thread is a daemon: it runs the calls
submitted to it one at a time, in order, and is left behind if it is stuck when the process
ends."""

from __future__ import annotations

import concurrent.futures
import functools
import queue
import threading
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")
_Call = tuple["concurrent.futures.Future[Any]", Callable[[], Any]]


class DaemonThread(concurrent.futures.Executor):
    """Runs submitted calls one at a time on one daemon thread."""

    def __init__(self, name: str) -> None:
        self._calls: queue.SimpleQueue[_Call | None] = queue.SimpleQueue()
        self._closed = False
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    def submit(
        self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs
    ) -> concurrent.futures.Future[T]:
        if self._closed:
            raise RuntimeError("cannot run calls on a thread that was shut down")
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._calls.put((future, functools.partial(fn, *args, **kwargs)))
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """No new calls; the thread ends after those already submitted (`wait`: and is
        waited for)."""
        self._closed = True
        self._calls.put(None)
        if wait:
            self._thread.join()

    def _serve(self) -> None:
        while (call := self._calls.get()) is not None:
            future, fn = call
            if not future.set_running_or_notify_cancel():
                continue
            try:
                result = fn()
            except BaseException as exc:
                future.set_exception(exc)
            else:
                future.set_result(result)
