"""Device ID Templates: parsing rules, schema checks and evaluation, without services."""

from __future__ import annotations

from typing import Any

import pytest

from ingest_worker.core.template import (
    TemplateError,
    Unresolvable,
    check_against_schema,
    evaluate,
    parse,
)

SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["store", "meta"],
    "properties": {
        "store": {"type": "string"},
        "meta": {"type": "object", "required": ["id"], "properties": {"id": {}, "x": {}}},
        "opt": {"type": "string"},
    },
}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("plain", "no {placeholder}"),
        ("{store", "unbalanced '{'"),
        ("store}", "unbalanced '}'"),
        ("{}", "empty placeholder"),
        ("{a..b}", "empty placeholder"),
        ("{a{b}}", "unbalanced '{'"),
        ("{{store}}", "no {placeholder}"),
    ],
)
def test_malformed_templates_are_refused(text: str, message: str) -> None:
    """Empty, unbalanced, or placeholder-free templates do not parse."""
    with pytest.raises(TemplateError, match=message):
        parse(text)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{opt}", "'opt' must be listed"),
        ("{meta.x}", "'meta.x' must be listed"),
        ("{missing}", "'missing' must be listed"),
        ("{store.deeper}", "'store.deeper' must be listed"),
    ],
)
def test_placeholders_must_be_required_at_every_level(text: str, message: str) -> None:
    """Every referenced property is `required` at each level of the schema."""
    with pytest.raises(TemplateError, match=message):
        check_against_schema(parse(text), SCHEMA)


@pytest.mark.parametrize(
    ("text", "attributes", "expected"),
    [
        ("{store}:{meta.id}", {"store": "S1", "meta": {"id": 7}}, "S1:7"),
        ("{v}", {"v": 3.0}, "3"),
        ("{v}", {"v": -0.5}, "-0.5"),
        ("{v}", {"v": 1e21}, "1e+21"),
        ("{v}", {"v": 12345678901234567890}, "12345678901234567890"),
        ("{v}", {"v": True}, "true"),
        ("{v}", {"v": False}, "false"),
        ("{{{v}}}", {"v": "x"}, "{x}"),
        ("pre-{v}-post", {"v": "é"}, "pre-é-post"),
    ],
)
def test_values_are_written_as_json_writes_them(
    text: str, attributes: dict[str, Any], expected: str
) -> None:
    """Strings as they are, numbers as JSON would write them, booleans as true/false."""
    assert evaluate(parse(text), attributes) == expected


@pytest.mark.parametrize(
    ("attributes", "message"),
    [
        ({"v": None}, "is null"),
        ({"v": {"a": 1}}, "is dict"),
        ({"v": [1]}, "is list"),
        ({}, "missing"),
        ({"v": ""}, "0 characters"),
        ({"v": "x" * 256}, "256 characters"),
        ({"v": "a\x00b"}, "NUL"),
    ],
)
def test_unusable_values_are_unresolvable(attributes: dict[str, Any], message: str) -> None:
    """Null, objects, arrays, missing values, NUL and results outside 1..255 are refused."""
    with pytest.raises(Unresolvable, match=message):
        evaluate(parse("{v}"), attributes)


def test_lookup_never_leaves_the_attributes() -> None:
    """A path is looked up in `attributes` only: no attribute access, no evaluation."""
    with pytest.raises(Unresolvable):
        evaluate(parse("{__class__}"), {})
    with pytest.raises(Unresolvable):
        evaluate(parse("{v.upper}"), {"v": "x"})
