"""Logging setup: one JSON object per line (or a console format), configured by the CLI only."""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import orjson

from ingest_worker.core.rdkafka import LIBRDKAFKA_LOGGER

_RESERVED = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys()) | {
    "message",
    "asctime",
    "color_message",  # uvicorn's copy of the message with terminal colours
}
# uvicorn logs everything but access lines to "uvicorn.error", errors or not.
_RENAMED = {"uvicorn.error": "uvicorn"}
# librdkafka's warning while it waits out a state by itself, as at start-up while the broker's
# transaction coordinator loads: information (its fatal errors reach `error_cb` instead).
_TRANSIENT_FACILITY, _TRANSIENT_END = "GETPID", ": retrying"


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON line; `extra=` fields become top-level keys."""

    def __init__(self) -> None:
        super().__init__()
        self.converter = _utc

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": _RENAMED.get(record.name, record.name),
            "msg": record.getMessage(),
        }
        entry.update({k: v for k, v in vars(record).items() if k not in _RESERVED})
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


def setup(level: str, fmt: str) -> None:
    """Configure the root logger for a process; called once by the CLI."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        formatter: logging.Formatter = JsonFormatter()
    else:
        formatter = logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    librdkafka = logging.getLogger(LIBRDKAFKA_LOGGER)
    librdkafka.setLevel(max(root.level, logging.WARNING))
    librdkafka.addFilter(librdkafka_line)


def librdkafka_line(record: logging.LogRecord) -> bool:
    """Whether to keep a librdkafka log line, and at what level. Each failed (re)connect is
    dropped: librdkafka logs one every few milliseconds while a broker is down, and the same
    errors reach our loggers once through the clients' `error_cb`. A state it retries by
    itself (a coordinator still loading) is kept at INFO, if INFO is logged."""
    if isinstance(record.args, tuple) and record.args[:1] == ("FAIL",):
        return False
    if record.levelno == logging.WARNING and _retried_by_itself(record):
        record.levelno, record.levelname = logging.INFO, logging.getLevelName(logging.INFO)
        return logging.getLogger().isEnabledFor(logging.INFO)
    return True


def _retried_by_itself(record: logging.LogRecord) -> bool:
    args = record.args if isinstance(record.args, tuple) else ()
    return args[:1] == (_TRANSIENT_FACILITY,) and record.getMessage().endswith(_TRANSIENT_END)


def _utc(secs: float | None) -> time.struct_time:
    return time.gmtime(secs)
