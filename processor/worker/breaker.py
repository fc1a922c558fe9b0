"""A DLQ that cannot swallow a whole stream (Sentry Arroyo's DlqLimit, per partition). No I/O.

After a bad deploy or a provider format change every record can go to the DLQ,
quietly, until someone notices. A partition trips its breaker when a batch would
take it over one of two limits:

- more than `max_ratio` of its last `window` records to the DLQ (judged once it has
  seen `window` records, so that a quiet partition is not paused for a few strays);
- more than `max_consecutive` records in a row to the DLQ.

The worker then routes the batch up to the record that trips it, holds back the
rest (not produced, not committed: the records stay in the raw topic, and a fixed
worker routes them without any replay), pauses the partition, and tries again after
a pause. `max_ratio` 1.0 turns it off.
"""

from __future__ import annotations

import functools
from collections import deque
from collections.abc import Collection, Sequence
from typing import NamedTuple

from aiokafka.structs import TopicPartition

__all__ = ["Breakers", "DlqBreaker", "Trip"]


class Trip(NamedTuple):
    """The first record of a batch to hold back, and why."""

    at: int
    reason: str


class DlqBreaker:
    """One partition's recent outcomes: True for a record that went to the DLQ."""

    def __init__(self, *, max_ratio: float, window: int, max_consecutive: int) -> None:
        self._max_ratio = max_ratio
        self._window = window
        self._max_consecutive = max_consecutive
        self._recent: deque[bool] = deque(maxlen=window)
        self._dead = 0  # True values in _recent
        self._run = 0  # the DLQ run the newest records end with

    @property
    def enabled(self) -> bool:
        return self._max_ratio < 1.0

    def would_trip(self, outcomes: Sequence[bool]) -> Trip | None:
        """Where and why adding `outcomes` (in order) trips the breaker, or None.

        Changes nothing: the caller records what it commits.
        """
        if not self.enabled:
            return None
        recent = self._recent
        known = len(recent)
        run = self._run
        dead = self._dead
        for index, outcome in enumerate(outcomes):
            run = run + 1 if outcome else 0
            if run > self._max_consecutive:
                start = max(0, index - run + 1)  # the run may have begun in earlier batches
                return Trip(
                    start,
                    f"{run} records in a row went to the DLQ (limit {self._max_consecutive})",
                )
            dead += outcome
            seen = known + index + 1
            if seen > self._window:  # the oldest outcome leaves the window
                leaving = seen - self._window - 1
                dead -= recent[leaving] if leaving < known else outcomes[leaving - known]
            if seen >= self._window and dead > self._max_ratio * self._window:
                return Trip(
                    index,
                    f"{dead} of the last {self._window} records went to the DLQ "
                    f"(limit {self._max_ratio:.0%})",
                )
        return None

    def record(self, outcomes: Sequence[bool]) -> None:
        """`outcomes` were routed: they count from now on."""
        if not self.enabled:
            return
        for dead in outcomes:
            if len(self._recent) == self._window:
                self._dead -= self._recent[0]
            self._recent.append(dead)
            self._dead += dead
            self._run = self._run + 1 if dead else 0


class Breakers:
    """Every owned partition's breaker, and the partitions paused until when."""

    def __init__(
        self, *, max_ratio: float, window: int, max_consecutive: int, pause_s: float
    ) -> None:
        self._new = functools.partial(
            DlqBreaker, max_ratio=max_ratio, window=window, max_consecutive=max_consecutive
        )
        self.enabled = max_ratio < 1.0
        self._pause_s = pause_s
        self._breakers: dict[TopicPartition, DlqBreaker] = {}
        self._paused: dict[TopicPartition, float] = {}  # partition -> when to try again

    def would_trip(self, partition: TopicPartition, outcomes: Sequence[bool]) -> Trip | None:
        if not self.enabled:
            return None
        return self._breaker(partition).would_trip(outcomes)

    def record(self, partition: TopicPartition, outcomes: Sequence[bool]) -> None:
        if self.enabled:
            self._breaker(partition).record(outcomes)

    def trip(self, partition: TopicPartition, now: float) -> float:
        """Pause `partition`; returns when to try it again."""
        self._paused[partition] = until = now + self._pause_s
        return until

    def due(self, now: float) -> list[TopicPartition]:
        """Paused partitions whose pause is over: resumed, with a fresh breaker."""
        ready = [partition for partition, until in self._paused.items() if until <= now]
        for partition in ready:
            del self._paused[partition]
            self._breakers.pop(partition, None)
        return ready

    def paused(self) -> list[TopicPartition]:
        return list(self._paused)

    def forget(self, partitions: Collection[TopicPartition]) -> None:
        """Revoked partitions: their next owner judges them afresh."""
        for partition in partitions:
            self._breakers.pop(partition, None)
            self._paused.pop(partition, None)

    def _breaker(self, partition: TopicPartition) -> DlqBreaker:
        breaker = self._breakers.get(partition)
        if breaker is None:
            breaker = self._breakers[partition] = self._new()
        return breaker
