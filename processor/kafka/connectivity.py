"""Kafka going away is a state change: reported once, retried at a bounded pace.

Left alone, aiokafka 0.14 turns a broker outage into a flood: every client retries
its metadata request in a tight loop (a failed connection asks for new metadata,
which fails at once, which wakes the sender or fetcher again), logging two ERROR
lines per turn, tens of thousands a minute at a full core. Two fixes, both here:

- `Connectivity.watch(client)` paces a client's metadata refresh after a failure
  (doubling from RETRY_BACKOFF_S to MAX_RETRY_BACKOFF_S, as the Java client's
  `reconnect.backoff.max.ms`), so everything that waits for metadata waits too,
  and turns the outcome into one `kafka.unreachable` warning and one
  `kafka.reachable` line once it has been back for CONFIRM_S, with counts in metrics;
- `RetryNoiseFilter` keeps aiokafka's per-attempt lines about the same trouble
  (connection refused, metadata, fetch, coordinator, produce retries) out of any
  log above DEBUG.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final

import structlog
from aiokafka.client import AIOKafkaClient
from prometheus_client import CollectorRegistry, Counter, Gauge

from processor.kafka.aiokafka_internals import wrap_connect, wrap_metadata_refresh

__all__ = ["Connectivity", "RetryNoiseFilter"]

log = structlog.get_logger(__name__)

# The pause after a failed metadata refresh doubles from the first to the last: fast
# enough to notice a broker back within a second, slow enough to cost no CPU.
RETRY_BACKOFF_S: Final = 0.1
MAX_RETRY_BACKOFF_S: Final = 1.0
# A broker that is shutting down can accept a connection and reset it a moment later:
# Kafka is back (for readiness at once) but reported back only once a connection is
# made this long after the first, with no failure in between. A failure sooner is the
# same outage going on, not a new one.
CONFIRM_S: Final = 1.0

# aiokafka's lines for one failed attempt at something it retries by itself (format
# strings, as aiokafka passes them). Connectivity reports the state they describe.
_RETRY_LINES: Final = frozenset(
    {
        'Unable connect to "%s:%s": %s',
        'Unable to request metadata from "%s:%s": %s',
        "Unable connect to node with id %s: %s",
        "Unable to request metadata from node with id %s: %r",
        "Unable to update metadata from %s",
        "Failed fetch messages from %s: %s",
        "Failed fetch offsets from %s: %s",
        "Group Coordinator Request failed: %s",
        "Marking the coordinator dead (node %s)for group %s.",
        "Error sending %s to node %s [%s] -- marking coordinator dead",
        "Heartbeat send request failed: %s. Will retry.",
        "Heartbeat failed for group %s: coordinator (node %s) is either not started or not valid",
        "Heartbeat session expired - marking coordinator dead",
        "Got error produce response: %s",
        "Got error produce response on topic-partition %s, retrying. Error: %s",
        "Cannot send %r to %s: %r",
        "Could not send %r: %r",
    }
)


class RetryNoiseFilter(logging.Filter):
    """Drops aiokafka's per-attempt retry lines; Connectivity reports the state instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.name.startswith("aiokafka") and record.msg in _RETRY_LINES)


class Connectivity:
    """Whether this process's Kafka clients reach the cluster, reported on change only.

    One per process, shared by its clients; its metrics go into `registry`.
    """

    def __init__(
        self,
        *,
        bootstrap: str,
        registry: CollectorRegistry,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._bootstrap = bootstrap
        self._clock = clock
        # Since when the outage reported has lasted; None while Kafka is reported reachable.
        self._down_since: float | None = None
        # In an outage: since when a connection has been made with no failure since.
        self._back_since: float | None = None
        self._reachable = Gauge(
            "processor_kafka_reachable",
            "1 while this process's Kafka clients reach a broker "
            "(0 from a metadata refresh that reached none).",
            registry=registry,
        )
        self._reachable.set(1)
        self._failures = Counter(
            "processor_kafka_metadata_failures",
            "Metadata refreshes that reached no broker (each retried after a pause).",
            registry=registry,
        )
        self._outages = Counter(
            "processor_kafka_outages",
            "Times this process lost every broker.",
            registry=registry,
        )
        self._renewals = Counter(
            "processor_kafka_producer_renewals",
            "Producers replaced because Kafka left them unable to write (a new producer id).",
            registry=registry,
        )

    @property
    def reachable(self) -> bool:
        return self._down_since is None or self._back_since is not None

    def producer_renewed(self) -> None:
        """Count a producer replaced (processor.kafka.producers logs why)."""
        self._renewals.inc()

    def watch(self, client: AIOKafkaClient) -> None:
        """Pace the metadata refreshes of `client` (an AIOKafkaClient), report its state.

        Patches the instance, not the class: only clients that are watched change.
        Call before the client starts.
        """
        pause = RETRY_BACKOFF_S
        connections = 0

        def paced(refresh: Callable[..., Awaitable[bool]]) -> Callable[..., Awaitable[bool]]:
            async def paced_refresh(*args: Any) -> bool:
                nonlocal pause
                before = connections
                if await refresh(*args):
                    pause = RETRY_BACKOFF_S
                    return True
                # A broker that answers without metadata (still starting) is not an outage.
                if connections == before:
                    self._failed()
                await asyncio.sleep(pause)
                pause = min(pause * 2, MAX_RETRY_BACKOFF_S)
                return False

            return paced_refresh

        # Any connection made is the news that Kafka answers; a reconnect after an
        # outage needs no metadata refresh to succeed.
        def reported(connect: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
            async def connect_and_report(*args: Any, **kwargs: Any) -> Any:
                nonlocal connections
                connection = await connect(*args, **kwargs)
                if connection is not None:
                    connections += 1
                    if self._down_since is not None:
                        self._connected()
                return connection

            return connect_and_report

        wrap_metadata_refresh(client, paced)
        wrap_connect(client, reported)

    def _failed(self) -> None:
        self._failures.inc()
        self._reachable.set(0)
        if self._down_since is not None:
            self._back_since = None
            return
        self._down_since = self._clock()
        self._outages.inc()
        log.warning(
            "kafka.unreachable",
            bootstrap=self._bootstrap,
            detail="no broker answered a metadata request; check that the brokers are up "
            "and reachable from here (kafka.bootstrap_servers, network, TLS/SASL settings). "
            f"Retrying every {MAX_RETRY_BACKOFF_S:g} s at most; work resumes by itself.",
        )

    def _connected(self) -> None:
        """A connection made in an outage: Kafka is back, and reported so once confirmed."""
        assert self._down_since is not None
        now = self._clock()
        self._reachable.set(1)
        if self._back_since is None:
            self._back_since = now
            return
        if now - self._back_since < CONFIRM_S:
            return
        seconds = round(self._back_since - self._down_since, 1)
        self._down_since = self._back_since = None
        log.info("kafka.reachable", bootstrap=self._bootstrap, unreachable_for_s=seconds)
