"""Stand-ins for the worker's consumer and guarantee, to test its decisions in milliseconds.

They do what the worker asks and remember it; Kafka's own behaviour is tested against
a real broker in tests/integration.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiokafka import TopicPartition

from processor.kafka.batching import OutgoingRecord

RAW = "webhooks.raw"


@dataclass(frozen=True)
class Record:
    """A consumed record, with the attributes the worker and the router read."""

    partition: int
    offset: int
    value: bytes | None
    topic: str = RAW
    key: bytes | None = b"user_1"
    timestamp: int = 1_739_966_400_123
    headers: Sequence[tuple[str, bytes]] = ()


Batch = dict[TopicPartition, list[Record]]


class FakeConsumer:
    """Hands out the batches put in `batches`; remembers seeks, commits and its listener."""

    def __init__(self, *, topics: Collection[str]) -> None:
        self.batches: asyncio.Queue[Batch] = asyncio.Queue()
        self.assigned: set[TopicPartition] = set()
        self.seeks: list[tuple[TopicPartition, int]] = []
        self.commits: list[dict[TopicPartition, int]] = []
        self.paused: set[TopicPartition] = set()
        self.resumed: list[TopicPartition] = []
        self.listener: Any = None
        self.stopped = False
        self._topics = set(topics)

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        self.stopped = True

    async def topics(self) -> set[str]:
        return self._topics

    def subscribe(self, topics: list[str], *, listener: Any) -> None:
        self.listener = listener

    async def getmany(self, *, timeout_ms: int, max_records: int) -> Batch:
        try:
            async with asyncio.timeout(timeout_ms / 1000):
                return await self.batches.get()
        except TimeoutError:
            return {}

    def assignment(self) -> set[TopicPartition]:
        return set(self.assigned)

    def seek(self, partition: TopicPartition, offset: int) -> None:
        self.seeks.append((partition, offset))

    def pause(self, *partitions: TopicPartition) -> None:
        self.paused.update(partitions)

    def resume(self, *partitions: TopicPartition) -> None:
        self.paused.difference_update(partitions)
        self.resumed.extend(partitions)

    async def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        self.commits.append(dict(offsets))


@dataclass
class FakeCheckpoint:
    guarantee: FakeGuarantee
    produced: dict[TopicPartition, list[OutgoingRecord]] = field(default_factory=dict)
    committed: dict[TopicPartition, int] | None = None
    aborted: bool = False

    def produce(self, partition: TopicPartition, records: Sequence[OutgoingRecord]) -> None:
        self.produced[partition] = list(records)

    def add_state(self, partition: TopicPartition, records: Sequence[OutgoingRecord]) -> None:
        raise AssertionError("the worker writes no state yet")

    async def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        self.guarantee.committing.set()
        await self.guarantee.gate.wait()
        if self.guarantee.failures:
            raise self.guarantee.failures.pop(0)
        self.committed = dict(offsets)

    async def abort(self) -> None:
        self.aborted = True


class FakeGuarantee:
    """Commits every checkpoint, unless told to fail (`failures`) or to wait (`gate`)."""

    def __init__(self) -> None:
        self.checkpoints: list[FakeCheckpoint] = []
        self.failures: list[Exception] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.committing = asyncio.Event()
        self.assigned_calls: list[set[TopicPartition]] = []
        self.revoked_calls: list[set[TopicPartition]] = []
        self.stopped = False

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        self.stopped = True

    def begin(self) -> FakeCheckpoint:
        checkpoint = FakeCheckpoint(self)
        self.checkpoints.append(checkpoint)
        return checkpoint

    async def assigned(self, partitions: Collection[TopicPartition]) -> None:
        self.assigned_calls.append(set(partitions))

    async def revoked(self, partitions: Collection[TopicPartition]) -> None:
        self.revoked_calls.append(set(partitions))
