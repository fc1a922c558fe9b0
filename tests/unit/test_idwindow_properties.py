"""Over generated histories, the window answers as a dict of each id's latest write would:
whatever was frozen, merged (a slice at a time) or evicted in between."""

from __future__ import annotations

import math
import struct
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from processor.dedup.idwindow import IdWindow
from tests.properties import examples

WINDOW = 100.0
# Few ids, so they are written again; top bits shared and extremes, for the directory.
POOL = [1, 2, 3, 2**32, 2**63 - 1, 2**63, 2**63 + 1, 2**63 + 2, 2**64 - 2, 2**64 - 1]
PROPERTY = settings(max_examples=examples(300), deadline=None, database=None)

writes = st.lists(st.tuples(st.sampled_from(POOL), st.integers(0, 2**32 - 1)), max_size=6)
steps = st.lists(
    st.one_of(
        # seen_at a little before or after the clock: a write may carry an older time
        st.tuples(st.just("remember"), writes, st.integers(-30, 5)),
        st.tuples(st.just("restore"), writes, st.integers(-30, 5)),
        st.tuples(st.just("evict")),
        st.tuples(st.just("idle")),  # a remember of no ids: a step of merging
        st.tuples(st.just("wait"), st.integers(1, 60)),
    ),
    max_size=40,
)


@PROPERTY
@given(steps, st.integers(1, 5), st.integers(1, 4))
def test_lookups_match_the_latest_write_of_each_id(
    history: list[tuple[Any, ...]], memtable_ids: int, merge_step_ids: int
) -> None:
    window = IdWindow(window_s=WINDOW, memtable_ids=memtable_ids, merge_step_ids=merge_step_ids)
    latest: dict[int, tuple[int, int]] = {}
    now = 1_000.0
    for step in history:
        if step[0] == "remember":
            _, pairs, offset = step
            window.remember([k for k, _ in pairs], [fp for _, fp in pairs], now + offset)
            latest.update((k, (fp, int(now + offset))) for k, fp in pairs)
        elif step[0] == "restore":
            _, pairs, offset = step
            second = int(now + offset)
            window.restore(
                struct.pack(f"<{len(pairs)}Q", *(k for k, _ in pairs)),
                struct.pack(f"<{len(pairs)}I", *(fp for _, fp in pairs)),
                struct.pack(f"<{len(pairs)}I", *(second for _ in pairs)),
            )
            latest.update((k, (fp, second)) for k, fp in pairs)
        elif step[0] == "evict":
            window.evict(now)
        elif step[0] == "idle":
            window.remember([], [], now)
        else:
            now += step[1]
        cutoff = math.ceil(now - WINDOW)
        expected = [
            fp if (fp, second) != (-1, -1) and second >= cutoff else None
            for fp, second in (latest.get(k, (-1, -1)) for k in POOL)
        ]
        assert window.lookup_many(POOL, now) == expected
        assert len(window) >= sum(1 for v in expected if v is not None)
