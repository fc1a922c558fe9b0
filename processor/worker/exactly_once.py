"""Exactly once: a checkpoint's outputs, dedup changelog and offsets in one Kafka
transaction per raw partition. Subscribers that read with
isolation_level="read_committed" see each of them once or not at all. The group's
committed offsets say where a failed checkpoint goes on from (its commit may have
reached the broker) and when a revoked partition's last offsets show to its next owner.

Why a transactional producer per raw partition, not one per worker: aiokafka's
`send_offsets_to_transaction(offsets, group_id)` sends no consumer-group generation
(it predates KIP-447), so the broker cannot tell a worker that lost its partitions
(a long pause, a network partition) from their owner, and such a zombie could still
commit. With a transactional id per (group, topic, partition), the next owner's
`init_transactions` (in `start`) fences the previous one: the zombie's commit fails
with ProducerFenced and nothing of its batch becomes visible.

Known aiokafka transaction issues this shape avoids: a rebalance during a transaction
(aiokafka#844) cannot happen, since a revoke waits for the batch in flight and commits
the open checkpoint first; concurrent offset commits on one producer
(aiokafka#1098, a KeyError in TxnOffsetCommitHandler) cannot happen, since each
producer runs one transaction at a time; the transaction coordinator moving
(aiokafka#1134, #1151) is fixed in the 0.14 this project pins.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Protocol

import structlog
from aiokafka import TopicPartition
from aiokafka.errors import KafkaError, ProducerClosed, ProducerFenced

from processor.kafka.batching import OutgoingRecord, produce_batch
from processor.worker.checkpoint import CommittedOffsets, ProduceFailed, Producer
from processor.worker.rebalance import partition_names

__all__ = ["ExactlyOnce", "TransactionalProducer", "transactional_id"]

log = structlog.get_logger(__name__)


class TransactionalProducer(Producer, Protocol):
    """What a transaction needs of a producer: a BoundedProducer with a transactional_id."""

    @property
    def failure(self) -> BaseException | None:
        """What ended the producer's sender for good (ProducerFenced for a zombie)."""

    async def abandon(self, reason: BaseException) -> None:
        """Close at once, without flushing; what is queued or in flight fails."""

    async def begin_transaction(self) -> None: ...
    async def commit_transaction(self) -> None: ...
    async def abort_transaction(self) -> None: ...
    async def send_offsets_to_transaction(
        self, offsets: Mapping[TopicPartition, int], group_id: str
    ) -> None: ...


def transactional_id(group_id: str, partition: TopicPartition) -> str:
    """One id per raw partition of a group: whoever owns the partition next fences the
    previous owner by starting a producer with the same id."""
    return f"{group_id}.{partition.topic}.{partition.partition}"


