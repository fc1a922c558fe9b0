"""The worker's metrics: what a batch adds, read back from the exposition text."""

from __future__ import annotations

import time
from collections import Counter

import msgspec
from prometheus_client.parser import text_string_to_metric_families

from processor.metrics import WorkerMetrics, render
from processor.routing import Routed


def samples(metrics: WorkerMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the registry as {(name, sorted labels): value}."""
    body, _ = render(metrics.registry)
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
    }


def records(metrics: WorkerMetrics, outcome: str) -> float:
    return samples(metrics)[("processor_worker_records_total", (("outcome", outcome),))]


def test_every_routing_outcome_is_exported_at_zero_before_the_first_batch() -> None:
    info = msgspec.inspect.type_info(Routed)
    assert isinstance(info, msgspec.inspect.StructType)
    (outcome,) = [f for f in info.fields if f.name == "outcome"]
    metrics = WorkerMetrics()
    assert isinstance(outcome.type, msgspec.inspect.LiteralType)
    for value in outcome.type.values:
        assert records(metrics, str(value)) == 0


def test_a_committed_batch_adds_its_outcomes_latency_and_commit_time() -> None:
    metrics = WorkerMetrics()
    before = time.time()
    metrics.count_batch(Counter(routed=7, dlq=2), seconds=0.004)
    metrics.count_batch(Counter(routed=1, unrouted=3), seconds=0.2)

    found = samples(metrics)
    assert (records(metrics, "routed"), records(metrics, "unrouted")) == (8, 3)
    assert records(metrics, "dlq") == 2
    assert found[("processor_worker_batches_total", ())] == 2
    assert found[("processor_worker_batch_seconds_count", ())] == 2
    assert found[("processor_worker_batch_seconds_bucket", (("le", "0.005"),))] == 1
    assert found[("processor_worker_last_commit_timestamp_seconds", ())] >= before
    assert found[("processor_worker_produce_failures_total", ())] == 0
    assert found[("processor_worker_commit_failures_total", ())] == 0


def test_each_instance_counts_alone() -> None:
    first, second = WorkerMetrics(), WorkerMetrics()
    first.commit_failures.inc()
    assert samples(first)[("processor_worker_commit_failures_total", ())] == 1
    assert samples(second)[("processor_worker_commit_failures_total", ())] == 0
