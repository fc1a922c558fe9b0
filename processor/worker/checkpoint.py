"""How a batch leaves the worker: its outputs, state writes and offsets, as one step.

A `Guarantee` owns the producing side of a worker and opens one `Checkpoint` per
`worker.commit_interval_ms` (or per batch) (Quix Streams' Checkpoint, at a tenth of
its size):

    checkpoint = guarantee.begin()
    await checkpoint.produce({partition: routed})  # a batch's outputs, by raw partition
    checkpoint.add_state(partition, changelog)   # state writes (dedup's changelog)
    ...                                          # more batches
    await checkpoint.commit(offsets)             # or ProduceFailed / CommitFailed
    await checkpoint.abort()                     # after ProduceFailed: give it all up

`assigned` and `revoked` set up and tear down whatever a guarantee keeps per raw
partition (the exactly-once one: the group member they were assigned to).
`went_through` says where a failed checkpoint's partitions go on from, and `visible`
waits, at a revoke, until the next owner can read the offsets just committed: at
least once, from where the checkpoint began, and at once; exactly once, a commit that
failed may have reached the broker, and a transaction's offsets show only once its
markers are written.

`AtLeastOnce`: outputs are sent as they are handed over; at commit, once Kafka has
acknowledged every one, the state writes, then, once those are acknowledged too, the
offsets. A crash between any two steps re-delivers the checkpoint's records to the
next owner of their partitions: duplicates are possible, loss is not, and no state is
ever ahead of the outputs it stands for.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Collection, Mapping, Sequence
from typing import Any, Protocol

from aiokafka import TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError, KafkaTimeoutError

from processor.kafka.aiokafka_internals import GroupFenced
from processor.kafka.batching import BatchProducer, OutgoingRecord, produce_batch

__all__ = [
    "AtLeastOnce",
    "Checkpoint",
    "CommitFailed",
    "CommittedOffsets",
    "Guarantee",
    "OffsetCommitter",
    "ProduceFailed",
    "Producer",
]


class ProduceFailed(Exception):
    """Kafka did not take every output and state write in time; nothing of the batch is
    committed, or (exactly once) nothing of the partitions in `failed`. Rewind those to
    their first offsets and try again, except partitions another worker has fenced."""

    def __init__(
        self, cause: BaseException, *, failed: Mapping[TopicPartition, BaseException] | None = None
    ) -> None:
        super().__init__(repr(cause))
        self.cause = cause
        # None: the whole batch failed; else each failed partition and why.
        self.failed = failed

    def failed_partitions(self, batch: Collection[TopicPartition]) -> set[TopicPartition]:
        """The partitions of `batch` whose records were not committed."""
        return set(batch) if self.failed is None else set(self.failed) & set(batch)

    def fenced(self, partition: TopicPartition) -> bool:
        """Another worker owns `partition` now: its records are not this worker's to retry."""
        return self.failed is not None and isinstance(self.failed.get(partition), GroupFenced)

    @property
    def needs_a_human(self) -> bool:
        """Kafka refused for a reason waiting will not fix (an ACL, a size limit)."""
        # aiokafka marks its own delivery timeout as not retriable; it is an outage.
        if isinstance(self.cause, KafkaTimeoutError):
            return False
        return isinstance(self.cause, KafkaError) and not self.cause.retriable


class CommitFailed(Exception):
    """The outputs are written but the offsets are not committed: whoever owns the
    partitions next routes the batch again (duplicates, never a gap)."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(repr(cause))
        self.cause = cause


class Checkpoint(Protocol):
    """One or more batches on their way out."""

    async def produce(self, outputs: Mapping[TopicPartition, Sequence[OutgoingRecord]]) -> None:
        """Hand over a batch's outputs, by the raw partition they were routed from, each in
        order: sent now (at least once) or with the transactions (exactly once). Raises
        ProduceFailed."""

    def add_state(self, partition: TopicPartition, records: Sequence[OutgoingRecord]) -> None:
        """Stage changelog records of `partition`'s state, written with the outputs."""

    async def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        """Make outputs, state and `offsets` (next offset per partition) durable.

        Raises ProduceFailed or CommitFailed.
        """

    async def abort(self) -> None:
        """Give the checkpoint up after ProduceFailed, so that it can be produced again."""


class Guarantee(Protocol):
    """The producing side of a worker, and what it keeps per raw partition."""

    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    def begin(self) -> Checkpoint: ...
    async def assigned(self, partitions: Collection[TopicPartition]) -> None: ...
    async def revoked(self, partitions: Collection[TopicPartition]) -> None: ...

    async def went_through(self, starts: Mapping[TopicPartition, int]) -> dict[TopicPartition, int]:
        """After a checkpoint failed: those of its retried partitions (each with where it
        began) whose records were committed after all, each with where to go on from."""

    async def visible(self, offsets: Mapping[TopicPartition, int]) -> None:
        """At a revoke, once a checkpoint committed `offsets`: return when the group shows
        them to the partitions' next owner (bounded; a warning when it gives up)."""


