"""The delivery ids one raw partition has seen within a window, in bounded memory. No I/O.

The worker drops a provider's retry when its delivery id is remembered here. A dict
costs over 100 bytes an id, so ids live in a small log-structured merge tree: a dict
for the newest ids, frozen into sorted numpy segments of 17 bytes an id
(`processor.dedup.segments`), merged while neighbours are of a like size, so that
O(log n) segments are searched, newest first (the latest write of an id wins), for a
whole batch at once. A merge goes a slice of keys at a time within the calls that
add ids: no call stalls the event loop, and no thread is needed. Expiry cuts only the
oldest end, so an expired write never uncovers an older write of the same id.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from typing import Final

import numpy as np
from xxhash import xxh3_64_intdigest

from processor.dedup.segments import LOW32, Builder, Merge, Segment, built

__all__ = ["IdWindow", "fingerprint", "id_hash"]

# Neighbours merge while the older is at most this many times the newer, so sizes at
# least halve from oldest to newest: about log2(ids / memtable_ids) segments.
_MERGE_RATIO: Final = 2
# Merge work a call owes per id it adds: each merge of an id at least 1.5 times its
# segment, so an id is merged at most log1.5(ids / memtable_ids) times, 16 at 40M.
_MERGE_DEBT: Final = 16
# The oldest segment is rewritten without its expired ids once about this share of
# it has expired: at most about a quarter of it waits, and it is not rewritten often.
_EXPIRED_SHARE: Final = 0.25
# What one memtable key or value costs as a Python int (64 bits need 36 bytes).
_INT_BYTES: Final = sys.getsizeof(1 << 63)


def id_hash(delivery_id: str) -> int:
    """A stable 64-bit hash of a delivery id, never 0: XXH3-64, a tenth of blake2b's cost
    on the hot path. The changelog keeps these: changing the hash forgets the window."""
    return xxh3_64_intdigest(delivery_id.encode()) or 1


def fingerprint(value: bytes) -> int:
    """A 32-bit fingerprint of a record's bytes: it only tells apart two payloads of an id."""
    return xxh3_64_intdigest(value) & 0xFFFFFFFF


def _next_job(segments: tuple[Segment, ...], cutoff: int | None) -> slice | None:
    """The neighbouring segments to rewrite as one next, if any."""
    if cutoff is not None and segments:
        oldest = segments[0]
        # Times in a segment spread about evenly: estimate its expired share from them.
        if (cutoff - oldest.oldest) / (oldest.newest - oldest.oldest + 1) >= _EXPIRED_SHARE:
            return slice(0, 1)
    for index in range(len(segments) - 1, 0, -1):
        if segments[index - 1].size <= _MERGE_RATIO * segments[index].size:
            return slice(index - 1, index + 1)
    return None


