"""Exactly once, step by step, with a fake transactional producer: one producer per
worker, one transaction per checkpoint holding every partition's outputs, changelog and
offsets, committed as the group member the partitions were assigned to; a failure spoils
the whole checkpoint and gets a fresh producer; a member the group refused gives its
partitions up, quietly and once."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import KafkaTimeoutError, ProducerFenced
from structlog.testing import capture_logs

from processor.errors import ConfigError
from processor.kafka.aiokafka_internals import GroupFenced, GroupMember
from processor.kafka.batching import RawRecord
from processor.testing import FakeBatchProducer
from processor.worker.checkpoint import ProduceFailed
from processor.worker.exactly_once import ExactlyOnce, TransactionalProducer, transactional_id

P0 = TopicPartition("webhooks.raw", 0)
P1 = TopicPartition("webhooks.raw", 1)
GROUP = "processor-workers"


def member(generation: int) -> GroupMember:
    return GroupMember(
        group_id=GROUP,
        generation_id=generation,
        member_id=f"m-{generation}",
        group_instance_id=None,
    )


class TxnProducer(FakeBatchProducer):
    """Acknowledges every batch at once and records the transaction's steps."""

    def __init__(self, number: int, journal: list[str]) -> None:
        super().__init__(partitions={"out": 1, "webhooks.dedup": 2})
        self.number = number
        self.journal = journal
        self.fail_offsets: BaseException | None = None
        self.fail_commit: BaseException | None = None
        self.fail_abort: BaseException | None = None
        self.failure: BaseException | None = None  # what ended its sender

    def note(self, step: str) -> None:
        self.journal.append(f"#{self.number} {step}")

    async def start(self) -> None:
        self.note("start")

    async def stop(self) -> None:
        self.note("stop")

    async def abandon(self, reason: BaseException) -> None:
        self.note(f"abandon {type(reason).__name__}")

    async def require_kip447(self) -> None:
        pass  # the cluster speaks it: tests/integration/test_exactly_once.py asks Kafka

    async def begin_transaction(self) -> None:
        self.note("begin")

    async def send_batch(self, batch, topic, *, partition):  # type: ignore[no-untyped-def]
        ack = await super().send_batch(batch, topic, partition=partition)
        ack.set_result(None)
        self.note(f"produce {topic}/{partition} {[r.value for r in batch.records]}")
        return ack

    async def send_offsets_as(
        self, offsets: Mapping[TopicPartition, int], member: GroupMember
    ) -> None:
        if self.fail_offsets is not None:
            raise self.fail_offsets
        named = {tp.partition: offset for tp, offset in offsets.items()}
        self.note(f"offsets {named} as {member.member_id}")

    async def commit_transaction(self) -> None:
        if self.fail_commit is not None:
            raise self.fail_commit
        self.note("commit")

    async def abort_transaction(self) -> None:
        if self.fail_abort is not None:
            raise self.fail_abort
        self.note("abort")


class Factory:
    def __init__(self) -> None:
        self.journal: list[str] = []
        self.made: list[TxnProducer] = []

    def __call__(self) -> TxnProducer:
        producer = TxnProducer(len(self.made), self.journal)
        self.made.append(producer)
        return producer


class Group:
    """Who the consumer is in its group: `generation` moves at each rebalance."""

    def __init__(self) -> None:
        self.generation = 1

    def __call__(self) -> GroupMember:
        return member(self.generation)


def out(value: bytes) -> RawRecord:
    return RawRecord("out", b"user_1", value, [])


def state(partition: int, value: bytes) -> RawRecord:
    return RawRecord("webhooks.dedup", b"whd", value, [], partition)


class Committed:
    """The group's committed offsets as the broker shows them: `offsets`, or `error`."""

    def __init__(self) -> None:
        self.offsets: dict[TopicPartition, int] = {}
        self.error: Exception | None = None

    async def committed(self, partition: TopicPartition) -> int | None:
        if self.error is not None:
            raise self.error
        return self.offsets.get(partition)


def exactly_once(
    producer_for: Callable[[], TransactionalProducer],
    consumer: Committed | None = None,
    group: Group | None = None,
) -> ExactlyOnce:
    return ExactlyOnce(
        producer_for=producer_for,
        member=group or Group(),
        consumer=consumer or Committed(),
        produce_timeout_s=1,
        commit_timeout_s=0.2,
    )


@pytest.fixture
def factory() -> Factory:
    return Factory()


@pytest.fixture
async def guarantee(factory: Factory) -> ExactlyOnce:
    guarantee = exactly_once(factory)
    await guarantee.start()
    await guarantee.assigned([P0, P1])
    factory.journal.clear()
    return guarantee


def test_the_transactional_id_is_the_static_members_else_the_processs_own() -> None:
    assert transactional_id(GROUP, "worker-0") == "processor-workers.worker-0"
    one, other = transactional_id(GROUP, None), transactional_id(GROUP, None)
    assert one.startswith("processor-workers.")
    assert one != other


