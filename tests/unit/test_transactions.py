"""Exactly once, step by step, with fake transactional producers: one transaction per raw
partition holding its outputs, its changelog and its offsets; a failure spoils only its
own partition; a fenced partition is given up, not retried."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import KafkaTimeoutError, ProducerFenced
from structlog.testing import capture_logs

from processor.kafka.batching import RawRecord
from processor.testing import FakeBatchProducer
from processor.worker.checkpoint import ProduceFailed
from processor.worker.exactly_once import ExactlyOnce, TransactionalProducer, transactional_id

P0 = TopicPartition("webhooks.raw", 0)
P1 = TopicPartition("webhooks.raw", 1)
GROUP = "processor-workers"


class TxnProducer(FakeBatchProducer):
    """Acknowledges every batch at once and records the transaction's steps."""

    def __init__(self, transactional_id: str, journal: list[str]) -> None:
        super().__init__(partitions={"out": 1, "webhooks.dedup": 2})
        self.transactional_id = transactional_id
        self.journal = journal
        self.fail_commit: BaseException | None = None
        self.failure: BaseException | None = None  # what ended its sender (a fence)

    def note(self, step: str) -> None:
        self.journal.append(f"{self.transactional_id}: {step}")

    async def start(self) -> None:
        self.note("start")

    async def stop(self) -> None:
        self.note("stop")

    async def abandon(self, reason: BaseException) -> None:
        self.note(f"abandon {type(reason).__name__}")

    async def begin_transaction(self) -> None:
        self.note("begin")

    async def send_batch(self, batch, topic, *, partition):  # type: ignore[no-untyped-def]
        ack = await super().send_batch(batch, topic, partition=partition)
        ack.set_result(None)
        self.note(f"produce {topic}/{partition} {[r.value for r in batch.records]}")
        return ack

    async def send_offsets_to_transaction(
        self, offsets: Mapping[TopicPartition, int], group_id: str
    ) -> None:
        self.note(f"offsets {dict(offsets)} {group_id}")

    async def commit_transaction(self) -> None:
        if self.fail_commit is not None:
            raise self.fail_commit
        self.note("commit")

    async def abort_transaction(self) -> None:
        self.note("abort")


class Factory:
    def __init__(self) -> None:
        self.journal: list[str] = []
        self.made: list[TxnProducer] = []

    def __call__(self, transactional_id: str) -> TxnProducer:
        producer = TxnProducer(transactional_id, self.journal)
        self.made.append(producer)
        return producer


def out(value: bytes) -> RawRecord:
    return RawRecord("out", b"user_1", value, [])


def state(partition: int, value: bytes) -> RawRecord:
    return RawRecord("webhooks.dedup", b"whd", value, [], partition)


def exactly_once(
    producer_for: Callable[[str], TransactionalProducer], consumer: Committed | None = None
) -> ExactlyOnce:
    return ExactlyOnce(
        group_id=GROUP,
        producer_for=producer_for,
        consumer=consumer or Committed(),
        produce_timeout_s=1,
        commit_timeout_s=0.2,
    )


class Committed:
    """The group's committed offsets as the broker shows them: `offsets`, or `error`."""

    def __init__(self) -> None:
        self.offsets: dict[TopicPartition, int] = {}
        self.error: Exception | None = None

    async def committed(self, partition: TopicPartition) -> int | None:
        if self.error is not None:
            raise self.error
        return self.offsets.get(partition)


@pytest.fixture
def factory() -> Factory:
    return Factory()


@pytest.fixture
async def guarantee(factory: Factory) -> ExactlyOnce:
    guarantee = exactly_once(factory)
    await guarantee.assigned([P0, P1])
    factory.journal.clear()
    return guarantee


def test_the_transactional_id_names_group_topic_and_partition() -> None:
    assert transactional_id(GROUP, P1) == "processor-workers.webhooks.raw.1"


async def test_assignment_starts_a_producer_per_partition_and_revoke_stops_it(
    factory: Factory,
) -> None:
    guarantee = exactly_once(factory)

    await guarantee.assigned([P0, P1])
    await guarantee.revoked([P0])

    assert factory.journal == [
        "processor-workers.webhooks.raw.0: start",
        "processor-workers.webhooks.raw.1: start",
        "processor-workers.webhooks.raw.0: stop",
    ]


