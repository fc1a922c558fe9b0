"""Exactly once: a checkpoint's outputs, dedup changelog and offsets in one Kafka
transaction, by one transactional producer per worker. Subscribers that read with
isolation_level="read_committed" see each of them once or not at all. The group's
committed offsets say where a failed checkpoint goes on from (its commit may have
reached the broker) and when a revoked partition's last offsets show to its next owner.

Fencing (KIP-447, as Kafka Streams' exactly_once_v2): a transaction's offsets are
committed as the group member, at the generation, its partitions were assigned to
(TxnOffsetCommit v3, `processor.kafka.aiokafka_internals`). A worker that lost its
partitions without knowing (a long pause, a network partition) is a zombie: its
commit is refused by the group coordinator (GroupFenced), Kafka aborts its
transaction, and nothing of it becomes visible. The next owner reads committed
offsets with require_stable, so it starts after a zombie's transaction has ended,
whichever way. The transactional id is the worker's own: its static member id when
it has one (a restart aborts what it left open at once), else random per process
(what a crashed worker left open is aborted after `worker.transaction_timeout_ms`).

Known aiokafka transaction issues this shape avoids: a rebalance during a transaction
(aiokafka#844) cannot happen, since a revoke waits for the batch in flight and commits
the open checkpoint first; concurrent offset commits on one producer
(aiokafka#1098, a KeyError in TxnOffsetCommitHandler) cannot happen, since the
worker runs one checkpoint at a time; the transaction coordinator moving
(aiokafka#1134, #1151) is fixed in the 0.14 this project pins.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Protocol

import structlog
from aiokafka import TopicPartition
from aiokafka.errors import KafkaError, ProducerClosed

from processor.kafka.aiokafka_internals import GroupFenced, GroupMember
from processor.kafka.batching import OutgoingRecord, produce_batch
from processor.worker.checkpoint import CommittedOffsets, ProduceFailed, Producer
from processor.worker.rebalance import partition_names

__all__ = ["ExactlyOnce", "TransactionalProducer", "transactional_id"]

log = structlog.get_logger(__name__)


class TransactionalProducer(Producer, Protocol):
    """What a transaction needs of a producer: processor.kafka.producers.MemberProducer."""

    @property
    def failure(self) -> BaseException | None:
        """What ended the producer's sender for good."""

    async def abandon(self, reason: BaseException) -> None:
        """Close at once, without flushing; what is queued or in flight fails."""

    async def require_kip447(self) -> None:
        """Raise ConfigError unless the cluster speaks what send_offsets_as needs."""

    async def begin_transaction(self) -> None: ...
    async def commit_transaction(self) -> None: ...
    async def abort_transaction(self) -> None: ...
    async def send_offsets_as(
        self, offsets: Mapping[TopicPartition, int], member: GroupMember
    ) -> None: ...


def transactional_id(group_id: str, group_instance_id: str | None) -> str:
    """The worker's transactional id: its static member id, so that a restart aborts at
    once what the process before it left open; else unique to this process."""
    return f"{group_id}.{group_instance_id or uuid.uuid4().hex}"


