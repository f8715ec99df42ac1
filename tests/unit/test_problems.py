"""Error bodies: RFC 9457's members and Spot's, from one place."""

from __future__ import annotations

import orjson
import pytest

from ingest_worker.core.shape import FieldError
from ingest_worker.shim.problems import Problem, invalid, not_found


@pytest.mark.parametrize(
    "problem",
    [
        invalid([FieldError("timestamp", "required")]),
        not_found("device"),
        Problem(401, "unauthorized", "missing bearer token"),
        Problem(503, "unavailable", "retry", retry_after_s=2),
        Problem(418, "teapot", "no title for this status"),
    ],
)
def test_error_bodies_carry_spots_name_and_message(problem: Problem) -> None:
    """Every body has RFC 9457's `type`, `title`, `status`, `detail`, our `code`, and Spot's
    `name` (the title) and `message` (the detail), which Spot clients read."""
    body = orjson.loads(problem.body())
    assert {"type", "title", "status", "detail", "code", "name", "message"} <= body.keys()
    assert body["name"] == body["title"]
    assert body["message"] == body["detail"] == problem.detail
    assert body["status"] == problem.status
