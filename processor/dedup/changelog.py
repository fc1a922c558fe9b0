"""Reading the dedup changelog back: a consumer of its own, no group, read_committed.

Only what a transaction committed (or an at-least-once worker wrote) is restored:
an aborted exactly-once batch leaves no remembered id behind.
"""

from __future__ import annotations

import sys
from array import array
from typing import Final

from aiokafka import AIOKafkaConsumer, TopicPartition

from processor.config import Config
from processor.dedup.screen import Restored
from processor.kafka.clients import read_to_end, reader_options

__all__ = ["KafkaChangelog"]

# A changelog record is ~70 bytes on the wire: big fetches make the restore fast.
FETCH_BYTES: Final = 8 * 1024 * 1024
FETCH_WAIT_MS: Final = 10
_VALUE_BYTES: Final = 12


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
        hashes = bytearray()
        prints = bytearray()
        seen_at = array("I")
        if begin < end:
            self.consumer.assign([tp])
            self.consumer.seek(tp, begin)
            try:
                async for _, records in read_to_end(self.consumer, [tp], ends={tp: end}):
                    for record in records:
                        value = record.value
                        if value is None or len(value) != _VALUE_BYTES:
                            continue  # not written by a worker: nothing to restore
                        hashes += value[:8]
                        prints += value[8:]
                        seen_at.append(record.timestamp // 1000)
            finally:
                # Nothing assigned between restores: no idle fetching.
                self.consumer.assign([])
        if sys.byteorder == "big":
            seen_at.byteswap()
        return Restored(bytes(hashes), bytes(prints), seen_at.tobytes())
