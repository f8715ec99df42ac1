"""Attribute validation: jsonschema-rs (used) against jsonschema and fastjsonschema.

    .venv/bin/pip install -e '.[bench]' && PYTHONPATH=. .venv/bin/python bench/validators.py

The same event-type schema and attributes for each; time per valid and per invalid instance,
and what each reports for the invalid one (the worker needs every error with its path); kept
in bench/results.json under "validators".
"""

from __future__ import annotations

import timeit
from collections.abc import Callable
from typing import Any

import fastjsonschema
import jsonschema
import jsonschema_rs
from workload import save_results

SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["store_id", "lane", "total", "items"],
    "properties": {
        "store_id": {"type": "string", "pattern": "^S[0-9]+$"},
        "lane": {"type": "integer", "minimum": 1, "maximum": 64},
        "total": {"type": "number", "minimum": 0},
        "at": {"type": "string", "format": "date-time"},
        "items": {
            "type": "array",
            "maxItems": 50,
            "items": {
                "type": "object",
                "required": ["sku", "qty"],
                "properties": {"sku": {"type": "string"}, "qty": {"type": "integer"}},
            },
        },
    },
}
VALID = {
    "store_id": "S042",
    "lane": 3,
    "total": 12.5,
    "at": "2024-06-01T12:00:00Z",
    "items": [{"sku": f"sku-{n}", "qty": n} for n in range(5)],
}
INVALID = {**VALID, "lane": 0, "store_id": "x", "items": [{"sku": 1}]}
N = 20_000


def main() -> None:
    rs = jsonschema_rs.validator_for(SCHEMA, validate_formats=True)
    py = jsonschema.Draft202012Validator(SCHEMA, format_checker=jsonschema.FormatChecker())
    fast = fastjsonschema.compile(SCHEMA)

    def fast_errors(instance: Any) -> list[str]:
        try:
            fast(instance)
        except fastjsonschema.JsonSchemaValueException as exc:
            return [f"{exc.path}: {exc.message}"]
        return []

    runs: dict[str, tuple[Callable[[Any], Any], Callable[[Any], list[str]]]] = {
        "jsonschema-rs": (
            lambda i: rs.is_valid(i) or list(rs.iter_errors(i)),
            lambda i: [f"{list(e.instance_path)}: {e.message}" for e in rs.iter_errors(i)],
        ),
        "jsonschema": (
            lambda i: list(py.iter_errors(i)),
            lambda i: [f"{list(e.absolute_path)}: {e.message}" for e in py.iter_errors(i)],
        ),
        "fastjsonschema": (fast_errors, fast_errors),
    }
    print(f"{'library':<16} {'valid µs':>9} {'invalid µs':>11}  errors for the invalid one")
    found = {}
    for name, (check, report) in runs.items():
        valid, invalid = _micros(check, VALID), _micros(check, INVALID)
        print(
            f"{name:<16} {valid:>9.2f} {invalid:>11.2f}  {len(report(INVALID))}: {report(INVALID)}"
        )
        found[name] = {"valid_us": round(valid, 2), "invalid_us": round(invalid, 2)}
        found[name]["errors_for_the_invalid_one"] = len(report(INVALID))
    save_results("validators", {"calls": N, "libraries": found})


def _micros(check: Any, instance: Any) -> float:
    return timeit.timeit(lambda: check(instance), number=N) / N * 1e6


if __name__ == "__main__":
    main()
