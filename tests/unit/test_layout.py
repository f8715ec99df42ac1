"""The package layout: one package per process around a shared core, imports pointing from the
processes to the core only, and the development stack outside the installed package."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "ingest_worker"


def _imports(folder: Path) -> set[str]:
    """Every module imported (absolute names) by the files under `folder`."""
    found: set[str] = set()
    for path in folder.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                found |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
            elif isinstance(node, ast.Import):
                found |= {a.name for a in node.names}
    return found


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [
        ("core", ("ingest_worker.shim", "ingest_worker.worker", "devstack")),
        ("shim", ("ingest_worker.worker", "devstack")),
        ("worker", ("ingest_worker.shim", "devstack")),
    ],
)
def test_dependencies_point_to_the_core(package: str, forbidden: tuple[str, ...]) -> None:
    """The core imports no process; the shim and the worker never import each other; no
    runtime module imports the development stack."""
    bad = sorted(m for m in _imports(PACKAGE / package) if m.startswith(forbidden))
    assert bad == []


def test_the_installed_package_never_imports_the_dev_stack() -> None:
    """`devstack` (the local Kafka and PostgreSQL launcher) is a development tool only."""
    assert not [m for m in _imports(PACKAGE) if m.startswith("devstack")]
