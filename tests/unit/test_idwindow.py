"""The ids a partition has seen: found while within the window, the latest write winning.

Small `memtable_ids` and `merge_step_ids` make a handful of ids span segments and
merges, so every path runs in milliseconds; `no_merges` holds segments apart.
"""

from __future__ import annotations

import itertools
import struct
import sys
from collections.abc import Callable

import pytest

from processor.dedup import idwindow
from processor.dedup.idwindow import IdWindow, fingerprint, id_hash

WINDOW = 100.0
T0 = 1_700_000_000
EMPTY_DICT = sys.getsizeof({})


def packed(entries: list[tuple[int, int, int]]) -> tuple[bytes, bytes, bytes]:
    """(id hash, fingerprint, seen_at) entries as a changelog hands them to `restore`."""
    count = len(entries)
    return (
        struct.pack(f"<{count}Q", *(key for key, _, _ in entries)),
        struct.pack(f"<{count}I", *(fp for _, fp, _ in entries)),
        struct.pack(f"<{count}I", *(t for _, _, t in entries)),
    )


def segment_sizes(window: IdWindow) -> list[int]:
    return [segment.size for segment in window._segments]


@pytest.fixture
def no_merges(monkeypatch: pytest.MonkeyPatch) -> Callable[[], None]:
    """Neighbours never alike enough to merge, until the function returned is called."""
    monkeypatch.setattr(idwindow, "_MERGE_RATIO", 0)
    return lambda: monkeypatch.setattr(idwindow, "_MERGE_RATIO", 2)


def test_id_hash_is_pinned_xxh3_64_and_never_zero(monkeypatch: pytest.MonkeyPatch) -> None:
    # Pinned: the changelog stores these, so a change of hash would forget every window.
    assert id_hash("whd_abc123def456") == 7_345_756_199_839_119_223
    assert id_hash("") == 3_244_421_341_483_603_138

    monkeypatch.setattr(idwindow, "xxh3_64_intdigest", lambda _: 0)
    assert id_hash("whatever") == 1


def test_fingerprint_is_the_low_32_bits_of_xxh3_64() -> None:
    assert fingerprint(b"hello") == 1_549_982_973
    assert fingerprint(b"") == 3_244_421_341_483_603_138 & 0xFFFFFFFF


def test_unknown_ids_are_none_with_or_without_segments() -> None:
    window = IdWindow(window_s=WINDOW, memtable_ids=2)
    assert window.lookup_many([1, 2], T0) == [None, None]

    window.remember([1, 2, 3], [10, 20, 30], T0)

    assert window.lookup_many([4, 2**64 - 1, 0, 2], T0) == [None, None, None, 20]


def test_remembered_ids_come_back_with_their_fingerprint_from_memtable_and_segments() -> None:
    window = IdWindow(window_s=WINDOW, memtable_ids=3)
    window.remember([5, 7, 9], [50, 70, 2**32 - 1], T0)  # frozen: a segment
    window.remember([11], [0], T0)  # stays in the memtable

    assert segment_sizes(window) == [3]
    assert window.lookup_many([9, 11, 7, 5, 6], T0 + 1) == [2**32 - 1, 0, 70, 50, None]
    assert len(window) == 4


@pytest.mark.parametrize("memtable_ids", [1, 1000], ids=["segment", "memtable"])
def test_an_id_older_than_the_window_is_none_before_any_evict(memtable_ids: int) -> None:
    window = IdWindow(window_s=WINDOW, memtable_ids=memtable_ids)
    window.remember([1], [10], T0)

    assert window.lookup_many([1], T0 + WINDOW) == [10]  # seen at exactly now - window_s
    assert window.lookup_many([1], T0 + WINDOW + 0.5) == [None]
    assert len(window) == 1


def test_seen_at_is_kept_to_the_second() -> None:
    window = IdWindow(window_s=WINDOW)
    window.remember([1], [10], T0 + 0.9)

    assert window.lookup_many([1], T0 + WINDOW + 0.5) == [None]


def test_a_later_remember_overrides_an_earlier_one_within_the_memtable() -> None:
    window = IdWindow(window_s=WINDOW)
    window.remember([1, 2], [10, 20], T0)
    window.remember([1], [11], T0 + 50)

    assert window.lookup_many([1, 2], T0 + 120) == [11, None]


