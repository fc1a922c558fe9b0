"""The open checkpoint: the batches a worker staged since its last commit. No I/O.

The worker hands each routed batch to its guarantee's open Checkpoint and records it
here; this says when the checkpoint is due, what a retry of each partition starts
from, which offsets to commit and which ids' raw offsets a changelog record stands
for, and gives back the batches of the partitions that are done.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator
from dataclasses import dataclass, field

from aiokafka import TopicPartition

from processor.worker.batch import Share
from processor.worker.checkpoint import Checkpoint

__all__ = ["Staged"]


@dataclass(slots=True)
class Staged:
    """The checkpoint being filled: the batches staged in it since the last commit."""

    checkpoint: Checkpoint
    opened_at: float
    batches: list[tuple[dict[TopicPartition, Share], float]] = field(default_factory=list)
    first: dict[TopicPartition, int] = field(default_factory=dict)  # where a retry starts
    next: dict[TopicPartition, int] = field(default_factory=dict)  # the offsets to commit
    records: int = 0

    def add(self, shares: dict[TopicPartition, Share], fetched_at: float) -> None:
        self.batches.append((shares, fetched_at))
        for partition, share in shares.items():
            self.first.setdefault(partition, share.records[0].offset)
            self.next[partition] = share.next_offset
            self.records += len(share.records)

    def due(self, now: float, *, every_records: int, interval_s: float) -> bool:
        return self.records >= every_records or now - self.opened_at >= interval_s

    def spans(self) -> dict[TopicPartition, tuple[int, int]]:
        """Each partition's first and last raw offsets in the checkpoint."""
        return {tp: (self.first[tp], end - 1) for tp, end in self.next.items()}

    def records_of(self, partitions: Collection[TopicPartition]) -> int:
        return sum(
            len(share.records)
            for shares, _ in self.batches
            for partition, share in shares.items()
            if partition in partitions
        )

    def done(
        self, partitions: Collection[TopicPartition]
    ) -> Iterator[tuple[dict[TopicPartition, Share], float | None]]:
        """The batches' shares of `partitions`, batch by batch, with when each was
        fetched (None for a batch only part of which is done)."""
        for shares, fetched_at in self.batches:
            done = {tp: share for tp, share in shares.items() if tp in partitions}
            if done:
                yield done, fetched_at if len(done) == len(shares) else None
