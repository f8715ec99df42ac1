"""The collector's settings once a process has started."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from ingest_worker.core import collector


@pytest.fixture
def restored() -> Iterator[None]:
    before = gc.get_threshold()
    gc.unfreeze()
    yield
    gc.unfreeze()
    gc.set_threshold(*before)


@pytest.mark.usefixtures("restored")
def test_start_up_objects_are_frozen_and_young_collections_are_rarer() -> None:
    _, middle, old = gc.get_threshold()
    assert gc.get_freeze_count() == 0
    collector.settle_after_start()
    assert gc.get_freeze_count() > 0
    assert gc.get_threshold() == (collector.YOUNG_THRESHOLD, middle, old)
