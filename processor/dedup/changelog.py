"""Reading the dedup changelog back: a consumer of its own, no group, read_committed.

Only what a transaction committed (or an at-least-once worker wrote) is restored:
an aborted exactly-once batch leaves no remembered id behind. Exactly once, a restore
first waits for any transaction still open on the partition to end (a worker that
died mid-checkpoint leaves one until `worker.transaction_timeout_ms`): a
read_committed reader stops at its first record, and would miss every id committed
after it.
"""

from __future__ import annotations

import asyncio
import time
from typing import Final

import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition

from processor.config import Config
from processor.dedup.record import Restored, RestoredBuilder
from processor.kafka.clients import client_options, read_to_end, reader_options

__all__ = ["KafkaChangelog"]

# A changelog record is ~70 bytes on the wire: big fetches make the restore fast.
FETCH_BYTES: Final = 8 * 1024 * 1024
FETCH_WAIT_MS: Final = 10
# How often a restore asks whether an open transaction has ended.
OPEN_TRANSACTION_POLL_S: Final = 0.1

log = structlog.get_logger(__name__)


class KafkaChangelog:
    """The changelog's partitions, each read from its start to its end on request."""

    def __init__(self, config: Config) -> None:
        self._topic = config.topics.dedup
        self.consumer = AIOKafkaConsumer(
            **reader_options(config),
            max_partition_fetch_bytes=FETCH_BYTES,
            fetch_max_bytes=FETCH_BYTES,
            # A restore reads to a known end: never wait for more to arrive.
            fetch_max_wait_ms=FETCH_WAIT_MS,
        )
        # Exactly once: what the partition holds, open transactions included.
        self._uncommitted: AIOKafkaConsumer | None = None
        if config.worker.guarantee == "exactly_once":
            self._uncommitted = AIOKafkaConsumer(**client_options(config.kafka))
        # Past this, a transaction is one Kafka will abort: restore what is committed.
        self._open_for_s = config.worker.transaction_timeout_ms / 1000

    async def start(self) -> None:
        await self.consumer.start()
        if self._uncommitted is not None:
            await self._uncommitted.start()

    async def stop(self) -> None:
        await self.consumer.stop()
        if self._uncommitted is not None:
            await self._uncommitted.stop()

    async def read(self, partition: int) -> Restored:
        tp = TopicPartition(self._topic, partition)
        # Offsets first, with nothing assigned: no fetch is in flight to wait behind.
        begin = (await self.consumer.beginning_offsets([tp]))[tp]
        end = await self._stable_end(tp)
        restored = RestoredBuilder()
        if begin < end:
            self.consumer.assign([tp])
            self.consumer.seek(tp, begin)
            try:
                async for _, records in read_to_end(self.consumer, [tp], ends={tp: end}):
                    for record in records:
                        restored.add(record.value, record.timestamp)
            finally:
                # Nothing assigned between restores: no idle fetching.
                self.consumer.assign([])
        return restored.build()

    async def _stable_end(self, tp: TopicPartition) -> int:
        """Where the partition's committed records end, once no transaction is open on it
        (its last stable offset is its high watermark), or once Kafka must have aborted
        what is open."""
        end: int = (await self.consumer.end_offsets([tp]))[tp]
        if self._uncommitted is None:
            return end
        deadline = time.monotonic() + self._open_for_s
        while end < (high := (await self._uncommitted.end_offsets([tp]))[tp]):
            if time.monotonic() >= deadline:
                log.warning(
                    "dedup.restore_past_open_transaction",
                    topic=tp.topic,
                    partition=tp.partition,
                    stable_offset=end,
                    high_watermark=high,
                    detail="a transaction on the changelog outlived worker.transaction_timeout_ms: "
                    "restored what is committed before it (a retry of an id committed after "
                    "it may be routed again)",
                )
                break
            await asyncio.sleep(OPEN_TRANSACTION_POLL_S)
            end = (await self.consumer.end_offsets([tp]))[tp]
        return end