class IdWindow:
    """The delivery ids one raw partition has seen within the last `window_s` seconds.

    Single-threaded: a big `restore` may run in a thread while nothing else uses it."""

    def __init__(
        self,
        *,
        window_s: float,
        memtable_ids: int = 32_768,  # a freeze of this many ids: about 4 ms
        merge_step_ids: int = 32_768,  # keys of the biggest segment a merge step takes: ~2 ms
    ) -> None:
        if window_s <= 0 or memtable_ids < 1 or merge_step_ids < 1:
            raise ValueError("window_s, memtable_ids and merge_step_ids must be positive")
        self._window_s = window_s
        self._memtable_ids = memtable_ids
        self._merge_step_ids = merge_step_ids
        self._memtable: dict[int, int] = {}
        self._memtable_oldest = LOW32
        self._segments: tuple[Segment, ...] = ()  # oldest first
        self._merge: Merge | None = None  # under way; its segments serve lookups meanwhile
        self._expired = 0  # ids merges dropped since evict last said

    def lookup_many(self, id_hashes: Sequence[int], now: float) -> list[int | None]:
        """For each id hash, the fingerprint remembered for it if it was seen at or after
        now - window_s, else None."""
        cutoff = self._cutoff(now)
        memtable = self._memtable
        found = [memtable.get(key) for key in id_hashes]
        if self._segments and found:
            queries = np.array(id_hashes, dtype=np.uint64)
            hit = np.zeros(len(queries), dtype=np.bool_)
            values = np.zeros(len(queries), dtype=np.uint64)
            for segment in reversed(self._segments):  # newest first: the latest write wins
                at, there = segment.search(queries)
                new = there & ~hit
                values[new] = segment.values[at[new]]
                hit |= new
            hits = np.flatnonzero(hit).tolist()
            for index, value in zip(hits, values[hit].tolist(), strict=True):
                if found[index] is None:  # the memtable holds newer writes
                    found[index] = value
        return [None if v is None or v & LOW32 < cutoff else v >> 32 for v in found]

    def remember(
        self, id_hashes: Sequence[int], fingerprints: Sequence[int], seen_at: float
    ) -> None:
        """Remember these ids as seen at `seen_at` (Unix seconds); a remembered id takes
        the new fingerprint and time."""
        second = int(seen_at)
        if not (len(id_hashes) == len(fingerprints) and 0 <= second <= LOW32) or (
            fingerprints and (min(fingerprints) < 0 or max(fingerprints) > LOW32)
        ):
            raise ValueError("remember takes a uint32 fingerprint per id and uint32 seconds")
        self._memtable.update(
            zip(id_hashes, [fp << 32 | second for fp in fingerprints], strict=True)
        )
        if id_hashes:
            self._memtable_oldest = min(self._memtable_oldest, second)
        if len(self._memtable) >= self._memtable_ids:
            self._freeze()
        self._work(_MERGE_DEBT * len(id_hashes), None)

    def restore(self, id_hashes: bytes, fingerprints: bytes, seen_at: bytes) -> None:
        """Bulk load from a changelog: little-endian packed uint64 id hashes, uint32
        fingerprints, uint32 seen_at seconds, in changelog order (a later entry for the
        same id wins). Its entries are newer than those remembered before it.

        It sorts what it is given: restore a changelog a fetch at a time, or run one
        big call in a thread (a million ids take about 0.2 s)."""
        keys = np.frombuffer(id_hashes, dtype="<u8")
        fps = np.frombuffer(fingerprints, dtype="<u4")
        seconds = np.frombuffer(seen_at, dtype="<u4")
        if not len(keys) == len(fps) == len(seconds):
            raise ValueError(
                f"{len(keys)} id hashes, {len(fps)} fingerprints and {len(seconds)} times"
                " to restore: the changelog must give one of each per id"
            )
        if self._memtable:
            self._freeze()
        self._append(built(keys, fps.astype(np.uint64) << 32 | seconds))
        self._work(_MERGE_DEBT * len(keys), None)

    def evict(self, now: float) -> int:
        """Forget ids seen before now - window_s, cheaply; returns how many were dropped.

        Lazily: whole oldest segments, and the oldest one rewritten once about a
        quarter of it has expired, a slice a call (of this call or of the next calls
        that add ids: what those drop is counted here next time)."""
        cutoff = self._cutoff(now)
        if self._memtable and self._memtable_oldest < cutoff:
            self._freeze()  # a quiet partition's memtable would never fill
        segments = self._segments
        gone = next((i for i, s in enumerate(segments) if s.newest >= cutoff), len(segments))
        if self._merge and any(segment in segments[:gone] for segment in self._merge.run):
            self._merge = None  # it merges what is now gone
        self._segments = segments[gone:]
        self._work(0, cutoff)
        dropped, self._expired = self._expired, 0
        return dropped + sum(segment.size for segment in segments[:gone])

    def __len__(self) -> int:
        """Ids remembered; expired ones, and an id's older writes, may count until dropped."""
        return len(self._memtable) + sum(segment.size for segment in self._segments)

    @property
    def nbytes(self) -> int:
        """About the memory this store holds: its arrays (a merge's too, as if filled),
        its dict and the dict's ints."""
        parts: list[Segment | Builder] = [*self._segments]
        parts += [self._merge.builder] if self._merge else []
        held = sum(p.keys.nbytes + p.values.nbytes + p.starts.nbytes for p in parts)
        return held + sys.getsizeof(self._memtable) + 2 * _INT_BYTES * len(self._memtable)

    def _cutoff(self, now: float) -> int:
        """The first second still within the window at `now`."""
        return max(0, math.ceil(now - self._window_s))

    def _freeze(self) -> None:
        memtable, self._memtable, self._memtable_oldest = self._memtable, {}, LOW32
        keys = np.fromiter(memtable.keys(), dtype=np.uint64, count=len(memtable))
        values = np.fromiter(memtable.values(), dtype=np.uint64, count=len(memtable))
        self._append(built(keys, values, unique=True))

    def _append(self, segment: Segment | None) -> None:
        if segment is not None:
            self._segments = (*self._segments, segment)

    def _work(self, owed: int, cutoff: int | None) -> None:
        """Merge `owed` keys, or a step's worth if more: go on with the merge under way,
        or start the next one due."""
        budget = max(owed, self._merge_step_ids)
        while budget > 0:
            if self._merge is None:
                job = _next_job(self._segments, cutoff)
                if job is None:
                    break
                # Only a run from the oldest segment on may drop expired writes: an
                # older write of an id must never outlive a newer one.
                self._merge = Merge(self._segments[job], cutoff if job.start == 0 else None)
            merge = self._merge
            budget -= merge.step(budget)
            if merge.done == [segment.size for segment in merge.run]:
                start = self._segments.index(merge.run[0])
                merged = () if (segment := merge.builder.segment()) is None else (segment,)
                end = start + len(merge.run)
                self._segments = (*self._segments[:start], *merged, *self._segments[end:])
                self._merge, self._expired = None, self._expired + merge.expired
