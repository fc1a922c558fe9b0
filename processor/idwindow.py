"""The delivery ids one raw partition has seen within a window, in bounded memory. No I/O.

The worker drops a provider's retry when its delivery id is remembered here. A dict
costs over 100 bytes an id, so ids live as a small log-structured merge tree: a dict
for the newest ids, frozen into sorted numpy segments of 16 bytes an id (the id hash,
and its fingerprint and second packed in one uint64), merged while neighbours are of
a like size so that O(log n) segments are searched per batch with `np.searchsorted`.
Segments are searched newest first: the latest write of an id wins.

Expiry cuts only the oldest end (whole segments once their newest id has expired, or
a rewrite of the oldest one), so an expired write never uncovers an older one. Merges
too big for the event loop wait for `compact`, which the caller runs in a thread:
numpy sorts and copies without the GIL, and the result is swapped in under a lock.
"""

from __future__ import annotations

import hashlib
import math
import sys
import threading
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

__all__ = ["IdWindow", "fingerprint", "id_hash"]

_U64 = npt.NDArray[np.uint64]

# A packed value is fingerprint << 32 | seen_at, both uint32.
_LOW32: Final = 0xFFFF_FFFF
# Neighbours merge while the older is at most this many times the newer, so sizes at
# least halve from oldest to newest: about log2(ids / memtable_ids) segments.
_MERGE_RATIO: Final = 2
# The oldest segment is rewritten without its expired ids once about this share of
# it has expired: at most about a quarter of it waits, and it is not rewritten often.
_EXPIRED_SHARE: Final = 0.25
# What one memtable key or value costs as a Python int (64 bits need 36 bytes).
_INT_BYTES: Final = sys.getsizeof(1 << 63)


