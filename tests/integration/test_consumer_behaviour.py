"""One behaviour suite for the worker's consumer, run against aiokafka's on a real broker
and against processor.testing's FakeConsumer, so the fake cannot drift from what the
worker's unit tests assume of Kafka: records in offset order, handed out again after a
seek back, none of a paused partition until it is resumed, the position and highwater
that make a lag, commits remembered.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Protocol

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from processor.testing import FakeConsumer, Record
from processor.worker.parts import Consumer

pytestmark = pytest.mark.integration


class Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    async def on_partitions_revoked(self, revoked: object) -> None:
        pass

    async def on_partitions_assigned(self, assigned: object) -> None:
        pass


class Backend(Protocol):
    """A consumer of one partition, and how to write to it and read its commits."""

    consumer: Consumer
    partition: TopicPartition

    async def append(self, values: list[bytes]) -> None:
        """Write `values` to the partition, at its next offsets."""

    async def committed(self) -> int | None: ...


class Fake:
    def __init__(self, topic: str) -> None:
        self.partition = TopicPartition(topic, 0)
        self.fake = FakeConsumer(topics={topic})
        self.consumer: Consumer = self.fake
        self._next = 0

    async def append(self, values: list[bytes]) -> None:
        records = [
            Record(0, self._next + n, value, topic=self.partition.topic)
            for n, value in enumerate(values)
        ]
        self._next += len(values)
        self.fake.batches.put_nowait({self.partition: records})

    async def committed(self) -> int | None:
        return self.fake.commits[-1][self.partition] if self.fake.commits else None


class Kafka:
    def __init__(self, bootstrap: str, topic: str, group: str) -> None:
        self.partition = TopicPartition(topic, 0)
        self._bootstrap = bootstrap
        self.kafka = AIOKafkaConsumer(
            bootstrap_servers=bootstrap,
            group_id=group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )
        self.consumer: Consumer = self.kafka

    async def append(self, values: list[bytes]) -> None:
        async with AIOKafkaProducer(bootstrap_servers=self._bootstrap, acks="all") as producer:
            for value in values:
                await producer.send_and_wait(self.partition.topic, value, partition=0)

    async def committed(self) -> int | None:
        committed: int | None = await self.kafka.committed(self.partition)
        return committed


@pytest.fixture(params=["fake", "kafka"])
async def backend(
    request: pytest.FixtureRequest, kafka_bootstrap: str, unique_name: Callable[[str], str]
) -> AsyncIterator[Backend]:
    topic = unique_name("behaviour")
    chosen: Backend
    if request.param == "fake":
        chosen = Fake(topic)
        chosen.fake.assigned = {chosen.partition}
    else:
        admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
        await admin.start()
        try:
            await admin.create_topics([NewTopic(topic, 1, 1)])
        finally:
            await admin.close()
        chosen = Kafka(kafka_bootstrap, topic, unique_name("group"))
    await chosen.consumer.start()
    chosen.consumer.subscribe([topic], listener=Listener())
    try:
        yield chosen
    finally:
        await chosen.consumer.stop()


async def fetch(backend: Backend, count: int) -> list[bytes | None]:
    """The next `count` records' values, in the order they are handed out."""
    values: list[bytes | None] = []
    async with asyncio.timeout(20):
        while len(values) < count:
            batch = await backend.consumer.getmany(timeout_ms=200, max_records=100)
            values += [record.value for record in batch.get(backend.partition, [])]
    return values


async def nothing_more(backend: Backend) -> bool:
    """No record is handed out within a second (fetches go on meanwhile)."""
    for _ in range(5):
        batch = await backend.consumer.getmany(timeout_ms=200, max_records=100)
        if batch.get(backend.partition):
            return False
    return True


async def test_records_are_handed_out_once_in_offset_order(backend: Backend) -> None:
    await backend.append([b"a", b"b", b"c"])
    assert await fetch(backend, 3) == [b"a", b"b", b"c"]
    assert await nothing_more(backend)


async def test_a_seek_back_hands_the_records_out_again_from_there(backend: Backend) -> None:
    await backend.append([b"a", b"b", b"c"])
    assert await fetch(backend, 3) == [b"a", b"b", b"c"]

    backend.consumer.seek(backend.partition, 1)

    assert await fetch(backend, 2) == [b"b", b"c"]
    assert await nothing_more(backend)


async def test_a_paused_partition_hands_out_nothing_until_it_is_resumed(
    backend: Backend,
) -> None:
    await backend.append([b"a"])
    assert await fetch(backend, 1) == [b"a"]
    backend.consumer.pause(backend.partition)
    await backend.append([b"b"])
    assert await nothing_more(backend)

    backend.consumer.resume(backend.partition)

    assert await fetch(backend, 1) == [b"b"]


async def test_a_commit_is_the_next_offset_to_read(backend: Backend) -> None:
    await backend.append([b"a", b"b"])
    assert await fetch(backend, 2) == [b"a", b"b"]
    assert await backend.committed() is None

    await backend.consumer.commit({backend.partition: 2})

    assert await backend.committed() == 2


async def test_position_and_highwater_say_how_far_behind_the_consumer_is(
    backend: Backend,
) -> None:
    await backend.append([b"a", b"b", b"c"])
    assert await fetch(backend, 3) == [b"a", b"b", b"c"]
    consumer, partition = backend.consumer, backend.partition
    assert (await consumer.position(partition), consumer.highwater(partition)) == (3, 3)

    consumer.seek(partition, 1)

    assert (await consumer.position(partition), consumer.highwater(partition)) == (1, 3)


async def test_after_a_rebalance_a_partition_kept_is_read_again_from_its_committed_offset(
    kafka_bootstrap: str,
    create_topics: Callable[..., Awaitable[None]],
    unique_name: Callable[[str], str],
) -> None:
    """Kafka only: what the worker relies on when it drops a batch fetched while the group
    moved partitions (processor.worker.loop): aiokafka gives each rebalance a new
    assignment, whose positions start at the committed offsets, so nothing dropped is
    skipped. If this fails, an aiokafka release kept positions across a rebalance."""
    topic, group = unique_name("kept"), unique_name("group")
    await create_topics(topic, partitions=2)
    async with AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all") as producer:
        for partition in (0, 1):
            for value in range(5):
                await producer.send_and_wait(topic, b"%d" % value, partition=partition)

    def member() -> AIOKafkaConsumer:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=kafka_bootstrap,
            group_id=group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )
        consumer.subscribe([topic], listener=Listener())
        return consumer

    first, second = member(), member()
    await first.start()
    try:
        handed: dict[TopicPartition, list[int]] = {}
        async with asyncio.timeout(20):
            while sum(map(len, handed.values())) < 10:
                for tp, records in (await first.getmany(timeout_ms=200)).items():
                    handed.setdefault(tp, []).extend(r.offset for r in records)
        await first.commit({tp: 2 for tp in handed})  # read to 5, committed to 2

        await second.start()  # the group rebalances: each member gets one partition
        again: list[int] = []
        async with asyncio.timeout(30):
            while not again:
                batch = await first.getmany(timeout_ms=200)
                await second.getmany(timeout_ms=200)
                if len(first.assignment()) == 1:
                    [kept] = first.assignment()
                    again = [record.offset for record in batch.get(kept, [])]
        assert again == [2, 3, 4]
    finally:
        await second.stop()
        await first.stop()
