"""Where a raw delivery goes: one record in, exactly one destination out. No I/O.

`Router.route` never raises, so one bad record can neither stop a worker nor stall
its partition; whatever cannot be routed goes to the DLQ with headers saying why.
The value always travels as the bytes that were read; routing facts go in headers.

`error.class` on DLQ records is one of:

- `DecodeError`: the value is not a JSON document (absent, empty, invalid UTF-8,
  malformed, nested too deeply);
- `ValidationError`: JSON, but it breaks the contract of `processor.events`;
- `RoutingError`: a valid delivery of a status-routed category whose status has no
  letter or digit, so no topic can be named after it;
- `RecordError`: the Kafka record itself could not be read (a header name that is
  not UTF-8, a compression codec or batch that cannot be read; see
  `processor.kafka.recordbatch`): key and value are the record's where they could be
  read, else the value is the whole record batch, as Kafka stores it;
- `InternalError`: a bug in this module, caught so the record is parked, not lost.

Raw headers are not copied, except a well-formed `received-at` (set by the
ingress): derived records carry exactly the documented header set, whatever the
raw topic gained.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC
from functools import lru_cache
from typing import Final, Literal, NamedTuple, Protocol

import msgspec

from processor.config import RoutingConfig, TopicsConfig
from processor.events import MAX_IDENTIFIER_LENGTH, InvalidDelivery, decode_delivery
from processor.headers import (
    CONTENT_TYPE,
    DELIVERY_ID,
    ERROR_CLASS,
    ERROR_MESSAGE,
    EVENT,
    RECEIVED_AT,
    REPLAY_COUNT,
    REPLAY_OF,
    SOURCE_OFFSET,
    SOURCE_PARTITION,
    SOURCE_TOPIC,
    STATUS,
    UID,
    UNREADABLE_HEADER,
    format_received_at,
    parse_received_at,
    timestamp_received_at,
    unreadable_reason,
)
from processor.naming import normalise_status
from processor.outcomes import Outcome

__all__ = ["Routed", "Router", "Rule", "SourceRecord"]

# A DLQ message is for a human reading logs; msgspec's are short, a bug's may not be.
MAX_ERROR_MESSAGE_CHARS: Final = 1000
# A raw header carried on that is longer than this is not ours: it is dropped, so that
# another client's header cannot push a derived record past the size budget.
MAX_CARRIED_BYTES: Final = 512
_SALVAGE: Final = msgspec.json.Decoder()


class SourceRecord(Protocol):
    """The parts of a consumed record routing reads; aiokafka's ConsumerRecord fits."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def timestamp(self) -> int: ...  # milliseconds since the epoch
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...
    @property
    def headers(self) -> Sequence[tuple[str, bytes]]: ...


class Routed(msgspec.Struct, frozen=True, gc=False):
    """The one record to produce for a source record, and why.

    A msgspec Struct: built once per record on the hot path, it is several times
    cheaper to create than a frozen dataclass, and (holding no cycles) is left out
    of the garbage collector's scans.
    """

    topic: str
    key: bytes | None
    value: bytes | None  # the source value itself, never re-encoded
    headers: list[tuple[str, bytes]]
    outcome: Outcome
    delivery_id: str | None
    error: str | None  # for dlq: the error message, for logs
    partition: None = None  # by key (processor.kafka.batching)
    replayed: bool = False  # the raw record came from `processor replay`


class Rule(NamedTuple):
    """One way deliveries reach a topic, for the subscriber's contract: every delivery
    of `category`, or (routed by status) those whose normalised status is `status`, or
    those whose status is none of `other_than`."""

    topic: str
    category: str
    status: str | None = None
    other_than: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True)
class _StatusRoute:
    by_status: dict[str, str]  # normalised status -> topic
    other: str