def id_hash(delivery_id: str) -> int:
    """A stable 64-bit hash of a delivery id, never 0: blake2b, little-endian."""
    digest = hashlib.blake2b(delivery_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") or 1


def fingerprint(value: bytes) -> int:
    """A 32-bit fingerprint of a record's bytes: it only tells apart two payloads of an id."""
    return zlib.crc32(value)


@dataclass(frozen=True, slots=True, eq=False)  # eq=False: told apart by identity
class _Segment:
    """Frozen writes: unique sorted keys, their packed values, the range of their times."""

    keys: _U64
    values: _U64
    oldest: int
    newest: int

    @property
    def size(self) -> int:
        return len(self.keys)


def _frozen(keys: _U64, values: _U64) -> _Segment | None:
    """A segment of sorted unique keys and their values; None when there are none."""
    if not len(keys):
        return None
    seconds = values & _LOW32
    return _Segment(keys, values, int(seconds.min()), int(seconds.max()))


def _segment(keys: _U64, values: _U64, cutoff: int | None) -> tuple[_Segment | None, int]:
    """Writes in write order as a segment, the last write of a key winning, without the
    ids seen before `cutoff`; and how many ids that left out as expired."""
    if not len(keys):
        return None, 0
    order = np.argsort(keys, kind="stable")  # timsort: runs already sorted merge in linear time
    keys, values = keys[order], values[order]
    keep = np.empty(len(keys), dtype=np.bool_)
    np.not_equal(keys[1:], keys[:-1], out=keep[:-1])
    keep[-1] = True
    expired = 0
    if cutoff is not None:
        live = (values & _LOW32) >= cutoff
        expired = int(np.count_nonzero(keep & ~live))
        keep &= live
    return _frozen(keys[keep], values[keep]), expired


def _rewritten(run: tuple[_Segment, ...], cutoff: int | None) -> tuple[_Segment | None, int]:
    """A run of neighbouring segments as one, oldest first; the ids it expired."""
    if len(run) == 1:
        (segment,) = run
        if cutoff is None:
            return segment, 0
        live = (segment.values & _LOW32) >= cutoff  # sorted keys stay sorted: no sort
        kept = _frozen(segment.keys[live], segment.values[live])
        return kept, segment.size - (kept.size if kept else 0)
    keys = np.concatenate([segment.keys for segment in run])
    values = np.concatenate([segment.values for segment in run])
    return _segment(keys, values, cutoff)


def _next_job(segments: tuple[_Segment, ...], cutoff: int | None, limit: float) -> slice | None:
    """The neighbouring segments to rewrite as one next, of at most `limit` ids in all."""
    if cutoff is not None and segments:
        oldest = segments[0]
        # Times in a segment spread about evenly: estimate its expired share from them.
        share = (cutoff - oldest.oldest) / (oldest.newest - oldest.oldest + 1)
        if oldest.size <= limit and share >= _EXPIRED_SHARE:
            return slice(0, 1)
    for index in range(len(segments) - 1, 0, -1):
        older, newer = segments[index - 1].size, segments[index].size
        if older <= _MERGE_RATIO * newer and older + newer <= limit:
            return slice(index - 1, index + 1)
    return None


class IdWindow:
    """The delivery ids one raw partition has seen within the last `window_s` seconds.

    Not thread-safe, except that `compact`, and `restore` of a window nothing else
    uses yet, may run in another thread (`asyncio.to_thread`) meanwhile.
    """

    def __init__(
        self,
        *,
        window_s: float,
        memtable_ids: int = 65_536,  # a freeze sorts this many ids: a few milliseconds
        inline_merge_ids: int = 1_048_576,  # merges up to here run inline: about 20 ms
    ) -> None:
        if window_s <= 0 or memtable_ids < 1 or inline_merge_ids < 1:
            raise ValueError("window_s, memtable_ids and inline_merge_ids must be positive")
        self._window_s = window_s
        self._memtable_ids = memtable_ids
        self._inline_merge_ids = inline_merge_ids
        self._memtable: dict[int, int] = {}
        self._memtable_oldest = _LOW32
        self._segments: tuple[_Segment, ...] = ()  # oldest first; replaced, never mutated
        self._swap = threading.Lock()  # held while self._segments is replaced
        self._compacting = threading.Lock()

    def lookup_many(self, id_hashes: Sequence[int], now: float) -> list[int | None]:
        """For each id hash, the fingerprint remembered for it if it was seen at or after
        now - window_s, else None."""
        cutoff = self._cutoff(now)
        memtable = self._memtable
        found = [memtable.get(key) for key in id_hashes]
        segments = self._segments
        if segments and found:
            queries = np.array(id_hashes, dtype=np.uint64)
            order = np.argsort(queries)  # sorted queries search about twice as fast
            queries = queries[order]
            hit = np.zeros(len(queries), dtype=np.bool_)
            values = np.zeros(len(queries), dtype=np.uint64)
            for segment in reversed(segments):  # newest first: the latest write wins
                at = np.searchsorted(segment.keys, queries)
                np.minimum(at, segment.size - 1, out=at)
                new = (segment.keys[at] == queries) & ~hit
                values[new] = segment.values[at[new]]
                hit |= new
            for index, value in zip(order[hit].tolist(), values[hit].tolist(), strict=True):
                if found[index] is None:  # the memtable holds newer writes
                    found[index] = value
        return [None if v is None or v & _LOW32 < cutoff else v >> 32 for v in found]

    def remember(
        self, id_hashes: Sequence[int], fingerprints: Sequence[int], seen_at: float
    ) -> None:
        """Remember these ids as seen at `seen_at` (Unix seconds); a remembered id takes
        the new fingerprint and time."""
        second = int(seen_at)
        if len(id_hashes) != len(fingerprints) or not 0 <= second <= _LOW32:
            raise ValueError("one fingerprint per id, and seen_at within uint32 seconds")
        if fingerprints and (min(fingerprints) < 0 or max(fingerprints) > _LOW32):
            raise ValueError("fingerprints are 32-bit unsigned")
        self._memtable.update(
            zip(id_hashes, [fp << 32 | second for fp in fingerprints], strict=True)
        )
        self._memtable_oldest = min(self._memtable_oldest, second)
        if len(self._memtable) >= self._memtable_ids:
            self._freeze()
            self._settle(None, self._inline_merge_ids)

    def restore(self, id_hashes: bytes, fingerprints: bytes, seen_at: bytes) -> None:
        """Bulk load from a changelog: little-endian packed uint64 id hashes, uint32
        fingerprints, uint32 seen_at seconds, in changelog order (a later entry for the
        same id wins). Its entries are newer than those remembered before it.

        It sorts: a million ids take about 0.2 s, so run a big one in a thread."""
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
        segment, _ = _segment(keys, fps.astype(np.uint64) << 32 | seconds, None)
        if segment is not None:
            with self._swap:
                self._segments = (*self._segments, segment)
        self._settle(None, self._inline_merge_ids)

    def evict(self, now: float) -> int:
        """Forget ids seen before now - window_s, cheaply; returns how many were dropped.

        Lazily: whole oldest segments, and the oldest one rewritten once about a
        quarter of it has expired, if it is small enough; `compact` does the rest."""
        cutoff = self._cutoff(now)
        if self._memtable and self._memtable_oldest < cutoff:
            self._freeze()  # a quiet partition's memtable would never fill
        with self._swap:
            segments = self._segments
            expired = 0
            while expired < len(segments) and segments[expired].newest < cutoff:
                expired += 1
            self._segments = segments[expired:]
        dropped = sum(segment.size for segment in segments[:expired])
        return dropped + self._settle(cutoff, self._inline_merge_ids)

    def needs_compaction(self, now: float) -> bool:
        """Whether `compact` has work: a merge or rewrite too big to run inline."""
        return _next_job(self._segments, self._cutoff(now), math.inf) is not None

    def compact(self, now: float) -> int:
        """Every merge and rewrite due, however big; returns how many expired ids it dropped.

        Meant for `await asyncio.to_thread(window.compact, now)`: lookups, remember and
        evict go on meanwhile. A second call while one runs returns 0 at once."""
        if not self._compacting.acquire(blocking=False):
            return 0
        try:
            return self._settle(self._cutoff(now), math.inf)
        finally:
            self._compacting.release()

    def __len__(self) -> int:
        """Ids remembered; expired ones, and an id's older writes, may count until dropped."""
        return len(self._memtable) + sum(segment.size for segment in self._segments)

    @property
    def nbytes(self) -> int:
        """About the memory this store holds: its arrays, its dict and the dict's ints."""
        arrays = sum(s.keys.nbytes + s.values.nbytes for s in self._segments)
        return arrays + sys.getsizeof(self._memtable) + 2 * _INT_BYTES * len(self._memtable)

    def _cutoff(self, now: float) -> int:
        """The first second still within the window at `now`."""
        return max(0, math.ceil(now - self._window_s))

    def _freeze(self) -> None:
        memtable, self._memtable, self._memtable_oldest = self._memtable, {}, _LOW32
        keys = np.fromiter(memtable.keys(), dtype=np.uint64, count=len(memtable))
        values = np.fromiter(memtable.values(), dtype=np.uint64, count=len(memtable))
        order = np.argsort(keys)  # a dict's keys are unique: any sort will do
        segment = _frozen(keys[order], values[order])
        if segment is not None:
            with self._swap:
                self._segments = (*self._segments, segment)

    def _settle(self, cutoff: int | None, limit: float) -> int:
        """Run the jobs due up to `limit` ids each; returns how many expired ids they dropped."""
        dropped = 0
        while (job := _next_job(segments := self._segments, cutoff, limit)) is not None:
            run = segments[job]
            # Only a run from the oldest segment on may drop expired writes (see above).
            merged, expired = _rewritten(run, cutoff if job.start == 0 else None)
            with self._swap:
                current = self._segments
                if run[0] not in current:
                    continue  # evict or another thread replaced it meanwhile: plan again
                start = current.index(run[0])
                if current[start : start + len(run)] != run:
                    continue
                kept = () if merged is None else (merged,)
                self._segments = (*current[:start], *kept, *current[start + len(run) :])
            dropped += expired
        return dropped
