"""What every librdkafka client of ours shares: its errors reach our loggers (once per
change, not once per reconnect), never librdkafka's own stderr."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from confluent_kafka import KafkaError, KafkaException

# A broker that is down reports each reconnect; the same error is logged again after this.
REPEAT_LOG_S = 30.0
# librdkafka's own log lines (syslog levels; 4 = warning) go to this logger, not to stderr.
LIBRDKAFKA_LOGGER = "librdkafka"


def worth_logging(logged: dict[int, float], code: int, now: float) -> bool:
    """Whether an error with `code` at `now` is news, given when each code was last logged:
    never yet, or REPEAT_LOG_S ago. (A broker that is down alternates a few codes.)"""
    last = logged.get(code)
    return last is None or now - last >= REPEAT_LOG_S


class ErrorLog:
    """librdkafka's `error_cb`: a fatal error at ERROR every time, others at WARNING when
    worth_logging. Called on whichever thread serves the client's queue; it only logs."""

    def __init__(self, logger: logging.Logger, clock: Callable[[], float] = time.monotonic):
        self._logger, self._clock = logger, clock
        self._logged: dict[int, float] = {}
        self.fatal: KafkaError | None = None

    def __call__(self, error: KafkaError) -> None:
        now = self._clock()
        if error.fatal():
            self.fatal = error
            self._logger.error("Kafka client failed", extra={"error": str(error)})
        elif worth_logging(self._logged, error.code(), now):
            self._logged[error.code()] = now
            self._logger.warning("Kafka client error", extra={"error": str(error)})


def config(bootstrap: str, client_id: str, errors: ErrorLog) -> dict[str, Any]:
    """The settings every client starts from."""
    return {
        "bootstrap.servers": bootstrap,
        "client.id": client_id,
        "error_cb": errors,
        "logger": logging.getLogger(LIBRDKAFKA_LOGGER),
        # Reconnect within a second of a broker coming back (librdkafka's default: up to 10 s).
        "reconnect.backoff.max.ms": 1000,
    }


def error_code(exc: KafkaException) -> int | None:
    """The librdkafka error code a KafkaException carries, if any."""
    error = exc.args[0] if exc.args else None
    return error.code() if isinstance(error, KafkaError) else None
