"""The serving worker's GC setting after start-up (serving.bento_config.settle_gc)."""

from __future__ import annotations

import gc

from serving.bento_config import GC_THRESHOLDS, settle_gc


def test_settle_gc_freezes_start_up_objects_and_collects_young_objects_less_often() -> None:
    before = gc.get_threshold()
    survivor = [[i] for i in range(1_000)]  # start-up state that outlives the collection
    try:
        settle_gc()
        assert gc.get_threshold() == GC_THRESHOLDS
        assert GC_THRESHOLDS[0] > before[0]
        assert gc.get_freeze_count() >= len(survivor)
        # frozen: in the permanent generation, which no collection walks
        assert gc.is_tracked(survivor[0])
        assert not any(o is survivor[0] for o in gc.get_objects(generation=2))
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
