"""What a Worker is made of, and the one place that makes it from the config.

`WorkerParts` is everything the worker does I/O or keeps time with: its consumer, its
guarantee (at least once, or exactly once with one transactional producer), dedup and
its changelog reader, how to wait for the cluster and whether it answers, and the
clock. `kafka_parts` builds them with aiokafka, each client watched
for outages by one Connectivity; tests and benchmarks hand the same constructor fakes
(processor.testing), so there is one way to build a Worker.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeAlias

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition

from processor.config import Config
from processor.dedup.changelog import KafkaChangelog
from processor.dedup.record import ids_per_record
from processor.dedup.screen import Dedup
from processor.kafka import unreadable
from processor.kafka.aiokafka_internals import client_of, group_member
from processor.kafka.clients import (
    StableOffsetsConsumer,
    group_instance_id,
    leave_group,
    renewing_producer,
    wait_until_reachable,
    worker_consumer_options,
    worker_producer_options,
)
from processor.kafka.connectivity import Connectivity
from processor.kafka.producers import MemberProducer
from processor.metrics import WorkerMetrics
from processor.worker.checkpoint import AtLeastOnce, Guarantee
from processor.worker.exactly_once import ExactlyOnce, TransactionalProducer, transactional_id

__all__ = ["Batch", "Consumer", "Service", "WorkerParts", "kafka_parts"]

# What one getmany() returns: each partition's records, in offset order.
Batch: TypeAlias = Mapping[TopicPartition, Sequence[Any]]


class Consumer(Protocol):
    """What the worker uses of its consumer (aiokafka's AIOKafkaConsumer)."""

    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    async def topics(self) -> set[str]: ...
    def subscribe(self, topics: list[str], *, listener: ConsumerRebalanceListener) -> None: ...
    async def getmany(self, *, timeout_ms: int, max_records: int) -> Batch: ...
    def assignment(self) -> set[TopicPartition]: ...
    def highwater(self, partition: TopicPartition) -> int | None: ...
    async def position(self, partition: TopicPartition) -> int: ...
    def seek(self, partition: TopicPartition, offset: int) -> None: ...
    def pause(self, *partitions: TopicPartition) -> None: ...
    def resume(self, *partitions: TopicPartition) -> None: ...
    async def commit(self, offsets: Mapping[TopicPartition, int]) -> None: ...
    async def committed(self, partition: TopicPartition) -> int | None: ...


class Service(Protocol):
    """A part with a life of its own: the dedup changelog reader."""

    async def start(self) -> None: ...
    async def stop(self) -> None: ...


async def _nothing() -> None:
    pass


@dataclass(frozen=True, kw_only=True)
class WorkerParts:
    consumer: Consumer
    guarantee: Guarantee
    dedup: Dedup | None = None
    # Started after the consumer, stopped after it.
    changelog: Service | None = None
    # Awaited before anything starts: until a broker answers.
    reach: Callable[[], Awaitable[None]] = _nothing
    # Whether the cluster answers now (readiness).
    reachable: Callable[[], bool] = lambda: True
    # Takes this member out of the group now, when told to (a static member stopping
    # stays in it until its session expires, waiting for its own restart).
    leave: Callable[[], Awaitable[None]] = _nothing
    # Wall-clock time, for the DLQ breaker's rests (dedup's window takes the same clock).
    clock: Callable[[], float] = time.time


def kafka_parts(config: Config, metrics: WorkerMetrics) -> WorkerParts:
    """Every Kafka client a worker needs, unstarted, as the config asks for them."""
    # A record aiokafka cannot read reaches the router marked, to be parked.
    unreadable.install()
    connectivity = Connectivity(bootstrap=config.kafka.bootstrap_servers, registry=metrics.registry)
    member = group_instance_id(config)
    guarantee: Guarantee
    if config.worker.guarantee == "exactly_once":
        consumer: AIOKafkaConsumer = StableOffsetsConsumer(**worker_consumer_options(config))
        worker_id = transactional_id(config.worker.group_id, member)

        def producer_for() -> TransactionalProducer:
            producer = MemberProducer(
                **worker_producer_options(config),
                transactional_id=worker_id,
                transaction_timeout_ms=config.worker.transaction_timeout_ms,
                flush_timeout_s=config.worker.produce_timeout_s,
            )
            connectivity.watch(producer.client)
            return producer

        guarantee = ExactlyOnce(
            producer_for=producer_for,
            member=functools.partial(group_member, consumer),
            consumer=consumer,
            produce_timeout_s=config.worker.produce_timeout_s,
            commit_timeout_s=config.worker.commit_timeout_s,
        )
    else:
        consumer = AIOKafkaConsumer(**worker_consumer_options(config))
        guarantee = AtLeastOnce(
            producer=renewing_producer(
                config,
                name="worker",
                options=worker_producer_options(config),
                connectivity=connectivity,
            ),
            consumer=consumer,
            produce_timeout_s=config.worker.produce_timeout_s,
            commit_timeout_s=config.worker.commit_timeout_s,
        )
    connectivity.watch(client_of(consumer))
    changelog = dedup = None
    clock = time.time
    if config.dedup.enabled:
        changelog = KafkaChangelog(config)
        connectivity.watch(client_of(changelog.consumer))
        dedup = Dedup(
            topic=config.topics.dedup,
            window_s=config.dedup.window_s,
            reader=changelog,
            ids_per_record=ids_per_record(config.topics.max_message_bytes),
            clock=clock,
        )
    return WorkerParts(
        consumer=consumer,
        guarantee=guarantee,
        dedup=dedup,
        changelog=changelog,
        reach=functools.partial(wait_until_reachable, config.kafka),
        reachable=lambda: connectivity.reachable,
        leave=_nothing if member is None else functools.partial(leave_group, config, member),
        clock=clock,
    )
