"""The webhook delivery contract: msgspec models of the envelope and each category's data.

Downstream services import this module to read the derived topics. Every record
carries the provider's bytes unchanged, so a consumer of `integration.status.completed`
decodes its value directly::

    from processor.events import InvalidDelivery, decode_integration_event

    try:
        event = decode_integration_event(record.value)
    except InvalidDelivery as exc:  # only if a producer other than the worker wrote it
        log.error("event.invalid", error_class=exc.error_class, error=exc.message)
    else:
        handle(event.data.uid, event.data.status, event.data.wallet_id)

Every topic's records decode the same way, typed by the model of their category's
`data`: `decode_event(record.value, IntegrationData)` is what `decode_integration_event`
does; `decode_event(record.value, BaseData)` reads any delivery (`webhooks.unrouted`).
A new category with a model of its own is one struct (a `BaseData` or `StatusData`
subclass) and one line in `DATA_TYPES`; the worker, `processor schema` and
`processor tail` then all use it.

The structs accept unknown fields (the provider keeps adding them; the bytes that
travel keep them) but reject known fields of the wrong type. Rules:

- `id` is `whd_` and at least one non-space character.
- `event` is `<category>.<action>`: lower-case `a-z`, `0-9` and `_` on each side of
  exactly one dot. The provider documents only lower-case names, so anything else is
  a contract break to look at in the DLQ, not a spelling to guess.
- `timestamp` is RFC 3339 (the ISO 8601 profile the provider's example uses) and must
  carry a timezone: a naive time cannot be placed on the timeline.
- `data` is an object with a non-empty string `uid`.
- `id`, `event`, `data.uid` and `data.status` are at most 256 characters: they are
  repeated in record keys and headers, and an unbounded one could push a record past
  the broker's size limit and stall a partition.
"""

from __future__ import annotations

import re
from collections.abc import Container, Mapping
from datetime import datetime
from functools import lru_cache
from typing import Annotated, Any, Final, Generic, TypeAlias, TypeVar

import msgspec

__all__ = [
    "DATA_TYPES",
    "MAX_IDENTIFIER_LENGTH",
    "BaseData",
    "DecodedDelivery",
    "Delivery",
    "Envelope",
    "Identifier",
    "IntegrationData",
    "IntegrationEvent",
    "InvalidDelivery",
    "StatusData",
    "category_of",
    "data_model",
    "decode_delivery",
    "decode_envelope",
    "decode_event",
    "decode_integration_event",
    "decode_json",
]

MAX_IDENTIFIER_LENGTH: Final = 256

# Checked in Delivery.__post_init__ rather than as msgspec `pattern`s: a pattern costs
# a regex call per record, while event types repeat and their check is cached. The JSON
# Schema still states them, for subscribers (`processor schema`).
_DELIVERY_ID_PATTERN: Final = r"whd_\S+"
_EVENT_TYPE_PATTERN: Final = r"[a-z0-9_]+\.[a-z0-9_]+"
_DELIVERY_ID: Final = re.compile(_DELIVERY_ID_PATTERN)
_EVENT_TYPE: Final = re.compile(_EVENT_TYPE_PATTERN)
_AwareDatetime = Annotated[datetime, msgspec.Meta(tz=True)]
# An identifier (`id`, `event`, `data.uid`, `data.status`): it becomes a record key or a
# header, and an unbounded one could push a record past the topic's size limit.
Identifier = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_IDENTIFIER_LENGTH)]
# The provider's numbers are milliseconds and counts; a value outside int64 would not
# survive a JVM or Go consumer, so it is a contract break, not a big number.
_Int64 = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]
_DeliveryId = Annotated[
    Identifier, msgspec.Meta(extra_json_schema={"pattern": f"^{_DELIVERY_ID_PATTERN}$"})
]
_EventType = Annotated[
    Identifier, msgspec.Meta(extra_json_schema={"pattern": f"^{_EVENT_TYPE_PATTERN}$"})
]


class InvalidDelivery(Exception):
    """The bytes are not a delivery this contract accepts.

    `error_class` is `DecodeError` (not a JSON document: empty, invalid UTF-8,
    malformed, nested too deeply) or `ValidationError` (JSON, but a field is missing,
    mistyped or breaks a rule above). `message` names the field path where there is
    one, e.g. "Expected `str`, got `int` - at `$.data.status`".
    """

    def __init__(self, error_class: str, message: str) -> None:
        super().__init__(f"{error_class}: {message}")
        self.error_class = error_class
        self.message = message


