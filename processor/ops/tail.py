"""`processor tail`: a topic's records decoded with the contract, for people and scripts.

It reads as a guest: partitions assigned and positions sought, no consumer group
joined and nothing committed, so no subscriber or worker notices it; and with
read_committed, so it shows what subscribers see. Like tail(1), it shows the last 10
records (of those --uid and --event let through) unless told otherwise, and stops at
the end offsets the topic had when it started; --follow then shows new records as
they arrive until Ctrl-C (or SIGTERM), which ends it with exit 0.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Callable, Sequence
from fnmatch import fnmatchcase
from typing import Final, TypeAlias

import msgspec
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaError

from processor.config import Config
from processor.contract.schema import topic_contracts
from processor.errors import TopicsMissing
from processor.events import BaseData, InvalidDelivery, decode_envelope, decode_event
from processor.headers import (
    DELIVERY_ID,
    ERROR_CLASS,
    ERROR_MESSAGE,
    EVENT,
    RECEIVED_AT,
    REPLAY_COUNT,
    STATUS,
    UID,
    timestamp_received_at,
)
from processor.kafka.clients import (
    connect,
    partitions_of,
    read_to_end,
    reader_options,
    wait_until_reachable,
)
from processor.shutdown import stop_on_signals, unless_stopped

__all__ = [
    "DEFAULT_LAST",
    "Record",
    "RecordReader",
    "Shown",
    "TailOptions",
    "run_tail",
    "tail",
    "text_line",
]

# Without --last or --from-beginning: as many as tail(1) shows.
DEFAULT_LAST: Final = 10
# --last reads each partition backwards in windows of at least this many offsets,
# doubling while too few records match the filters.
FIRST_WINDOW: Final = 500
# One fetch waits at most this long: bounds how late a followed record is printed.
FETCH_TIMEOUT_MS: Final = 200


Record: TypeAlias = ConsumerRecord[bytes, bytes]


class TailOptions(msgspec.Struct, frozen=True, kw_only=True):
    """What to show: the command's options."""

    topic: str
    from_beginning: bool = False
    last: int | None = None  # None: DEFAULT_LAST, unless from_beginning
    uid: str | None = None
    event: str | None = None  # a pattern: `integration.*`
    follow: bool = False

    def keep(self, shown: Shown) -> bool:
        user = shown.key if shown.uid is None else shown.uid
        if self.uid is not None and self.uid != user:
            return False
        return self.event is None or fnmatchcase(shown.event or "", self.event)


class Shown(msgspec.Struct, kw_only=True):
    """One record as tail shows it; `--json` prints exactly these fields."""

    topic: str
    partition: int
    offset: int
    timestamp: str | None  # the record's own time, ISO 8601 UTC
    received_at: str | None  # the `received-at` header
    key: str | None
    delivery_id: str | None
    event: str | None
    uid: str | None
    status: str | None
    # DLQ records: why the worker parked them (their `error.*` headers).
    error_class: str | None
    error_message: str | None
    # Other topics: why the value breaks the topic's contract, `<class>: <message>`.
    invalid: str | None
    headers: dict[str, str]
    value: msgspec.Raw | None  # the value when it is JSON, on one line
    value_text: str | None  # the value when it is not JSON


class RecordReader:
    """Records of one topic to Shown, decoded with that topic's contract."""

    def __init__(self, config: Config, topic: str) -> None:
        contract = next((c for c in topic_contracts(config) if c.topic == topic), None)
        self._dlq = contract is not None and contract.role == "dlq"
        self._raw = contract is not None and contract.role == "raw"
        # A topic this config does not produce: read as any delivery.
        self._model = BaseData if contract is None or contract.data is None else contract.data

    def show(self, record: Record) -> Shown:
        headers = {name: _text(value) for name, value in record.headers}
        found = [headers.get(name) for name in (DELIVERY_ID, EVENT, UID, STATUS)]
        invalid = None
        if not self._dlq:
            try:
                found = self._decode(record.value or b"")
            except InvalidDelivery as exc:
                invalid = f"{exc.error_class}: {exc.message}"
        value, value_text = _value(record.value)
        return Shown(
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            timestamp=timestamp_received_at(record.timestamp),
            received_at=headers.get(RECEIVED_AT),
            key=None if record.key is None else _text(record.key),
            delivery_id=found[0],
            event=found[1],
            uid=found[2],
            status=found[3],
            error_class=headers.get(ERROR_CLASS) if self._dlq else None,
            error_message=headers.get(ERROR_MESSAGE) if self._dlq else None,
            invalid=invalid,
            headers=headers,
            value=value,
            value_text=value_text,
        )

    def _decode(self, raw: bytes) -> list[str | None]:
        if self._raw:
            envelope = decode_envelope(raw)
            return [envelope.id, envelope.event, envelope.data.uid, None]
        event = decode_event(raw, self._model)
        return [event.id, event.event, event.data.uid, getattr(event.data, "status", None)]


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "backslashreplace")


def _value(raw: bytes | None) -> tuple[msgspec.Raw | None, str | None]:
    """The value as one line of JSON when it is JSON, else as text (None: no value)."""
    if raw is None:
        return None, None
    try:
        return msgspec.Raw(msgspec.json.format(raw, indent=0)), None
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        return None, _text(raw)


