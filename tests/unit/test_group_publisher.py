"""The ingress's group commit without a broker: what forms a group, what each request hears.

GroupPublisher runs on the real event loop against FakeBatchProducer; the test holds
`send_batch` (Kafka still taking the previous group) and completes the acks itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

import pytest
from aiokafka.errors import KafkaError, KafkaTimeoutError, NotEnoughReplicasError

from processor.ingress.publisher import GroupPublisher
from processor.kafka.batching import BatchProducer, OutgoingRecord, RawRecord, produce_batch
from processor.testing import FakeBatchProducer
from tests.ingress_harness import captured_logs

Waiter = asyncio.Future[BaseException | None]


def raw(n: int, *, uid: bytes = b"user_1") -> RawRecord:
    return RawRecord("raw", uid, f"delivery-{n}".encode(), [("delivery-id", f"whd_{n}".encode())])


@contextlib.asynccontextmanager
async def running(producer: FakeBatchProducer) -> AsyncIterator[GroupPublisher]:
    """The publisher's task for the length of a test; a crash of it fails the test."""
    publisher = GroupPublisher(producer)
    task = asyncio.create_task(publisher.run())
    try:
        yield publisher
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task  # raises what ended the task, if it did not wait to be cancelled


async def until(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(1):
        while not condition():
            await asyncio.sleep(0)


async def outcome(waiter: Waiter) -> BaseException | None:
    async with asyncio.timeout(1):
        return await waiter


@pytest.fixture
def groups(monkeypatch: pytest.MonkeyPatch) -> list[list[OutgoingRecord]]:
    """The records of each produce_batch call the publisher makes, in call order."""
    calls: list[list[OutgoingRecord]] = []

    async def recording(
        producer: BatchProducer, records: Iterable[OutgoingRecord]
    ) -> list[asyncio.Future[Any]]:
        calls.append(list(records))
        return await produce_batch(producer, calls[-1])

    monkeypatch.setattr("processor.ingress.publisher.produce_batch", recording)
    return calls


async def test_publishes_made_while_a_group_is_out_go_out_together_as_the_next(
    groups: list[list[OutgoingRecord]],
) -> None:
    producer = FakeBatchProducer(partitions={"raw": 1})
    producer.accepting.clear()  # Kafka is still taking the previous group
    async with running(producer) as publisher:
        first = publisher.publish(raw(1))
        await until(lambda: len(groups) == 1)
        later: list[Waiter] = []
        for n in (2, 3, 4):
            later.append(publisher.publish(raw(n)))
            await asyncio.sleep(0.001)  # time enough for an idle group task to take it
        producer.accepting.set()
        await until(lambda: len(producer.sent) == 2)

        assert groups == [[raw(1)], [raw(2), raw(3), raw(4)]]
        assert producer.where() == [
            ("raw", 0, [b"delivery-1"]),
            ("raw", 0, [b"delivery-2", b"delivery-3", b"delivery-4"]),
        ]
        assert not any(waiter.done() for waiter in [first, *later]), "no ack yet"

        producer.sent[0].ack.set_result(None)
        assert await outcome(first) is None
        await asyncio.sleep(0.001)
        assert not any(waiter.done() for waiter in later), "their group is not acknowledged"

        producer.sent[1].ack.set_result(None)
        assert [await outcome(waiter) for waiter in later] == [None, None, None]


async def test_a_request_that_gave_up_before_its_group_formed_is_not_sent() -> None:
    producer = FakeBatchProducer(partitions={"raw": 1})
    producer.accepting.clear()
    async with running(producer) as publisher:
        first = publisher.publish(raw(1))
        await until(lambda: producer.partitions_asked == ["raw"])
        gone, kept = publisher.publish(raw(2)), publisher.publish(raw(3))
        gone.cancel()  # as the ingress's asyncio.timeout does to the future it awaits
        producer.accepting.set()
        await until(lambda: len(producer.sent) == 2)
        for sent in producer.sent:
            sent.ack.set_result(None)

        assert producer.where() == [("raw", 0, [b"delivery-1"]), ("raw", 0, [b"delivery-3"])]
        assert [await outcome(first), await outcome(kept)] == [None, None]
        assert gone.cancelled()


@pytest.mark.parametrize(
    ("error", "logged"),
    [
        (KafkaTimeoutError("no room in the batch queue"), False),
        (RuntimeError("a bug in produce_batch"), True),
    ],
)
async def test_a_failed_produce_reaches_every_waiter_of_its_group_and_the_next_goes_out(
    error: Exception, logged: bool
) -> None:
    producer = FakeBatchProducer(partitions={"raw": 1})
    producer.fail_next_send(error)
    buffer = io.StringIO()
    with captured_logs(buffer):
        async with running(producer) as publisher:
            failed = [publisher.publish(raw(1)), publisher.publish(raw(2))]
            assert [await outcome(waiter) for waiter in failed] == [error, error]

            after = publisher.publish(raw(3))
            await until(lambda: len(producer.sent) == 1)
            producer.sent[0].ack.set_result(None)
            assert await outcome(after) is None

    assert producer.where() == [("raw", 0, [b"delivery-3"])]
    events = [json.loads(line)["event"] for line in buffer.getvalue().splitlines()]
    # Kafka's own errors are reported by the ingress's 503s; anything else is a bug.
    assert events == (["ingress.publish_failed"] if logged else [])


async def test_a_failed_ack_reaches_every_waiter_of_its_group_and_the_next_goes_out() -> None:
    producer = FakeBatchProducer(partitions={"raw": 2})
    async with running(producer) as publisher:
        # b"21" and b"abc" hash to partitions 0 and 1 of 2: one group, two batches.
        group = [publisher.publish(raw(1, uid=b"21")), publisher.publish(raw(2, uid=b"abc"))]
        await until(lambda: len(producer.sent) == 2)
        error = NotEnoughReplicasError("fewer in-sync replicas than min.insync.replicas")
        producer.sent[0].ack.set_result(None)
        producer.sent[1].ack.set_exception(error)

        assert [await outcome(waiter) for waiter in group] == [error, error]

        after = publisher.publish(raw(3, uid=b"21"))
        await until(lambda: len(producer.sent) == 3)
        producer.sent[2].ack.set_result(None)
        assert await outcome(after) is None

    assert producer.where() == [
        ("raw", 0, [b"delivery-1"]),
        ("raw", 1, [b"delivery-2"]),
        ("raw", 0, [b"delivery-3"]),
    ]


async def test_an_ack_cancelled_by_a_stopping_producer_reaches_waiters_as_a_kafka_error() -> None:
    producer = FakeBatchProducer(partitions={"raw": 1})
    async with running(producer) as publisher:
        group = [publisher.publish(raw(1)), publisher.publish(raw(2))]
        await until(lambda: len(producer.sent) == 1)
        producer.sent[0].ack.cancel()

        results = [await outcome(waiter) for waiter in group]

    assert [type(result) for result in results] == [KafkaError, KafkaError]
    assert [str(result) for result in results] == [
        "KafkaError: the producer stopped before Kafka acknowledged"
    ] * 2
