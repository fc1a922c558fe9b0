"""The worker's garbage collector: collect young objects far less often, and never scan
what the process made before it started routing.

A worker's hot path makes many short-lived containers (records, headers, futures) and
almost no reference cycles, so CPython's default (a young collection every 700
allocations, a full one every 100 of those) spends CPU scanning objects that reference
counting frees anyway, and each full collection walks every module, class and config
object loaded at start. Raising the first threshold makes young collections rare;
`gc.freeze()` moves what exists at start out of every later collection. Cycles are
still collected, a few thousand allocations late (a few MB at most).
benchmarks/bench_route.py measures it: `worker-alo` against `worker-alo-gc-default`.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator
from typing import Final

__all__ = ["THRESHOLDS", "tuned_collection"]

# Allocations between young collections, and collections between older ones.
THRESHOLDS: Final = (50_000, 20, 10)


@contextlib.contextmanager
def tuned_collection() -> Iterator[None]:
    """Within: THRESHOLDS, and everything alive at entry left out of collections.
    At exit the process's own settings are back."""
    before = gc.get_threshold()
    gc.collect()  # what is garbage now is not frozen with the rest
    gc.freeze()
    gc.set_threshold(*THRESHOLDS)
    try:
        yield
    finally:
        gc.set_threshold(*before)
        gc.unfreeze()