class Router:
    """Routes raw records per the routing config; all lookups precomputed here."""

    def __init__(self, *, routing: RoutingConfig, topics: TopicsConfig) -> None:
        self._unrouted = topics.unrouted
        self._dlq = topics.dlq
        self._routes: dict[str, str | _StatusRoute] = {}
        for category, route in routing.resolved().items():
            if route.statuses is None or route.other_status is None:
                self._routes[category] = route.topic.format()
                continue
            by_status = {
                normal: route.topic.format(status=normal)
                for normal in map(normalise_status, route.statuses)
                if normal
            }
            other = route.topic.format(status=route.other_status)
            self._routes[category] = _StatusRoute(by_status, other)
        self._status_categories = frozenset(
            category for category, route in self._routes.items() if isinstance(route, _StatusRoute)
        )

    def destination_topics(self) -> list[str]:
        """Every topic `route` can return, each once, for `processor topics create`."""
        topics = [rule.topic for rule in self.rules()] + [self._unrouted, self._dlq]
        return list(dict.fromkeys(topics))

    def rules(self) -> list[Rule]:
        """How each category reaches its derived topics (a topic may have several rules)."""
        rules: list[Rule] = []
        for category, route in self._routes.items():
            if isinstance(route, str):
                rules.append(Rule(route, category))
                continue
            rules += [Rule(topic, category, status=s) for s, topic in route.by_status.items()]
            rules.append(Rule(route.other, category, other_than=tuple(route.by_status)))
        return rules

    def route(self, record: SourceRecord) -> Routed:
        """The destination of `record`; never raises."""
        try:
            return self._route(record)
        except InvalidDelivery as exc:
            return self._to_dlq(record, exc.error_class, exc.message)
        except Exception as exc:  # a bug must park the record, not stall the partition
            return self._to_dlq(record, "InternalError", f"{type(exc).__name__}: {exc}")

    def _route(self, record: SourceRecord) -> Routed:
        source_headers = record.headers
        if source_headers and source_headers[0][0] == UNREADABLE_HEADER:
            reason = unreadable_reason(source_headers) or "unreadable"
            raise InvalidDelivery("RecordError", reason)
        value = record.value
        if not value:
            state = "absent (a tombstone)" if value is None else "empty"
            raise InvalidDelivery("DecodeError", f"record value is {state}")
        delivery = decode_delivery(value, status_categories=self._status_categories)
        route = self._routes.get(delivery.category)
        outcome: Literal["routed", "unrouted"] = "routed"
        if route is None:
            topic, outcome = self._unrouted, "unrouted"
        elif isinstance(route, str):
            topic = route
        else:
            topic = _status_topic(route, delivery.status, delivery.category)
        uid = delivery.data.uid.encode()
        headers = [
            (DELIVERY_ID, delivery.id.encode()),
            (EVENT, delivery.event.encode()),
            (UID, uid),
        ]
        if delivery.status is not None:
            headers.append((STATUS, delivery.status.encode()))
        carried, replayed = _carried(record)
        headers += carried
        return Routed(
            topic=topic,
            key=uid,
            value=value,
            headers=headers,
            outcome=outcome,
            delivery_id=delivery.id,
            error=None,
            replayed=replayed,
        )

    def _to_dlq(self, record: SourceRecord, error_class: str, message: str) -> Routed:
        if len(message) > MAX_ERROR_MESSAGE_CHARS:
            message = message[: MAX_ERROR_MESSAGE_CHARS - 1] + "…"
        delivery_id, event, uid = _salvage(record.value)
        headers: list[tuple[str, bytes]] = [
            (name, text.encode())
            for name, text in ((DELIVERY_ID, delivery_id), (EVENT, event), (UID, uid))
            if text is not None
        ]
        carried, replayed = _carried(record)
        headers += carried
        headers += [
            (ERROR_CLASS, error_class.encode()),
            # backslashreplace: an exception's text may hold lone surrogates.
            (ERROR_MESSAGE, message.encode("utf-8", "backslashreplace")),
            (SOURCE_TOPIC, record.topic.encode()),
            (SOURCE_PARTITION, str(record.partition).encode()),
            (SOURCE_OFFSET, str(record.offset).encode()),
        ]
        return Routed(
            topic=self._dlq,
            key=record.key,
            value=record.value,
            headers=headers,
            outcome="dlq",
            delivery_id=delivery_id,
            error=message,
            replayed=replayed,
        )


