"""The worker's one-thread executor: calls in order, errors handed over, and a call that never
returns does not keep the process from exiting."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from ingest_worker.worker.threads import DaemonThread


def test_calls_run_in_order_and_errors_reach_the_caller() -> None:
    thread = DaemonThread("test")
    seen: list[int] = []
    futures = [thread.submit(seen.append, n) for n in range(5)]
    failing = thread.submit(int, "not a number")
    for future in futures:
        future.result(5)
    with pytest.raises(ValueError, match="not a number"):
        failing.result(5)
    assert seen == [0, 1, 2, 3, 4]
    thread.shutdown()
    with pytest.raises(RuntimeError):
        thread.submit(seen.append, 5)


def test_a_stuck_call_does_not_keep_the_process_from_exiting() -> None:
    """A ThreadPoolExecutor's thread blocked for good would be joined at exit for ever."""
    script = textwrap.dedent(
        """
        import threading
        from ingest_worker.worker.threads import DaemonThread
        thread = DaemonThread("stuck")
        thread.submit(threading.Event().wait)
        thread.shutdown(wait=False)
        print("done")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=30, check=True
    )
    assert done.stdout.strip() == "done"