async def test_one_producer_serves_every_assignment_of_the_worker(factory: Factory) -> None:
    guarantee = exactly_once(factory)

    await guarantee.start()
    await guarantee.assigned([P0, P1])
    await guarantee.revoked([P0, P1])
    await guarantee.assigned([P1])
    await guarantee.stop()

    assert factory.journal == ["#0 start", "#0 stop"]


async def test_a_cluster_too_old_for_exactly_once_stops_the_start_saying_so(
    factory: Factory,
) -> None:
    def too_old() -> TxnProducer:
        producer = factory()

        async def require_kip447() -> None:
            raise ConfigError("the cluster's brokers lack TxnOffsetCommit v3")

        producer.require_kip447 = require_kip447  # type: ignore[method-assign]
        return producer

    with pytest.raises(ConfigError, match="TxnOffsetCommit v3"):
        await exactly_once(too_old).start()


async def test_a_checkpoints_partitions_go_in_one_transaction_as_the_assigned_member(
    guarantee: ExactlyOnce, factory: Factory
) -> None:
    checkpoint = guarantee.begin()
    await checkpoint.produce({P0: [out(b"a")]})
    checkpoint.add_state(P0, [state(0, b"id-a")])
    await checkpoint.produce({P1: [out(b"b")]})

    await asyncio.wait_for(checkpoint.commit({P0: 5, P1: 9}), 1)

    assert factory.journal == [
        "#0 begin",
        "#0 produce out/0 [b'a', b'b']",
        "#0 produce webhooks.dedup/0 [b'id-a']",
        "#0 offsets {0: 5, 1: 9} as m-1",
        "#0 commit",
    ]


async def test_offsets_are_committed_as_the_member_of_the_last_assignment(
    factory: Factory,
) -> None:
    group = Group()
    guarantee = exactly_once(factory, group=group)
    await guarantee.assigned([P0])
    group.generation = 2  # the consumer rejoined: this worker learns it at its next assignment

    checkpoint = guarantee.begin()
    await checkpoint.produce({P0: [out(b"a")]})
    await asyncio.wait_for(checkpoint.commit({P0: 5}), 1)
    await guarantee.assigned([P0])
    again = guarantee.begin()
    await again.produce({P0: [out(b"b")]})
    await asyncio.wait_for(again.commit({P0: 6}), 1)

    offsets = [line for line in factory.journal if "offsets" in line]
    assert offsets == ["#0 offsets {0: 5} as m-1", "#0 offsets {0: 6} as m-2"]


async def test_a_failed_transaction_fails_every_partition_and_gets_a_fresh_producer(
    guarantee: ExactlyOnce, factory: Factory
) -> None:
    factory.made[0].fail_commit = KafkaTimeoutError()
    checkpoint = guarantee.begin()
    await checkpoint.produce({P0: [out(b"a")], P1: [out(b"b")]})

    with pytest.raises(ProduceFailed, match="KafkaTimeoutError") as failed:
        await asyncio.wait_for(checkpoint.commit({P0: 5, P1: 9}), 1)

    assert failed.value.failed_partitions([P0, P1]) == {P0, P1}
    assert not failed.value.fenced(P0)
    # Closed at once, not flushed: its transaction is aborted by the next producer of its id.
    assert factory.journal[-1] == "#0 abandon KafkaTimeoutError"

    retry = guarantee.begin()
    await retry.produce({P0: [out(b"a")], P1: [out(b"b")]})
    await asyncio.wait_for(retry.commit({P0: 5, P1: 9}), 1)
    assert factory.journal[-5:] == [
        "#1 start",
        "#1 begin",
        "#1 produce out/0 [b'a', b'b']",
        "#1 offsets {0: 5, 1: 9} as m-1",
        "#1 commit",
    ]


async def test_a_producer_fenced_by_its_own_transactional_id_is_replaced_not_given_up(
    guarantee: ExactlyOnce, factory: Factory
) -> None:
    # Kafka aborted the transaction after transaction_timeout_ms (an outage): the epoch
    # moved on, and only a new producer writes again. The partitions are still ours.
    factory.made[0].fail_commit = ProducerFenced()
    checkpoint = guarantee.begin()
    await checkpoint.produce({P0: [out(b"a")]})

    with pytest.raises(ProduceFailed) as failed:
        await asyncio.wait_for(checkpoint.commit({P0: 5}), 1)

    assert not failed.value.fenced(P0)
    assert await guarantee.went_through({P0: 4}) == {}
    assert factory.journal[-2:] == ["#0 abandon ProducerFenced", "#1 start"]


async def test_a_producer_that_cannot_start_is_retried_never_taken_for_fenced(
    factory: Factory,
) -> None:
    starts = 0

    def failing_first() -> TxnProducer:
        producer = factory()

        async def start() -> None:
            nonlocal starts
            starts += 1
            if starts <= 2:
                raise KafkaTimeoutError()
            producer.note("start")

        producer.start = start  # type: ignore[method-assign]
        return producer

    guarantee = exactly_once(failing_first)
    with capture_logs() as logs:
        await guarantee.start()  # cannot start: logged, left for the first transaction
    assert [e["event"] for e in logs] == ["producer.start_failed"]
    await guarantee.assigned([P0])

    checkpoint = guarantee.begin()
    await checkpoint.produce({P0: [out(b"a")]})
    with pytest.raises(ProduceFailed, match="KafkaTimeoutError") as failed:
        await asyncio.wait_for(checkpoint.commit({P0: 1}), 1)
    assert not failed.value.fenced(P0), "a producer that cannot start is not a fence"

    again = guarantee.begin()
    await again.produce({P0: [out(b"a")]})
    await asyncio.wait_for(again.commit({P0: 1}), 1)
    assert factory.journal[-1] == "#2 commit"


