"""The worker's garbage-collector settings: on while it routes, the process's own after."""

from __future__ import annotations

import gc

from processor.worker.collector import THRESHOLDS, tuned_collection


def test_within_young_collections_are_rare_and_what_existed_is_frozen_then_all_is_back() -> None:
    before = gc.get_threshold()
    assert gc.get_freeze_count() == 0
    with tuned_collection():
        assert gc.get_threshold() == THRESHOLDS
        assert gc.get_freeze_count() > 1000  # modules, classes, config...
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0
