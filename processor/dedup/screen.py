"""Provider retries recognised by delivery id and routed once; state per raw partition.

A delivery and its retries carry the same `id` and `data.uid`, so they land on the
same raw partition: each partition the worker owns has an IdWindow of the ids routed
from it within `dedup.window_s`. For each valid delivery of a batch (routed or
unrouted; a DLQ record's id cannot be trusted, so it is never screened):

- an id not seen in the window is produced, and remembered once its record is
  acknowledged: never suppress a delivery whose first copy is not in Kafka. Until
  then it is staged: a retry in a later batch of the same checkpoint is screened
  against it, and a checkpoint that fails forgets what it staged (`unstage`);
- the same id with the same bytes is a retry: not produced anywhere, counted;
- the same id with other bytes is not a retry: it is produced, counted and logged as
  a conflict, and remembered with its new bytes;
- a record `processor replay` wrote is produced whatever was remembered: an operator
  asked for it.

What a checkpoint remembers also goes to the changelog topic (`topics.dedup`): its
staged ids of a raw partition as one record (or a few) on the partition's number,
written with the checkpoint (`changelog`; the format is `processor.dedup.record`'s). A
worker that is assigned a partition restores its ids from there before routing any of
its records (`assigned`, from the rebalance listener).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Final, Protocol

import structlog
from aiokafka import TopicPartition
from aiokafka.errors import KafkaError

from processor.dedup.idwindow import IdWindow, fingerprint, id_hash
from processor.dedup.record import MOST_IDS, ChangelogRecord, Restored, changelog_records
from processor.routing import Routed

__all__ = ["ChangelogReader", "Dedup", "Screened"]

log = structlog.get_logger(__name__)

# Eviction of expired ids runs at most this often per partition; ids expire by the day.
EVICT_EVERY_S: Final = 60.0


class ChangelogReader(Protocol):
    """Reads a partition of the changelog from its start to its end (read_committed)."""

    async def read(self, partition: int) -> Restored: ...


@dataclass
class Screened:
    """One raw partition's share of a batch after screening."""

    outputs: list[Routed] = field(default_factory=list)
    duplicates: int = 0
    conflicts: list[Routed] = field(default_factory=list)
    # Ids to remember once the outputs are durable.
    hashes: list[int] = field(default_factory=list)
    fingerprints: list[int] = field(default_factory=list)


class Dedup:
    """The remembered ids of every raw partition this worker owns."""

    def __init__(
        self,
        *,
        topic: str,
        window_s: float,
        reader: ChangelogReader,
        ids_per_record: int = MOST_IDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._topic = topic
        self._ids_per_record = ids_per_record
        self._window_s = window_s
        self._reader = reader
        self._clock = clock
        self._windows: dict[TopicPartition, IdWindow] = {}
        self._evicted_at: dict[TopicPartition, float] = {}
        # Ids screened in the open checkpoint, not durable yet -> their fingerprint.
        self._staged: dict[TopicPartition, dict[int, int]] = {}

    @property
    def remembered(self) -> int:
        return sum(len(window) for window in self._windows.values())

    @property
    def nbytes(self) -> int:
        return sum(window.nbytes for window in self._windows.values())

    async def assigned(self, partitions: Collection[TopicPartition]) -> None:
        """Restore each partition's ids from the changelog; call before routing its records.

        A partition whose restore fails is not owned (`owns`): the worker retries it
        before routing any of its records.
        """
        for partition in sorted(partitions):
            started = time.perf_counter()
            try:
                restored = await self._reader.read(partition.partition)
            except (KafkaError, TimeoutError, OSError) as exc:
                log.warning(
                    "dedup.restore_failed",
                    topic=partition.topic,
                    partition=partition.partition,
                    error=repr(exc),
                    detail="retried before any record of this partition is routed",
                )
                continue
            window = IdWindow(window_s=self._window_s)
            window.restore(*restored)
            now = self._clock()
            window.evict(now)
            self._windows[partition] = window
            self._evicted_at[partition] = now
            seconds = time.perf_counter() - started
            log.info(
                "dedup.restored",
                topic=partition.topic,
                partition=partition.partition,
                restored_ids=len(restored),
                remembered=len(window),
                seconds=round(seconds, 3),
            )

    def revoked(self, partitions: Collection[TopicPartition]) -> None:
        for partition in partitions:
            self._windows.pop(partition, None)
            self._evicted_at.pop(partition, None)
            self._staged.pop(partition, None)

    def unstage(self, partitions: Collection[TopicPartition]) -> None:
        """The checkpoint failed: forget what it staged (`remember` takes what it commits)."""
        for partition in partitions:
            self._staged.pop(partition, None)

    def owns(self, partition: TopicPartition) -> bool:
        return partition in self._windows

    def screen(self, partition: TopicPartition, routed: Sequence[Routed]) -> Screened:
        """Split `routed` (one partition's records, in order) into what to produce and
        what to remember; a retry within the batch itself, or of a delivery staged
        earlier in the checkpoint, is a duplicate too."""
        window = self._windows[partition]
        staged = self._staged.setdefault(partition, {})
        screened = Screened()
        # None for what is not screened (DLQ records), the id's hash for the rest.
        hashes = [
            None if r.outcome == "dlq" or r.delivery_id is None else id_hash(r.delivery_id)
            for r in routed
        ]
        screenable = [key for key in hashes if key is not None]
        known = dict(zip(screenable, window.lookup_many(screenable, self._clock()), strict=True))
        pending: dict[int, int] = {}  # ids of this batch to remember -> their fingerprint
        for record, key in zip(routed, hashes, strict=True):
            if key is None or record.delivery_id is None:
                screened.outputs.append(record)
                continue
            print_ = fingerprint(record.value or b"")
            # A replay is an operator's decision to route the delivery again.
            seen = None if record.replayed else pending.get(key, staged.get(key, known[key]))
            if seen == print_:
                screened.duplicates += 1
                continue
            if seen is not None:
                screened.conflicts.append(record)
            pending[key] = print_
            screened.outputs.append(record)
        screened.hashes = list(pending)
        screened.fingerprints = list(pending.values())
        staged.update(pending)
        return screened

    def changelog(
        self, partition: TopicPartition, offsets: tuple[int, int]
    ) -> list[ChangelogRecord]:
        """The changelog records of what the open checkpoint staged for `partition`, whose
        first and last raw offsets in it are `offsets`."""
        staged = self._staged.get(partition)
        if not staged:
            return []
        return changelog_records(
            self._topic,
            partition.partition,
            staged,
            offsets=offsets,
            per_record=self._ids_per_record,
        )

    def remember(self, partition: TopicPartition, screened: Screened) -> None:
        """The screened ids are durable in Kafka now: remember them."""
        window = self._windows.get(partition)
        if window is None:  # revoked meanwhile: the next owner restores them
            return
        staged = self._staged.get(partition)
        if staged:
            for key in screened.hashes:
                staged.pop(key, None)
        now = self._clock()
        window.remember(screened.hashes, screened.fingerprints, now)
        if now - self._evicted_at[partition] >= EVICT_EVERY_S:
            window.evict(now)
            self._evicted_at[partition] = now
