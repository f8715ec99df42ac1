"""Faults a test inflicts on a broker of its own."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def frozen(work: Path) -> Iterator[None]:
    """The broker's JVM (the one started in `work`) stopped with SIGSTOP: connections hang,
    nothing is answered, like a partitioned or stalled broker; it resumes (SIGCONT) on exit."""
    pattern = str(work / "server.properties")
    subprocess.run(["pkill", "-STOP", "-f", pattern], check=True)
    try:
        yield
    finally:
        subprocess.run(["pkill", "-CONT", "-f", pattern], check=True)
