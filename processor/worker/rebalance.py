"""What happens to a partition's state when the group moves it: the worker's rebalance listener.

Partitions are given away only after the batch in flight and the open checkpoint are
committed, and set up before any of their records is routed: under the batch lock both
ways. The guarantee, dedup and the DLQ breakers each set up or drop what they keep per
partition.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Collection

import structlog
from aiokafka import ConsumerRebalanceListener, TopicPartition

from processor.dedup.screen import Dedup
from processor.worker.breaker import Breakers
from processor.worker.checkpoint import Guarantee

__all__ = ["Rebalance", "partition_names"]

log = structlog.get_logger(__name__)


def partition_names(partitions: Collection[TopicPartition]) -> list[str]:
    """`webhooks.raw/3` for each partition, for log lines and /readyz."""
    return [f"{tp.topic}/{tp.partition}" for tp in partitions]


class Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(
        self,
        *,
        in_flight: asyncio.Lock,
        guarantee: Guarantee,
        dedup: Dedup | None,
        breakers: Breakers,
        commit: Callable[[], Awaitable[object]],
        on_revoked: Callable[[Collection[TopicPartition]], None] = lambda revoked: None,
        on_moved: Callable[[], None] = lambda: None,
    ) -> None:
        self._in_flight = in_flight
        self._commit = commit
        self._on_revoked = on_revoked
        self._guarantee = guarantee
        self._dedup = dedup
        self._breakers = breakers
        self._on_moved = on_moved

    async def on_partitions_revoked(self, revoked: Collection[TopicPartition]) -> None:
        async with self._in_flight:
            # What is staged is committed while the partitions are still this worker's.
            await self._commit()
            await self._guarantee.revoked(revoked)
            if self._dedup is not None:
                self._dedup.revoked(revoked)
            self._breakers.forget(revoked)
            if revoked:  # aiokafka also calls this, with nothing, before the first join
                self._on_revoked(revoked)
                self._on_moved()
                log.info("partitions.revoked", partitions=partition_names(revoked))

    async def on_partitions_assigned(self, assigned: Collection[TopicPartition]) -> None:
        # Under the batch lock: a batch fetched meanwhile waits for the restore.
        async with self._in_flight:
            # Exactly once: the member the partitions' offsets are committed as, from now.
            await self._guarantee.assigned(assigned)
            if self._dedup is not None:
                await self._dedup.assigned(assigned)
        self._on_moved()
        log.info("partitions.assigned", partitions=partition_names(assigned))