class BaseData(msgspec.Struct, frozen=True, kw_only=True):
    """What every category's `data` has: the user it is about. Extra fields are fine."""

    uid: Identifier


class StatusData(BaseData, frozen=True, kw_only=True):
    """`data` that carries a status: what a status-routed category needs at the least."""

    status: Identifier


class IntegrationData(StatusData, frozen=True, kw_only=True, rename="camel"):
    """`data` of `integration.*` events (the provider's Integrations API shape).

    Only `uid` and `status` are required: they decide key and topic. The rest is
    typed (a wrong type is a contract break) but may be absent or null, read as None:
    the provider says the shape is still growing, and a delivery missing its `alias`
    is still worth routing rather than parking in the DLQ.
    """

    provider: str | None = None
    provider_public_name: str | None = None
    public_address: str | None = None
    wallet_id: str | None = None
    logo_url: str | None = None
    is_contract: bool | None = None
    alias: str | None = None
    added_on: _Int64 | None = None
    last_synced_at: _Int64 | None = None
    category: str | None = None
    type: str | None = None
    total_transactions: _Int64 | None = None


DataT = TypeVar("DataT")


class Delivery(msgspec.Struct, Generic[DataT], frozen=True, kw_only=True):
    """The envelope every delivery shares; `data` depends on the event's category."""

    id: _DeliveryId
    event: _EventType
    timestamp: _AwareDatetime
    data: DataT

    def __post_init__(self) -> None:
        # msgspec turns a ValueError here into a ValidationError, like a failed pattern.
        if _DELIVERY_ID.fullmatch(self.id) is None:
            raise ValueError(
                "Expected `id` as `whd_` and one or more non-space characters, "
                f"got {self.id[:80]!r} - at `$.id`"
            )
        if not _is_event_type(self.event):
            raise ValueError(
                f"Expected `event` as `<category>.<action>` in lower-case a-z, 0-9 and _, "
                f"got {self.event[:80]!r} - at `$.event`"
            )


@lru_cache(maxsize=1024)
def _is_event_type(event: str) -> bool:
    return _EVENT_TYPE.fullmatch(event) is not None


IntegrationEvent: TypeAlias = Delivery[IntegrationData]

# Category -> model of its `data`: a new category's model is one line here. A category
# without one is checked with BaseData (or StatusData when routed by status), so the
# uid rule holds for every delivery.
DATA_TYPES: Final[Mapping[str, type[BaseData]]] = {"integration": IntegrationData}


def data_model(category: str, *, by_status: bool = False) -> type[BaseData]:
    """The model a category's `data` is checked with: its own, else what routing needs."""
    return DATA_TYPES.get(category) or (StatusData if by_status else BaseData)


class Envelope(msgspec.Struct, frozen=True, kw_only=True):
    """What the ingress checks before a delivery goes to the raw topic: the id it
    answers with, the event for the header, `data.uid` for the key. The worker checks
    the rest (`decode_delivery`)."""

    id: Identifier
    event: Identifier
    data: BaseData


_ENVELOPE_DECODER: Final = msgspec.json.Decoder(Envelope)


def decode_envelope(raw: bytes) -> Envelope:
    """The envelope of a raw delivery; InvalidDelivery when it is not one."""
    return decode_json(_ENVELOPE_DECODER, raw)


class DecodedDelivery(msgspec.Struct, frozen=True, kw_only=True):
    """A checked delivery, with the facts routing needs already pulled out."""

    id: str
    event: str
    timestamp: datetime
    category: str
    action: str
    data: BaseData
    # `data.status` as sent, when the category's data carries one.
    status: str | None


_DataT = TypeVar("_DataT", bound=BaseData)


def _event_decoder(model: type[BaseData]) -> msgspec.json.Decoder[Any]:
    return msgspec.json.Decoder(Delivery[model])  # type: ignore[valid-type]


# Built once: msgspec decoders compile their type on construction.
_ENVELOPE: Final = msgspec.json.Decoder(Delivery[msgspec.Raw])
_BASE_DATA: Final[msgspec.json.Decoder[BaseData]] = msgspec.json.Decoder(BaseData)
_STATUS_DATA: Final[msgspec.json.Decoder[BaseData]] = msgspec.json.Decoder(StatusData)
_DATA: Final[Mapping[str, msgspec.json.Decoder[BaseData]]] = {
    category: msgspec.json.Decoder(model) for category, model in DATA_TYPES.items()
}
# Whole deliveries by `data` model, for decode_event; a model first seen there is added.
_MODELS: Final[tuple[type[BaseData], ...]] = (BaseData, StatusData, *DATA_TYPES.values())
_EVENTS: Final[dict[type[BaseData], msgspec.json.Decoder[Any]]] = {
    model: _event_decoder(model) for model in _MODELS
}
# A category's own model reads only that category's events.
_CATEGORIES: Final[Mapping[type[BaseData], frozenset[str]]] = {
    model: frozenset(c for c, m in DATA_TYPES.items() if m is model)
    for model in DATA_TYPES.values()
}


