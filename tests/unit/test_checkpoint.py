"""At least once, step by step: outputs, then state writes, then offsets, each once the
one before is acknowledged; and what a failure at each step becomes."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import (
    CommitFailedError,
    KafkaTimeoutError,
    NotEnoughReplicasError,
    RecordTooLargeError,
)

from processor.kafka.batching import RawRecord
from processor.testing import FakeBatchProducer
from processor.worker.checkpoint import AtLeastOnce, CommitFailed, ProduceFailed

RAW0 = TopicPartition("webhooks.raw", 0)
RAW1 = TopicPartition("webhooks.raw", 1)


class Producer(FakeBatchProducer):
    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass


class Committer:
    def __init__(self, events: list[str]) -> None:
        self.events = events
        self.error: BaseException | None = None
        self.offsets: dict[TopicPartition, int] | None = None

    async def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        self.events.append("offsets")
        if self.error is not None:
            raise self.error
        self.offsets = dict(offsets)


def record(topic: str, value: bytes, key: bytes = b"user_1") -> RawRecord:
    return RawRecord(topic, key, value, [])


def guarantee(
    producer: Producer, committer: Committer, produce_timeout_s: float = 1
) -> AtLeastOnce:
    return AtLeastOnce(
        producer=producer,
        consumer=committer,
        produce_timeout_s=produce_timeout_s,
        commit_timeout_s=1,
    )


async def acknowledge_all(producer: Producer, events: list[str], *, until: int) -> None:
    """Acknowledge every batch as it is sent, noting it, until `until` were sent."""
    acknowledged = 0
    async with asyncio.timeout(2):
        while acknowledged < until:
            for sent in producer.sent[acknowledged:]:
                events.append(f"ack {sent.topic}")
                sent.ack.set_result(None)
                acknowledged += 1
            await asyncio.sleep(0)


async def test_outputs_then_state_then_offsets_each_after_the_last_is_acknowledged() -> None:
    events: list[str] = []
    producer = Producer(partitions={"out": 2, "changelog": 2})
    committer = Committer(events)
    checkpoint = guarantee(producer, committer).begin()
    await checkpoint.produce(
        {
            RAW0: [record("out", b"a"), record("out", b"b", key=b"user_2")],
            RAW1: [record("out", b"c")],
        }
    )
    assert [sent.topic for sent in producer.sent] == ["out", "out"], "outputs go out at once"
    checkpoint.add_state(RAW0, [record("changelog", b"whd_a")])

    committing = asyncio.create_task(checkpoint.commit({RAW0: 8, RAW1: 3}))
    await asyncio.sleep(0.01)
    assert [sent.topic for sent in producer.sent] == ["out", "out"], "state before acks"
    assert committer.offsets is None
    await acknowledge_all(producer, events, until=3)
    await asyncio.wait_for(committing, 1)

    assert events == ["ack out", "ack out", "ack changelog", "offsets"]
    assert committer.offsets == {RAW0: 8, RAW1: 3}
    values = sorted(value or b"" for _, _, batch in producer.where() for value in batch)
    assert values == [b"a", b"b", b"c", b"whd_a"]


async def test_outputs_of_every_raw_partition_share_one_kafka_batch_per_destination() -> None:
    producer = Producer(partitions={"out": 1})
    checkpoint = guarantee(producer, Committer([])).begin()
    await checkpoint.produce({RAW0: [record("out", b"a")], RAW1: [record("out", b"b")]})

    committing = asyncio.create_task(checkpoint.commit({RAW0: 1, RAW1: 1}))
    await acknowledge_all(producer, [], until=1)
    await asyncio.wait_for(committing, 1)

    assert producer.where() == [("out", 0, [b"a", b"b"])]


@pytest.mark.parametrize(
    ("cause", "needs_a_human"),
    [
        (NotEnoughReplicasError(), False),
        (KafkaTimeoutError(), False),
        (RecordTooLargeError(), True),
    ],
)
async def test_a_refused_output_fails_the_produce_and_commits_nothing(
    cause: Exception, needs_a_human: bool
) -> None:
    events: list[str] = []
    producer = Producer(partitions={"out": 1, "changelog": 1})
    committer = Committer(events)
    checkpoint = guarantee(producer, committer).begin()
    await checkpoint.produce({RAW0: [record("out", b"a")]})
    checkpoint.add_state(RAW0, [record("changelog", b"whd_a")])

    committing = asyncio.create_task(checkpoint.commit({RAW0: 1}))
    async with asyncio.timeout(1):
        while not producer.sent:
            await asyncio.sleep(0)
    producer.sent[0].ack.set_exception(cause)

    with pytest.raises(ProduceFailed, match=type(cause).__name__) as failed:
        await asyncio.wait_for(committing, 1)
    assert failed.value.cause is cause
    assert failed.value.needs_a_human is needs_a_human
    assert [sent.topic for sent in producer.sent] == ["out"], "no state for a failed output"
    assert events == []


async def test_outputs_not_acknowledged_in_time_fail_the_produce() -> None:
    committer = Committer([])
    checkpoint = guarantee(Producer(partitions={"out": 1}), committer, 0.05).begin()
    await checkpoint.produce({RAW0: [record("out", b"a")]})

    with pytest.raises(ProduceFailed, match="TimeoutError"):
        await asyncio.wait_for(checkpoint.commit({RAW0: 1}), 1)
    assert committer.offsets is None


async def test_a_refused_offsets_commit_is_a_commit_failure_after_the_outputs() -> None:
    events: list[str] = []
    producer = Producer(partitions={"out": 1})
    committer = Committer(events)
    committer.error = CommitFailedError("the group rebalanced")
    checkpoint = guarantee(producer, committer).begin()
    await checkpoint.produce({RAW0: [record("out", b"a")]})

    committing = asyncio.create_task(checkpoint.commit({RAW0: 1}))
    await acknowledge_all(producer, events, until=1)

    with pytest.raises(CommitFailed, match="CommitFailedError") as failed:
        await asyncio.wait_for(committing, 1)
    assert isinstance(failed.value.cause, CommitFailedError)
    assert events == ["ack out", "offsets"]


async def test_an_aborted_checkpoint_has_nothing_left_to_write() -> None:
    producer = Producer(partitions={"out": 1, "changelog": 1})
    checkpoint = guarantee(producer, Committer([])).begin()
    await checkpoint.produce({RAW0: [record("out", b"a")]})
    checkpoint.add_state(RAW0, [record("changelog", b"whd_a")])

    await checkpoint.abort()
    committing = asyncio.create_task(checkpoint.commit({RAW0: 1}))
    await asyncio.wait_for(committing, 1)

    assert [sent.topic for sent in producer.sent] == ["out"], "no state after an abort"
