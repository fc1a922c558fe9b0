"""One fetched batch on its way through the worker, raw partition by raw partition.

A `Share` is one partition's part of a batch: its records, what routing made of them,
which went to the DLQ (what the partition's breaker counts) and, with dedup, what was
kept. The worker's steps fill shares in; the counts and log lines of what was
committed are made from them here.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import structlog
from aiokafka import TopicPartition

from processor.dedup.screen import Screened
from processor.headers import ERROR_CLASS
from processor.routing import Routed

__all__ = ["Share", "log_breaker_open", "log_committed", "tally"]

log = structlog.get_logger(__name__)


@dataclass(slots=True)
class Share:
    """One raw partition's records in a batch, and what became of them."""

    records: Sequence[Any]
    routed: list[Routed]
    dead: list[bool] | None = None  # per record, went to the DLQ; None: the breaker is off
    screened: Screened | None = None  # with dedup: what is produced, what is remembered

    @property
    def outputs(self) -> Sequence[Routed]:
        return self.routed if self.screened is None else self.screened.outputs

    @property
    def next_offset(self) -> int:
        """The offset to commit once all of it is in Kafka."""
        offset: int = self.records[-1].offset + 1
        return offset

    def split(self, at: int) -> Share:
        """Keep the first `at` records; return the rest (what a tripped breaker holds)."""
        rest = Share(self.records[at:], self.routed[at:])
        self.records, self.routed = self.records[:at], self.routed[:at]
        if self.dead is not None:
            self.dead = self.dead[:at]
        return rest


def tally(shares: Mapping[TopicPartition, Share]) -> tuple[Counter[str], list[Routed]]:
    """Records by outcome (and dedup's duplicates), and dedup's conflicts."""
    outcomes: Counter[str] = Counter()
    conflicts: list[Routed] = []
    for share in shares.values():
        outcomes.update(r.outcome for r in share.outputs)
        if share.screened is not None:
            outcomes["duplicate"] += share.screened.duplicates
            conflicts += share.screened.conflicts
    return outcomes, conflicts


def log_committed(
    shares: Mapping[TopicPartition, Share], outcomes: Counter[str], conflicts: list[Routed]
) -> None:
    """One line per dead-lettered delivery and per conflict; a DEBUG line per batch."""
    for conflict in conflicts:
        log.warning(
            "delivery.conflict",
            delivery_id=conflict.delivery_id,
            topic=conflict.topic,
            detail="this delivery id was routed before with other bytes: not a retry, "
            "so it is routed again; subscribers get both versions",
        )
    if outcomes["dlq"]:  # nearly every batch has none: no walk over its records then
        for share in shares.values():
            for record, result in zip(share.records, share.routed, strict=True):
                if result.outcome == "dlq":
                    log.warning(
                        "delivery.dead_lettered",
                        delivery_id=result.delivery_id,
                        reason=result.error,
                        topic=record.topic,
                        partition=record.partition,
                        offset=record.offset,
                    )
    if not log.is_enabled_for(logging.DEBUG):  # processor.worker.summary says it instead
        return
    log.debug(
        "batch.committed",
        records=sum(outcomes.values()),
        routed=outcomes["routed"],
        unrouted=outcomes["unrouted"],
        dlq=outcomes["dlq"],
        duplicate=outcomes["duplicate"],
        partitions={
            f"{tp.topic}/{tp.partition}": share.records[-1].offset for tp, share in shares.items()
        },
    )


def log_breaker_open(
    partition: TopicPartition, held: Share, *, reason: str, pause_s: float, until: float
) -> None:
    """The one line a tripped DLQ breaker says, with the error classes and the way out."""
    classes = Counter(
        value.decode()
        for result in held.routed
        if result.outcome == "dlq"
        for name, value in result.headers
        if name == ERROR_CLASS
    )
    log.error(
        "partition.dlq_breaker_open",
        topic=partition.topic,
        partition=partition.partition,
        offset=held.records[0].offset,
        reason=reason,
        error_classes=dict(classes),
        retry_in_s=pause_s,
        detail="this partition is paused and nothing more of it is routed or committed; "
        "its records stay in the raw topic. Find the cause in webhooks.dlq "
        "(error.class, error.message): a bad deploy (roll back) or a provider format "
        "change (update the contract). The worker tries again every "
        "worker.dlq_pause_s; worker.dlq_max_ratio: 1.0 turns the breaker off.",
        paused_until=round(until, 3),
    )
