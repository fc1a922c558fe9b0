"""Routing decisions: one raw record in, one destination with the right headers out."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import msgspec
import pytest

import processor.routing
from processor.config import Route, RoutingConfig, TopicsConfig
from processor.naming import normalise_status
from processor.routing import Routed, Router
from tests.deliveries import SPEC_EXAMPLE

DEFAULT_TOPICS = [
    "integration.status.queued",
    "integration.status.ongoing",
    "integration.status.completed",
    "integration.status.failed",
    "integration.status.active",
    "integration.status.inactive",
    "integration.status.error",
    "integration.status.partially_synced",
    "integration.status.other",
    "webhooks.unrouted",
    "webhooks.dlq",
]


@dataclass(frozen=True)
class Record:
    """A consumed record as the worker hands it over (aiokafka's has the same fields)."""

    value: bytes | None
    key: bytes | None = b"user_1"
    topic: str = "webhooks.raw"
    partition: int = 3
    offset: int = 42
    timestamp: int = 1739966400123  # 2025-02-19T12:00:00.123Z
    headers: Sequence[tuple[str, bytes]] = ()


def document(event: str = "integration.updated", **data: Any) -> dict[str, Any]:
    return {
        "id": "whd_1",
        "event": event,
        "timestamp": "2025-02-19T12:00:00.000Z",
        "data": {"uid": "user_1", "status": "COMPLETED", **data},
    }


def delivery(event: str = "integration.updated", **data: Any) -> bytes:
    return msgspec.json.encode(document(event, **data))


def without(field: str) -> bytes:
    """A valid delivery missing one field of the envelope or of its data."""
    doc = document()
    del (doc if field in doc else doc["data"])[field]
    return msgspec.json.encode(doc)


def envelope(**changes: Any) -> bytes:
    return msgspec.json.encode({**document(), **changes})


def route(value: bytes | None, router: Router | None = None, **record: Any) -> Routed:
    router = router or Router(routing=RoutingConfig(), topics=TopicsConfig())
    return router.route(Record(value=value, **record))


def header_map(routed: Routed) -> dict[str, str]:
    names = [name for name, _ in routed.headers]
    assert len(names) == len(set(names)), "a header appears twice"
    return {name: value.decode() for name, value in routed.headers}


def test_spec_example_goes_to_its_status_topic_with_headers() -> None:
    routed = route(SPEC_EXAMPLE, headers=[("received-at", b"2025-02-19T12:00:01.500Z")])

    assert routed.topic == "integration.status.active"
    assert routed.outcome == "routed"
    assert routed.key == b"user_123"
    assert routed.value is SPEC_EXAMPLE
    assert routed.delivery_id == "whd_abc123def456"
    assert routed.error is None
    assert header_map(routed) == {
        "delivery-id": "whd_abc123def456",
        "event": "integration.created",
        "uid": "user_123",
        "status": "active",
        "received-at": "2025-02-19T12:00:01.500Z",
    }


@pytest.mark.parametrize(
    "status",
    [
        "queued",
        "ongoing",
        "completed",
        "failed",
        "active",
        "inactive",
        "error",
        "partially_synced",
    ],
)
def test_each_default_status_has_its_topic(status: str) -> None:
    assert route(delivery(status=status)).topic == f"integration.status.{status}"


@pytest.mark.parametrize(
    ("status", "topic"),
    [
        ("COMPLETED", "integration.status.completed"),
        ("Queued", "integration.status.queued"),
        ("Partially Synced", "integration.status.partially_synced"),
        ("PARTIALLY SYNCED", "integration.status.partially_synced"),
        ("  partially--synced!", "integration.status.partially_synced"),
    ],
)
def test_status_case_and_spelling_variants_share_a_topic(status: str, topic: str) -> None:
    routed = route(delivery(status=status))

    assert routed.topic == topic
    assert header_map(routed)["status"] == status


def test_unknown_status_goes_to_other_topic_with_original_in_header() -> None:
    routed = route(delivery(status="Awaiting 2FA"))

    assert routed.topic == "integration.status.other"
    assert routed.outcome == "routed"
    assert header_map(routed)["status"] == "Awaiting 2FA"


def test_unknown_category_goes_to_unrouted_with_bytes_unchanged() -> None:
    raw = b'{ "event":"portfolio.updated",  "id":"whd_9", "timestamp":"2025-02-19T12:00:00Z",\n'
    raw += b' "data": {"uid":"user_7", "value": 12.50, "status": "active"} }'

    routed = route(raw)

    assert routed.topic == "webhooks.unrouted"
    assert routed.outcome == "unrouted"
    assert routed.value is raw
    assert routed.key == b"user_7"
    headers = header_map(routed)
    assert headers["event"] == "portfolio.updated"
    assert "status" not in headers  # a category without a status model has no status


def test_bytes_out_are_the_bytes_in() -> None:
    raw = (
        b'\n\t{"data":{"status":"FAILED","extra":{"b":1,"a":[1.0,2e3]},"uid":"u\\u00e9"},'
        b'   "timestamp":"2025-02-19T12:00:00+01:00","event":"integration.failed","id":"whd_x"} '
    )

    routed = route(raw)

    assert routed.topic == "integration.status.failed"
    assert routed.value is raw
    assert routed.key == "ué".encode()


def test_unknown_extra_fields_are_routed_not_rejected() -> None:
    doc = msgspec.json.decode(delivery(status="active", futureField={"x": [1]}))
    doc["apiVersion"] = "2"

    assert route(msgspec.json.encode(doc)).topic == "integration.status.active"


def test_key_is_uid_even_when_the_raw_key_differs() -> None:
    assert route(delivery(uid="user_42"), key=b"something-else").key == b"user_42"


def test_received_at_is_copied_from_the_raw_header() -> None:
    headers = [("content-type", b"application/json"), ("received-at", b"2025-01-01T00:00:00.250Z")]

    routed = route(delivery(), headers=headers)

    assert header_map(routed)["received-at"] == "2025-01-01T00:00:00.250Z"
    # Kept for `processor replay`, which restores the raw record's headers.
    assert header_map(routed)["content-type"] == "application/json"


@pytest.mark.parametrize(
    ("sent", "derived"),
    [
        ("2025-01-01T00:00:00Z", "2025-01-01T00:00:00.000Z"),
        ("2025-01-01T02:00:00.5+02:00", "2025-01-01T00:00:00.500Z"),
        ("2025-01-01 00:00:00.123456+00:00", "2025-01-01T00:00:00.123Z"),
        # 24 bytes ending in Z, as the ingress's form, but not it: an ISO week date.
        ("2025-W01-3T00:00:00.000Z", "2025-01-01T00:00:00.000Z"),
    ],
)
def test_received_at_of_another_form_is_rewritten_to_iso_8601_utc_millis(
    sent: str, derived: str
) -> None:
    routed = route(delivery(), headers=[("received-at", sent.encode())])

    assert header_map(routed)["received-at"] == derived


@pytest.mark.parametrize(
    "sent",
    [
        b"yesterday",
        b"2025-02-30T12:00:00.000Z",  # the right shape, no such day
        b"2025-01-01T00:00:00+00:0Z",  # 24 bytes ending in Z, not a moment
        b"2025-01-01T00:00:00.000",  # naive: no place on the timeline
        b"2025-01-01",
        b"\xff\xfe2025-01-01T00:00:00.000Z",
        b"2025-01-01T00:00:00.000Z; DROP TABLE",
    ],
)
def test_received_at_that_names_no_utc_moment_falls_back_to_the_record_timestamp(
    sent: bytes,
) -> None:
    routed = route(delivery(), headers=[("received-at", sent)])

    assert header_map(routed)["received-at"] == "2025-02-19T12:00:00.123Z"


@pytest.mark.parametrize(
    "headers",
    [
        [b"yesterday", b"2025-01-01T00:00:00.250Z"],
        [b"2025-01-01T00:00:00.250Z", b"yesterday"],
        [b"2025-01-01T00:00:00.250Z", b"2025-06-01T00:00:00.000Z"],
    ],
    ids=["unusable-first", "unusable-last", "two-moments"],
)
def test_of_several_received_at_the_first_naming_a_moment_is_kept(headers: list[bytes]) -> None:
    routed = route(delivery(), headers=[("received-at", value) for value in headers])

    assert header_map(routed)["received-at"] == "2025-01-01T00:00:00.250Z"


def test_received_at_falls_back_to_the_record_timestamp_in_utc() -> None:
    assert header_map(route(delivery()))["received-at"] == "2025-02-19T12:00:00.123Z"
    assert header_map(route(delivery(), timestamp=0))["received-at"] == "1970-01-01T00:00:00.000Z"


@pytest.mark.parametrize("timestamp", [-1, 10**20])
def test_received_at_is_omitted_without_a_usable_timestamp(timestamp: int) -> None:
    routed = route(delivery(), timestamp=timestamp)

    assert routed.topic == "integration.status.completed"
    assert "received-at" not in header_map(routed)


def _too_deep() -> bytes:
    return b'{"id":"whd_1","event":"integration.created","timestamp":"2025-02-19T12:00:00Z",' + (
        b'"data":{"uid":"u","status":"active","x":' + b"[" * 10_000 + b"]" * 10_000 + b"}}"
    )


MALFORMED = [
    pytest.param(None, "DecodeError", id="none"),
    pytest.param(b"", "DecodeError", id="empty"),
    pytest.param(b"hello", "DecodeError", id="not-json"),
    pytest.param(b'{"id":"whd_1"', "DecodeError", id="truncated"),
    pytest.param(b'{"id":"whd_\xff"}', "DecodeError", id="invalid-utf8"),
    pytest.param(_too_deep(), "DecodeError", id="nested-in-data"),
    # Not an object at its first byte, so the depth is never reached.
    pytest.param(b"[" * 10_000 + b"]" * 10_000, "ValidationError", id="nested-10000"),
    pytest.param(b"[1, 2]", "ValidationError", id="array"),
    pytest.param(b'"whd_1"', "ValidationError", id="string"),
    pytest.param(b"42", "ValidationError", id="number"),
    pytest.param(b"1" * 5000, "ValidationError", id="huge-number"),
    pytest.param(b"1e99999", "ValidationError", id="huge-float"),
    pytest.param(without("id"), "ValidationError", id="missing-id"),
    pytest.param(without("event"), "ValidationError", id="missing-event"),
    pytest.param(without("timestamp"), "ValidationError", id="missing-timestamp"),
    pytest.param(without("data"), "ValidationError", id="missing-data"),
    pytest.param(without("uid"), "ValidationError", id="missing-uid"),
    pytest.param(without("status"), "ValidationError", id="missing-status"),
    pytest.param(delivery(uid=""), "ValidationError", id="uid-empty"),
    pytest.param(delivery(uid=123), "ValidationError", id="uid-number"),
    pytest.param(envelope(id="abc_1"), "ValidationError", id="id-without-prefix"),
    pytest.param(envelope(event="integration"), "ValidationError", id="event-without-dot"),
    pytest.param(envelope(timestamp="19/02/2025"), "ValidationError", id="bad-timestamp"),
    pytest.param(envelope(data=[]), "ValidationError", id="data-array"),
    pytest.param(delivery(status=3), "ValidationError", id="status-int"),
    pytest.param(delivery(isContract="yes"), "ValidationError", id="is-contract-yes"),
    pytest.param(delivery(addedOn=10**40), "ValidationError", id="added-on-huge"),
    pytest.param(delivery(status="--- !"), "RoutingError", id="status-no-letters"),
]


@pytest.mark.parametrize(("value", "error_class"), MALFORMED)
def test_malformed_record_goes_to_dlq_with_error_and_source_headers(
    value: bytes | None, error_class: str
) -> None:
    routed = route(value, key=b"raw-key", partition=5, offset=1234)

    assert routed.topic == "webhooks.dlq"
    assert routed.outcome == "dlq"
    assert routed.value is value
    assert routed.key == b"raw-key"
    headers = header_map(routed)
    assert headers["error.class"] == error_class
    assert headers["error.message"] == routed.error
    assert 0 < len(headers["error.message"]) <= 1000
    assert headers["source.topic"] == "webhooks.raw"
    assert headers["source.partition"] == "5"
    assert headers["source.offset"] == "1234"
    assert headers["received-at"] == "2025-02-19T12:00:00.123Z"


def test_dlq_message_names_the_field_path() -> None:
    routed = route(delivery(status=3))

    assert routed.error == "Expected `str`, got `int` - at `$.data.status`"


def test_dlq_keeps_whatever_identity_could_be_read() -> None:
    routed = route(delivery(uid="user_5", isContract="yes"))

    assert routed.delivery_id == "whd_1"
    headers = header_map(routed)
    assert headers["delivery-id"] == "whd_1"
    assert headers["event"] == "integration.updated"
    assert headers["uid"] == "user_5"


def test_dlq_reads_an_invalid_id_but_skips_non_strings() -> None:
    raw = b'{"id":"nope","event":7,"timestamp":"x","data":{"uid":["u"]}}'

    headers = header_map(route(raw))

    assert headers["delivery-id"] == "nope"
    assert "event" not in headers
    assert "uid" not in headers


def test_dlq_without_readable_identity_has_no_identity_headers() -> None:
    routed = route(b"\x00\x01garbage")

    assert routed.delivery_id is None
    assert not {"delivery-id", "event", "uid"} & header_map(routed).keys()


def test_dlq_skips_identity_longer_than_any_real_one() -> None:
    routed = route(delivery().replace(b"whd_1", b"whd_" + b"x" * 5000))

    assert routed.error == "Expected `str` of length <= 256 - at `$.id`"
    assert "delivery-id" not in header_map(routed)


def test_dlq_error_message_is_capped(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(raw: bytes, **_: object) -> None:
        raise RuntimeError("x" * 5000)

    monkeypatch.setattr(processor.routing, "decode_delivery", broken)

    routed = route(delivery())

    assert routed.error is not None
    assert len(routed.error) == 1000
    assert routed.error.endswith("x…")


def test_a_bug_parks_the_record_in_dlq_instead_of_raising(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(raw: bytes, **_: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(processor.routing, "decode_delivery", broken)

    routed = route(delivery())

    assert routed.topic == "webhooks.dlq"
    assert header_map(routed)["error.class"] == "InternalError"
    assert routed.error == "RuntimeError: boom"


def test_default_destination_topics_cover_every_status_other_unrouted_and_dlq() -> None:
    router = Router(routing=RoutingConfig(), topics=TopicsConfig())

    assert router.destination_topics() == DEFAULT_TOPICS


def test_custom_config_routes_by_its_own_templates_and_statuses() -> None:
    routing = RoutingConfig(
        routes={"integration": "int.{status}.v1", "portfolio": "portfolio.events"},
        statuses=("Completed", "PARTIALLY SYNCED", "partially_synced"),
        other_status="misc",
    )
    topics = TopicsConfig(unrouted="parked", dlq="dead")
    router = Router(routing=routing, topics=topics)

    assert router.destination_topics() == [
        "int.completed.v1",
        "int.partially_synced.v1",
        "int.misc.v1",
        "portfolio.events",
        "parked",
        "dead",
    ]
    assert route(delivery(status="completed"), router).topic == "int.completed.v1"
    assert route(delivery(status="Partially Synced"), router).topic == "int.partially_synced.v1"
    assert route(delivery(status="active"), router).topic == "int.misc.v1"
    assert route(delivery(event="portfolio.updated", status=None), router).topic == (
        "portfolio.events"
    )
    assert route(delivery(event="alert.raised"), router).topic == "parked"
    assert route(b"{}", router).topic == "dead"


def test_a_second_category_routed_by_status_has_its_own_statuses_and_other_topic() -> None:
    routing = RoutingConfig(
        routes={
            "integration": "integration.status.{status}",
            "wallet": Route(
                topic="wallet.status.{status}", statuses=("open", "CLOSED"), other_status="misc"
            ),
        }
    )
    router = Router(routing=routing, topics=TopicsConfig())

    assert router.destination_topics() == [
        *DEFAULT_TOPICS[:-2],
        "wallet.status.open",
        "wallet.status.closed",
        "wallet.status.misc",
        "webhooks.unrouted",
        "webhooks.dlq",
    ]
    assert route(delivery(event="wallet.updated", status="Open"), router).topic == (
        "wallet.status.open"
    )
    # An integration status means nothing to wallets, and a wallet one nothing to integrations.
    assert route(delivery(event="wallet.updated", status="active"), router).topic == (
        "wallet.status.misc"
    )
    assert route(delivery(status="closed"), router).topic == "integration.status.other"
    assert route(delivery(status="active"), router).topic == "integration.status.active"


def test_fixed_topic_route_still_checks_the_category_model() -> None:
    routing = RoutingConfig(routes={"integration": "integrations.all"})
    router = Router(routing=routing, topics=TopicsConfig())

    routed = route(delivery(status="weird"), router)

    assert routed.topic == "integrations.all"
    assert header_map(routed)["status"] == "weird"
    assert route(delivery(isContract="yes"), router).topic == "webhooks.dlq"


def test_status_route_for_a_category_without_a_model_requires_a_status() -> None:
    routing = RoutingConfig(routes={"portfolio": "portfolio.{status}"}, statuses=("ready",))
    router = Router(routing=routing, topics=TopicsConfig())

    ready = route(delivery(event="portfolio.updated", status="READY"), router)
    missing = route(delivery(event="portfolio.updated", status=None), router)

    assert ready.topic == "portfolio.ready"
    assert header_map(ready)["status"] == "READY"
    assert missing.topic == "webhooks.dlq"
    assert missing.error == "Expected `str`, got `null` - at `$.data.status`"


def test_integration_without_a_route_is_unrouted_but_still_checked() -> None:
    router = Router(routing=RoutingConfig(routes={}), topics=TopicsConfig())

    assert route(delivery(), router).topic == "webhooks.unrouted"
    assert route(delivery(status=1), router).topic == "webhooks.dlq"
    assert router.destination_topics() == ["webhooks.unrouted", "webhooks.dlq"]


@pytest.mark.parametrize(
    ("status", "normal"),
    [
        ("PARTIALLY SYNCED", "partially_synced"),
        ("Partially Synced", "partially_synced"),
        ("completed", "completed"),
        ("__a__b__", "a_b"),
        ("in-progress (retry #2)", "in_progress_retry_2"),
        ("état", "tat"),
        ("!!!", ""),
        ("", ""),
    ],
)
def test_normalise_status(status: str, normal: str) -> None:
    assert normalise_status(status) == normal


def test_a_replayed_record_carries_its_replay_headers_to_derived_and_dlq_records() -> None:
    headers = [
        ("content-type", b"application/json"),
        ("replay-of", b"webhooks.dlq/2/41"),
        ("replay-count", b"2"),
        ("received-at", b"2025-01-01T00:00:00.250Z"),
    ]

    routed = route(delivery(), headers=headers)
    dead = route(b"{}", headers=headers)

    for result in (routed, dead):
        assert result.replayed
        carried = header_map(result)
        assert carried["replay-of"] == "webhooks.dlq/2/41"
        assert carried["replay-count"] == "2"
        assert carried["content-type"] == "application/json"
        assert carried["received-at"] == "2025-01-01T00:00:00.250Z"
    assert not route(delivery()).replayed


@pytest.mark.parametrize(
    "header",
    [("replay-count", b"two"), ("content-type", b"x" * 513), ("replay-of", b"")],
)
def test_a_carried_header_that_is_not_ours_is_dropped(header: tuple[str, bytes]) -> None:
    routed = route(delivery(), headers=[header])

    assert header[0] not in header_map(routed)
    assert not routed.replayed
