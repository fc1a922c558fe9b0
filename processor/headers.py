"""The headers of every record the pipeline writes: names, meanings, one time format.

One home for what the ingress writes on raw records, what the worker writes on
derived and DLQ records, and what the README's tables say about them (a test holds
the README to these tuples). No I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Final, Literal, NamedTuple

__all__ = [
    "CONTENT_TYPE",
    "DELIVERY_ID",
    "DERIVED_HEADERS",
    "DLQ_HEADERS",
    "ERROR_CLASS",
    "ERROR_MESSAGE",
    "EVENT",
    "RAW_HEADERS",
    "RECEIVED_AT",
    "REPLAY_COUNT",
    "REPLAY_OF",
    "SOURCE_OFFSET",
    "SOURCE_PARTITION",
    "SOURCE_TOPIC",
    "STATUS",
    "UID",
    "UNREADABLE_HEADER",
    "Header",
    "HeaderFormat",
    "format_received_at",
    "timestamp_received_at",
    "unreadable_reason",
]

DELIVERY_ID: Final = "delivery-id"
EVENT: Final = "event"
UID: Final = "uid"
STATUS: Final = "status"
RECEIVED_AT: Final = "received-at"
CONTENT_TYPE: Final = "content-type"
REPLAY_OF: Final = "replay-of"
REPLAY_COUNT: Final = "replay-count"
ERROR_CLASS: Final = "error.class"
ERROR_MESSAGE: Final = "error.message"
SOURCE_TOPIC: Final = "source.topic"
SOURCE_PARTITION: Final = "source.partition"
SOURCE_OFFSET: Final = "source.offset"


# What a header's UTF-8 value looks like: any text, an ISO 8601 moment, a decimal
# whole number, or a record as `<topic>/<partition>/<offset>` (JSON Schema in
# processor.contract.schema).
HeaderFormat = Literal["text", "date-time", "integer", "record"]


class Header(NamedTuple):
    """One header as documented: its name, what its value is, whether every record of
    the topics it belongs to carries it, and the form of its value."""

    name: str
    value: str
    always: bool
    format: HeaderFormat = "text"


# On raw records the ingress writes (other clients' raw records may carry anything).
RAW_HEADERS: Final = (
    Header(DELIVERY_ID, "the delivery's `id` (`whd_...`)", True),
    Header(EVENT, "the delivery's `event`, e.g. `integration.updated`", True),
    Header(
        RECEIVED_AT,
        "when the ingress received it, ISO 8601 UTC with milliseconds",
        True,
        "date-time",
    ),
    Header(CONTENT_TYPE, "the request's `Content-Type`", True),
    Header(
        REPLAY_OF,
        "on records `processor replay` wrote: the record replayed, `<topic>/<partition>/<offset>`",
        False,
        "record",
    ),
    Header(
        REPLAY_COUNT,
        "on records `processor replay` wrote: how often it was replayed",
        False,
        "integer",
    ),
)

# On every record of a derived topic and of `webhooks.unrouted`.
DERIVED_HEADERS: Final = (
    Header(DELIVERY_ID, "the delivery's `id` (`whd_...`)", True),
    Header(EVENT, "e.g. `integration.updated`", True),
    Header(UID, "`data.uid`", True),
    Header(
        STATUS, "`data.status` as sent (`PARTIALLY SYNCED`), for categories routed by status", False
    ),
    Header(
        RECEIVED_AT,
        "when the ingress received it, ISO 8601 UTC with milliseconds "
        "(`2026-11-27T10:59:31.270Z`); for records another client wrote, its `received-at` "
        "rewritten to this form, else the record's timestamp",
        False,
        "date-time",
    ),
    Header(
        CONTENT_TYPE,
        "the `Content-Type` the delivery came with, when the raw record has one",
        False,
    ),
    Header(REPLAY_OF, "for a replayed delivery, the record it was replayed from", False, "record"),
    Header(REPLAY_COUNT, "for a replayed delivery, how often it was replayed", False, "integer"),
)

# On every record of the DLQ; `delivery-id`, `event`, `uid`, and what derived records
# carry on from the raw record (`received-at`, `content-type`, `replay-of`,
# `replay-count`) are there too when they could be read.
DLQ_HEADERS: Final = (
    Header(
        ERROR_CLASS,
        "`DecodeError`, `ValidationError`, `RoutingError`, `RecordError` or `InternalError`",
        True,
    ),
    Header(
        ERROR_MESSAGE,
        "what is wrong, with the field path, e.g. "
        "``Expected `str`, got `int` - at `$.data.status` ``",
        True,
    ),
    Header(SOURCE_TOPIC, "the raw topic the record was read from", True),
    Header(SOURCE_PARTITION, "its partition", True, "integer"),
    Header(SOURCE_OFFSET, "its offset", True, "integer"),
)


# The one header of a record that could not be read; its value says why. The name
# holds a lone surrogate, which strict UTF-8 decoding (how aiokafka reads header
# names) never produces: no record read from Kafka can carry it.
UNREADABLE_HEADER: Final = "\udcffprocessor.unreadable"


def unreadable_reason(headers: Sequence[tuple[str, bytes | None]]) -> str | None:
    """Why a record could not be read, or None for a record read in full."""
    if headers and headers[0][0] == UNREADABLE_HEADER:
        return (headers[0][1] or b"").decode("utf-8", "replace")
    return None


def format_received_at(moment: datetime) -> str:
    """The `received-at` form: ISO 8601 in UTC with milliseconds (`2025-02-19T12:00:00.123Z`).

    `moment` must be in UTC.
    """
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_received_at(value: bytes) -> datetime | None:
    """The moment a `received-at` value names, or None: not ISO 8601, or naive (a time
    without a zone names no moment on the timeline; a record's own time stands in)."""
    try:
        moment = datetime.fromisoformat(value.decode("ascii"))
    except (ValueError, UnicodeDecodeError):  # 2025-02-30 has the shape, not the date
        return None
    return moment if moment.tzinfo is not None else None


_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


def timestamp_received_at(timestamp_ms: int) -> str | None:
    """A Kafka record's timestamp in the `received-at` form; None for a record without
    one (-1) or one past the year 9999."""
    if timestamp_ms < 0:
        return None
    try:
        return format_received_at(_EPOCH + timedelta(milliseconds=timestamp_ms))
    except OverflowError:
        return None
