"""The event type schema check: no reference leaves the schema, every pattern is linear-time."""

from __future__ import annotations

from typing import Any

import pytest

from ingest_worker.core.event_types import (
    BAD_PATTERN,
    EXTERNAL_REF,
    RECURSIVE_REF,
    UNKNOWN_META_SCHEMA,
    check_schema,
    compile_attributes,
    recursive,
)

ELSEWHERE = "http://127.0.0.1:9/x.json"


def _fields(schema: dict[str, Any]) -> list[tuple[str, str]]:
    return [(e.field, e.message) for e in check_schema(schema)]


@pytest.mark.parametrize(
    ("schema", "field"),
    [
        ({"$ref": ELSEWHERE}, "schema.$ref"),
        ({"properties": {"a": {"$ref": ELSEWHERE}}}, "schema.properties.a.$ref"),
        ({"$id": "http://127.0.0.1:9/b/", "items": {"$ref": "x.json"}}, "schema.items.$ref"),
        ({"$dynamicRef": ELSEWHERE}, "schema.$dynamicRef"),
        ({"$defs": {"e": {"$id": "http://h/e.json", "$ref": "o.json"}}}, "schema.$defs.e.$ref"),
        ({"allOf": [{"$ref": "file:///etc/passwd"}]}, "schema.allOf.0.$ref"),
        ({"$ref": "file:///no/such/file.json"}, "schema.$ref"),
        ({"$ref": "urn:example:thing"}, "schema.$ref"),
    ],
)
def test_external_references_are_refused_where_they_are(schema: dict[str, Any], field: str) -> None:
    """A reference outside the schema is named by its field, with one message whatever the
    target (so nothing about a file or host leaks)."""
    assert _fields(schema) == [(field, EXTERNAL_REF)]


@pytest.mark.parametrize(
    ("schema", "field"),
    [
        ({"$schema": "http://127.0.0.1:9/meta"}, "schema.$schema"),
        ({"$schema": "http://json-schema.org/draft-03/schema#"}, "schema.$schema"),
        ({"$defs": {"e": {"$id": "http://h/e", "$schema": "http://m"}}}, "schema.$defs.e.$schema"),
    ],
)
def test_unknown_meta_schemas_are_refused(schema: dict[str, Any], field: str) -> None:
    """A `$schema` that is not a bundled draft, at the root or in an embedded resource."""
    assert _fields(schema) == [(field, UNKNOWN_META_SCHEMA)]


@pytest.mark.parametrize(
    "uri",
    [
        "http://json-schema.org/draft-04/schema#",
        "http://json-schema.org/draft-06/schema#",
        "http://json-schema.org/draft-07/schema",
        "https://json-schema.org/draft/2019-09/schema",
        "https://json-schema.org/draft/2020-12/schema#",
    ],
)
def test_bundled_drafts_are_accepted(uri: str) -> None:
    """Each draft jsonschema-rs bundles, with or without the trailing '#'."""
    assert _fields({"$schema": uri, "type": "object"}) == []


def test_a_recursive_ref_must_be_the_schema_itself() -> None:
    """`$recursiveRef` (2019-09) takes only "#"; any other value is refused, not ignored."""
    draft = "https://json-schema.org/draft/2019-09/schema"
    assert _fields({"$schema": draft, "$recursiveRef": "#"}) == []
    refused = {"$schema": draft, "items": {"$recursiveRef": ELSEWHERE}}
    assert _fields(refused) == [("schema.items.$recursiveRef", RECURSIVE_REF)]