class ExactlyOnce:
    """A transactional producer per assigned raw partition; one transaction per batch each."""

    def __init__(
        self,
        *,
        group_id: str,
        producer_for: Callable[[str], TransactionalProducer],
        consumer: CommittedOffsets,
        produce_timeout_s: float,
        commit_timeout_s: float,
    ) -> None:
        self._group_id = group_id
        self._producer_for = producer_for
        self._consumer = consumer
        self._produce_timeout_s = produce_timeout_s
        self._commit_timeout_s = commit_timeout_s
        self._producers: dict[TopicPartition, TransactionalProducer] = {}
        # Partitions another worker fenced us out of, until the group says otherwise.
        self._fenced: set[TopicPartition] = set()

    async def start(self) -> None:
        """Producers start with their partitions (`assigned`)."""

    async def stop(self) -> None:
        await self.revoked(list(self._producers))

    def begin(self) -> _Transactions:
        return _Transactions(self)

    async def assigned(self, partitions: Collection[TopicPartition]) -> None:
        """Start each partition's producer at once: this fences whoever owned it before,
        before its dedup state is restored. One that cannot start now is started by the
        partition's first transaction."""
        for partition in partitions:
            self._fenced.discard(partition)
            try:
                async with asyncio.timeout(self._produce_timeout_s):
                    await self._producer(partition)
            except (KafkaError, TimeoutError) as exc:
                log.warning(
                    "partition.producer_start_failed",
                    topic=partition.topic,
                    partition=partition.partition,
                    error=repr(exc),
                    detail="its first transaction starts it again",
                )

    async def revoked(self, partitions: Collection[TopicPartition]) -> None:
        # Together: each may wait out its flush, and shutdown bounds them all at once.
        await asyncio.gather(*(self._drop(partition) for partition in partitions))
        self._fenced.difference_update(partitions)

    async def went_through(self, starts: Mapping[TopicPartition, int]) -> dict[TopicPartition, int]:
        """A commit that timed out here may have reached the broker: starting the
        partitions' producers again completes or aborts what their transactions left,
        and the group's offsets then say where to go on from. Kafka not answering
        meanwhile, none: the checkpoint is retried from where it began."""
        moved: dict[TopicPartition, int] = {}
        try:
            async with asyncio.timeout(self._produce_timeout_s):
                await self.assigned(list(starts))
            async with asyncio.timeout(self._commit_timeout_s):
                for partition, first in starts.items():
                    offset = await self._consumer.committed(partition)
                    if offset is not None and offset > first:
                        moved[partition] = offset
        except (TimeoutError, KafkaError) as exc:
            log.warning(
                "checkpoint.outcome_unknown",
                partitions=partition_names(starts),
                error=repr(exc),
                detail="retried from where the checkpoint began",
            )
        return moved

    async def visible(self, offsets: Mapping[TopicPartition, int]) -> None:
        """A transaction's offsets show in the group only once Kafka has written its
        markers, after the commit returns; the next owner reads them as soon as it is
        assigned, and an older offset would route records twice."""
        try:
            async with asyncio.timeout(self._commit_timeout_s):
                for partition, offset in offsets.items():
                    # Polled: the broker says nothing when its markers are written.
                    while True:
                        if (await self._consumer.committed(partition) or 0) >= offset:
                            break
                        await asyncio.sleep(0.01)
        except (TimeoutError, KafkaError) as exc:
            log.warning(
                "partitions.commit_not_visible",
                partitions=partition_names(offsets),
                error=repr(exc),
                detail="revoked before Kafka showed this worker's last offsets: the next "
                "owner may route some of their records again",
            )

    async def _producer(self, partition: TopicPartition) -> TransactionalProducer:
        """The partition's started producer; a new one's start aborts what an old one of
        the same transactional id left open."""
        producer = self._producers.get(partition)
        if producer is None:
            producer = self._producer_for(transactional_id(self._group_id, partition))
            try:
                await producer.start()
            except BaseException:
                await producer.abandon(ProducerClosed())
                raise
            self._producers[partition] = producer
        return producer

    async def _drop(
        self, partition: TopicPartition, *, failed: BaseException | None = None
    ) -> None:
        """Close the partition's producer: at once after a failure (its transaction is
        aborted by the next producer of its id), else within its flush deadline. A
        producer whose sender was fenced meanwhile (a zombie) says so here, once."""
        producer = self._producers.pop(partition, None)
        if producer is None:
            return
        if failed is not None:
            await producer.abandon(failed)
        else:
            await producer.stop()
        if isinstance(producer.failure, ProducerFenced):
            self._was_fenced(partition)

    def _was_fenced(self, partition: TopicPartition) -> None:
        if partition in self._fenced:
            return
        self._fenced.add(partition)
        log.warning(
            "partition.fenced",
            topic=partition.topic,
            partition=partition.partition,
            detail="another worker owns this partition now (this one was paused or cut "
            "off past its session); its open transaction was aborted by Kafka and its "
            "records are routed by the new owner. This worker rejoins the group.",
        )

    async def _commit(
        self,
        partition: TopicPartition,
        records: Sequence[OutgoingRecord],
        offset: int,
    ) -> None:
        if partition in self._fenced:
            raise ProducerFenced()  # another worker owns it now
        try:
            async with asyncio.timeout(self._produce_timeout_s):
                producer = await self._producer(partition)
                await producer.begin_transaction()
                acks = await produce_batch(producer, records)
                await asyncio.gather(*acks)
                await producer.send_offsets_to_transaction({partition: offset}, self._group_id)
                await producer.commit_transaction()
        except ProducerFenced as exc:
            # Another worker started this partition's producer: it owns the partition.
            # Kafka aborted this transaction; no retry may write it.
            self._was_fenced(partition)
            await self._drop(partition, failed=exc)
            raise
        except Exception as exc:
            # The transaction may be open or half-ended: the next attempt's new producer
            # aborts it when it starts.
            await self._drop(partition, failed=exc)
            raise


class _Transactions:
    """One checkpoint: a transaction per raw partition, committed concurrently."""

    def __init__(self, guarantee: ExactlyOnce) -> None:
        self._guarantee = guarantee
        self._staged: dict[TopicPartition, list[Sequence[OutgoingRecord]]] = {}

    async def produce(self, outputs: Mapping[TopicPartition, Sequence[OutgoingRecord]]) -> None:
        for partition, records in outputs.items():
            self._staged.setdefault(partition, []).append(records)

    def add_state(self, partition: TopicPartition, records: Sequence[OutgoingRecord]) -> None:
        self._staged.setdefault(partition, []).append(records)

    async def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        partitions = list(offsets)
        results = await asyncio.gather(
            *(
                self._guarantee._commit(
                    partition,
                    list(itertools.chain.from_iterable(self._staged.get(partition, ()))),
                    offsets[partition],
                )
                for partition in partitions
            ),
            return_exceptions=True,
        )
        failed: dict[TopicPartition, BaseException] = {
            partition: result
            for partition, result in zip(partitions, results, strict=True)
            if isinstance(result, BaseException)
        }
        if failed:
            for result in failed.values():
                if not isinstance(result, Exception):
                    raise result  # a cancellation, not a Kafka failure
            # The cause reported is one worth retrying, if any: a fence is logged apart.
            causes = [e for e in failed.values() if not isinstance(e, ProducerFenced)]
            raise ProduceFailed((causes or list(failed.values()))[0], failed=failed)

    async def abort(self) -> None:
        # Each failed partition's transaction was aborted with its producer; committed
        # partitions stay committed.
        self._staged.clear()
