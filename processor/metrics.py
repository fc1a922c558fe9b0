"""Prometheus metrics, served as text on `GET /metrics`.

Each process (and each app a test builds) owns its registry instead of sharing
prometheus-client's global one, so building a second app never collides with the
first and a test reads only its own numbers.
"""

from __future__ import annotations

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

__all__ = ["IngressMetrics", "render"]

# From a local acks=all round trip (a few ms) up to ingress.publish_timeout_s's default.
_PUBLISH_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


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

    def count_response(self, status: int) -> None:
        # One child per status code, looked up once: labels() costs more than inc().
        counter = self._by_status.get(status)
        if counter is None:
            counter = self._by_status[status] = self._requests.labels(code=str(status))
        counter.inc()


def render(registry: CollectorRegistry) -> tuple[bytes, str]:
    """The Prometheus text exposition of `registry` and its Content-Type."""
    return generate_latest(registry), CONTENT_TYPE_LATEST


def _process_registry() -> CollectorRegistry:
    """A fresh registry with CPU, memory and file-descriptor gauges of this process."""
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    return registry
