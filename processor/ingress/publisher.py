"""Where the ingress persists what it accepts: the `Publisher` seam and its Kafka side.

The ingress answers 202 only after acks=all, so each request waits a Kafka round
trip. Sending each request's record on its own would pay aiokafka's per-record cost
for every one of them; here requests hand their records to one publisher, and one
acks=all round trip serves every request that arrived while the last one was out
(a group commit).

The ingress sees only the `Publisher` protocol, so its HTTP decisions can be tested
in milliseconds with a fake that records what it was given.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator, Awaitable
from typing import Protocol

import structlog
from aiokafka.errors import KafkaError

from processor.kafka.batching import BatchProducer, RawRecord, produce_batch
from processor.kafka.producers import RenewingProducer

__all__ = ["GroupPublisher", "KafkaPublisher", "NotReady", "Publisher", "RawRecord"]

log = structlog.get_logger(__name__)


class NotReady(Exception):
    """The raw topic cannot take a delivery now; `error` and `detail` go into the 503."""

    def __init__(self, error: str, detail: str) -> None:
        super().__init__(detail)
        self.error = error
        self.detail = detail


class Publisher(Protocol):
    """What the ingress needs of the raw topic: Kafka in production, a fake in tests."""

    def publish(self, record: RawRecord) -> Awaitable[BaseException | None]:
        """Resolves to None once `record` is durable, or to the error that stopped it."""

    async def check_ready(self, topic: str) -> None:
        """Return if `topic` can take records now; raise NotReady saying why not."""

    def running(self) -> contextlib.AbstractAsyncContextManager[None]:
        """Held from app start-up to app cleanup: whatever publishing runs meanwhile."""


class KafkaPublisher:
    """The production Publisher: group-committed acks=all writes through a started producer.

    The producer is the caller's to start and stop; `running` owns only the group task.
    """

    def __init__(self, producer: RenewingProducer) -> None:
        self._producer = producer
        self._group = GroupPublisher(producer)

    def publish(self, record: RawRecord) -> asyncio.Future[BaseException | None]:
        return self._group.publish(record)

    async def check_ready(self, topic: str) -> None:
        """Not ready while the producer cannot write (Kafka refused its last write, or it
        is being replaced), while Kafka does not answer, or while `topic` is missing."""
        if (problem := self._producer.problem) is not None:
            raise NotReady("kafka_write_failing", problem)
        try:
            cluster = await self._producer.cluster_metadata()
        except (KafkaError, OSError) as exc:
            raise NotReady(
                "kafka_unreachable", f"Kafka metadata request failed ({type(exc).__name__})"
            ) from None
        if not cluster.partitions_for_topic(topic):
            raise NotReady(
                "topic_missing",
                f"topic {topic} does not exist: create it with `processor topics create`",
            )

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """The group task runs from app start-up to app cleanup, which aiohttp runs only
        after in-flight requests have finished, so none waits on a stopped publisher."""
        task = asyncio.create_task(self._group.run(), name="ingress-publisher")
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


class GroupPublisher:
    """Publishes the records of concurrent requests together: a group commit.

    aiokafka's per-record `send()` costs a coroutine, a future and a metadata lookup
    per record. Here a request only appends its record and awaits a future of its own;
    one task submits everything pending with `produce_batch`. While that task waits for
    Kafka to take a group, the next one forms, so groups grow with load by themselves
    and there is no linger to tune. A request's future resolves to None once its group
    is acknowledged, or to the error that stopped it (a result, not an exception, so
    that requests that timed out and left leave nothing unretrieved behind).
    """

    def __init__(self, producer: BatchProducer) -> None:
        self._producer = producer
        self._pending: list[tuple[RawRecord, asyncio.Future[BaseException | None]]] = []
        self._wakeup = asyncio.Event()

    def publish(self, record: RawRecord) -> asyncio.Future[BaseException | None]:
        waiter = asyncio.get_running_loop().create_future()
        self._pending.append((record, waiter))
        self._wakeup.set()
        return waiter

    async def run(self) -> None:
        """Submit what requests hand over, group by group, until cancelled."""
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            pending, self._pending = self._pending, []
            # A request that timed out (or whose client left) was never answered 2xx and
            # will be retried by the provider: its record need not be written at all.
            live = [(record, waiter) for record, waiter in pending if not waiter.done()]
            if not live:
                continue
            waiters = [waiter for _, waiter in live]
            try:
                # Returns once the group is queued in the producer, which waits for the
                # previous group's batches to leave: the pacing that lets groups grow.
                acks = await produce_batch(self._producer, [record for record, _ in live])
            except Exception as exc:
                # The requests answer 503 and the provider retries; the loop goes on.
                if not isinstance(exc, KafkaError):
                    log.exception("ingress.publish_failed")
                _settle(waiters, exc)
                continue
            acknowledged = asyncio.gather(*acks)
            acknowledged.add_done_callback(functools.partial(_settle_acknowledged, waiters))


def _settle_acknowledged(
    waiters: list[asyncio.Future[BaseException | None]], acknowledged: asyncio.Future[object]
) -> None:
    # Nothing cancels the gather itself; a cancelled ack (its producer stopped) comes
    # out of it as a CancelledError, which the requests should hear as Kafka's failure.
    error = acknowledged.exception()
    if isinstance(error, asyncio.CancelledError):
        error = KafkaError("the producer stopped before Kafka acknowledged")
    _settle(waiters, error)


def _settle(
    waiters: list[asyncio.Future[BaseException | None]], outcome: BaseException | None
) -> None:
    for waiter in waiters:
        if not waiter.done():  # its request may have timed out already
            waiter.set_result(outcome)
