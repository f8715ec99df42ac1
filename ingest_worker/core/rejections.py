"""Why a raw record ends on the rejected topic, and where it was read: what the worker decides
and the rejected topic's encoding (core/encode.py) share."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

from ingest_worker.core.shape import FieldError


class Source(NamedTuple):
    """Where a raw record was read."""

    topic: str
    partition: int
    offset: int


@dataclass(slots=True)
class Rejection:
    """Why a raw record ends on the rejected topic."""

    source: Source
    value: bytes
    event_id: str
    integration_id: int | None
    status: int
    code: str
    message: str
    details: list[FieldError] = field(default_factory=list)
    details_total: int | None = None  # when more errors were found than `details` holds
    counted: bool = True  # False: only the first error was looked for; the total is unknown