async def test_a_member_the_group_refused_gives_its_partitions_up_until_assigned_again(
    guarantee: ExactlyOnce, factory: Factory
) -> None:
    factory.made[0].fail_offsets = GroupFenced("refused offsets (IllegalGenerationError)")
    checkpoint = guarantee.begin()
    await checkpoint.produce({P0: [out(b"a")], P1: [out(b"b")]})

    with capture_logs() as logs, pytest.raises(ProduceFailed, match="GroupFenced") as failed:
        await asyncio.wait_for(checkpoint.commit({P0: 5, P1: 9}), 1)
    assert failed.value.fenced(P0)
    assert failed.value.fenced(P1)
    # Aborted now, with the producer kept: read_committed subscribers go on at once.
    assert factory.journal[-1] == "#0 abort"
    fenced = [(e["partition"], e["log_level"]) for e in logs if e["event"] == "partition.fenced"]
    assert fenced == [(0, "warning"), (1, "warning")]

    # Records fetched before the group says so are refused without a transaction...
    factory.made[0].fail_offsets = None
    later = guarantee.begin()
    await later.produce({P0: [out(b"c")]})
    with capture_logs() as logs, pytest.raises(ProduceFailed) as refused:
        await asyncio.wait_for(later.commit({P0: 6}), 1)
    assert refused.value.fenced(P0)
    assert not [line for line in factory.journal if "[b'c']" in line]
    assert not [e for e in logs if e["event"] == "partition.fenced"], "said once"

    # ... until the group assigns partitions to this worker again.
    await guarantee.assigned([P0])
    back = guarantee.begin()
    await back.produce({P0: [out(b"c")]})
    await asyncio.wait_for(back.commit({P0: 6}), 1)
    assert factory.journal[-1] == "#0 commit"


async def test_a_revoke_after_a_refused_transaction_waits_for_no_offsets_to_show(
    guarantee: ExactlyOnce, factory: Factory
) -> None:
    factory.made[0].fail_offsets = GroupFenced("refused")
    checkpoint = guarantee.begin()
    await checkpoint.produce({P0: [out(b"a")]})
    with pytest.raises(ProduceFailed):
        await asyncio.wait_for(checkpoint.commit({P0: 5}), 1)

    with capture_logs() as logs:
        await asyncio.wait_for(guarantee.visible({P0: 5}), 0.1)  # commit_timeout_s: 0.2
    assert not [e for e in logs if e["event"] == "partitions.commit_not_visible"]


async def test_a_refused_transaction_that_cannot_be_aborted_closes_its_producer(
    guarantee: ExactlyOnce, factory: Factory
) -> None:
    factory.made[0].fail_offsets = GroupFenced("refused")
    factory.made[0].fail_abort = KafkaTimeoutError()
    checkpoint = guarantee.begin()
    await checkpoint.produce({P0: [out(b"a")]})

    with pytest.raises(ProduceFailed):
        await asyncio.wait_for(checkpoint.commit({P0: 5}), 1)
    assert factory.journal[-1] == "#0 abandon KafkaTimeoutError"


async def test_a_producer_whose_sender_died_is_replaced_before_the_next_transaction(
    guarantee: ExactlyOnce, factory: Factory
) -> None:
    factory.made[0].failure = KafkaTimeoutError()
    checkpoint = guarantee.begin()
    await checkpoint.produce({P0: [out(b"a")]})
    await asyncio.wait_for(checkpoint.commit({P0: 5}), 1)
    assert factory.journal[:3] == ["#0 abandon KafkaTimeoutError", "#1 start", "#1 begin"]


@pytest.mark.parametrize("broker_has", [None, 5, 7])
async def test_a_failed_checkpoint_goes_on_from_what_the_group_committed_after_all(
    factory: Factory, broker_has: int | None
) -> None:
    committed = Committed()
    if broker_has is not None:  # the transaction's commit reached the broker after all
        committed.offsets[P0] = broker_has
    guarantee = exactly_once(factory, committed)

    goes_on = {P0: 7} if broker_has == 7 else {}
    assert await guarantee.went_through({P0: 5}) == goes_on
    # A producer was started first: that completes or aborts the transaction.
    assert factory.journal == ["#0 start"]


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
    await guarantee.assigned([P0])
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
    await guarantee.assigned([P0])

    with capture_logs() as logs:
        await asyncio.wait_for(guarantee.visible({P0: 7}), 1)  # commit_timeout_s: 0.2
    assert [e["event"] for e in logs] == ["partitions.commit_not_visible"]
