"""Device ID Templates: `{path}` placeholders in literal text, resolved against attributes.

Interpolation only, never evaluation: a placeholder is a dotted path into `attributes` and
nothing else. `{{` and `}}` are literal braces. Pure.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

MAX_EXTERNAL_ID_CHARS = 255
# JSON writers (ECMAScript's included) switch to exponent notation from 1e21 on.
_PLAIN_INTEGER_LIMIT = 1e21


class TemplateError(ValueError):
    """The template text is malformed or does not fit the event type's schema."""


class Unresolvable(ValueError):  # noqa: N818 - a rejection reason, not a crash
    """The template cannot produce an external id from these attributes."""


@dataclass(frozen=True, slots=True)
class Template:
    """A parsed template: literal strings and placeholder paths, alternating."""

    parts: tuple[str | tuple[str, ...], ...]

    @property
    def paths(self) -> list[tuple[str, ...]]:
        return [part for part in self.parts if isinstance(part, tuple)]


def parse(text: str) -> Template:
    """Parse template text; raise TemplateError if empty, unbalanced or without placeholders."""
    if not text:
        raise TemplateError("template is empty")
    parts: list[str | tuple[str, ...]] = []
    literal: list[str] = []
    i = 0
    while i < len(text):
        i = _step(text, i, literal, parts)
    if literal:
        parts.append("".join(literal))
    template = Template(tuple(parts))
    if not template.paths:
        raise TemplateError("template has no {placeholder}")
    return template


def _step(text: str, i: int, literal: list[str], parts: list[str | tuple[str, ...]]) -> int:
    char, nxt = text[i], text[i + 1 : i + 2]
    if char in "{}" and nxt == char:
        literal.append(char)
        return i + 2
    if char == "}":
        raise TemplateError(f"unbalanced '}}' at position {i}")
    if char != "{":
        literal.append(char)
        return i + 1
    end = text.find("}", i + 1)
    inner = text[i + 1 : end] if end != -1 else ""
    if end == -1 or "{" in inner:
        raise TemplateError(f"unbalanced '{{' at position {i}")
    path = tuple(inner.split("."))
    if not all(segment.strip() for segment in path):
        raise TemplateError(f"empty placeholder path '{{{inner}}}' at position {i}")
    if literal:
        parts.append("".join(literal))
        literal.clear()
    parts.append(path)
    return end + 1


def check_against_schema(template: Template, schema: Mapping[str, Any]) -> None:
    """Every placeholder must name a property that is `required` at each level of the schema."""
    for path in template.paths:
        node: Mapping[str, Any] = schema
        for depth, name in enumerate(path):
            where = ".".join(path[: depth + 1])
            if name not in node.get("required", ()):
                raise TemplateError(f"'{where}' must be listed in the schema's `required`")
            child = node.get("properties", {}).get(name)
            if not isinstance(child, Mapping):
                raise TemplateError(f"'{where}' is not declared in the schema's `properties`")
            node = child


def evaluate(template: Template, attributes: Mapping[str, Any]) -> str:
    """The external id for these attributes; raise Unresolvable with the reason."""
    pieces = [
        part if isinstance(part, str) else _render(part, _lookup(part, attributes))
        for part in template.parts
    ]
    result = "".join(pieces)
    if not 1 <= len(result) <= MAX_EXTERNAL_ID_CHARS:
        raise Unresolvable(f"result has {len(result)} characters, must be 1..255")
    if "\x00" in result:
        raise Unresolvable("result contains the NUL character (U+0000)")
    return result


def _lookup(path: tuple[str, ...], attributes: Mapping[str, Any]) -> Any:
    node: Any = attributes
    for name in path:
        if not isinstance(node, Mapping) or name not in node:
            raise Unresolvable(f"attribute '{'.'.join(path)}' is missing")
        node = node[name]
    return node


def _render(path: tuple[str, ...], value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value.is_integer() and abs(value) < _PLAIN_INTEGER_LIMIT:
            return str(int(value))
        return orjson.dumps(value).decode()
    kind = "null" if value is None else type(value).__name__
    raise Unresolvable(f"attribute '{'.'.join(path)}' is {kind}, not a string, number or boolean")
