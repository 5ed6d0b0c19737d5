"""The gateway worker's cycle-collector settings (docs/performance.md, third pass)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from gateway.server import GC_THRESHOLD, tune_gc


@pytest.fixture
def restored_gc() -> Iterator[None]:
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


@pytest.mark.usefixtures("restored_gc")
def test_tune_gc_freezes_start_up_objects_and_raises_the_first_threshold() -> None:
    class Cycle:
        def __init__(self) -> None:
            self.me = self

    tune_gc()
    assert gc.get_threshold() == GC_THRESHOLD
    assert GC_THRESHOLD[0] > 700  # CPython's default, which cost 40-95 ms full collections
    frozen = gc.get_freeze_count()
    assert frozen > 1000  # modules, classes, schemas: never walked by a collection again
    # Garbage made after start-up is still collected, and the frozen objects stay frozen.
    Cycle()
    assert gc.collect() >= 1
    assert gc.get_freeze_count() == frozen
