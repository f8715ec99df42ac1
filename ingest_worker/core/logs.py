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
}


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON line; `extra=` fields become top-level keys."""

    def __init__(self) -> None:
        super().__init__()
        self.converter = _utc

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
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
    librdkafka.addFilter(_not_a_connection_failure)


def _not_a_connection_failure(record: logging.LogRecord) -> bool:
    """librdkafka logs each failed (re)connect, every few milliseconds while a broker is down;
    the same errors reach our loggers once through the clients' `error_cb`."""
    return not (isinstance(record.args, tuple) and record.args[:1] == ("FAIL",))


def _utc(secs: float | None) -> time.struct_time:
    return time.gmtime(secs)
