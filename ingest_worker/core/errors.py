"""Exception types. Two kinds of failure: a bad input (reject it, move on) and a broken
dependency (back off, retry, never skip)."""

import asyncio

# What must stop a process or a task, never be turned into a rejection of one record.
_FATAL = (KeyboardInterrupt, SystemExit, GeneratorExit, asyncio.CancelledError)


def is_recoverable(exc: BaseException) -> bool:
    """Whether a failure while handling one record may become that record's rejection:
    anything but a cancellation or an exit (a Rust panic in a library, which Python sees as
    a BaseException, included)."""
    return not isinstance(exc, _FATAL)


class IngestError(Exception):
    """Base of every error this package raises on purpose."""


class ConfigError(IngestError):
    """A setting is missing or malformed; the process cannot start."""


class DependencyUnavailable(IngestError):  # noqa: N818 - reads as a state, like TimeoutError
    """Kafka or PostgreSQL cannot be reached now; retry later, commit nothing."""


class MigrationError(IngestError):
    """The database schema cannot be brought to the expected version."""


class StackError(IngestError):
    """The local development stack (broker, database) could not be started."""
