"""How the worker's writes are going: the pause before a retry, one log line per streak
of failures, and what /readyz answers.

A failed produce is retried after a pause that doubles while failures last; each
streak (of produce failures, of commit failures) is reported once and its end once;
and the worker is not ready while Kafka is away, its writes or commits fail, or the
DLQ breaker holds partitions.
"""

from __future__ import annotations

from collections.abc import Callable, Collection

import structlog
from aiokafka import TopicPartition

from processor.config import WorkerConfig
from processor.metrics import WorkerMetrics
from processor.worker.checkpoint import CommitFailed, ProduceFailed
from processor.worker.http import Unready
from processor.worker.rebalance import partition_names

__all__ = ["Health"]

log = structlog.get_logger(__name__)


class Health:
    def __init__(
        self,
        *,
        settings: WorkerConfig,
        metrics: WorkerMetrics,
        reachable: Callable[[], bool],
        paused: Callable[[], Collection[TopicPartition]],
    ) -> None:
        self._settings = settings
        self._metrics = metrics
        self._reachable = reachable
        self._paused = paused
        self._backoff = settings.retry_backoff_s
        self._failed_attempts = 0  # consecutive failed produces of the batch being retried
        self._produce_failure: ProduceFailed | None = None  # the last of them
        self._commit_failure: CommitFailed | None = None  # the last commit, if it failed

    def next_pause(self) -> float:
        """How long to pause before the next retry; the one after waits twice as long."""
        pause = self._backoff
        self._backoff = min(self._backoff * 2, self._settings.max_retry_backoff_s)
        return pause

    def produce_failed(self, failure: ProduceFailed, *, records: int) -> None:
        """Count every failed attempt; report a streak of them once. Kafka being away is
        a warning (it heals); a refusal such as a missing ACL needs a human."""
        self._metrics.produce_failures.inc()
        self._failed_attempts += 1
        self._produce_failure = failure
        if self._failed_attempts > 1:
            return
        (log.error if failure.needs_a_human else log.warning)(
            "batch.produce_failed",
            error=repr(failure.cause),
            records=records,
            timeout_s=self._settings.produce_timeout_s,
            detail="the batch is rewound and retried after a pause that doubles "
            f"from {self._backoff:g} s to {self._settings.max_retry_backoff_s:g} s "
            "until Kafka takes it; nothing is committed meanwhile",
        )

    def written(self) -> None:
        """A batch's outputs are in Kafka: the pause before a retry starts over."""
        if self._failed_attempts:
            log.info("batch.produce_recovered", failed_attempts=self._failed_attempts)
            self._failed_attempts = 0
            self._produce_failure = None
        self._backoff = self._settings.retry_backoff_s

    def commit_failed(self, failure: CommitFailed, *, records: int) -> None:
        self._metrics.commit_failures.inc()
        if self._commit_failure is None:
            log.warning("batch.commit_failed", error=repr(failure.cause), records=records)
        self._commit_failure = failure

    def committed(self) -> None:
        if self._commit_failure is not None:
            log.info("batch.commit_recovered")
            self._commit_failure = None

    def partitions_moved(self) -> None:
        """A failed produce or commit concerned partitions the group has just moved: the
        next batch says again whether writing works (an idle topic might never)."""
        self._produce_failure = self._commit_failure = None

    def not_ready(self) -> Unready | None:
        """Why the worker cannot route now, for /readyz; None when it can."""
        if not self._reachable():
            return Unready(
                "kafka_unreachable",
                "no broker answers; the worker retries and resumes by itself",
            )
        if (produce := self._produce_failure) is not None:
            return Unready(
                "produce_failing",
                f"Kafka did not take the last batch ({type(produce.cause).__name__}); "
                "it is retried with a growing pause, nothing is committed meanwhile",
            )
        if (commit := self._commit_failure) is not None:
            return Unready(
                "commit_failing",
                f"the last offsets commit failed ({type(commit.cause).__name__}); its "
                "batch is routed again by whoever owns the partition next",
            )
        if paused := partition_names(self._paused()):
            return Unready(
                "dlq_breaker_open",
                "too many records of these partitions went to the DLQ: they are paused "
                "and tried again every worker.dlq_pause_s; see webhooks.dlq",
                tuple(paused),
            )
        return None
