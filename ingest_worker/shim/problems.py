"""RFC 9457 problem details: every error answer of the HTTP API. Pure."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from ingest_worker.core.shape import FieldError

MEDIA_TYPE = "application/problem+json"

_TITLES = {
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    413: "Content Too Large",
    415: "Unsupported Media Type",
    429: "Too Many Requests",
    501: "Not Implemented",
    503: "Service Unavailable",
}


@dataclass
class Problem(Exception):  # noqa: N818 - raised by handlers, rendered by the app
    """An error answer: status, a stable code, a human detail and per-field details."""

    status: int
    code: str
    detail: str
    details: list[FieldError] = field(default_factory=list)
    retry_after_s: int | None = None

    def body(self) -> bytes:
        """RFC 9457's members, and Spot's `name` (the title) and `message` (the detail), which
        Spot clients read."""
        title = _TITLES.get(self.status, "Error")
        document: dict[str, Any] = {
            "type": f"/problems/{self.code}",
            "title": title,
            "status": self.status,
            "code": self.code,
            "detail": self.detail,
            "name": title,
            "message": self.detail,
        }
        if self.details:
            document["details"] = [d.as_json() for d in self.details]
        return orjson.dumps(document)

    def headers(self) -> dict[str, str]:
        if self.retry_after_s is None:
            return {}
        return {"Retry-After": str(self.retry_after_s)}


def invalid(details: list[FieldError], detail: str = "the request is invalid") -> Problem:
    """400 with the fields at fault."""
    return Problem(400, "invalid_request", detail, details)


def not_found(what: str = "integration") -> Problem:
    """404: unknown, or not this token's (the same answer, so ids cannot be probed)."""
    return Problem(404, "not_found", f"{what} not found")


def record_too_large(size: int, limit: int) -> Problem:
    """413: as a raw-topic record the event is over the topic's `max.message.bytes`, so no
    retry could ever publish it."""
    return Problem(413, "body_too_large", record_too_large_message("the event", size, limit))


def record_too_large_message(what: str, size: int, limit: int) -> str:
    return f"{what} is {size} bytes as a Kafka record; the raw topic takes at most {limit} bytes"
