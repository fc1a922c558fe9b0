"""The delivery ids one raw partition has seen within a window, in bounded memory. No I/O.

The worker drops a provider's retry when its delivery id is remembered here. A dict
costs over 100 bytes an id, so ids live as a small log-structured merge tree: a dict
for the newest ids, frozen into sorted numpy segments of 17 bytes an id (the id hash;
its fingerprint and second packed in a uint64; a directory by the hash's top bits),
merged while neighbours are of a like size, so that O(log n) segments are searched,
newest first (the latest write of an id wins), for a whole batch at once.

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
_LOW_HALF: Final = 0 if sys.byteorder == "little" else 1  # seen_at's uint32 in a uint64
# Keys per bucket of a segment's directory (4 to 8): under a byte an id, and a
# bucket's keys share a cache line or two.
_KEYS_PER_BUCKET: Final = 8
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
    """Frozen writes: unique sorted keys, their packed values, the range of their times,
    and a directory: `starts[b]` is the first key whose top `64 - shift` bits are b."""

    keys: _U64
    values: _U64
    oldest: int
    newest: int
    starts: npt.NDArray[np.uint32]
    shift: int
    steps: int  # 2**steps is more than the most keys sharing their top bits

    @property
    def size(self) -> int:
        return len(self.keys)

    def search(self, queries: _U64) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.bool_]]:
        """Where each query is or would be among the keys, and whether it is there.

        A binary search within each query's bucket, in step for the whole batch: a few
        gathers of independent loads, 3-4 times faster in a big segment than the ~24
        dependent cache misses of `np.searchsorted` per query."""
        bucket = (queries >> self.shift).view(np.intp)
        at = self.starts[bucket].astype(np.intp)
        end = self.starts[bucket + 1]
        last = self.size - 1
        for power in reversed(range(self.steps)):
            step = 1 << power
            probe = at + (step - 1)
            ahead = probe < end
            np.minimum(probe, last, out=probe)
            ahead &= self.keys[probe] < queries
            np.add(at, step, out=at, where=ahead)
        np.minimum(at, last, out=at)
        return at, self.keys[at] == queries


def _sorted(
    keys: Sequence[_U64], values: Sequence[_U64], *, unique: bool = False
) -> tuple[_U64, _U64]:
    """Runs of writes in write order, sorted by key, each key's writes still in order.

    Each temporary goes as soon as it is used: the peak of a merge bounds the memory."""
    joined = np.concatenate(keys)
    # Timsort merges sorted runs in linear time and keeps writes in order; unique keys
    # need no order kept, and quicksort sorts random ones 2.5 times faster.
    order = np.argsort(joined, kind="quicksort" if unique else "stable")
    joined = joined[order]
    return joined, np.concatenate(values)[order]


def _kept(keys: _U64, values: _U64, cutoff: int | None) -> tuple[_Segment | None, int]:
    """Writes sorted by key as a segment: the last write of each key, unless it was seen
    before `cutoff`; and how many ids that left out as expired."""
    if not len(keys):
        return None, 0
    keep = np.empty(len(keys), dtype=np.bool_)
    np.not_equal(keys[1:], keys[:-1], out=keep[:-1])
    keep[-1] = True
    latest = int(np.count_nonzero(keep))
    if cutoff is not None:
        keep &= values.view(np.uint32)[_LOW_HALF::2] >= cutoff
    if not keep.all():
        keys, values = keys[keep], values[keep]
    expired = latest - len(keys)
    if not len(keys):
        return None, expired
    seconds = values.view(np.uint32)[_LOW_HALF::2]  # a view: no copy of millions
    bits = max(1, (len(keys) // _KEYS_PER_BUCKET).bit_length())
    shift = 64 - bits
    starts = np.empty((1 << bits) + 1, dtype=np.uint32)
    starts[:-1] = np.searchsorted(keys, np.arange(1 << bits, dtype=np.uint64) << shift)
    starts[-1] = len(keys)
    steps = int(np.diff(starts).max()).bit_length()
    segment = _Segment(keys, values, int(seconds.min()), int(seconds.max()), starts, shift, steps)
    return segment, expired


def _rewritten(run: tuple[_Segment, ...], cutoff: int | None) -> tuple[_Segment | None, int]:
    """A run of neighbouring segments as one, oldest first; the ids it expired."""
    if len(run) == 1:  # already sorted and unique: no sort
        return _kept(run[0].keys, run[0].values, cutoff)
    return _kept(*_sorted([s.keys for s in run], [s.values for s in run]), cutoff)


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
        memtable_ids: int = 65_536,  # a freeze of this many ids: about 10 ms
        inline_merge_ids: int = 524_288,  # merges up to here run inline: about 12 ms
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
            hit = np.zeros(len(queries), dtype=np.bool_)
            values = np.zeros(len(queries), dtype=np.uint64)
            for segment in reversed(segments):  # newest first: the latest write wins
                at, there = segment.search(queries)
                new = there & ~hit
                values[new] = segment.values[at[new]]
                hit |= new
            for index, value in zip(
                np.flatnonzero(hit).tolist(), values[hit].tolist(), strict=True
            ):
                if found[index] is None:  # the memtable holds newer writes
                    found[index] = value
        return [None if v is None or v & _LOW32 < cutoff else v >> 32 for v in found]

    def remember(
        self, id_hashes: Sequence[int], fingerprints: Sequence[int], seen_at: float
    ) -> None:
        """Remember these ids as seen at `seen_at` (Unix seconds); a remembered id takes
        the new fingerprint and time."""
        second = int(seen_at)
        if not (len(id_hashes) == len(fingerprints) and 0 <= second <= _LOW32) or (
            fingerprints and (min(fingerprints) < 0 or max(fingerprints) > _LOW32)
        ):
            raise ValueError("remember takes a uint32 fingerprint per id and uint32 seconds")
        self._memtable.update(
            zip(id_hashes, [fp << 32 | second for fp in fingerprints], strict=True)
        )
        self._memtable_oldest = min(self._memtable_oldest, second)
        if len(self._memtable) >= self._memtable_ids:
            self._freeze()
        self._settle(None, self._inline_merge_ids, jobs=1)

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
        self._append(keys, fps.astype(np.uint64) << 32 | seconds)
        self._settle(None, self._inline_merge_ids, jobs=1)

    def evict(self, now: float) -> int:
        """Forget ids seen before now - window_s, cheaply; returns how many were dropped.

        Lazily: whole oldest segments, and the oldest one rewritten once about a
        quarter of it has expired, if it is small enough; `compact` does the rest."""
        cutoff = self._cutoff(now)
        if self._memtable and self._memtable_oldest < cutoff:
            self._freeze()  # a quiet partition's memtable would never fill
        with self._swap:
            segments = self._segments
            gone = next((i for i, s in enumerate(segments) if s.newest >= cutoff), len(segments))
            self._segments = segments[gone:]
        dropped = sum(segment.size for segment in segments[:gone])
        return dropped + self._settle(cutoff, self._inline_merge_ids, jobs=1)

    def needs_compaction(self, now: float) -> bool:
        """Whether `compact` has work: a merge or rewrite too big to run inline, and
        none that the next calls of remember and evict will run."""
        segments, cutoff = self._segments, self._cutoff(now)
        inline = _next_job(segments, cutoff, self._inline_merge_ids)
        return inline is None and _next_job(segments, cutoff, math.inf) is not None

    def compact(self, now: float) -> int:
        """Every merge and rewrite due, however big; returns how many expired ids it dropped.

        Meant for `await asyncio.to_thread(window.compact, now)`: lookups, remember and
        evict go on meanwhile. A second call while one runs returns 0 at once."""
        if not self._compacting.acquire(blocking=False):
            return 0
        try:
            return self._settle(self._cutoff(now), math.inf, jobs=math.inf)
        finally:
            self._compacting.release()

    def __len__(self) -> int:
        """Ids remembered; expired ones, and an id's older writes, may count until dropped."""
        return len(self._memtable) + sum(segment.size for segment in self._segments)

    @property
    def nbytes(self) -> int:
        """About the memory this store holds: its arrays, its dict and the dict's ints."""
        arrays = sum(s.keys.nbytes + s.values.nbytes + s.starts.nbytes for s in self._segments)
        return arrays + sys.getsizeof(self._memtable) + 2 * _INT_BYTES * len(self._memtable)

    def _cutoff(self, now: float) -> int:
        """The first second still within the window at `now`."""
        return max(0, math.ceil(now - self._window_s))

    def _freeze(self) -> None:
        memtable, self._memtable, self._memtable_oldest = self._memtable, {}, _LOW32
        self._append(
            np.fromiter(memtable.keys(), dtype=np.uint64, count=len(memtable)),
            np.fromiter(memtable.values(), dtype=np.uint64, count=len(memtable)),
            unique=True,
        )

    def _append(self, keys: _U64, values: _U64, *, unique: bool = False) -> None:
        """Writes in write order as the newest segment."""
        segment, _ = _kept(*_sorted([keys], [values], unique=unique), None)
        if segment is not None:
            with self._swap:
                self._segments = (*self._segments, segment)

    def _settle(self, cutoff: int | None, limit: float, *, jobs: float) -> int:
        """Run up to `jobs` of the jobs due of up to `limit` ids each; returns how many
        expired ids they dropped. Inline, one job a call: no call pays for a cascade."""
        dropped = 0
        while jobs > 0:
            segments = self._segments
            job = _next_job(segments, cutoff, limit)
            if job is None:
                break
            jobs -= 1
            run = segments[job]
            # Only a run from the oldest segment on may drop expired writes (see above).
            merged, expired = _rewritten(run, cutoff if job.start == 0 else None)
            with self._swap:
                current = self._segments
                start = current.index(run[0]) if run[0] in current else 0
                if current[start : start + len(run)] == run:  # else evict or a thread was first
                    kept = () if merged is None else (merged,)
                    self._segments = (*current[:start], *kept, *current[start + len(run) :])
                    dropped += expired
        return dropped
