"""The worker's Kafka side as the config asks for it: its consumer, its guarantee (at
least once, or exactly once with a transactional producer per raw partition) and the
dedup changelog reader, each watched for outages by one Connectivity.

The worker takes these as parts (`Consumer` says what it uses of its consumer);
tests give it fakes instead.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeAlias

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition

from processor.config import Config
from processor.dedup.changelog import KafkaChangelog
from processor.dedup.screen import Dedup
from processor.kafka.aiokafka_internals import client_of
from processor.kafka.clients import (
    renewing_producer,
    worker_consumer_options,
    worker_producer_options,
)
from processor.kafka.connectivity import Connectivity
from processor.kafka.producers import BoundedProducer
from processor.metrics import WorkerMetrics
from processor.worker.checkpoint import AtLeastOnce, Guarantee
from processor.worker.exactly_once import ExactlyOnce, TransactionalProducer

__all__ = ["Batch", "Consumer", "KafkaParts", "kafka_parts"]

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
    def seek(self, partition: TopicPartition, offset: int) -> None: ...
    def pause(self, *partitions: TopicPartition) -> None: ...
    def resume(self, *partitions: TopicPartition) -> None: ...
    async def commit(self, offsets: Mapping[TopicPartition, int]) -> None: ...


@dataclass
class KafkaParts:
    consumer: Consumer
    guarantee: Guarantee
    dedup: Dedup | None
    changelog: KafkaChangelog | None
    connectivity: Connectivity


def kafka_parts(config: Config, metrics: WorkerMetrics) -> KafkaParts:
    """Every Kafka client a worker needs, unstarted."""
    connectivity = Connectivity(bootstrap=config.kafka.bootstrap_servers, registry=metrics.registry)
    consumer = AIOKafkaConsumer(**worker_consumer_options(config))
    connectivity.watch(client_of(consumer))
    guarantee: Guarantee
    if config.worker.guarantee == "exactly_once":

        def producer_for(transactional_id: str) -> TransactionalProducer:
            producer = BoundedProducer(
                **worker_producer_options(config),
                transactional_id=transactional_id,
                transaction_timeout_ms=config.worker.transaction_timeout_ms,
                flush_timeout_s=config.worker.produce_timeout_s,
            )
            connectivity.watch(producer.client)
            return producer

        guarantee = ExactlyOnce(
            group_id=config.worker.group_id,
            producer_for=producer_for,
            produce_timeout_s=config.worker.produce_timeout_s,
        )
    else:
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
    changelog = dedup = None
    if config.dedup.enabled:
        changelog = KafkaChangelog(config)
        connectivity.watch(client_of(changelog.consumer))
        dedup = Dedup(topic=config.topics.dedup, window_s=config.dedup.window_s, reader=changelog)
    return KafkaParts(consumer, guarantee, dedup, changelog, connectivity)
