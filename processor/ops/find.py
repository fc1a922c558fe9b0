"""`processor find DELIVERY_ID`: where a delivery is and what happened to it, from the
topics themselves.

It reads the raw topic and every topic the workers write (the derived topics,
unrouted, the DLQ) as `tail` does: a guest, no consumer group joined, nothing
committed, read_committed. A record is the delivery's when its `delivery-id` header
says so (the ingress sets it; the workers and `replay` carry it on), or, for a record
without one (another client produced it), when its value's `id` does. With `--uid`
only the partition the user's key goes to is read in each topic; `--since` starts
each partition at the first record of that time (offsets for times). It stops at the
end offsets the topics had when it started.

What it says: each copy in the raw topic (the provider's sends and `replay`'s
copies), where each was routed or why it went to the DLQ, and how many copies the
workers passed over without writing anything (dedup's dropped retries), told apart
from copies the group has not reached yet by its committed offsets.
"""

from __future__ import annotations

import asyncio
import functools
import sys
from collections.abc import Sequence
from datetime import datetime
from typing import Final, Literal, TextIO

import msgspec
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from aiokafka.partitioner import DefaultPartitioner
from tqdm import tqdm

from processor.config import Config
from processor.headers import DELIVERY_ID, REPLAY_COUNT
from processor.kafka.clients import (
    client_options,
    connect,
    partitions_of,
    read_to_end,
    reader_options,
    wait_until_reachable,
)
from processor.kafka.topics import output_topics
from processor.ops.tail import Record, RecordReader, Shown, text_line
from processor.shutdown import stop_on_signals, unless_stopped

__all__ = ["Copy", "FindOptions", "Report", "find", "run_find"]

# A scan of fewer records than this ends before a progress bar would tell anything.
PROGRESS_FROM: Final = 100_000
# How long the group's coordinator may take to answer for its committed offsets.
COMMITTED_WITHIN_S: Final = 10.0

Role = Literal["received", "routed", "unrouted", "dead-lettered"]


class FindOptions(msgspec.Struct, frozen=True, kw_only=True):
    delivery_id: str
    uid: str | None = None  # read only the partition this key goes to, in each topic
    since: datetime | None = None  # read each partition from the first record of this time


class Copy(msgspec.Struct, kw_only=True):
    """One record of the delivery, and what it is."""

    role: Role
    record: Shown


class Report(msgspec.Struct, kw_only=True):
    """What `find` found; `--json` prints exactly this."""

    delivery_id: str
    found: bool
    copies: list[Copy]
    # Copies in the raw topic sent by the provider, and sent back by `processor replay`.
    sent: int
    replayed: int
    # Raw copies the group has read past without writing anything (dedup dropped them
    # as retries), and those it has not reached yet.
    dropped_as_retries: int
    not_routed_yet: int
    scanned: int  # records read
    topics: list[str]


async def find(config: Config, options: FindOptions, *, progress: TextIO | None = None) -> Report:
    """Scan the pipeline's topics for `options.delivery_id`. Raises BrokerUnavailable
    when Kafka cannot be reached."""
    raw, outputs = config.topics.raw, output_topics(config)
    topics = [raw, *outputs]
    readers = {topic: RecordReader(config, topic) for topic in topics}
    consumer = AIOKafkaConsumer(**reader_options(config))
    wanted = options.delivery_id.encode()

    async def start() -> None:
        await wait_until_reachable(config.kafka)
        await consumer.start()

    report = Report(
        delivery_id=options.delivery_id,
        found=False,
        copies=[],
        sent=0,
        replayed=0,
        dropped_as_retries=0,
        not_routed_yet=0,
        scanned=0,
        topics=topics,
    )
    stop = asyncio.Event()
    try:
        if not await connect(start, config=config.kafka, stop=stop):
            return report
        partitions = await _partitions(consumer, topics, options.uid)
        consumer.assign(partitions)
        starts = await _starts(consumer, partitions, options.since)
        # Before the ends: a copy routed after them is then not taken for a dropped one.
        committed = await _committed(config)
        ends = await consumer.end_offsets(partitions)
        for tp, offset in starts.items():
            consumer.seek(tp, offset)
        todo = sum(max(0, ends[tp] - starts[tp]) for tp in partitions)
        quiet = progress is None or todo < PROGRESS_FROM
        with tqdm(total=todo, unit="rec", file=progress, disable=quiet, leave=False) as bar:
            async for tp, records in read_to_end(consumer, partitions, ends=ends):
                report.scanned += len(records)
                bar.update(len(records))
                for record in filter(functools.partial(_may_be, wanted), records):
                    shown = readers[tp.topic].show(record)
                    if shown.delivery_id == options.delivery_id:
                        report.copies.append(Copy(role=_role(config, tp.topic), record=shown))
    finally:
        await consumer.stop()
    received = [c.record for c in report.copies if c.role == "received"]
    report.found = bool(report.copies)
    report.replayed = sum(1 for r in received if REPLAY_COUNT in r.headers)
    report.sent = len(received) - report.replayed
    left = len(received) - (len(report.copies) - len(received))
    if left > 0:
        behind = sum(1 for r in received if r.offset >= committed.get(r.partition, 0))
        report.not_routed_yet = min(left, behind)
        report.dropped_as_retries = left - report.not_routed_yet
    return report