def test_internal_references_still_resolve() -> None:
    """`#/$defs/...`, an anchor under the schema's own `$id`, and the bundled 2020-12
    meta-schema are all in reach without a fetch."""
    local = {"$defs": {"n": {"type": "integer"}}, "properties": {"a": {"$ref": "#/$defs/n"}}}
    assert _fields(local) == []
    assert not compile_attributes(local).is_valid({"a": "x"})
    own = {"$id": "http://h/s.json", "$defs": {"n": {"type": "string"}}, "$ref": "s.json#/$defs/n"}
    assert _fields(own) == []
    meta = {"$ref": "https://json-schema.org/draft/2020-12/schema"}
    assert _fields(meta) == []
    assert not compile_attributes(meta).is_valid({"type": 5})


def test_references_inside_data_are_not_references() -> None:
    """`$ref` as a value of `const`, `enum`, `default` or `examples` is data."""
    data = {"$ref": ELSEWHERE}
    schema = {"const": data, "enum": [data], "default": data, "examples": [data]}
    assert _fields(schema) == []


def test_a_missing_internal_pointer_is_explained() -> None:
    """An internal reference to nothing is refused, without the external-reference message."""
    [(field, message)] = _fields({"$ref": "#/$defs/missing"})
    assert field == "schema"
    assert "does not exist" in message


@pytest.mark.parametrize(
    ("schema", "field"),
    [
        ({"type": "string", "pattern": "(?<=(a+)+)b"}, "schema.pattern"),
        ({"properties": {"a": {"pattern": "(a)\\1"}}}, "schema.properties.a.pattern"),
        ({"patternProperties": {"(?=x)y": {}}}, "schema.patternProperties.(?=x)y"),
        ({"pattern": "a{1000}{1000}{1000}"}, "schema.pattern"),
        ({"pattern": "[a-"}, "schema.pattern"),
    ],
)
def test_patterns_that_could_backtrack_are_refused(schema: dict[str, Any], field: str) -> None:
    """Lookaround, backreferences, oversized and malformed patterns, wherever they are."""
    assert _fields(schema) == [(field, BAD_PATTERN)]


def test_ordinary_patterns_still_work() -> None:
    """Anchors, classes, counted repetition and Unicode classes compile and match."""
    schema = {
        "type": "object",
        "properties": {"code": {"pattern": "^[a-z]{2,5}\\d$"}, "name": {"pattern": "\\p{L}+"}},
        "patternProperties": {"^x-[a-z]+$": {"type": "string"}},
    }
    assert _fields(schema) == []
    validator = compile_attributes(schema)
    assert validator.is_valid({"code": "abc1", "name": "Zoë", "x-tag": "t"})
    assert not validator.is_valid({"code": "a1"})
    assert not validator.is_valid({"name": "123"})
    assert not validator.is_valid({"x-tag": 1})


def test_a_nested_quantifier_runs_in_linear_time() -> None:
    """`^(a+)+$` against 100,000 characters that almost match returns (a backtracking
    engine would not, in any useful time)."""
    validator = compile_attributes({"type": "string", "pattern": "^(a+)+$"})
    assert not validator.is_valid("a" * 100_000 + "!")
    assert validator.is_valid("a" * 100_000)


def test_a_malformed_id_address_is_refused_not_a_crash() -> None:
    """An `$id` that is no address (`http://[`) gives a 400 detail, never an exception."""
    errors = check_schema({"$id": "http://x/", "properties": {"a": {"$id": "http://["}}})
    assert errors
    assert errors[0].field.startswith("schema")


@pytest.mark.parametrize(
    ("schema", "expected"),
    [
        ({"type": "object"}, False),
        ({"$ref": "#/$defs/a", "$defs": {"a": {"$ref": "#/$defs/b"}, "b": {}}}, False),
        ({"properties": {"x": {"$ref": "#"}}}, True),
        ({"$defs": {"a": {"$ref": "#/$defs/b"}, "b": {"items": {"$ref": "#/$defs/a"}}}}, True),
        ({"$ref": "#anchor"}, True),
    ],
)
def test_reference_cycles_are_found(schema: dict[str, Any], expected: bool) -> None:
    """A schema is recursive when a reference can lead back to itself (anchors count)."""
    assert recursive(schema) is expected
