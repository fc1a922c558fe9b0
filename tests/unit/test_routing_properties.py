"""Properties of routing over generated input: it never raises, never invents a topic,
and a valid integration delivery always lands on its status topic with its bytes intact."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from processor.config import RoutingConfig, TopicsConfig
from processor.naming import normalise_status
from processor.routing import Routed, Router
from tests.properties import examples

ROUTER = Router(routing=RoutingConfig(), topics=TopicsConfig())
DESTINATIONS = frozenset(ROUTER.destination_topics())
# Modest, so the unit suite stays fast; no example database written into the tree.
PROPERTY = settings(max_examples=examples(300), deadline=None, database=None)


@dataclass(frozen=True)
class Record:
    value: bytes | None
    key: bytes | None = None
    topic: str = "webhooks.raw"
    partition: int = 0
    offset: int = 0
    timestamp: int = 1739966400000
    headers: Sequence[tuple[str, bytes]] = ()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
statuses = st.sampled_from(
    ["active", "COMPLETED", "Partially Synced", "PARTIALLY SYNCED", "queued", "Failed"]
) | st.text(max_size=30)
# Envelopes that are right in places and wrong in others, to reach every branch.
near_deliveries = st.fixed_dictionaries(
    {},
    optional={
        "id": st.sampled_from(["whd_1", "whd_", "abc"]) | json_values,
        "event": st.sampled_from(["integration.created", "portfolio.updated", "x"]) | json_values,
        "timestamp": st.sampled_from(["2025-02-19T12:00:00Z", "2025-02-19T12:00:00"]) | json_values,
        "data": st.fixed_dictionaries(
            {},
            optional={
                "uid": st.sampled_from(["user_1", ""]) | json_values,
                "status": statuses | json_values,
                "isContract": st.booleans() | json_values,
                "addedOn": st.integers() | json_values,
            },
        )
        | json_values,
    },
)


def check_invariants(routed: Routed, record: Record) -> None:
    assert routed.topic in DESTINATIONS
    assert routed.value is record.value
    names = [name for name, _ in routed.headers]
    assert len(names) == len(set(names))
    assert all(isinstance(value, bytes) for _, value in routed.headers)
    headers = dict(routed.headers)
    if routed.outcome == "dlq":
        assert routed.topic == "webhooks.dlq"
        assert routed.key == record.key
        assert headers["error.class"] != b"InternalError", routed.error
    else:
        assert routed.key == headers["uid"]


@PROPERTY
@given(st.binary(max_size=200))
def test_any_bytes_route_to_a_known_topic(value: bytes) -> None:
    record = Record(value=value)

    check_invariants(ROUTER.route(record), record)


@PROPERTY
@given(json_values | near_deliveries)
def test_any_json_routes_to_a_known_topic(doc: Any) -> None:
    record = Record(value=msgspec.json.encode(doc), key=b"k")

    check_invariants(ROUTER.route(record), record)


@PROPERTY
@given(
    uid=st.text(min_size=1, max_size=40),
    status=statuses.filter(bool),  # an empty status breaks the contract itself
    action=st.sampled_from(["created", "updated", "deleted", "failed"]),
    extra=st.dictionaries(st.text(max_size=10).map(lambda k: f"x_{k}"), json_values, max_size=3),
    indent=st.sampled_from([0, 2]),
)
def test_valid_integration_delivery_lands_on_its_status_topic(
    uid: str, status: str, action: str, extra: dict[str, Any], indent: int
) -> None:
    doc = {
        "id": "whd_abc",
        "event": f"integration.{action}",
        "timestamp": "2025-02-19T12:00:00.000Z",
        "data": {"uid": uid, "status": status, "isContract": False, **extra},
    }
    value = msgspec.json.format(msgspec.json.encode(doc), indent=indent)
    record = Record(value=value)

    routed = ROUTER.route(record)

    check_invariants(routed, record)
    normal = normalise_status(status)
    if not normal:
        assert routed.outcome == "dlq"
        assert dict(routed.headers)["error.class"] == b"RoutingError"
        return
    expected = f"integration.status.{normal}"
    if expected not in DESTINATIONS:
        expected = "integration.status.other"
    assert routed.topic == expected
    assert routed.key == uid.encode()
    assert dict(routed.headers)["status"] == status.encode()


CANONICAL_RECEIVED_AT = re.compile(rb"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
header_values = st.binary(max_size=40) | st.sampled_from(
    [b"2025-01-01T00:00:00.250Z", b"2025-01-01T02:00:00.5+02:00", b"2025-01-01T00:00:00", b""]
)


@PROPERTY
@given(
    headers=st.lists(
        st.tuples(
            st.sampled_from(["received-at", "content-type", "replay-of", "replay-count", "x"]),
            header_values,
        ),
        max_size=6,
    ),
    timestamp=st.sampled_from([-1, 0, 1739966400000, 10**20]),
)
def test_any_raw_headers_are_carried_in_their_documented_form(
    headers: list[tuple[str, bytes]], timestamp: int
) -> None:
    value = msgspec.json.encode(
        {
            "id": "whd_abc",
            "event": "integration.updated",
            "timestamp": "2025-02-19T12:00:00.000Z",
            "data": {"uid": "user_1", "status": "active"},
        }
    )
    record = Record(value=value, headers=headers, timestamp=timestamp)

    routed = ROUTER.route(record)

    check_invariants(routed, record)
    received_at = dict(routed.headers).get("received-at")
    assert received_at is None or CANONICAL_RECEIVED_AT.fullmatch(received_at), received_at
