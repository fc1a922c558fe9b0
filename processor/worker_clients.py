"""The worker's Kafka side as the config asks for it: its consumer, its guarantee (at
least once, or exactly once with a transactional producer per raw partition) and the
dedup changelog reader, each watched for outages by one Connectivity.

The worker takes these as parts; tests give it fakes instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from processor.changelog import KafkaChangelog
from processor.checkpoint import AtLeastOnce, Guarantee
from processor.config import Config
from processor.connectivity import Connectivity
from processor.dedup import Dedup
from processor.kafka_clients import worker_consumer_options, worker_producer_options
from processor.metrics import WorkerMetrics
from processor.transactions import ExactlyOnce, TransactionalProducer

__all__ = ["KafkaParts", "kafka_parts"]


@dataclass
class KafkaParts:
    consumer: Any  # an AIOKafkaConsumer
    guarantee: Guarantee
    dedup: Dedup | None
    changelog: KafkaChangelog | None


def kafka_parts(config: Config, metrics: WorkerMetrics) -> KafkaParts:
    """Every Kafka client a worker needs, unstarted."""
    connectivity = Connectivity(bootstrap=config.kafka.bootstrap_servers, registry=metrics.registry)
    consumer = AIOKafkaConsumer(**worker_consumer_options(config))
    connectivity.watch(consumer._client)
    guarantee: Guarantee
    if config.worker.guarantee == "exactly_once":

        def producer_for(transactional_id: str) -> TransactionalProducer:
            producer = AIOKafkaProducer(
                **worker_producer_options(config), transactional_id=transactional_id
            )
            connectivity.watch(producer.client)
            return producer  # type: ignore[no-any-return]

        guarantee = ExactlyOnce(
            group_id=config.worker.group_id,
            producer_for=producer_for,
            produce_timeout_s=config.worker.produce_timeout_s,
        )
    else:
        producer = AIOKafkaProducer(**worker_producer_options(config))
        connectivity.watch(producer.client)
        guarantee = AtLeastOnce(
            producer=producer,
            consumer=consumer,
            produce_timeout_s=config.worker.produce_timeout_s,
            commit_timeout_s=config.worker.commit_timeout_s,
        )
    changelog = dedup = None
    if config.dedup.enabled:
        changelog = KafkaChangelog(config)
        connectivity.watch(changelog.consumer._client)
        dedup = Dedup(topic=config.topics.dedup, window_s=config.dedup.window_s, reader=changelog)
    return KafkaParts(consumer, guarantee, dedup, changelog)
