"""Migration ordering and history checks, without a database."""

from __future__ import annotations

import pytest

from ingest_worker.core.errors import MigrationError
from ingest_worker.core.migrate import Migration, bundled, parse, pending


def test_files_are_ordered_by_version() -> None:
    """Files are applied in version order, whatever order they are listed in."""
    found = parse({"0002_b.sql": "B", "0001_a.sql": "A"})
    assert [(m.version, m.name) for m in found] == [(1, "a"), (2, "b")]


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"0001_a.sql": "", "0003_c.sql": ""}, "without gaps"),
        ({"1_a.sql": ""}, "NNNN_name.sql"),
        ({"0001_A-b.sql": ""}, "NNNN_name.sql"),
    ],
)
def test_bad_file_sets_are_refused(files: dict[str, str], message: str) -> None:
    """Gaps and badly named files are refused before anything touches a database."""
    with pytest.raises(MigrationError, match=message):
        parse(files)


def test_pending_skips_what_was_applied() -> None:
    """Only migrations not yet recorded are pending."""
    available = [Migration(1, "a", "A"), Migration(2, "b", "B")]
    assert pending(available, {1: available[0].sha256}) == [available[1]]
    assert pending(available, {}) == available


def test_edited_or_unknown_history_is_refused() -> None:
    """A changed migration, or one this release does not know, stops the migrator."""
    available = [Migration(1, "a", "A")]
    with pytest.raises(MigrationError, match="edited"):
        pending(available, {1: "0" * 64})
    with pytest.raises(MigrationError, match="unknown"):
        pending(available, {1: available[0].sha256, 2: "x"})


def test_bundled_migrations_load() -> None:
    """The package ships its migrations, numbered from 1."""
    found = bundled()
    assert found[0].version == 1
    assert "CREATE TABLE devices" in found[0].sql