async def test_a_partitions_outputs_state_and_offsets_go_in_its_own_transaction(
    guarantee: ExactlyOnce, factory: Factory
) -> None:
    checkpoint = guarantee.begin()
    await checkpoint.produce({P0: [out(b"a")]})
    checkpoint.add_state(P0, [state(0, b"id-a")])
    await checkpoint.produce({P1: [out(b"b")]})

    await asyncio.wait_for(checkpoint.commit({P0: 5, P1: 9}), 1)

    zero = [line for line in factory.journal if line.startswith("processor-workers.webhooks.raw.0")]
    assert zero == [
        "processor-workers.webhooks.raw.0: begin",
        "processor-workers.webhooks.raw.0: produce out/0 [b'a']",
        "processor-workers.webhooks.raw.0: produce webhooks.dedup/0 [b'id-a']",
        f"processor-workers.webhooks.raw.0: offsets {{{P0!r}: 5}} {GROUP}",
        "processor-workers.webhooks.raw.0: commit",
    ]
    one = [line for line in factory.journal if line.startswith("processor-workers.webhooks.raw.1")]
    assert one[-2:] == [
        f"processor-workers.webhooks.raw.1: offsets {{{P1!r}: 9}} {GROUP}",
        "processor-workers.webhooks.raw.1: commit",
    ]


async def test_a_failed_transaction_spoils_only_its_partition_and_gets_a_fresh_producer(
    guarantee: ExactlyOnce, factory: Factory
) -> None:
    factory.made[1].fail_commit = KafkaTimeoutError()
    checkpoint = guarantee.begin()
    await checkpoint.produce({P0: [out(b"a")]})
    await checkpoint.produce({P1: [out(b"b")]})

    with pytest.raises(ProduceFailed, match="KafkaTimeoutError") as failed:
        await asyncio.wait_for(checkpoint.commit({P0: 5, P1: 9}), 1)

    assert failed.value.failed_partitions([P0, P1]) == {P1}
    assert not failed.value.fenced(P1)
    assert "processor-workers.webhooks.raw.0: commit" in factory.journal
    # Closed at once, not flushed: its transaction is aborted by the next producer of its id.
    assert factory.journal[-1] == "processor-workers.webhooks.raw.1: abandon KafkaTimeoutError"

    # The retry starts a new producer, whose start aborts what the old one left open.
    retry = guarantee.begin()
    await retry.produce({P1: [out(b"b")]})
    await asyncio.wait_for(retry.commit({P1: 9}), 1)
    assert len(factory.made) == 3
    assert factory.journal[-5:] == [
        "processor-workers.webhooks.raw.1: start",
        "processor-workers.webhooks.raw.1: begin",
        "processor-workers.webhooks.raw.1: produce out/0 [b'b']",
        f"processor-workers.webhooks.raw.1: offsets {{{P1!r}: 9}} {GROUP}",
        "processor-workers.webhooks.raw.1: commit",
    ]


async def test_a_producer_that_cannot_start_is_retried_never_taken_for_fenced(
    factory: Factory,
) -> None:
    starts = 0

    def failing_first(transactional_id: str) -> TxnProducer:
        producer = factory(transactional_id)

        async def start() -> None:
            nonlocal starts
            starts += 1
            if starts <= 2:
                raise KafkaTimeoutError()
            producer.note("start")

        producer.start = start  # type: ignore[method-assign]
        return producer

    guarantee = exactly_once(failing_first)
    await guarantee.assigned([P0])  # cannot start: logged, left for the first transaction

    checkpoint = guarantee.begin()
    await checkpoint.produce({P0: [out(b"a")]})
    with pytest.raises(ProduceFailed, match="KafkaTimeoutError") as failed:
        await asyncio.wait_for(checkpoint.commit({P0: 1}), 1)
    assert not failed.value.fenced(P0), "a producer that cannot start is not a fence"

    again = guarantee.begin()
    await again.produce({P0: [out(b"a")]})
    await asyncio.wait_for(again.commit({P0: 1}), 1)
    assert factory.journal[-1] == "processor-workers.webhooks.raw.0: commit"


