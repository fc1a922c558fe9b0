"""A producer without a broker, for what `produce_batch` and the group commit decide.

`FakeBatchProducer` has exactly what `processor.kafka.batching.BatchProducer` asks of aiokafka's
producer. It records every batch it is sent and hands back an ack future the test
completes, fails or cancels, as Kafka (or a stopping producer) would.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import NamedTuple

from processor.kafka.batching import BatchBuilder


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