class ExactlyOnce:
    """One transactional producer; one transaction per checkpoint, committed as the
    group member the partitions were assigned to."""

    def __init__(
        self,
        *,
        producer_for: Callable[[], TransactionalProducer],
        member: Callable[[], GroupMember],
        consumer: CommittedOffsets,
        produce_timeout_s: float,
        commit_timeout_s: float,
    ) -> None:
        self._producer_for = producer_for
        self._member_now = member
        self._consumer = consumer
        self._produce_timeout_s = produce_timeout_s
        self._commit_timeout_s = commit_timeout_s
        self._producer: TransactionalProducer | None = None
        # Who the partitions were assigned to; None until they are, and once the group
        # refused it (this worker is a zombie until it is assigned partitions again).
        self._member: GroupMember | None = None
        self._fenced: set[TopicPartition] = set()  # said once each, until assigned again

    async def start(self) -> None:
        """Start the producer now, so that a worker that cannot write says so at once,
        and a cluster too old for exactly once is a ConfigError; a producer that cannot
        start now is started by the first transaction."""
        try:
            async with asyncio.timeout(self._produce_timeout_s):
                producer = await self._started()
                await producer.require_kip447()
        except (KafkaError, TimeoutError) as exc:
            log.warning(
                "producer.start_failed",
                error=repr(exc),
                detail="the first transaction starts it again",
            )

    async def stop(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            await producer.stop()

    def begin(self) -> _Transaction:
        return _Transaction(self)

    async def assigned(self, partitions: Collection[TopicPartition]) -> None:
        """Remember who the partitions were assigned to: their offsets are committed as
        that member, at that generation, until the next assignment."""
        self._member = self._member_now()
        self._fenced.difference_update(partitions)

    async def revoked(self, partitions: Collection[TopicPartition]) -> None:
        """The producer serves whatever the worker is assigned next."""

    async def went_through(self, starts: Mapping[TopicPartition, int]) -> dict[TopicPartition, int]:
        """A commit that timed out here may have reached the broker: starting a new
        producer of the worker's transactional id completes or aborts what the old one
        left, and the group's offsets then say where to go on from. Kafka not answering
        meanwhile, none: the checkpoint is retried from where it began."""
        moved: dict[TopicPartition, int] = {}
        try:
            async with asyncio.timeout(self._produce_timeout_s):
                await self._started()
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
        assigned, and an older offset would route records twice. After the group
        refused this worker's last transaction, none of them was committed: nothing to
        wait for (the worker is rejoining)."""
        if self._member is None:
            return
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

    async def _started(self) -> TransactionalProducer:
        """The started producer; a new one's start completes or aborts what an old one
        of the same transactional id left open. One whose sender died is replaced."""
        producer = self._producer
        if producer is not None and producer.failure is not None:
            await self._drop(producer.failure)
            producer = None
        if producer is None:
            producer = self._producer_for()
            try:
                await producer.start()
            except BaseException:
                await producer.abandon(ProducerClosed())
                raise
            self._producer = producer
        return producer

    async def _drop(self, failed: BaseException) -> None:
        """Close the producer at once: its transaction is aborted by the next producer of
        its id (or Kafka, after the transaction timeout)."""
        producer, self._producer = self._producer, None
        if producer is not None:
            await producer.abandon(failed)

    def _was_fenced(self, partitions: Collection[TopicPartition], cause: GroupFenced) -> None:
        for partition in sorted(set(partitions) - self._fenced):
            log.warning(
                "partition.fenced",
                topic=partition.topic,
                partition=partition.partition,
                error=str(cause),
                detail="another worker owns this partition now (this one was paused or cut "
                "off past its session); its transaction was aborted and its records are "
                "routed by the new owner. This worker rejoins the group.",
            )
        self._fenced.update(partitions)

    async def _commit(
        self, records: Sequence[OutgoingRecord], offsets: Mapping[TopicPartition, int]
    ) -> None:
        member = self._member
        if member is None:
            refused = GroupFenced("the group refused this worker's last transaction")
            self._was_fenced(offsets, refused)
            raise refused
        try:
            async with asyncio.timeout(self._produce_timeout_s):
                producer = await self._started()
                await producer.begin_transaction()
                acks = await produce_batch(producer, records)
                await asyncio.gather(*acks)
                await producer.send_offsets_as(offsets, member)
                await producer.commit_transaction()
        except GroupFenced as exc:
            # Another worker owns the partitions: no retry may write them, and whatever
            # this worker fetched before the group tells it so is refused at once.
            self._member = None
            self._was_fenced(offsets, exc)
            await self._abort()
            raise
        except Exception as exc:
            # The transaction may be open or half-ended: the next producer aborts it.
            await self._drop(exc)
            raise

    async def _abort(self) -> None:
        """End a refused transaction now: its outputs would hold read_committed
        subscribers back until the transaction timeout."""
        producer = self._producer
        if producer is None:
            return
        try:
            async with asyncio.timeout(self._commit_timeout_s):
                await producer.abort_transaction()
        except (KafkaError, TimeoutError) as exc:
            await self._drop(exc)


class _Transaction:
    """One checkpoint: everything it staged, in one transaction."""

    def __init__(self, guarantee: ExactlyOnce) -> None:
        self._guarantee = guarantee
        self._staged: list[OutgoingRecord] = []

    async def produce(self, outputs: Mapping[TopicPartition, Sequence[OutgoingRecord]]) -> None:
        for records in outputs.values():
            self._staged.extend(records)

    def add_state(self, partition: TopicPartition, records: Sequence[OutgoingRecord]) -> None:
        self._staged.extend(records)

    async def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        try:
            await self._guarantee._commit(self._staged, offsets)
        except Exception as exc:
            # All or nothing: every partition of the transaction failed with it.
            raise ProduceFailed(exc, failed=dict.fromkeys(offsets, exc)) from exc

    async def abort(self) -> None:
        # The failed transaction was aborted with its producer.
        self._staged.clear()
