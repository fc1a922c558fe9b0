"""When a producer is replaced, and what its users see meanwhile, with fake producers.

That aiokafka's producer really wedges after a long outage, and that a replacement
really writes again, is shown against a real broker in
tests/integration/test_producer_renewal.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiokafka.errors import (
    KafkaConnectionError,
    KafkaTimeoutError,
    NotLeaderForPartitionError,
    OutOfOrderSequenceNumber,
    ProducerClosed,
    ProducerFenced,
    UnknownProducerId,
)
from structlog.testing import capture_logs

from processor.kafka.batching import RawRecord, produce_batch
from processor.kafka.producers import (
    ProducerRenewing,
    RenewingProducer,
    leaves_producer_unusable,
)
from processor.testing import FakeBatchProducer

RECORD = RawRecord("raw", b"user_1", b"{}", [])


class OwnedFake(FakeBatchProducer):
    """A producer RenewingProducer can own: started, stopped, abandoned, or dead."""

    def __init__(self, number: int, *, start_error: BaseException | None = None) -> None:
        super().__init__(partitions={"raw": 1})
        self.number = number
        self.start_error = start_error
        self.started = False
        self.closed_with: BaseException | str | None = None
        self.failure: BaseException | None = None

    async def start(self) -> None:
        if self.start_error is not None:
            raise self.start_error
        self.started = True

    async def stop(self, *, flush_timeout_s: float | None = None) -> None:
        self._fail_pending(ProducerClosed())  # what the flush did not deliver
        self.closed_with = f"stop within {flush_timeout_s}"

    async def abandon(self, reason: BaseException) -> None:
        self._fail_pending(reason)
        self.closed_with = reason

    def _fail_pending(self, reason: BaseException) -> None:
        for sent in self.sent:
            if not sent.ack.done():
                sent.ack.set_exception(reason)

    async def cluster_metadata(self) -> Any:
        return {"producer": self.number}


class Factory:
    def __init__(self) -> None:
        self.made: list[OwnedFake] = []
        self.start_errors: list[BaseException] = []

    def __call__(self) -> OwnedFake:
        error = self.start_errors.pop(0) if self.start_errors else None
        producer = OwnedFake(len(self.made), start_error=error)
        self.made.append(producer)
        return producer

    @property
    def current(self) -> OwnedFake:
        return self.made[-1]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Harness:
    def __init__(self) -> None:
        self.factory = Factory()
        self.clock = Clock()
        self.reachable = True
        self.renewals = 0

        def renewed() -> None:
            self.renewals += 1

        self.producer = RenewingProducer(
            self.factory,
            name="test",
            reachable=lambda: self.reachable,
            renew_after_s=30,
            start_timeout_s=1,
            on_renewed=renewed,
            clock=self.clock,
            watch_interval_s=0.005,
            restart_backoff_s=0.005,
        )

    async def send(self) -> asyncio.Future[Any]:
        [ack] = await produce_batch(self.producer, [RECORD])
        return ack


@pytest.fixture
async def harness() -> AsyncIterator[Harness]:
    harness = Harness()
    await harness.producer.start()
    yield harness
    await harness.producer.stop()


def renewed(harness: Harness, times: int) -> Callable[[], bool]:
    return lambda: harness.renewals == times


async def until(condition: Callable[[], object], timeout: float = 1) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.001)


@pytest.mark.parametrize(
    "error", [OutOfOrderSequenceNumber(), UnknownProducerId(), ProducerFenced()]
)
async def test_an_error_that_leaves_the_producer_unusable_replaces_it_at_once(
    harness: Harness, error: Exception
) -> None:
    first = harness.factory.current
    await harness.send()
    with capture_logs() as logs:
        first.sent[0].ack.set_exception(error)
        await until(lambda: harness.renewals == 1)

    second = harness.factory.current
    assert second is not first
    assert second.started
    assert isinstance(first.closed_with, Exception), "the old one is abandoned, not flushed"
    assert harness.producer.problem is None, "a new producer is ready to write"
    events = [(entry["event"], entry["log_level"]) for entry in logs]
    assert ("kafka.producer_replacing", "warning") in events
    assert events[-1] == ("kafka.producer_replaced", "info")
    await harness.send()
    assert len(second.sent) == 1, "writes go to the new producer"


async def test_writes_in_flight_on_the_old_producer_fail_and_do_not_count_against_the_new(
    harness: Harness,
) -> None:
    first = harness.factory.current
    doomed = await harness.send()
    in_flight = await harness.send()
    first.sent[0].ack.set_exception(OutOfOrderSequenceNumber())
    await until(lambda: harness.renewals == 1)

    with pytest.raises(Exception, match=r"ProducerReplaced|OutOfOrder"):
        await in_flight
    assert doomed.done()
    assert harness.producer.problem is None


async def test_while_it_is_replaced_a_write_is_refused_at_once_and_the_problem_named(
    harness: Harness,
) -> None:
    harness.factory.start_errors = [KafkaConnectionError(), KafkaConnectionError()]
    harness.factory.current.failure = KafkaConnectionError()  # its sender died
    await until(lambda: harness.producer.problem == "the Kafka producer is being replaced")

    with pytest.raises(ProducerRenewing):
        await harness.send()
    await until(lambda: harness.renewals == 1)
    assert len(harness.factory.made) == 4, "two failed starts, retried, then one that started"
    assert [p.closed_with is not None for p in harness.factory.made] == [True, True, True, False]


async def test_a_retriable_failure_is_a_problem_until_a_write_succeeds(harness: Harness) -> None:
    first = harness.factory.current
    with capture_logs() as logs:
        (await harness.send()).cancel()  # a caller that gave up changes nothing
        first.sent[0].ack.set_exception(NotLeaderForPartitionError())
        await until(lambda: harness.producer.problem is not None)
        assert harness.producer.problem == (
            "writes to Kafka are failing (NotLeaderForPartitionError)"
        )
        await harness.send()
        first.sent[1].ack.set_result(None)
        await until(lambda: harness.producer.problem is None)

    assert harness.renewals == 0
    events = [(entry["event"], entry["log_level"]) for entry in logs]
    assert events == [("kafka.writes_failing", "warning"), ("kafka.writes_recovered", "info")]


async def test_writes_failing_past_the_deadline_while_kafka_answers_replace_the_producer(
    harness: Harness,
) -> None:
    harness.reachable = False
    await harness.send()
    harness.factory.current.sent[0].ack.set_exception(KafkaTimeoutError())
    await until(lambda: harness.producer.problem is not None)
    harness.clock.now += 31
    await asyncio.sleep(0.05)
    assert harness.renewals == 0, "no replacement while no broker answers: it could not start"

    harness.reachable = True
    await until(lambda: harness.renewals == 1)


async def test_a_write_never_acknowledged_past_the_deadline_replaces_the_producer(
    harness: Harness,
) -> None:
    await harness.send()
    harness.clock.now += 29
    await asyncio.sleep(0.05)
    assert harness.renewals == 0

    harness.clock.now += 2
    await until(lambda: harness.renewals == 1)


async def test_stop_closes_the_producer_within_the_flush_deadline_and_leaves_no_task() -> None:
    harness = Harness()
    before = asyncio.all_tasks()
    await harness.producer.start()
    await harness.producer.stop(flush_timeout_s=2.5)

    assert harness.factory.current.closed_with == "stop within 2.5"
    assert asyncio.all_tasks() == before
    with pytest.raises(ProducerRenewing):
        await harness.send()


def test_only_errors_that_end_a_producer_count_as_unusable() -> None:
    assert leaves_producer_unusable(OutOfOrderSequenceNumber())
    assert leaves_producer_unusable(ProducerFenced())
    assert not leaves_producer_unusable(KafkaTimeoutError())
    assert not leaves_producer_unusable(NotLeaderForPartitionError())


async def test_a_producer_stuck_again_after_a_replacement_waits_twice_as_long(
    harness: Harness,
) -> None:
    for renewal, wait in enumerate([31, 61, 121], start=1):
        await harness.send()
        harness.factory.current.sent[-1].ack.set_exception(KafkaTimeoutError())
        await until(lambda: harness.producer.problem is not None)
        harness.clock.now += wait - 2
        await asyncio.sleep(0.05)
        assert harness.renewals == renewal - 1, f"renewed before {wait} s"
        harness.clock.now += 2
        await until(renewed(harness, renewal))

    await harness.send()
    harness.factory.current.sent[-1].ack.set_result(None)  # a write went through
    await harness.send()
    harness.factory.current.sent[-1].ack.set_exception(KafkaTimeoutError())
    await until(lambda: harness.producer.problem is not None)
    harness.clock.now += 31
    await until(lambda: harness.renewals == 4)


async def test_writes_cut_short_by_stop_start_no_replacement() -> None:
    harness = Harness()
    await harness.producer.start()
    await harness.send()  # never acknowledged: stop fails it
    with capture_logs() as logs:
        await harness.producer.stop()
        await asyncio.sleep(0.05)

    assert len(harness.factory.made) == 1, "a producer was made after stop"
    assert harness.renewals == 0
    assert [entry["event"] for entry in logs] == []


async def test_a_replacement_that_fails_unexpectedly_is_retried_not_given_up(
    harness: Harness,
) -> None:
    harness.factory.start_errors = [RuntimeError("unexpected")]
    harness.factory.current.failure = KafkaConnectionError()
    with capture_logs() as logs:
        await until(lambda: harness.renewals == 1)

    assert harness.producer.problem is None
    assert "kafka.producer_start_failed" in [entry["event"] for entry in logs]
