"""`processor replay`: DLQ or unrouted records back to the raw topic, each once.

Each selected record is produced again to the raw topic with its original key and
bytes, the raw headers the ingress had set (`delivery-id`, `event`, `received-at`,
`content-type`, carried on by the worker), `replay-of` (`<topic>/<partition>/<offset>`)
and `replay-count`. The worker never takes a replay for a provider retry (dedup lets
it through); one that fails again returns to the DLQ with its `replay-count`, and
above `replay.max_attempts` replay skips it and says so, so nothing loops forever.

Resumable: the source is read with a consumer group named after the filters, and
each batch's replays and that group's offsets are committed in one transaction, so a
run interrupted (Ctrl-C, a crash) continues where it stopped when run again with the
same filters, without replaying anything twice. A run reads up to the end offsets the
source had when it started.
"""

from __future__ import annotations

import asyncio
import hashlib
import sys
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, TextIO

import msgspec
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaError
from tqdm import tqdm

from processor.config import Config
from processor.errors import ConfigError, TopicsMissing
from processor.headers import (
    CONTENT_TYPE,
    DELIVERY_ID,
    ERROR_CLASS,
    EVENT,
    RECEIVED_AT,
    REPLAY_COUNT,
    REPLAY_OF,
    parse_received_at,
)
from processor.kafka.batching import RawRecord, produce_batch
from processor.kafka.clients import (
    client_options,
    connect,
    partitions_of,
    read_to_end,
    reader_options,
    wait_until_reachable,
)
from processor.kafka.producers import BoundedProducer
from processor.shutdown import stop_on_signals

__all__ = ["ReplayFilters", "ReplaySummary", "replay"]

# The raw headers a replay restores: what the ingress wrote, as the worker carried it on.
RESTORED: Final = (DELIVERY_ID, EVENT, RECEIVED_AT, CONTENT_TYPE)
# Ids shown in a summary; the counts say the rest.
SHOWN_IDS: Final = 10


class ReplayFilters(msgspec.Struct, frozen=True, kw_only=True):
    """Which records of the source to replay; their digest names the resumable group."""

    source: str
    target: str
    delivery_ids: tuple[str, ...] = ()
    error_class: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    def group_id(self) -> str:
        digest = hashlib.sha256(msgspec.json.encode(self)).hexdigest()[:12]
        return f"processor-replay.{self.source}.{digest}"

    def match(self, headers: Mapping[str, bytes], moment: datetime | None) -> bool:
        if (
            self.delivery_ids
            and headers.get(DELIVERY_ID, b"").decode("utf-8", "replace") not in self.delivery_ids
        ):
            return False
        if self.error_class is not None and headers.get(ERROR_CLASS) != self.error_class.encode():
            return False
        if self.since is not None and (moment is None or moment < self.since):
            return False
        return not (self.until is not None and (moment is None or moment >= self.until))


@dataclass
class ReplaySummary:
    """What a run did; printed as one JSON line."""

    source: str
    target: str
    dry_run: bool
    scanned: int = 0
    replayed: int = 0
    skipped_max_attempts: int = 0
    by_error_class: Counter[str] = field(default_factory=Counter)
    by_event: Counter[str] = field(default_factory=Counter)
    first_ids: list[str] = field(default_factory=list)
    skipped_ids: list[str] = field(default_factory=list)

    def json(self) -> str:
        return msgspec.json.encode(
            {
                "event": "replay.summary",
                "source": self.source,
                "target": self.target,
                "dry_run": self.dry_run,
                "scanned": self.scanned,
                "replayed" if not self.dry_run else "would_replay": self.replayed,
                "skipped_max_attempts": self.skipped_max_attempts,
                "by_error_class": dict(self.by_error_class),
                "by_event": dict(self.by_event),
                "first_ids": self.first_ids,
                "skipped_ids": self.skipped_ids,
            }
        ).decode()


async def replay(
    config: Config,
    filters: ReplayFilters,
    *,
    limit: int | None = None,
    dry_run: bool = False,
    progress: TextIO | None = None,
    stop: asyncio.Event | None = None,
) -> ReplaySummary:
    """Replay what `filters` select, at most `limit` records, until `stop` is set (then
    after the batch in flight: a run again goes on from there). Raises ConfigError for a
    source that is neither the DLQ nor the unrouted topic, BrokerUnavailable when Kafka
    cannot be reached. With `progress` (a terminal), a progress bar is drawn on it."""
    stop = asyncio.Event() if stop is None else stop
    if filters.source not in (config.topics.dlq, config.topics.unrouted):
        raise ConfigError(
            f"--from {filters.source}: replay reads the DLQ ({config.topics.dlq}) or the "
            f"unrouted topic ({config.topics.unrouted}) only"
        )
    group = filters.group_id()
    consumer = AIOKafkaConsumer(**reader_options(config, group_id=group))
    # Bounded: a stop while Kafka is away still ends (the transaction is aborted by the
    # next run's producer, which resumes from the last committed batch). A dry run
    # writes nothing: no producer at all.
    producer = None
    if not dry_run:
        producer = BoundedProducer(
            **client_options(config.kafka),
            acks="all",
            transactional_id=group,
            flush_timeout_s=config.kafka.request_timeout_ms / 1000,
        )

    async def start() -> None:
        await wait_until_reachable(config.kafka)
        await consumer.start()
        if producer is not None:
            await producer.start()  # fences a run of the same filters still going

    summary = ReplaySummary(filters.source, filters.target, dry_run)
    try:
        if not await connect(start, config=config.kafka, stop=stop):
            return summary
        partitions = await partitions_of(consumer, filters.source)
        if not partitions:
            raise TopicsMissing(
                f"topic {filters.source} does not exist on {config.kafka.bootstrap_servers}: "
                "create the pipeline's topics with `processor topics create`"
            )
        consumer.assign(partitions)
        todo, ends = await _position_at_committed(consumer, partitions)
        bar = tqdm(total=todo, unit="rec", file=progress, disable=progress is None)
        with bar:
            async for tp, records in read_to_end(consumer, partitions, ends=ends):
                room = None if limit is None else limit - summary.replayed
                chosen, scanned = _choose(
                    records, filters, config.replay.max_attempts, summary, room=room
                )
                summary.replayed += len(chosen)
                bar.update(scanned)
                if producer is not None and scanned:
                    # Up to the last record looked at: the rest is the next run's.
                    next_offset = records[scanned - 1].offset + 1
                    await _commit(producer, group, tp, next_offset, chosen)
                if (room is not None and len(chosen) >= room) or stop.is_set():
                    break
    finally:
        await consumer.stop()
        if producer is not None:
            await producer.stop()
    return summary


