"""Prometheus metrics, served as text on `GET /metrics`.

Each process (and each app a test builds) owns its registry instead of sharing
prometheus-client's global one, so building a second app never collides with the
first and a test reads only its own numbers.
"""

from __future__ import annotations

import contextlib
from collections.abc import Collection, Mapping

from aiokafka import TopicPartition
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)

from processor.outcomes import OUTCOMES

__all__ = ["IngressMetrics", "WorkerMetrics", "render"]

# From a local acks=all round trip (a few ms) up to ingress.publish_timeout_s's default.
_PUBLISH_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
# From a small batch on a local broker (about a millisecond) up to
# worker.produce_timeout_s's default, where a batch gives up and is retried.
_BATCH_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class IngressMetrics:
    """What an operator watches on the ingress: outcomes, Kafka latency, backlog."""

    def __init__(self) -> None:
        # A registry per app, not the global one: tests and benchmarks run several apps.
        self.registry = _process_registry()
        self._requests = Counter(
            "processor_ingress_requests",
            "Webhook deliveries answered, by HTTP status code.",
            ["code"],
            registry=self.registry,
        )
        self._by_status: dict[int, Counter] = {}
        self.publish_seconds = Histogram(
            "processor_ingress_publish_seconds",
            "Time from handing a delivery to the producer to Kafka's acks=all acknowledgement.",
            buckets=_PUBLISH_BUCKETS,
            registry=self.registry,
        )
        self.publishes_in_flight = Gauge(
            "processor_ingress_publishes_in_flight",
            "Deliveries handed to the producer and not yet acknowledged or timed out.",
            registry=self.registry,
        )
        self.deliveries_in_flight = Gauge(
            "processor_ingress_deliveries_in_flight",
            "Verified deliveries waiting for Kafka now (at most ingress.max_in_flight).",
            registry=self.registry,
        )
        self.shed = Counter(
            "processor_ingress_shed",
            "Verified deliveries answered 503 at once, unpublished, because "
            "ingress.max_in_flight were waiting for Kafka already.",
            registry=self.registry,
        )

    def count_response(self, status: int) -> None:
        # One child per status code, looked up once: labels() costs more than inc().
        counter = self._by_status.get(status)
        if counter is None:
            counter = self._by_status[status] = self._requests.labels(code=str(status))
        counter.inc()


class WorkerMetrics:
    """What an operator watches on a worker: outcomes, batch latency, Kafka failures, progress.

    Updated once per batch, not per record: the worker counts outcomes anyway for its
    `batch.committed` log line, and hands the totals over here.
    """

    def __init__(self) -> None:
        # A registry per worker, not the global one: tests run several workers in one process.
        self.registry = _process_registry()
        records = Counter(
            "processor_worker_records",
            "Records read and committed, by outcome: routed, unrouted, dlq, or duplicate "
            "(a provider retry of a delivery already routed: not produced again).",
            ["outcome"],
            registry=self.registry,
        )
        # Every child resolved up front: a batch costs a few inc() calls, and each
        # outcome is exported (as 0) before its first record, so rate() works from the start.
        self._records = {
            outcome: records.labels(outcome=outcome) for outcome in (*OUTCOMES, "duplicate")
        }
        self._conflicts = Counter(
            "processor_worker_dedup_conflicts",
            "Deliveries whose id was routed before with other bytes (routed again).",
            registry=self.registry,
        )
        self._trips = Counter(
            "processor_worker_dlq_breaker_trips",
            "Times a partition was paused because too many of its records went to the DLQ.",
            registry=self.registry,
        )
        self._paused = Gauge(
            "processor_worker_dlq_breaker_open",
            "Partitions paused by the DLQ breaker now (the worker shows as not ready).",
            registry=self.registry,
        )
        self._remembered = Gauge(
            "processor_worker_dedup_ids",
            "Delivery ids remembered for dedup, over the partitions this worker owns.",
            registry=self.registry,
        )
        self._remembered_bytes = Gauge(
            "processor_worker_dedup_bytes",
            "Memory held by the remembered delivery ids.",
            registry=self.registry,
        )
        self._batches = Counter(
            "processor_worker_batches",
            "Batches routed, produced and committed.",
            registry=self.registry,
        )
        self._batch_seconds = Histogram(
            "processor_worker_batch_seconds",
            "Time from a batch's fetch to its offsets' commit.",
            buckets=_BATCH_BUCKETS,
            registry=self.registry,
        )
        self._last_commit = Gauge(
            "processor_worker_last_commit_timestamp_seconds",
            "Unix time of the last committed batch; old while consumer lag grows: a stuck worker.",
            registry=self.registry,
        )
        self._lag = Gauge(
            "processor_worker_consumer_lag",
            "Records of a raw partition this worker owns that it has not committed yet: "
            "the partition's high watermark less the offset the worker last committed.",
            ["topic", "partition"],
            registry=self.registry,
        )
        self.produce_failures = Counter(
            "processor_worker_produce_failures",
            "Batches whose produce failed or timed out; each is retried from its first offsets.",
            registry=self.registry,
        )
        self.commit_failures = Counter(
            "processor_worker_commit_failures",
            "Batches produced whose offsets commit failed; their next owner re-routes them.",
            registry=self.registry,
        )

    def count_batch(
        self, outcomes: Mapping[str, int], *, seconds: float | None, conflicts: int = 0
    ) -> None:
        """A committed batch (or the committed part of one): records by outcome, dedup
        conflicts, and `seconds` from fetch to commit when all of it was committed."""
        for outcome, counter in self._records.items():
            counter.inc(outcomes.get(outcome, 0))
        self._conflicts.inc(conflicts)
        self._batches.inc()
        if seconds is not None:
            self._batch_seconds.observe(seconds)
        self._last_commit.set_to_current_time()

    def breaker_tripped(self, *, paused: int) -> None:
        self._trips.inc()
        self._paused.set(paused)

    def breaker_paused(self, paused: int) -> None:
        self._paused.set(paused)

    def set_lag(self, lags: Mapping[TopicPartition, int]) -> None:
        for partition, records in lags.items():
            self._lag.labels(partition.topic, str(partition.partition)).set(records)

    def forget_lag(self, partitions: Collection[TopicPartition]) -> None:
        """Partitions that moved to another worker: it reports them now."""
        for partition in partitions:
            with contextlib.suppress(KeyError):
                self._lag.remove(partition.topic, str(partition.partition))

    def set_remembered(self, ids: int, nbytes: int) -> None:
        self._remembered.set(ids)
        self._remembered_bytes.set(nbytes)


def render(registry: CollectorRegistry) -> tuple[bytes, str]:
    """The Prometheus text exposition of `registry` and its Content-Type."""
    return generate_latest(registry), CONTENT_TYPE_LATEST


def _process_registry() -> CollectorRegistry:
    """A fresh registry with CPU, memory and file-descriptor gauges of this process."""
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    return registry
