"""Event type definitions: checked when saved, compiled once per version for the worker. Pure.

Schemas are self-contained: a reference is only ever resolved inside the schema itself (or
to the meta-schemas bundled with jsonschema-rs), never fetched over the network or read
from a file. Patterns use the linear-time `regex` engine, so no pattern can backtrack.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import unquote, urldefrag, urljoin

import jsonschema_rs

from ingest_worker.core import template
from ingest_worker.core.shape import FieldError

DRAFTS = frozenset(
    f"{scheme}://json-schema.org/{draft}/schema"
    for scheme in ("http", "https")
    for draft in ("draft-04", "draft-06", "draft-07", "draft/2019-09", "draft/2020-12")
)
EXTERNAL_REF = (
    "external references are not fetched; refer only to definitions inside the schema "
    "(such as #/$defs/name)"
)
UNKNOWN_META_SCHEMA = (
    "unknown meta-schema; external references are not fetched, so $schema must name draft 4, "
    "6, 7, 2019-09 or 2020-12 (such as https://json-schema.org/draft/2020-12/schema)"
)
RECURSIVE_REF = '$recursiveRef must be "#"; external references are not fetched'
BAD_PATTERN = (
    "not a supported regular expression: patterns are matched in linear time, without "
    "lookaround or backreferences, and within a size limit"
)
_KEYWORDS = frozenset({"$ref", "$dynamicRef", "$recursiveRef", "$schema"})
# Keywords whose values are data, not schemas: a "$ref" inside them is not a reference.
_DATA = frozenset({"const", "enum", "default", "examples"})
_NAMED = frozenset(
    {"properties", "patternProperties", "$defs", "definitions", "dependentSchemas", "dependencies"}
)
_RESOURCE = re.compile(r"Resource '(.*?)' is not present")


def check_definition(definition: dict[str, Any]) -> list[FieldError]:
    """Why an event type cannot be saved: a schema that is not a JSON Schema, or a Device ID
    Template that is malformed or names properties the schema does not require."""
    schema = definition["schema"]
    errors = check_schema(schema)
    text = definition.get("external_device_id_template")
    if text is not None and not errors:
        errors += _check_template(text, schema)
    return errors


def check_schema(schema: dict[str, Any]) -> list[FieldError]:
    """The schema must name a bundled draft (if any), be valid against its meta-schema and
    compile offline: every reference internal, every regex supported."""
    errors = _check_keywords(schema)
    if errors:
        return errors
    try:
        jsonschema_rs.meta.validate(schema)
        compile_attributes(schema)
    except jsonschema_rs.ValidationError as exc:
        return [_schema_error(schema, exc)]
    except (ValueError, jsonschema_rs.ReferencingError) as exc:
        return [FieldError("schema", str(exc).splitlines()[0])]
    return []


def compile_attributes(schema: dict[str, Any]) -> jsonschema_rs.Validator:
    """The validator of an event type's attributes; build once per type version. Nothing is
    ever fetched, and matching a pattern takes linear time."""
    return jsonschema_rs.validator_for(
        schema,
        validate_formats=True,
        offline=True,
        pattern_options=jsonschema_rs.RegexOptions(),
    )


def _check_keywords(schema: dict[str, Any]) -> list[FieldError]:
    """What is refused before jsonschema-rs sees the schema: a `$schema` (the root's or an
    embedded resource's) that is not a bundled draft, a `$recursiveRef` other than "#"."""
    errors = []
    for path, keyword, value, _ in _references(schema):
        if keyword == "$schema" and value.removesuffix("#") not in DRAFTS:
            errors.append(FieldError(_field(path), UNKNOWN_META_SCHEMA, value))
        elif keyword == "$recursiveRef" and value != "#":
            errors.append(FieldError(_field(path), RECURSIVE_REF, value))
    return errors


def _schema_error(schema: dict[str, Any], exc: jsonschema_rs.ValidationError) -> FieldError:
    kind = exc.kind
    if isinstance(kind, jsonschema_rs.ValidationErrorKind.Referencing):
        return _reference_error(schema, exc.message)
    field = _field([str(p) for p in exc.instance_path])
    if isinstance(kind, jsonschema_rs.ValidationErrorKind.Format) and kind.format == "regex":
        return FieldError(field, BAD_PATTERN, exc.instance)
    return FieldError(field, exc.message)


def _reference_error(schema: dict[str, Any], message: str) -> FieldError:
    """A reference that does not resolve inside the schema. An external one (which would
    need a fetch) is located in the schema by its resolved address when possible."""
    found = _RESOURCE.search(message)
    if found is None:
        unknown_meta = "meta-schema" in message
        return FieldError("schema", UNKNOWN_META_SCHEMA if unknown_meta else message)
    target = found.group(1)
    for path, keyword, value, base in _references(schema):
        if keyword != "$schema" and urldefrag(_join(base, value)).url == target:
            return FieldError(_field(path), EXTERNAL_REF, value)
    return FieldError("schema", EXTERNAL_REF, target)


def _references(
    node: Any, path: tuple[str, ...] = (), base: str = "", names: bool = False
) -> Iterator[tuple[list[str], str, str, str]]:
    """Every reference keyword with a string value: (path to it, keyword, value, base URI in
    effect there). Values of data keywords (`const`, `enum`, ...) are not looked into; keys
    of `properties`-like maps are names, not keywords."""
    if isinstance(node, list):
        for index, item in enumerate(node):
            yield from _references(item, (*path, str(index)), base)
        return
    if not isinstance(node, dict):
        return
    own_id = None if names else node.get("$id", node.get("id"))
    if isinstance(own_id, str):
        base = _join(base, own_id)
    for key, value in node.items():
        if not names and isinstance(value, str) and key in _KEYWORDS:
            yield [*path, key], key, value, base
        elif names or key not in _DATA:
            yield from _references(value, (*path, key), base, not names and key in _NAMED)


def _field(path: list[str]) -> str:
    return ".".join(["schema", *path])


def _check_template(text: str, schema: dict[str, Any]) -> list[FieldError]:
    try:
        template.check_against_schema(template.parse(text), schema)
    except template.TemplateError as exc:
        return [FieldError("external_device_id_template", str(exc), text)]
    return []


def _join(base: str, reference: str) -> str:
    """`reference` resolved against `base`; a malformed address (`http://[`) stays as written
    (the compiler then refuses it)."""
    try:
        return urljoin(base, reference)
    except ValueError:
        return reference


def recursive(schema: Any) -> bool:
    """Whether following references can come back to where it started (a reference that is
    not a local JSON pointer counts as one that may). Listing every error of an instance
    can then cost exponentially many passes."""
    refs: list[tuple[tuple[str, ...], tuple[str, ...] | None]] = [
        (tuple(path[:-1]), _pointer(value, base))
        for path, keyword, value, base in _references(schema)
        if keyword != "$schema"
    ]
    targets = [target for _, target in refs]
    if any(target is None for target in targets):
        return True
    reaches = {
        i: [j for j, (inside, _) in enumerate(refs) if inside[: len(t)] == t]
        for i, t in enumerate(targets)
        if t is not None
    }
    return _has_cycle(reaches)


def _pointer(value: str, base: str) -> tuple[str, ...] | None:
    """A `#/...` reference (with no `$id` base in effect) as path parts, else None."""
    if base or not value.startswith("#") or value[1:2] not in ("", "/"):
        return None
    parts = value[2:].split("/") if value != "#" else []
    return tuple(unquote(p).replace("~1", "/").replace("~0", "~") for p in parts)


def _has_cycle(graph: dict[int, list[int]]) -> bool:
    """Depth-first search for a cycle, without recursion."""
    state: dict[int, int] = {}  # 1: on the current path, 2: done
    for start in graph:
        if start in state:
            continue
        stack = [(start, iter(graph[start]))]
        state[start] = 1
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                state[node] = 2
                stack.pop()
            elif state.get(child) == 1:
                return True
            elif state.get(child) is None:
                state[child] = 1
                stack.append((child, iter(graph[child])))
    return False
