"""Group commit: the records of concurrent requests go to Kafka together.

The ingress answers 202 only after acks=all, so each request waits a Kafka round
trip. Sending each request's record on its own would pay aiokafka's per-record cost
for every one of them; here requests hand their records to one publisher, and one
acks=all round trip serves every request that arrived while the last one was out.
"""

from __future__ import annotations

import asyncio
import functools
from typing import NamedTuple

import structlog
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from processor.batching import produce_batch

__all__ = ["GroupPublisher", "RawRecord"]

log = structlog.get_logger(__name__)


class RawRecord(NamedTuple):
    """One delivery for the raw topic, as produce_batch takes it."""

    topic: str
    key: bytes
    value: bytes
    headers: list[tuple[str, bytes]]


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

    def __init__(self, producer: AIOKafkaProducer) -> None:
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
    error: BaseException | None
    if acknowledged.cancelled():
        error = KafkaError("the producer stopped before Kafka acknowledged")
    else:
        error = acknowledged.exception()
    _settle(waiters, error)


def _settle(
    waiters: list[asyncio.Future[BaseException | None]], outcome: BaseException | None
) -> None:
    for waiter in waiters:
        if not waiter.done():  # its request may have timed out already
            waiter.set_result(outcome)
