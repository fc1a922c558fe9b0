"""What a healthy worker says: one `worker.summary` line every worker.log_interval_s.

At hundreds of deliveries a second a line per batch (usually of one record) would be
the log, and its cost would count against the hot path: `batch.committed` is DEBUG.
What needs a reader (a DLQ record, a conflict, a failed write, a tripped breaker) is
still said at once, where it happens.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Mapping

import structlog

__all__ = ["OUTCOMES", "Summary"]

log = structlog.get_logger(__name__)

OUTCOMES = ("routed", "unrouted", "dlq", "duplicate")


class Summary:
    """Counts committed batches between two lines; `say` writes one and starts over."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._since = clock()
        self._outcomes: Counter[str] = Counter()
        self._batches = 0

    def add(self, outcomes: Mapping[str, int]) -> None:
        self._outcomes.update(outcomes)
        self._batches += 1

    def say(self, *, partitions: int, lag: int | None) -> None:
        """lag: records in the assigned partitions not committed yet (None: unknown,
        before the first fetch of any of them)."""
        now = self._clock()
        log.info(
            "worker.summary",
            interval_s=round(now - self._since, 1),
            records=sum(self._outcomes[outcome] for outcome in OUTCOMES),
            **{outcome: self._outcomes[outcome] for outcome in OUTCOMES},
            batches=self._batches,
            partitions=partitions,
            lag=lag,
        )
        self._since = now
        self._outcomes.clear()
        self._batches = 0
