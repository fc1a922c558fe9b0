"""Typed stand-ins for Kafka, for tests, benchmarks and users' own tests of code built on
processor: a consumer, a guarantee and a producer that do what they are asked and
remember it, each satisfying the protocol the real part satisfies (mypy checks it below).

What Kafka itself does is tested against a real broker (tests/integration); these
let what processor decides (rewind, retry, pause, commit, where a record goes) be
tested in milliseconds.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

from aiokafka import TopicPartition

from processor.kafka.batching import BatchBuilder, OutgoingRecord

if TYPE_CHECKING:
    from processor.kafka.batching import BatchProducer
    from processor.worker.checkpoint import Guarantee
    from processor.worker.parts import Consumer

__all__ = [
    "RAW",
    "Appended",
    "Batch",
    "FakeBatch",
    "FakeBatchProducer",
    "FakeCheckpoint",
    "FakeConsumer",
    "FakeGuarantee",
    "Record",
    "Sent",
]

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
    """Hands out the batches put in `batches`, one per `getmany`, as Kafka hands out
    fetches. A `seek` back hands that partition's records out again from there, before
    any new batch; a paused partition's records wait until it is resumed; its position
    and highwater follow: what Kafka does (tests/integration/test_consumer_behaviour.py
    holds the two to the same behaviour). Remembers seeks, commits, pauses and its
    rebalance listener."""

    def __init__(self, *, topics: Collection[str]) -> None:
        self.batches: asyncio.Queue[Batch] = asyncio.Queue()
        self._handed: dict[TopicPartition, list[Record]] = {}  # by partition, in order
        self._rewound: dict[TopicPartition, int] = {}  # partition -> offset to hand from
        self._held: dict[TopicPartition, list[Record]] = {}  # fetched while paused
        self._ends: dict[TopicPartition, int] = {}  # partition -> the offset after its last
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
        batch = self._again()
        while not batch:
            try:
                async with asyncio.timeout(timeout_ms / 1000):
                    fetched = await self.batches.get()
            except TimeoutError:
                return {}
            for partition, records in fetched.items():
                if records:
                    end = max(self._ends.get(partition, 0), records[-1].offset + 1)
                    self._ends[partition] = end
                if partition in self.paused:
                    self._held.setdefault(partition, []).extend(records)
                else:
                    batch[partition] = records
        for partition, records in batch.items():
            self._handed.setdefault(partition, []).extend(records)
        return batch

    def _again(self) -> dict[TopicPartition, list[Record]]:
        """What seeks back have made due again, and what waited for a resume, of
        partitions not paused."""
        batch: dict[TopicPartition, list[Record]] = {}
        for partition in [p for p in self._held if p not in self.paused]:
            batch[partition] = self._held.pop(partition)
        for partition, offset in list(self._rewound.items()):
            if partition in self.paused:
                continue
            del self._rewound[partition]
            handed = self._handed.get(partition, [])
            self._handed[partition] = [r for r in handed if r.offset < offset]
            if again := [r for r in handed if r.offset >= offset]:
                batch[partition] = again + batch.get(partition, [])
        return batch

    def assignment(self) -> set[TopicPartition]:
        return set(self.assigned)

    def highwater(self, partition: TopicPartition) -> int | None:
        return self._ends.get(partition)

    async def position(self, partition: TopicPartition) -> int:
        if partition in self._rewound:
            return self._rewound[partition]
        if held := self._held.get(partition):
            return held[0].offset
        handed = self._handed.get(partition)
        return handed[-1].offset + 1 if handed else 0

    def seek(self, partition: TopicPartition, offset: int) -> None:
        self.seeks.append((partition, offset))
        self._rewound[partition] = offset

    def pause(self, *partitions: TopicPartition) -> None:
        self.paused.update(partitions)

    def resume(self, *partitions: TopicPartition) -> None:
        self.paused.difference_update(partitions)
        self.resumed.extend(partitions)

    async def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        self.commits.append(dict(offsets))

    async def committed(self, partition: TopicPartition) -> int | None:
        """The group's offset of `partition`: its last commit, or None."""
        offsets = [commit[partition] for commit in self.commits if partition in commit]
        return offsets[-1] if offsets else None


@dataclass
class FakeCheckpoint:
    guarantee: FakeGuarantee
    produced: dict[TopicPartition, list[OutgoingRecord]] = field(default_factory=dict)
    state: dict[TopicPartition, list[OutgoingRecord]] = field(default_factory=dict)
    committed: dict[TopicPartition, int] | None = None
    aborted: bool = False

    async def produce(self, outputs: Mapping[TopicPartition, Sequence[OutgoingRecord]]) -> None:
        if self.guarantee.produce_failures:
            raise self.guarantee.produce_failures.pop(0)
        for partition, records in outputs.items():
            self.produced.setdefault(partition, []).extend(records)

    def add_state(self, partition: TopicPartition, records: Sequence[OutgoingRecord]) -> None:
        self.state.setdefault(partition, []).extend(records)

    async def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        self.guarantee.committing.set()
        await self.guarantee.gate.wait()
        if self.guarantee.failures:
            raise self.guarantee.failures.pop(0)
        self.committed = dict(offsets)

    async def abort(self) -> None:
        self.aborted = True