def test_a_later_remember_overrides_one_already_in_a_segment() -> None:
    window = IdWindow(window_s=WINDOW, memtable_ids=2)
    window.remember([1, 2], [10, 20], T0)  # a segment
    window.remember([1, 3], [11, 30], T0 + 1)  # another, merged with it
    window.remember([1], [12], T0 + 2)  # the memtable

    assert segment_sizes(window) == [3]
    assert window.lookup_many([1, 2, 3], T0 + 3) == [12, 20, 30]
    window.remember([4], [40], T0 + 3)  # frozen: 1 -> 12 in a segment too
    assert window.lookup_many([1], T0 + 3) == [12]


def test_the_latest_write_wins_even_when_its_time_is_older() -> None:
    window = IdWindow(window_s=WINDOW, memtable_ids=1)
    window.remember([1], [10], T0 + 50)
    window.remember([1], [11], T0)

    assert window.lookup_many([1], T0 + 120) == [None]


def test_a_newer_segment_wins_over_an_older_one(no_merges: Callable[[], None]) -> None:
    window = IdWindow(window_s=WINDOW, memtable_ids=2)
    window.remember([1, 2], [10, 20], T0)
    window.remember([2, 3], [21, 30], T0 + 1)

    assert segment_sizes(window) == [2, 2]
    assert window.lookup_many([1, 2, 3], T0 + 2) == [10, 21, 30]


def test_merges_keep_the_latest_write_of_each_id() -> None:
    window = IdWindow(window_s=WINDOW, memtable_ids=2)
    window.remember([1, 2], [10, 20], T0)
    window.remember([2, 3], [21, 30], T0 + 1)  # merged with the first: 3 ids

    assert segment_sizes(window) == [3]
    assert window.lookup_many([1, 2, 3], T0 + 2) == [10, 21, 30]


def test_restore_keeps_the_later_entry_of_an_id() -> None:
    window = IdWindow(window_s=WINDOW)
    window.restore(*packed([(1, 10, T0), (2, 20, T0), (1, 11, T0 - 5), (3, 30, T0)]))

    assert window.lookup_many([1, 2, 3, 4], T0 + 96) == [None, 20, 30, None]
    assert window.lookup_many([1], T0 + 95) == [11]
    assert len(window) == 3


def test_a_remember_after_restore_overrides_it_and_a_restore_after_remember_wins() -> None:
    window = IdWindow(window_s=WINDOW)
    window.remember([1, 2], [10, 20], T0)
    window.restore(*packed([(2, 21, T0), (3, 30, T0)]))
    window.remember([3], [31], T0 + 1)

    assert window.lookup_many([1, 2, 3], T0 + 2) == [10, 21, 31]


def test_restore_in_chunks_lets_the_later_chunk_win() -> None:
    window = IdWindow(window_s=WINDOW)
    window.restore(*packed([(1, 10, T0), (2, 20, T0)]))
    window.restore(*packed([(1, 11, T0)]))  # a segment, merged with the first

    assert segment_sizes(window) == [2]
    assert window.lookup_many([1, 2], T0) == [11, 20]


def test_restore_refuses_columns_of_different_lengths() -> None:
    keys, fps, times = packed([(1, 10, T0), (2, 20, T0)])

    with pytest.raises(ValueError, match="2 id hashes, 1 fingerprints and 2 times"):
        IdWindow(window_s=WINDOW).restore(keys, fps[:4], times)


@pytest.mark.parametrize(
    ("fingerprints", "seen_at"),
    [([2**32], T0), ([-1], T0), ([1], -1), ([1], 2**32), ([1, 2], T0)],
    ids=["fingerprint-too-big", "fingerprint-negative", "before-1970", "after-2106", "count"],
)
def test_remember_refuses_what_does_not_fit_32_bits(fingerprints: list[int], seen_at: int) -> None:
    window = IdWindow(window_s=WINDOW)

    with pytest.raises(ValueError, match="a uint32 fingerprint per id and uint32 seconds"):
        window.remember([1], fingerprints, seen_at)

    assert len(window) == 0