async def test_a_fenced_partition_is_given_up_and_not_retried(
    guarantee: ExactlyOnce, factory: Factory
) -> None:
    factory.made[0].fail_commit = ProducerFenced()
    checkpoint = guarantee.begin()
    await checkpoint.produce({P0: [out(b"a")]})

    with pytest.raises(ProduceFailed, match="ProducerFenced") as failed:
        await asyncio.wait_for(checkpoint.commit({P0: 5}), 1)
    assert failed.value.fenced(P0)
    assert len(factory.made) == 2, "no new producer: another worker owns the partition"

    again = guarantee.begin()
    await again.produce({P0: [out(b"b")]})
    with pytest.raises(ProduceFailed, match="ProducerFenced") as refused:
        await asyncio.wait_for(again.commit({P0: 6}), 1)
    assert refused.value.fenced(P0)
    assert not any("produce out/0 [b'b']" in line for line in factory.journal)


async def test_a_zombie_fenced_while_idle_says_partition_fenced_once_when_revoked(
    guarantee: ExactlyOnce, factory: Factory
) -> None:
    # A worker paused past its session: on waking, its sender hears ProducerFenced before
    # any transaction of ours fails, and the group revokes the partition.
    factory.made[0].failure = ProducerFenced()
    with capture_logs() as logs:
        await guarantee.revoked([P0])
        await guarantee.revoked([P1])

    fenced = [entry for entry in logs if entry["event"] == "partition.fenced"]
    assert [(entry["partition"], entry["log_level"]) for entry in fenced] == [(0, "warning")]
    assert not [entry for entry in logs if entry["log_level"] == "error"]


async def test_a_fence_is_logged_once_however_it_is_learnt(
    guarantee: ExactlyOnce, factory: Factory
) -> None:
    factory.made[0].fail_commit = ProducerFenced()
    factory.made[0].failure = ProducerFenced()
    checkpoint = guarantee.begin()
    await checkpoint.produce({P0: [out(b"a")]})
    with capture_logs() as logs:
        with pytest.raises(ProduceFailed):
            await asyncio.wait_for(checkpoint.commit({P0: 5}), 1)
        await guarantee.revoked([P0])

    assert [entry["event"] for entry in logs].count("partition.fenced") == 1


@pytest.mark.parametrize(("broker_has", "goes_on"), [(None, {}), (5, {}), (7, {P0: 7})])
async def test_a_failed_checkpoint_goes_on_from_what_the_group_committed_after_all(
    factory: Factory, broker_has: int | None, goes_on: dict[TopicPartition, int]
) -> None:
    committed = Committed()
    if broker_has is not None:  # the transaction's commit reached the broker after all
        committed.offsets[P0] = broker_has
    guarantee = exactly_once(factory, committed)

    assert await guarantee.went_through({P0: 5}) == goes_on
    # Its producer was started first: that completes or aborts the transaction.
    assert factory.journal == [f"{transactional_id(GROUP, P0)}: start"]


async def test_a_failed_checkpoint_whose_outcome_kafka_does_not_say_is_retried_whole(
    factory: Factory,
) -> None:
    committed = Committed()
    committed.error = KafkaTimeoutError()
    guarantee = exactly_once(factory, committed)

    with capture_logs() as logs:
        assert await guarantee.went_through({P0: 5}) == {}
    assert [e["event"] for e in logs] == ["checkpoint.outcome_unknown"]


async def test_visible_returns_once_the_group_shows_the_offsets_committed(
    factory: Factory,
) -> None:
    committed = Committed()
    guarantee = exactly_once(factory, committed)
    waiting = asyncio.create_task(guarantee.visible({P0: 7}))
    committed.offsets[P0] = 6  # an older checkpoint's
    await asyncio.sleep(0.05)
    assert not waiting.done(), "returned before the group showed offset 7"

    committed.offsets[P0] = 7  # the transaction's markers are written
    await asyncio.wait_for(waiting, 1)


async def test_offsets_that_never_show_are_a_warning_not_a_wait_without_end(
    factory: Factory,
) -> None:
    guarantee = exactly_once(factory, Committed())

    with capture_logs() as logs:
        await asyncio.wait_for(guarantee.visible({P0: 7}), 1)  # commit_timeout_s: 0.2
    assert [e["event"] for e in logs] == ["partitions.commit_not_visible"]