def text_line(shown: Shown) -> str:
    """The readable line: when, where, which delivery, and what is wrong with it."""
    parts = [
        shown.received_at or shown.timestamp or "-",
        f"p{shown.partition}@{shown.offset}",
        shown.delivery_id or "-",
        shown.event or "-",
        f"uid={shown.uid or '-'}",
    ]
    if shown.status is not None:
        parts.append(f"status={shown.status}")
    if (replays := shown.headers.get(REPLAY_COUNT)) is not None:
        parts.append(f"replayed={replays}")  # a copy `processor replay` sent back
    if shown.error_class is not None or shown.error_message is not None:
        parts.append(f"{shown.error_class or '?'}: {shown.error_message or ''}")
    if shown.invalid is not None:
        parts.append(f"invalid: {shown.invalid}")
    line = "  ".join(parts)
    # Header values come from any producer: no escape sequence reaches the terminal.
    return line if line.isprintable() else "".join(_printable(c) for c in line)


def _printable(char: str) -> str:
    return char if char.isprintable() else repr(char)[1:-1]


Output = Callable[[Sequence[Shown]], None]


async def tail(config: Config, options: TailOptions, out: Output, *, stop: asyncio.Event) -> None:
    """Show `options.topic` through `out`, a batch at a time, until done or `stop`.

    Raises TopicsMissing for a topic the cluster does not have, BrokerUnavailable
    when Kafka cannot be reached.
    """
    reader = RecordReader(config, options.topic)
    consumer = AIOKafkaConsumer(**reader_options(config))

    async def start() -> None:
        await wait_until_reachable(config.kafka)
        await consumer.start()

    try:
        if not await connect(start, config=config.kafka, stop=stop):
            return
        partitions = await partitions_of(consumer, options.topic)
        if not partitions:
            produced = ", ".join(c.topic for c in topic_contracts(config))
            raise TopicsMissing(
                f"topic {options.topic} does not exist on {config.kafka.bootstrap_servers}; "
                f"this config produces: {produced}"
            )
        consumer.assign(partitions)
        await unless_stopped(_show(consumer, partitions, reader, options, out), stop)
    finally:
        await consumer.stop()


async def _show(
    consumer: AIOKafkaConsumer,
    partitions: list[TopicPartition],
    reader: RecordReader,
    options: TailOptions,
    out: Output,
) -> None:
    def emit(records: Sequence[Record]) -> None:
        shown = [s for s in map(reader.show, records) if options.keep(s)]
        if shown:
            out(shown)

    begins = await consumer.beginning_offsets(partitions)
    ends = await consumer.end_offsets(partitions)
    if options.from_beginning:
        for tp in partitions:
            consumer.seek(tp, begins[tp])
        if not options.follow:
            async for _, records in read_to_end(consumer, partitions, ends=ends):
                emit(records)
            return
    else:
        last = DEFAULT_LAST if options.last is None else options.last
        if last:
            found = [await _last_of(consumer, tp, begins[tp], ends[tp], last, reader, options)
                     for tp in partitions]  # fmt: skip
            newest = sorted(
                (r for rs in found for r in rs), key=lambda r: (r.timestamp, r.partition)
            )
            emit(newest[-last:])
        if not options.follow:
            return
        for tp in partitions:
            consumer.seek(tp, ends[tp])
    while True:
        for records in (await consumer.getmany(timeout_ms=FETCH_TIMEOUT_MS)).values():
            emit(records)


async def _last_of(
    consumer: AIOKafkaConsumer,
    tp: TopicPartition,
    begin: int,
    end: int,
    count: int,
    reader: RecordReader,
    options: TailOptions,
) -> list[Record]:
    """The last `count` records of a partition before `end` that the filters keep,
    read backwards a window at a time."""

    def keep(record: Record) -> bool:
        return options.keep(reader.show(record))

    kept: list[Record] = []
    high, window = end, max(count, FIRST_WINDOW)
    while high > begin and len(kept) < count:
        low = max(begin, high - window)
        kept = await _read_range(consumer, tp, low, high, keep) + kept
        high, window = low, window * 2
    return kept[-count:]


async def _read_range(
    consumer: AIOKafkaConsumer,
    tp: TopicPartition,
    low: int,
    high: int,
    keep: Callable[[Record], bool],
) -> list[Record]:
    """The records of `tp` from offset `low` up to `high` (an offset it has reached)
    that `keep` keeps."""
    consumer.seek(tp, low)
    kept: list[Record] = []
    async for _, records in read_to_end(consumer, [tp], ends={tp: high}):
        kept += filter(keep, records)
    return kept


def run_tail(config: Config, options: TailOptions, *, as_json: bool) -> int:
    """The command: a line per record on stdout, readable or (`as_json`) JSON."""
    encoder = msgspec.json.Encoder()

    def write(batch: Sequence[Shown]) -> None:
        if as_json:
            lines = [encoder.encode(s).decode() for s in batch]
        else:
            lines = [text_line(s) for s in batch]
        sys.stdout.write("\n".join(lines) + "\n")
        sys.stdout.flush()  # a line is seen at once, also through a pipe

    async def main() -> None:
        stop = asyncio.Event()
        with stop_on_signals(stop):
            await tail(config, options, write, stop=stop)

    try:
        asyncio.run(main())
    except BrokenPipeError:  # the reader went away (`| head`): not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except KafkaError as exc:
        print(
            f"processor: tail stopped ({type(exc).__name__}: {exc}); run it again", file=sys.stderr
        )
        return 1
    return 0
