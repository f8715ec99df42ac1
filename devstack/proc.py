"""Child-process helpers shared by the local broker and database launchers."""

from __future__ import annotations

import ctypes
import os
import pwd
import random
import signal
import socket
import stat
import subprocess
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from ingest_worker.core.errors import StackError

_PR_SET_PDEATHSIG = 1


# Where the kernel's ephemeral ports start when /proc does not say (Linux's default).
EPHEMERAL_LOW = 32768
# Ports picked for servers come from just below the ephemeral range, at least this one.
LOWEST_PICKED = 10000
PICK_TRIES = 100


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """`count` distinct free ports, from below the kernel's ephemeral range where it leaves
    room: a port from that range can be given to an outgoing connection (a Kafka client's)
    between being picked and being bound by its server. Each socket stays bound until all
    are picked, so no port is handed out twice."""
    with ExitStack() as held:
        socks = [
            held.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            for _ in range(count)
        ]
        candidates = _below_ephemeral()
        for sock in socks:
            _bind_one(sock, candidates)
        return [int(sock.getsockname()[1]) for sock in socks]


def _below_ephemeral() -> list[int]:
    """Ports below the ephemeral range, shuffled (empty when the range starts too low)."""
    try:
        text = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text()
        low = int(text.split()[0])
    except (OSError, ValueError, IndexError):
        low = EPHEMERAL_LOW
    ports = list(range(max(LOWEST_PICKED, low - 12000), low))
    random.shuffle(ports)
    return ports


def _bind_one(sock: socket.socket, candidates: list[int]) -> None:
    """Bind to a free candidate, or to one the kernel picks when none of a few is free."""
    for _ in range(min(PICK_TRIES, len(candidates))):
        try:
            sock.bind(("127.0.0.1", candidates.pop()))
            return
        except OSError:
            continue
    sock.bind(("127.0.0.1", 0))


def port_open(port: int) -> bool:
    """Whether something accepts TCP connections on 127.0.0.1:port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _die_with_parent() -> None:
    """In the child: get SIGTERM when the launcher dies, so no server outlives a killed run."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass(frozen=True, slots=True)
class RunAs:
    """The unprivileged account a server runs as when the launcher is root."""

    uid: int
    gid: int


def unprivileged_account() -> RunAs | None:
    """None when not root; else `nobody`, since PostgreSQL refuses to run as root."""
    if os.geteuid() != 0:
        return None
    entry = pwd.getpwnam("nobody")
    return RunAs(entry.pw_uid, entry.pw_gid)


def hand_over(path: Path, account: RunAs | None) -> None:
    """Give `path` to `account` and make sure it can traverse every parent folder."""
    if account is None:
        return
    os.chown(path, account.uid, account.gid)
    for parent in path.resolve().parents:
        mode = parent.stat().st_mode
        if not mode & stat.S_IXOTH:
            parent.chmod(mode | stat.S_IXOTH)


def spawn(
    cmd: list[str], log_path: Path, account: RunAs | None = None, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Start a server in its own session, output appended to a log file, dying with us."""
    with log_path.open("ab") as log_file:
        return subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent,
            user=None if account is None else account.uid,
            group=None if account is None else account.gid,
            env=env,
        )


def run(
    cmd: list[str], log_path: Path, account: RunAs | None = None, timeout_s: float = 120
) -> None:
    """Run a set-up command to completion; on failure raise with the log's tail."""
    with log_path.open("ab") as log_file:
        result = subprocess.run(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            timeout=timeout_s,
            user=None if account is None else account.uid,
            group=None if account is None else account.gid,
            check=False,
        )
    if result.returncode != 0:
        raise StackError(f"{Path(cmd[0]).name} failed ({result.returncode}):\n{tail(log_path)}")


def wait_until(
    ready: Callable[[], bool], proc: subprocess.Popen[bytes], log_path: Path, timeout_s: float
) -> None:
    """Poll `ready` until true; fail fast if the process exits, or at the deadline."""
    deadline = time.monotonic() + timeout_s
    while not ready():
        if proc.poll() is not None:
            raise StackError(f"{proc.args!r} exited with {proc.returncode}:\n{tail(log_path)}")
        if time.monotonic() > deadline:
            stop(proc, signal.SIGKILL, 5)
            raise StackError(f"not ready after {timeout_s}s:\n{tail(log_path)}")
        time.sleep(0.1)


def stop(proc: subprocess.Popen[bytes], sig: signal.Signals, grace_s: float) -> None:
    """Signal the process, wait up to grace_s, then kill it."""
    if proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def tail(path: Path, lines: int = 30) -> str:
    """The last lines of a log file, for error messages."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
