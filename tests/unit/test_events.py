"""The delivery contract: what `processor.events` accepts, rejects, and how it says so."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest

from processor.events import (
    BaseData,
    Delivery,
    IntegrationData,
    InvalidDelivery,
    StatusData,
    category_of,
    data_model,
    decode_delivery,
    decode_event,
    decode_integration_event,
)
from tests.deliveries import SPEC_EXAMPLE


def envelope(**changes: Any) -> dict[str, Any]:
    """A valid integration delivery as a dict; `changes` replace or add top-level keys."""
    doc: dict[str, Any] = {
        "id": "whd_1",
        "event": "integration.updated",
        "timestamp": "2025-02-19T12:00:00.000Z",
        "data": {"uid": "user_1", "status": "COMPLETED"},
    }
    doc.update(changes)
    return doc


def with_data(**changes: Any) -> bytes:
    doc = envelope()
    doc["data"] = {**doc["data"], **changes}
    return msgspec.json.encode(doc)


def rejection(raw: bytes) -> InvalidDelivery:
    with pytest.raises(InvalidDelivery) as caught:
        decode_delivery(raw)
    return caught.value


def test_spec_example_decodes_with_every_field_typed() -> None:
    decoded = decode_delivery(SPEC_EXAMPLE)

    assert decoded.id == "whd_abc123def456"
    assert decoded.event == "integration.created"
    assert decoded.category == "integration"
    assert decoded.action == "created"
    assert decoded.timestamp == datetime(2025, 2, 19, 12, tzinfo=UTC)
    assert decoded.status == "active"
    assert decoded.data == IntegrationData(
        uid="user_123",
        status="active",
        provider="binance",
        provider_public_name="Binance",
        public_address=None,
        wallet_id="wallet_abc123",
        logo_url="https://storage.googleapis.com/kryptos-public/logos/binance.png",
        is_contract=False,
        alias="Main Trading Account",
        added_on=1640995200000,
        last_synced_at=1672531200000,
        category="exchange",
        type="api",
        total_transactions=0,
    )


def test_integration_event_decoder_reads_a_derived_record() -> None:
    event = decode_integration_event(SPEC_EXAMPLE)

    assert event.id == "whd_abc123def456"
    assert event.data.wallet_id == "wallet_abc123"
    assert event.data.status == "active"


def test_integration_event_decoder_rejects_other_categories() -> None:
    raw = msgspec.json.encode(envelope(event="portfolio.updated"))

    with pytest.raises(InvalidDelivery, match=r"at `\$\.event`") as caught:
        decode_integration_event(raw)
    assert caught.value.error_class == "ValidationError"


def test_integration_event_decoder_gives_full_field_paths() -> None:
    with pytest.raises(InvalidDelivery, match=r"got `int` - at `\$\.data\.status`"):
        decode_integration_event(with_data(status=3))


def test_unknown_fields_are_accepted_at_every_level() -> None:
    doc = envelope(version=2, meta={"retry": 1})
    doc["data"] = {**doc["data"], "newField": [1, {"x": None}], "score": 1e300}

    decoded = decode_delivery(msgspec.json.encode(doc))

    assert decoded.data.uid == "user_1"


def test_only_uid_and_status_are_required_for_integrations() -> None:
    decoded = decode_delivery(with_data())

    assert isinstance(decoded.data, IntegrationData)
    assert decoded.data.alias is None
    assert decoded.data.total_transactions is None


def test_status_is_kept_exactly_as_sent() -> None:
    assert decode_delivery(with_data(status="Partially Synced")).status == "Partially Synced"


def test_category_without_a_model_needs_only_a_uid() -> None:
    decoded = decode_delivery(msgspec.json.encode(envelope(event="portfolio.updated")))

    assert type(decoded.data) is BaseData
    assert decoded.category == "portfolio"
    assert decoded.status is None


def test_status_routed_category_without_a_model_needs_a_status() -> None:
    raw = msgspec.json.encode(envelope(event="portfolio.updated", data={"uid": "u"}))

    with pytest.raises(InvalidDelivery, match=r"missing required field `status` - at `\$\.data`"):
        decode_delivery(raw, status_categories={"portfolio"})


def test_status_routed_category_without_a_model_reads_its_status() -> None:
    doc = envelope(event="portfolio.updated", data={"uid": "u", "status": "Ready", "x": 1})

    decoded = decode_delivery(msgspec.json.encode(doc), status_categories={"portfolio"})

    assert decoded.data == StatusData(uid="u", status="Ready")
    assert decoded.status == "Ready"


@pytest.mark.parametrize(
    ("changes", "path"),
    [
        ({"status": 1}, "$.data.status"),
        ({"status": None}, "$.data.status"),
        ({"status": ""}, "$.data.status"),
        ({"isContract": "yes"}, "$.data.isContract"),
        ({"addedOn": "1640995200000"}, "$.data.addedOn"),
        ({"addedOn": 1.5}, "$.data.addedOn"),
        ({"totalTransactions": 2**63}, "$.data.totalTransactions"),
        ({"lastSyncedAt": 10**30}, "$.data.lastSyncedAt"),
        ({"alias": ["a"]}, "$.data.alias"),
        ({"uid": 7}, "$.data.uid"),
        ({"uid": ""}, "$.data.uid"),
        ({"uid": "u" * 257}, "$.data.uid"),
    ],
)
def test_mistyped_data_field_names_its_path(changes: dict[str, Any], path: str) -> None:
    error = rejection(with_data(**changes))

    assert error.error_class == "ValidationError"
    assert error.message.endswith(f"- at `{path}`")


@pytest.mark.parametrize(
    ("doc", "path"),
    [
        (envelope(id="abc123"), "$.id"),
        (envelope(id="whd_"), "$.id"),
        (envelope(id="whd_a b"), "$.id"),
        (envelope(id=12), "$.id"),
        (envelope(event="integration"), "$.event"),
        (envelope(event="integration."), "$.event"),
        (envelope(event=".created"), "$.event"),
        (envelope(event="Integration.Created"), "$.event"),
        (envelope(event="integration.status.changed"), "$.event"),
        (envelope(timestamp="yesterday"), "$.timestamp"),
        (envelope(timestamp="2025-02-19T12:00:00"), "$.timestamp"),
        (envelope(timestamp=1739966400), "$.timestamp"),
        (envelope(data=None), "$.data"),
        (envelope(data=["user_1"]), "$.data"),
        (envelope(data="user_1"), "$.data"),
        (envelope(data={"status": "active"}), "$.data"),
    ],
)
def test_envelope_rule_break_names_its_path(doc: dict[str, Any], path: str) -> None:
    error = rejection(msgspec.json.encode(doc))

    assert error.error_class == "ValidationError"
    assert error.message.endswith(f"- at `{path}`")


@pytest.mark.parametrize("field", ["id", "event", "timestamp", "data"])
def test_missing_envelope_field_is_named(field: str) -> None:
    doc = envelope()
    del doc[field]

    error = rejection(msgspec.json.encode(doc))

    assert error.error_class == "ValidationError"
    assert error.message == f"Object missing required field `{field}`"


def test_timestamp_with_an_offset_is_accepted() -> None:
    raw = msgspec.json.encode(envelope(timestamp="2025-02-19T17:30:00+05:30"))

    timestamp = decode_delivery(raw).timestamp

    assert timestamp.utcoffset() == timedelta(hours=5, minutes=30)
    assert timestamp == datetime(2025, 2, 19, 12, tzinfo=UTC)


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"not json",
        b'{"id": "whd_1",',
        b'{"x":' + b"[" * 10_000 + b"]" * 10_000 + b"}",
        b'{"id":"whd_1","event":"a.b","timestamp":"2025-02-19T12:00:00Z","data":{"uid":"u",'
        b'"deep":' + b"[" * 10_000 + b"]" * 10_000 + b"}}",
        b"\xff\xfe{}",
        # Invalid UTF-8 inside a field the structs skip is still not JSON.
        b'{"id":"whd_1","event":"a.b","timestamp":"2025-02-19T12:00:00Z",'
        b'"data":{"uid":"u","note":"\xc3\x28"}}',
    ],
    ids=["empty", "text", "truncated", "deep", "deep-in-data", "bom-bytes", "utf8-in-extra"],
)
def test_bytes_that_are_not_json_are_decode_errors(raw: bytes) -> None:
    assert rejection(raw).error_class == "DecodeError"


def test_json_that_is_not_an_object_is_a_validation_error() -> None:
    deep_array = b"[" * 10_000 + b"]" * 10_000  # rejected at its first byte
    for raw in (b"[]", deep_array, b'"whd_1"', b"1e400", b"12345678901234567890123", b"null"):
        assert rejection(raw).error_class == "ValidationError"


def test_category_is_the_part_before_the_dot() -> None:
    assert category_of("integration.created") == "integration"
    assert category_of("portfolio") == "portfolio"


class WalletData(StatusData, frozen=True, kw_only=True):
    """A category model as a subscriber (or a new route) would write it: one struct."""

    balance: int | None = None


def test_decode_event_reads_any_category_with_base_data() -> None:
    raw = msgspec.json.encode(envelope(event="portfolio.updated", data={"uid": "u1", "n": 3}))

    event = decode_event(raw, BaseData)

    assert isinstance(event, Delivery)
    assert (event.id, event.event, event.data) == ("whd_1", "portfolio.updated", BaseData(uid="u1"))


def test_decode_event_types_data_with_the_model_given() -> None:
    raw = msgspec.json.encode(envelope(event="wallet.updated", data={"uid": "u", "status": "open",
                                                                     "balance": 7}))  # fmt: skip

    event = decode_event(raw, WalletData)

    assert event.data == WalletData(uid="u", status="open", balance=7)
    with pytest.raises(InvalidDelivery, match=r"got `str` - at `\$\.data\.balance`"):
        decode_event(raw.replace(b"7", b'"7"'), WalletData)


def test_decode_event_with_a_category_model_rejects_other_categories() -> None:
    raw = msgspec.json.encode(envelope(event="wallet.updated"))

    with pytest.raises(InvalidDelivery, match=r"Expected an `integration\.\*` event") as caught:
        decode_event(raw, IntegrationData)
    assert caught.value.error_class == "ValidationError"
    assert decode_event(raw, StatusData).data.status == "COMPLETED"


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"{",
        b"\xff",
        msgspec.json.encode(envelope(id="nope")),
        msgspec.json.encode(envelope(timestamp="2025-02-19T12:00:00")),
        with_data(status=3),
        with_data(totalTransactions="many"),
        msgspec.json.encode(envelope(data={"uid": "u"})),
        msgspec.json.encode(envelope(data=[])),
    ],
    ids=["empty", "truncated", "bad-utf8", "id", "naive-time", "status", "count", "no-status",
         "data-list"],
)  # fmt: skip
def test_decode_event_fails_as_the_worker_does(raw: bytes) -> None:
    """A subscriber sees the error class and message the DLQ header would carry."""
    with pytest.raises(InvalidDelivery) as by_worker:
        decode_delivery(raw)
    with pytest.raises(InvalidDelivery) as by_subscriber:
        decode_event(raw, IntegrationData)

    assert by_subscriber.value.error_class == by_worker.value.error_class
    assert by_subscriber.value.message == by_worker.value.message


def test_data_model_is_the_categorys_own_else_what_routing_needs() -> None:
    assert data_model("integration") is IntegrationData
    assert data_model("integration", by_status=True) is IntegrationData
    assert data_model("wallet", by_status=True) is StatusData
    assert data_model("wallet") is BaseData