def _may_be(wanted: bytes, record: Record) -> bool:
    """Whether `record` may be the delivery: its `delivery-id` header says so, or it has
    none (another client produced it) and the id is in its value."""
    for name, value in record.headers:
        if name == DELIVERY_ID:
            return bool(value == wanted)
    return record.value is not None and wanted in record.value


def _role(config: Config, topic: str) -> Role:
    if topic == config.topics.raw:
        return "received"
    if topic == config.topics.dlq:
        return "dead-lettered"
    if topic == config.topics.unrouted:
        return "unrouted"
    return "routed"


async def _partitions(
    consumer: AIOKafkaConsumer, topics: Sequence[str], uid: str | None
) -> list[TopicPartition]:
    """Every partition of `topics` there is, or with `uid` the one its key goes to in
    each (every record of a user is keyed by its uid)."""
    found: list[TopicPartition] = []
    partitioner = DefaultPartitioner()
    for topic in topics:
        partitions = await partitions_of(consumer, topic)
        if uid is not None and partitions:
            numbers = sorted(tp.partition for tp in partitions)
            partitions = [TopicPartition(topic, partitioner(uid.encode(), numbers, numbers))]
        found += partitions
    return found


async def _starts(
    consumer: AIOKafkaConsumer, partitions: list[TopicPartition], since: datetime | None
) -> dict[TopicPartition, int]:
    begins: dict[TopicPartition, int] = await consumer.beginning_offsets(partitions)
    if since is None:
        return begins
    ends = await consumer.end_offsets(partitions)
    times = await consumer.offsets_for_times(
        dict.fromkeys(partitions, int(since.timestamp() * 1000))
    )
    # No record at or after that time: nothing of the partition to read.
    return {tp: ends[tp] if at is None else max(at.offset, begins[tp]) for tp, at in times.items()}


async def _committed(config: Config) -> dict[int, int]:
    """The worker group's committed offset of each raw partition. A coordinator that is
    not there yet (a cluster just started) is asked again, within COMMITTED_WITHIN_S."""
    admin = AIOKafkaAdminClient(**client_options(config.kafka))
    try:
        await admin.start()
        async with asyncio.timeout(COMMITTED_WITHIN_S):
            while True:
                try:
                    offsets = await admin.list_consumer_group_offsets(config.worker.group_id)
                    break
                except KafkaError as exc:
                    if not exc.retriable:
                        raise
                    await asyncio.sleep(0.2)
    finally:
        await admin.close()
    return {
        tp.partition: meta.offset for tp, meta in offsets.items() if tp.topic == config.topics.raw
    }


def summary(report: Report) -> str:
    """One line of what happened to the delivery."""
    parts = [f"sent by the provider {_times(report.sent)}"]
    if report.replayed:
        parts.append(f"replayed {_times(report.replayed)}")
    for copy in report.copies:
        record = copy.record
        if copy.role == "routed":
            parts.append(f"routed to {record.topic} p{record.partition}@{record.offset}")
        elif copy.role == "unrouted":
            parts.append(f"unrouted: {record.topic} p{record.partition}@{record.offset}")
        elif copy.role == "dead-lettered":
            why = f"{record.error_class or '?'}: {record.error_message or ''}"
            parts.append(f"dead-lettered ({why}) at p{record.partition}@{record.offset}")
    if report.dropped_as_retries:
        parts.append(f"{_times(report.dropped_as_retries, 'copy', 'copies')} dropped as retries")
    if report.not_routed_yet:
        parts.append(f"{_times(report.not_routed_yet, 'copy', 'copies')} not routed yet")
    return f"{report.delivery_id}: " + "; ".join(parts)


def _times(count: int, one: str = "time", many: str = "times") -> str:
    return f"{count} {one if count == 1 else many}"


def run_find(config: Config, options: FindOptions, *, as_json: bool) -> int:
    """The command: each copy a line and a summary, or one JSON object; 1 when the
    delivery is in none of the topics."""
    progress = sys.stderr if sys.stderr.isatty() else None

    async def main() -> Report | None:
        stop = asyncio.Event()
        with stop_on_signals(stop):
            scan = asyncio.ensure_future(find(config, options, progress=progress))
            return scan.result() if await unless_stopped(scan, stop) else None

    try:
        report = asyncio.run(main())
    except KafkaError as exc:
        print(
            f"processor: find stopped ({type(exc).__name__}: {exc}); run it again",
            file=sys.stderr,
        )
        return 1
    if report is None:  # Ctrl-C
        return 1
    if as_json:
        print(msgspec.json.encode(report).decode())
    elif report.found:
        for copy in report.copies:
            print(f"{copy.role:>13}  {copy.record.topic}  {text_line(copy.record)}")
        print(summary(report))
    if not report.found:
        where = f"partition of {options.uid} in " if options.uid else ""
        since = f" since {options.since.isoformat()}" if options.since else ""
        print(
            f"processor: {options.delivery_id} is in none of {len(report.topics)} topics "
            f"({where}{', '.join(report.topics)}{since}; {report.scanned:,} records read): "
            "check the id, widen --since, or drop --uid",
            file=sys.stderr,
        )
        return 1
    return 0