class FakeGuarantee:
    """Commits every checkpoint, unless told to fail (`failures` at commit,
    `produce_failures` as outputs are handed over) or to wait (`gate`)."""

    def __init__(self) -> None:
        self.checkpoints: list[FakeCheckpoint] = []
        self.failures: list[Exception] = []
        self.produce_failures: list[Exception] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.committing = asyncio.Event()
        self.revoke_gate = asyncio.Event()  # cleared: a revoke waits (holding the batch lock)
        self.revoke_gate.set()
        self.revoking = asyncio.Event()
        self.assigned_calls: list[set[TopicPartition]] = []
        self.revoked_calls: list[set[TopicPartition]] = []
        # Where failed partitions go on from (`went_through`), and each ask of it.
        self.committed_anyway: dict[TopicPartition, int] = {}
        self.went_through_calls: list[dict[TopicPartition, int]] = []
        self.visible_gate = asyncio.Event()  # cleared: `visible` waits (holding the revoke)
        self.visible_gate.set()
        self.visible_calls: list[dict[TopicPartition, int]] = []
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
        self.revoking.set()
        await self.revoke_gate.wait()
        self.revoked_calls.append(set(partitions))

    async def went_through(self, starts: Mapping[TopicPartition, int]) -> dict[TopicPartition, int]:
        self.went_through_calls.append(dict(starts))
        return {tp: offset for tp, offset in self.committed_anyway.items() if tp in starts}

    async def visible(self, offsets: Mapping[TopicPartition, int]) -> None:
        self.visible_calls.append(dict(offsets))
        await self.visible_gate.wait()


class Appended(NamedTuple):
    """One record as it was appended to a batch."""

    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]


@dataclass
class Sent:
    """One `send_batch` call: where the batch went, what it held and its ack."""

    topic: str
    partition: int
    records: list[Appended]
    ack: asyncio.Future[object]

    @property
    def values(self) -> list[bytes | None]:
        return [record.value for record in self.records]


class FakeBatch:
    """Fills up as aiokafka's BatchBuilder does: a record that would take the batch over
    `capacity` bytes (key plus value here) is refused unless the batch is empty, and a
    batch that refused one stays closed."""

    def __init__(self, capacity: int) -> None:
        self.records: list[Appended] = []
        self._capacity = capacity
        self._size = 0
        self._closed = False

    def append(
        self,
        *,
        key: bytes | None,
        value: bytes | None,
        timestamp: int | None,
        headers: list[tuple[str, bytes]],
    ) -> int | None:
        size = len(key or b"") + len(value or b"")
        if self._closed or (self.records and self._size + size > self._capacity):
            self._closed = True
            return None
        self.records.append(Appended(key, value, headers))
        self._size += size
        return len(self.records) - 1  # the offset in the batch, as aiokafka's metadata has


class FakeBatchProducer:
    """`partitions` gives each topic's partition count; `batch_bytes` each batch's capacity.

    Clear `accepting` to hold `send_batch` calls, as aiokafka holds them while the
    partition's previous batch has not left; `fail_next_send` makes the next one raise.
    """

    def __init__(self, *, partitions: dict[str, int], batch_bytes: int = 16_384) -> None:
        self.partitions = partitions
        self.batch_bytes = batch_bytes
        self.sent: list[Sent] = []
        self.partitions_asked: list[str] = []
        self.accepting = asyncio.Event()
        self.accepting.set()
        self._send_error: BaseException | None = None

    async def partitions_for(self, topic: str) -> set[int]:
        self.partitions_asked.append(topic)
        return set(range(self.partitions[topic]))

    def create_batch(self) -> FakeBatch:
        return FakeBatch(self.batch_bytes)

    async def send_batch(
        self, batch: BatchBuilder, topic: str, *, partition: int
    ) -> asyncio.Future[object]:
        assert isinstance(batch, FakeBatch), "send_batch takes the producer's own batches"
        await self.accepting.wait()
        if self._send_error is not None:
            error, self._send_error = self._send_error, None
            raise error
        ack: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        self.sent.append(Sent(topic, partition, batch.records, ack))
        return ack

    def fail_next_send(self, error: BaseException) -> None:
        self._send_error = error

    def where(self) -> list[tuple[str, int, list[bytes | None]]]:
        """Every batch sent so far as (topic, partition, values), in send order."""
        return [(sent.topic, sent.partition, sent.values) for sent in self.sent]


def _conform(
    consumer: FakeConsumer, guarantee: FakeGuarantee, producer: FakeBatchProducer
) -> tuple[Consumer, Guarantee, BatchProducer]:
    """Never called: mypy --strict checks here that each fake satisfies its protocol."""
    return consumer, guarantee, producer