def _status_topic(route: _StatusRoute, status: str | None, category: str) -> str:
    if status is None:
        raise InvalidDelivery(
            "RoutingError", f"category {category!r} is routed by status but its data has none"
        )
    normal = normalise_status(status)
    if not normal:
        raise InvalidDelivery(
            "RoutingError",
            f"status {status[:80]!r} has no letter or digit to name a topic - at `$.data.status`",
        )
    return route.by_status.get(normal, route.other)


# Raw headers derived and DLQ records carry unchanged (`replay-count` only if a number).
_CARRIED_AS_IS: Final = frozenset({CONTENT_TYPE, REPLAY_OF})


def _carried(record: SourceRecord) -> tuple[list[tuple[str, bytes]], bool]:
    """The raw headers derived and DLQ records carry on: `received-at`, `content-type`
    (what a replay restores) and a replay's `replay-of` and `replay-count`, in one
    pass; and whether the record is a replay. A value too long to be ours is dropped,
    and of a name given twice the first usable value is kept (one header per name).

    `received-at` is documented as ISO 8601 UTC with milliseconds: another client's
    that names a moment in another form is rewritten to it, and one that names no
    moment (or a naive one) is replaced by the record's timestamp; none at all when
    there is no timestamp either (a record without one carries -1).
    """
    received_at: bytes | None = None
    carried: dict[str, bytes] = {}
    for name, value in record.headers:
        if not value or len(value) > MAX_CARRIED_BYTES:
            continue
        if name == RECEIVED_AT:
            if received_at is None:  # the first that names a moment
                received_at = _moment(value)
        elif name in _CARRIED_AS_IS or (name == REPLAY_COUNT and value.isdigit()):
            carried.setdefault(name, value)
    if received_at is None:
        received_at = _timestamp_header(record.timestamp)
    headers = [] if received_at is None else [(RECEIVED_AT, received_at)]
    headers += carried.items()
    return headers, REPLAY_OF in carried


@lru_cache(maxsize=4096)
def _timestamp_header(timestamp_ms: int) -> bytes | None:
    """A record's timestamp as `received-at`; None without one (-1). Cached: the records
    of a producer's batch share their timestamp, and formatting costs microseconds."""
    received_at = timestamp_received_at(timestamp_ms)
    return None if received_at is None else received_at.encode()


def _moment(value: bytes) -> bytes | None:
    """`value` in format_received_at's form, or None when it is not an aware moment."""
    moment = parse_received_at(value)
    if moment is None:
        return None
    # The ingress's own form, as every ingress record has it: YYYY-MM-DDTHH:MM:SS.mmmZ.
    # Its digits are checked by the parse, so the separators are what is left to check
    # (cheaper than a regular expression, on every record).
    if len(value) == 24 and value[4:20:3] == b"--T::." and value[23:] == b"Z":
        return value
    return format_received_at(moment.astimezone(UTC)).encode()


def _salvage(value: bytes | None) -> tuple[str | None, str | None, str | None]:
    """Whatever id, event and uid an invalid delivery still shows, for DLQ headers."""
    if not value:
        return None, None, None
    try:
        document = _SALVAGE.decode(value)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        return None, None, None
    if not isinstance(document, dict):
        return None, None, None
    data = document.get("data")
    uid = data.get("uid") if isinstance(data, dict) else None
    return _short_str(document.get("id")), _short_str(document.get("event")), _short_str(uid)


def _short_str(value: object) -> str | None:
    if isinstance(value, str) and len(value) <= MAX_IDENTIFIER_LENGTH:
        return value
    return None