class Producer(BatchProducer, Protocol):
    """A producer a guarantee starts and stops: aiokafka's, or a fake in tests."""

    async def start(self) -> None: ...
    async def stop(self) -> None: ...


class OffsetCommitter(Protocol):
    """What commits a consumer group's offsets: the worker's consumer."""

    async def commit(self, offsets: Mapping[TopicPartition, int]) -> None: ...


class CommittedOffsets(Protocol):
    """What reads a consumer group's committed offsets: the worker's consumer."""

    async def committed(self, partition: TopicPartition) -> int | None: ...


class AtLeastOnce:
    """Outputs, then state writes, then offsets, each once the one before is acknowledged."""

    def __init__(
        self,
        *,
        producer: Producer,
        consumer: OffsetCommitter,
        produce_timeout_s: float,
        commit_timeout_s: float,
    ) -> None:
        self._producer = producer
        self._consumer = consumer
        self._produce_timeout_s = produce_timeout_s
        self._commit_timeout_s = commit_timeout_s

    async def start(self) -> None:
        await self._producer.start()

    async def stop(self) -> None:
        await self._producer.stop()

    def begin(self) -> _AtLeastOnceCheckpoint:
        return _AtLeastOnceCheckpoint(
            producer=self._producer,
            consumer=self._consumer,
            produce_timeout_s=self._produce_timeout_s,
            commit_timeout_s=self._commit_timeout_s,
        )

    async def assigned(self, partitions: Collection[TopicPartition]) -> None:
        """Nothing is kept per partition."""

    async def revoked(self, partitions: Collection[TopicPartition]) -> None:
        """Nothing is kept per partition."""

    async def went_through(self, starts: Mapping[TopicPartition, int]) -> dict[TopicPartition, int]:
        """None: a failed checkpoint committed no offset, and is retried whole (what it
        wrote is written again: duplicates, never a gap)."""
        return {}

    async def visible(self, offsets: Mapping[TopicPartition, int]) -> None:
        """At once: the group has the offsets when the commit returns."""


class _AtLeastOnceCheckpoint:
    def __init__(
        self,
        *,
        producer: Producer,
        consumer: OffsetCommitter,
        produce_timeout_s: float,
        commit_timeout_s: float,
    ) -> None:
        self._producer = producer
        self._consumer = consumer
        self._produce_timeout_s = produce_timeout_s
        self._commit_timeout_s = commit_timeout_s
        self._acks: list[asyncio.Future[Any]] = []
        self._state: list[Sequence[OutgoingRecord]] = []

    async def produce(self, outputs: Mapping[TopicPartition, Sequence[OutgoingRecord]]) -> None:
        # One produce_batch for the whole batch: one Kafka batch per destination
        # partition, whatever raw partitions fed it. Waits only while the producer's
        # buffer is full (Kafka slow or away): bounded.
        records = itertools.chain.from_iterable(outputs.values())
        try:
            async with asyncio.timeout(self._produce_timeout_s):
                self._acks += await produce_batch(self._producer, records)
        except (TimeoutError, KafkaError) as exc:
            raise ProduceFailed(exc) from exc

    def add_state(self, partition: TopicPartition, records: Sequence[OutgoingRecord]) -> None:
        self._state.append(records)

    async def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        try:
            async with asyncio.timeout(self._produce_timeout_s):
                await asyncio.gather(*self._acks)
                if self._state:
                    await self._write(self._state)
        except (TimeoutError, KafkaError) as exc:
            raise ProduceFailed(exc) from exc
        try:
            async with asyncio.timeout(self._commit_timeout_s):
                await self._consumer.commit(offsets)
        except (TimeoutError, CommitFailedError, KafkaError) as exc:
            raise CommitFailed(exc) from exc

    async def abort(self) -> None:
        # What was written stays written; the retry writes it again (duplicates). Acks
        # still pending are let go: nobody waits for them.
        for ack in self._acks:
            ack.add_done_callback(_retrieved)
        self._acks.clear()
        self._state.clear()

    async def _write(self, staged: list[Sequence[OutgoingRecord]]) -> None:
        """Produce and wait for every acknowledgement. One produce_batch for all of it:
        one Kafka batch per destination partition, whatever raw partitions fed it."""
        acks = await produce_batch(self._producer, itertools.chain.from_iterable(staged))
        await asyncio.gather(*acks)


def _retrieved(ack: asyncio.Future[Any]) -> None:
    """Mark a failed acknowledgement nobody awaits as seen: the failure that ended its
    checkpoint was reported already."""
    if not ack.cancelled():
        ack.exception()
