"""The image's health check: GET /healthz on the port of the process PID 1 runs.

One image runs `api`, `worker` or `migrate`, and a Dockerfile's HEALTHCHECK cannot know which,
so this reads PID 1's command line: `worker` is probed on INGEST_WORKER_HTTP_PORT (8081), `api`
on INGEST_API_PORT (8080); `migrate`, and a worker whose HTTP port is 0 (off), are healthy
while they run. Standard library only: the image has no curl.
"""

from __future__ import annotations

import os
import sys
import urllib.request
from pathlib import Path

PORTS = {"api": ("INGEST_API_PORT", "8080"), "worker": ("INGEST_WORKER_HTTP_PORT", "8081")}
ANY_ADDRESS = {"", "0.0.0.0", "::"}  # noqa: S104 - compared against, not bound


def command(cmdline: bytes) -> str:
    """The subcommand in PID 1's NUL-separated command line (`api` when none is known)."""
    args = [arg.decode(errors="replace") for arg in cmdline.split(b"\0") if arg]
    return next((arg for arg in args if arg in (*PORTS, "migrate")), "api")


def healthz_url(which: str, environ: dict[str, str]) -> str | None:
    """Where the process answers /healthz; None when it serves no HTTP."""
    if which not in PORTS:
        return None
    name, default = PORTS[which]
    port = environ.get(name) or default
    host = environ.get("INGEST_API_HOST", "")
    host = "127.0.0.1" if host in ANY_ADDRESS else host
    return None if port == "0" else f"http://{host}:{port}/healthz"


def main() -> int:
    url = healthz_url(command(Path("/proc/1/cmdline").read_bytes()), dict(os.environ))
    if url is None:
        return 0
    try:
        with urllib.request.urlopen(url, timeout=2) as answer:  # noqa: S310 - our own URL
            return 0 if answer.status == 200 else 1
    except OSError as exc:
        print(f"{url}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
