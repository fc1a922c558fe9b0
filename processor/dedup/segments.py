"""Sorted segments of id hashes and their packed values: the frozen part of an
`IdWindow`, built from writes, merged a slice of keys at a time, searched a batch at a
time. No I/O.

A segment holds unique sorted uint64 keys, a uint64 value per key (fingerprint << 32
| seen_at) and a directory of where each run of keys sharing their top bits starts:
17 bytes an id. Hashes spread evenly, so a bucket holds 4 to 8 keys, and a search
reads a few independent cache lines per query instead of a chain of ~24.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

__all__ = ["LOW32", "Builder", "Merge", "Segment", "built"]

U64 = npt.NDArray[np.uint64]

# A packed value is fingerprint << 32 | seen_at, both uint32.
LOW32: Final = 0xFFFF_FFFF
_LOW_HALF: Final = 0 if sys.byteorder == "little" else 1  # seen_at's uint32 in a uint64
# Keys per bucket of a segment's directory (4 to 8): under a byte an id, and a
# bucket's keys share a cache line or two.
_KEYS_PER_BUCKET: Final = 8


@dataclass(frozen=True, slots=True, eq=False)  # eq=False: told apart by identity
class Segment:
    """Frozen writes: unique sorted keys, their packed values, the range of their times,
    and a directory: `starts[b]` is the first key whose top `64 - shift` bits are b."""

    keys: U64
    values: U64
    oldest: int
    newest: int
    starts: npt.NDArray[np.uint32]
    shift: int
    steps: int  # 2**steps is more than the most keys sharing their top bits

    @property
    def size(self) -> int:
        return len(self.keys)

    def search(self, queries: U64) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.bool_]]:
        """Where each query is or would be among the keys, and whether it is there: a
        binary search in each query's bucket, in step for the batch (a few gathers of
        independent loads: in a big segment, 3-4 times faster than `np.searchsorted`,
        whose ~24 dependent cache misses per query go one after the other)."""
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
    keys: Sequence[U64], values: Sequence[U64], cutoff: int | None, *, unique: bool = False
) -> tuple[U64, U64, npt.NDArray[np.bool_], int]:
    """Runs of writes in write order, sorted by key; which to keep: the last write of
    each key, unless it was seen before `cutoff`; and how many ids that expires."""
    joined = np.concatenate(keys)
    # Timsort merges sorted runs in linear time and keeps writes in order; unique keys
    # need no order kept, and quicksort sorts random ones 2.5 times faster.
    order = np.argsort(joined, kind="quicksort" if unique else "stable")
    joined, ordered = joined[order], np.concatenate(values)[order]
    keep = np.ones(len(joined), dtype=np.bool_)
    np.not_equal(joined[1:], joined[:-1], out=keep[:-1])
    if cutoff is None:
        return joined, ordered, keep, 0
    latest = int(np.count_nonzero(keep))
    keep &= ordered.view(np.uint32)[_LOW_HALF::2] >= cutoff
    return joined, ordered, keep, latest - int(np.count_nonzero(keep))


class Builder:
    """A segment written in slices in key order, with its directory as it goes."""

    def __init__(self, capacity: int) -> None:
        bits = max(1, (capacity // _KEYS_PER_BUCKET).bit_length())
        self.shift = 64 - bits
        self.keys = np.empty(capacity, dtype=np.uint64)  # pages count once written
        self.values = np.empty(capacity, dtype=np.uint64)
        self.starts = np.empty((1 << bits) + 1, dtype=np.uint32)
        self.filled = self.bucket = self.newest = 0  # bucket: the first without a start
        self.oldest = LOW32

    def add(self, keys: U64, values: U64, keep: npt.NDArray[np.bool_]) -> None:
        """The kept writes of a slice, every key above those added before."""
        begin = self.filled
        self.filled += int(np.count_nonzero(keep))
        added = self.keys[begin : self.filled]
        np.compress(keep, keys, out=added)
        np.compress(keep, values, out=self.values[begin : self.filled])
        if len(added):
            last = int(added[-1]) >> self.shift
            bounds = np.arange(self.bucket, last + 1, dtype=np.uint64) << self.shift
            self.starts[self.bucket : last + 1] = np.searchsorted(added, bounds) + begin
            self.bucket = last + 1
            seconds = self.values[begin : self.filled].view(np.uint32)[_LOW_HALF::2]
            self.oldest = min(self.oldest, int(seconds.min()))
            self.newest = max(self.newest, int(seconds.max()))

    def segment(self) -> Segment | None:
        if not self.filled:
            return None
        self.starts[self.bucket :] = self.filled
        # Give back what expired and superseded writes left unused: realloc shrinks in
        # place, and no view of these arrays outlives `add`.
        self.keys.resize(self.filled, refcheck=False)
        self.values.resize(self.filled, refcheck=False)
        steps = int(np.diff(self.starts).max()).bit_length()
        return Segment(
            self.keys, self.values, self.oldest, self.newest, self.starts, self.shift, steps
        )


def built(keys: U64, values: U64, *, unique: bool = False) -> Segment | None:
    """Writes in write order as one segment."""
    builder = Builder(len(keys))
    builder.add(*_sorted([keys], [values], None, unique=unique)[:3])
    return builder.segment()


class Merge:
    """Neighbouring segments merging into one, a slice of keys at a time."""

    def __init__(self, run: tuple[Segment, ...], cutoff: int | None) -> None:
        self.run, self.cutoff = run, cutoff
        self.done = [0] * len(run)  # in each, how many keys are merged
        self.builder = Builder(sum(segment.size for segment in run))
        self.expired = 0

    def step(self, budget: int) -> int:
        """Merge the next slice, about `budget` keys of the biggest segment; returns
        how many keys that took from all of them."""
        big = max(range(len(self.run)), key=lambda i: self.run[i].size)
        end = self.done[big] + max(1, budget)
        ends = [segment.size for segment in self.run]
        if end < ends[big]:
            bound = self.run[big].keys[end]
            ends = [int(np.searchsorted(s.keys, bound)) for s in self.run]
        parts = list(zip(self.run, self.done, ends, strict=True))
        keys, values, keep, expired = _sorted(
            [s.keys[a:b] for s, a, b in parts], [s.values[a:b] for s, a, b in parts], self.cutoff
        )
        self.builder.add(keys, values, keep)
        self.expired += expired
        taken = sum(ends) - sum(self.done)
        self.done = ends
        return taken