async def _position_at_committed(
    consumer: AIOKafkaConsumer, partitions: Sequence[TopicPartition]
) -> tuple[int, dict[TopicPartition, int]]:
    """Seek each partition to where this filter set's last run stopped; how many records
    to scan, and the end offsets that count is up to."""
    begins = await consumer.beginning_offsets(partitions)
    ends = await consumer.end_offsets(partitions)
    todo = 0
    for tp in partitions:
        committed = await consumer.committed(tp)
        start = begins[tp] if committed is None else max(committed, begins[tp])
        consumer.seek(tp, start)
        todo += max(0, ends[tp] - start)
    return todo, ends


def _choose(
    records: Sequence[ConsumerRecord[bytes, bytes]],
    filters: ReplayFilters,
    max_attempts: int,
    summary: ReplaySummary,
    *,
    room: int | None,
) -> tuple[list[RawRecord], int]:
    """The records to replay, and how many of `records` were looked at: all, unless
    `room` (what is left of --limit) ran out first."""
    chosen: list[RawRecord] = []
    scanned = 0
    for record in records:
        if room is not None and len(chosen) >= room:
            break
        scanned += 1
        summary.scanned += 1
        headers = {name: value for name, value in record.headers if value is not None}
        if not filters.match(headers, _moment(headers, record.timestamp)):
            continue
        delivery_id = headers.get(DELIVERY_ID, b"").decode("utf-8", "replace")
        count = int(headers.get(REPLAY_COUNT, b"0") or 0)
        if count >= max_attempts:
            summary.skipped_max_attempts += 1
            if len(summary.skipped_ids) < SHOWN_IDS:
                summary.skipped_ids.append(delivery_id)
            continue
        summary.by_error_class[
            headers.get(ERROR_CLASS, b"unrouted").decode("utf-8", "replace")
        ] += 1
        summary.by_event[headers.get(EVENT, b"?").decode("utf-8", "replace")] += 1
        if len(summary.first_ids) < SHOWN_IDS:
            summary.first_ids.append(delivery_id)
        restored = [(name, headers[name]) for name in RESTORED if name in headers]
        restored += [
            (REPLAY_OF, f"{record.topic}/{record.partition}/{record.offset}".encode()),
            (REPLAY_COUNT, str(count + 1).encode()),
        ]
        chosen.append(RawRecord(filters.target, record.key or b"", record.value or b"", restored))
    return chosen, scanned


def _moment(headers: Mapping[str, bytes], timestamp: int) -> datetime | None:
    """When the ingress received it (`received-at`), else the record's own time: as the
    worker does, a header that names no moment on the timeline (naive) is not one."""
    received = headers.get(RECEIVED_AT)
    if received is not None and (moment := parse_received_at(received)) is not None:
        return moment
    return datetime.fromtimestamp(timestamp / 1000, UTC) if timestamp >= 0 else None


async def _commit(
    producer: AIOKafkaProducer,
    group: str,
    partition: TopicPartition,
    next_offset: int,
    chosen: list[RawRecord],
) -> None:
    """These replays and the source offset they reach, in one transaction."""
    async with producer.transaction():
        if chosen:
            await asyncio.gather(*await produce_batch(producer, chosen))
        await producer.send_offsets_to_transaction({partition: next_offset}, group)


def run_replay(
    config: Config,
    filters: ReplayFilters,
    *,
    limit: int | None,
    dry_run: bool,
    out: Callable[[str], Any] = print,
) -> int:
    """The command: a progress bar on a terminal, one JSON summary line at the end."""
    progress = sys.stderr if sys.stderr.isatty() else None

    async def replaying() -> ReplaySummary:
        stop = asyncio.Event()
        with stop_on_signals(stop):
            return await replay(
                config, filters, limit=limit, dry_run=dry_run, progress=progress, stop=stop
            )

    try:
        summary = asyncio.run(replaying())
    except KafkaError as exc:
        out(f"processor: replay stopped ({type(exc).__name__}: {exc}); run it again to go on")
        return 1
    out(summary.json())
    return 0
