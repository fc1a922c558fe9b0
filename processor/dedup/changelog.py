"""Reading the dedup changelog back: a consumer of its own, no group, read_committed.

Only what a transaction committed (or an at-least-once worker wrote) is restored:
an aborted exactly-once batch leaves no remembered id behind.
"""

from __future__ import annotations

from typing import Final

from aiokafka import AIOKafkaConsumer, TopicPartition

from processor.config import Config
from processor.dedup.record import Restored, RestoredBuilder
from processor.kafka.clients import read_to_end, reader_options

__all__ = ["KafkaChangelog"]

# A changelog record is ~70 bytes on the wire: big fetches make the restore fast.
FETCH_BYTES: Final = 8 * 1024 * 1024
FETCH_WAIT_MS: Final = 10


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

    async def start(self) -> None:
        await self.consumer.start()

    async def stop(self) -> None:
        await self.consumer.stop()

    async def read(self, partition: int) -> Restored:
        tp = TopicPartition(self._topic, partition)
        # Offsets first, with nothing assigned: no fetch is in flight to wait behind.
        begin = (await self.consumer.beginning_offsets([tp]))[tp]
        end = (await self.consumer.end_offsets([tp]))[tp]
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