def test_evict_drops_whole_expired_segments_and_len_and_nbytes_shrink(
    no_merges: Callable[[], None],
) -> None:
    window = IdWindow(window_s=WINDOW, memtable_ids=4)
    window.remember([1, 2, 3, 4], [10, 20, 30, 40], T0)
    window.remember([5, 6, 7, 8], [50, 60, 70, 80], T0 + 10)
    directory = 3 * 4  # the starts of 2 buckets and the end, as uint32
    assert (len(window), window.nbytes) == (8, 2 * (4 * 16 + directory) + EMPTY_DICT)

    assert window.evict(T0 + WINDOW + 5) == 4

    assert (len(window), window.nbytes) == (4, 4 * 16 + directory + EMPTY_DICT)
    assert window.lookup_many([1, 4, 5, 8], T0 + WINDOW + 5) == [None, None, 50, 80]
    assert window.evict(T0 + WINDOW + 5) == 0


def test_evict_rewrites_the_oldest_segment_without_exactly_its_expired_ids() -> None:
    window = IdWindow(window_s=WINDOW, memtable_ids=4)
    for second, key in enumerate([1, 2, 3, 4]):
        window.remember([key], [key * 10], T0 + second)

    assert window.evict(T0 + WINDOW + 2) == 2

    assert len(window) == 2
    assert window.lookup_many([1, 2, 3, 4], T0 + WINDOW + 2) == [None, None, 30, 40]


def test_evict_leaves_a_segment_alone_until_a_quarter_of_it_has_expired() -> None:
    window = IdWindow(window_s=WINDOW, memtable_ids=8)
    for second in range(8):
        window.remember([second + 1], [1], T0 + second)

    assert window.evict(T0 + WINDOW + 1) == 0  # 1 of 8 expired
    assert len(window) == 8
    assert window.evict(T0 + WINDOW + 2) == 2


def test_evict_freezes_a_quiet_memtable_once_it_holds_an_expired_id() -> None:
    window = IdWindow(window_s=WINDOW)
    window.remember([1, 2], [10, 20], T0)
    assert window.evict(T0 + WINDOW) == 0

    assert window.evict(T0 + WINDOW + 1) == 2

    assert (len(window), window.lookup_many([1], T0)) == (0, [None])


def test_an_expired_later_write_never_uncovers_an_earlier_one(
    no_merges: Callable[[], None],
) -> None:
    window = IdWindow(window_s=WINDOW, memtable_ids=1)
    window.remember([1], [10], T0 + 50)  # the oldest segment
    window.remember([1], [11], T0)  # newer write, older time
    now = T0 + WINDOW + 10

    assert window.evict(now) == 0  # the newer segment is not the oldest
    assert window.lookup_many([1], now) == [None]
    no_merges()
    assert window.evict(now) == 1  # merged: only the latest write, expired, dropped

    assert (len(window), window.lookup_many([1], now)) == (0, [None])


def test_a_merge_off_the_oldest_segment_keeps_an_expired_write_hiding_an_older_one(
    no_merges: Callable[[], None],
) -> None:
    window = IdWindow(window_s=WINDOW)
    window.restore(*packed([(1, 10, T0 + 50)] + [(100 + i, 0, T0 + 50) for i in range(9)]))
    window.restore(*packed([(2, 20, T0 + 50), (3, 30, T0 + 50)]))
    window.restore(*packed([(1, 11, T0), (4, 40, T0 + 50)]))  # id 1 again, an older time
    no_merges()

    assert window.evict(T0 + 120) == 0  # merges the two newer segments only

    assert segment_sizes(window) == [10, 4]
    assert window.lookup_many([1, 2, 4], T0 + 120) == [None, 20, 40]


def test_lookups_find_every_id_across_many_segments(no_merges: Callable[[], None]) -> None:
    window = IdWindow(window_s=WINDOW, memtable_ids=8)
    for batch in range(50):
        keys = [batch * 1000 + i for i in range(8)]
        window.remember(keys, [batch * 8 + i for i in range(8)], T0 + batch)

    assert segment_sizes(window) == [8] * 50
    queries = [batch * 1000 + i for batch in range(50) for i in range(9)]
    expected = [batch * 8 + i if i < 8 else None for batch in range(50) for i in range(9)]
    assert window.lookup_many(queries, T0 + 60) == expected