def category_of(event: str) -> str:
    """`integration` for `integration.created`: the part of the event type routes key on."""
    return event.partition(".")[0]


def decode_delivery(
    raw: bytes, *, status_categories: Container[str] = frozenset()
) -> DecodedDelivery:
    """Check `raw` against the contract and return what it says.

    The envelope is decoded first with `data` left raw, then `data` with its
    category's model. `status_categories` are categories routed by status: without a
    model of their own, their `data` must still carry a string `status`.
    Raises InvalidDelivery.
    """
    envelope = decode_json(_ENVELOPE, raw)
    category, _, action = envelope.event.partition(".")
    decoder = _DATA.get(category)
    if decoder is None:
        decoder = _STATUS_DATA if category in status_categories else _BASE_DATA
    try:
        data = decoder.decode(envelope.data)
    except msgspec.ValidationError as exc:
        raise InvalidDelivery("ValidationError", _under_data(str(exc))) from None
    return DecodedDelivery(
        id=envelope.id,
        event=envelope.event,
        timestamp=envelope.timestamp,
        category=category,
        action=action,
        data=data,
        status=data.status if isinstance(data, StatusData) else None,
    )


def decode_event(raw: bytes, model: type[_DataT]) -> Delivery[_DataT]:
    """A record of any topic the worker writes deliveries to, with `data` as `model`.

    `model` is a category's own (`IntegrationData`: the event must then be of that
    category), `StatusData` (any delivery with a status) or `BaseData` (any delivery:
    `webhooks.unrouted`). Raises InvalidDelivery, with the messages the worker puts in
    the DLQ.
    """
    decoder = _EVENTS.get(model)
    if decoder is None:  # a subscriber's own subclass: compiled once
        decoder = _EVENTS[model] = _event_decoder(model)
    event: Delivery[_DataT] = decode_json(decoder, raw)
    categories = _CATEGORIES.get(model)
    if categories is not None and category_of(event.event) not in categories:
        expected = " or ".join(f"`{category}.*`" for category in sorted(categories))
        raise InvalidDelivery(
            "ValidationError", f"Expected an {expected} event, got {event.event!r} - at `$.event`"
        )
    return event


def decode_integration_event(raw: bytes) -> IntegrationEvent:
    """Decode a record of an `integration.status.*` topic. Raises InvalidDelivery."""
    return decode_event(raw, IntegrationData)


_T = TypeVar("_T")


def decode_json(decoder: msgspec.json.Decoder[_T], raw: bytes) -> _T:
    """`raw` decoded by `decoder`; every way it can fail is an InvalidDelivery.

    The one mapping of msgspec's errors, shared by the worker and the ingress. Its
    messages name positions and field paths, never the bytes themselves.
    """
    # msgspec checks UTF-8 only in strings it decodes, not in the ones it skips, and
    # JSON must be UTF-8 throughout; bytes.decode is the fast C check for that.
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidDelivery(
            "DecodeError", f"invalid UTF-8 at byte {exc.start} ({exc.reason})"
        ) from None
    try:
        return decoder.decode(raw)
    except msgspec.ValidationError as exc:
        raise InvalidDelivery("ValidationError", str(exc)) from None
    except msgspec.DecodeError as exc:
        raise InvalidDelivery("DecodeError", str(exc)) from None
    except RecursionError:
        raise InvalidDelivery("DecodeError", "nested too deeply") from None


def error_path(message: str) -> tuple[str, str]:
    """msgspec's "<what> - at `$.a.b`" as ("<what>", ".a.b"); ("<what>", "") for a
    message that names no path (an error about the whole document)."""
    head, sep, where = message.rpartition(" - at `$")
    if not sep:
        return message, ""
    return head, where.removesuffix("`")


def _under_data(message: str) -> str:
    """Re-root a path from a decode of `data` alone: `$.status` -> `$.data.status`."""
    head, path = error_path(message)
    return f"{head} - at `$.data{path}`"