@pytest.mark.parametrize("top", [0, 2**63, 2**64 - 2**20])
def test_lookups_find_ids_whose_hashes_share_their_top_bits(top: int) -> None:
    window = IdWindow(window_s=WINDOW, memtable_ids=40)
    keys = [top + 2 * i for i in range(32)] + [2**64 - 1 - i for i in range(8)]
    window.remember(keys, list(range(40)), T0)

    assert segment_sizes(window) == [40]
    assert window._segments[0].steps == 6  # 32 keys in one bucket of the directory
    queries = keys + [top + 2 * i + 1 for i in range(32)] + [2**64 - 9]
    assert window.lookup_many(queries, T0) == list(range(40)) + [None] * 33


def test_merges_keep_segments_few_and_shrinking_from_oldest_to_newest() -> None:
    window = IdWindow(window_s=WINDOW, memtable_ids=4)
    for batch in range(100):
        window.remember([batch * 4 + i for i in range(4)], [batch] * 4, T0)

    sizes = segment_sizes(window)
    assert sizes == [356, 32, 12]
    assert all(older > 2 * newer for older, newer in itertools.pairwise(sizes))
    assert window.lookup_many([0, 399, 400], T0) == [0, 99, None]


def test_a_merge_goes_a_slice_of_keys_a_call_while_lookups_find_everything(
    no_merges: Callable[[], None],
) -> None:
    window = IdWindow(window_s=WINDOW, memtable_ids=8, merge_step_ids=2)
    older = {2 * i: i for i in range(8)}  # 0, 2, ..., 14
    newer = {9 + i: 10 + i for i in range(8)}  # 9 to 16: 10, 12 and 14 written again
    window.remember(list(older), list(older.values()), T0)
    window.remember(list(newer), list(newer.values()), T0)
    no_merges()
    latest = older | newer

    sizes, merged = [], []
    for _ in range(6):
        window.remember([], [], T0)  # adds nothing: a step's worth of merging
        sizes.append(segment_sizes(window))
        merged.append(window._merge.done if window._merge else None)
        assert window.lookup_many(list(range(18)), T0) == [latest.get(k) for k in range(18)]

    # Slices end at a key of the older segment: 4, 8, 12, then all that is left.
    assert merged == [[2, 0], [4, 0], [6, 3], None, None, None]
    assert sizes == [[8, 8]] * 3 + [[13]] * 3


def test_evict_rewrites_a_mostly_expired_oldest_segment_a_slice_a_call() -> None:
    window = IdWindow(window_s=WINDOW, memtable_ids=8, merge_step_ids=2)
    for second in range(8):
        window.remember([second + 1], [second], T0 + second)
    now = T0 + WINDOW + 4  # ids 1 to 4 expired

    assert [window.evict(now) for _ in range(5)] == [0, 0, 0, 4, 0]  # 8 ids, 2 a call

    assert segment_sizes(window) == [4]
    assert window.lookup_many([1, 4, 5, 8], now) == [None, None, 4, 7]


def test_evict_drops_a_merge_under_way_of_a_segment_that_expired_whole(
    no_merges: Callable[[], None],
) -> None:
    window = IdWindow(window_s=WINDOW, memtable_ids=4, merge_step_ids=1)
    window.remember([1, 2, 3, 4], [10, 20, 30, 40], T0)
    window.remember([5, 6, 7, 8], [50, 60, 70, 80], T0 + 50)
    no_merges()
    window.remember([], [], T0 + 50)
    assert window._merge is not None

    assert window.evict(T0 + WINDOW + 1) == 4

    assert window._merge is None  # evict finished the merge
    assert segment_sizes(window) == [4]
    assert window.lookup_many([1, 5, 8], T0 + WINDOW + 1) == [None, 50, 80]


def test_nbytes_counts_a_merge_under_way(no_merges: Callable[[], None]) -> None:
    window = IdWindow(window_s=WINDOW, memtable_ids=4, merge_step_ids=1)
    window.remember([1, 2, 3, 4], [1] * 4, T0)
    window.remember([5, 6, 7, 8], [1] * 4, T0)
    no_merges()
    before = window.nbytes

    window.remember([], [], T0)

    directory = 3 * 4  # 8 ids: the starts of 2 buckets and the end, as uint32
    assert window.nbytes == before + 8 * 16 + directory
