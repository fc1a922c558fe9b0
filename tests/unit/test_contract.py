"""The subscriber's contract (`processor schema`): every topic the config produces, with
its routing rule, key, headers and value schema; the checked-in copy is current and the
code keeps every promise it made."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec
import pytest
from jsonschema import Draft202012Validator

from processor.config import Config, Route, load_config
from processor.contract.compat import contract_breaks
from processor.contract.schema import contract_document, contract_json, topic_contracts
from processor.events import DATA_TYPES, BaseData, IntegrationData, StatusData
from processor.kafka.topics import all_topics
from tests.deliveries import SPEC_EXAMPLE

ROOT = Path(__file__).resolve().parents[2]
CONTRACT = ROOT / "docs" / "contract.json"


@pytest.fixture(scope="module")
def config() -> Config:
    return load_config(ROOT / "config.yaml", env={})


def with_routes(config: Config, **routes: str | Route) -> Config:
    routing = msgspec.structs.replace(config.routing, routes={**config.routing.routes, **routes})
    return msgspec.structs.replace(config, routing=routing)


def test_every_topic_but_the_dedup_changelog_is_described(config: Config) -> None:
    topics = list(contract_document(config)["topics"])

    assert sorted(topics) == sorted(t for t in all_topics(config) if t != config.topics.dedup)
    assert [c.role for c in topic_contracts(config)] == ["raw"] + ["routed"] * 9 + [
        "unrouted",
        "dlq",
    ]


def test_each_derived_topic_states_its_routing_rule(config: Config) -> None:
    topics = contract_document(config)["topics"]

    assert topics["integration.status.partially_synced"]["description"] == (
        "`integration.*` deliveries whose `data.status` normalises to `partially_synced`."
    )
    other = topics["integration.status.other"]["description"]
    assert other.startswith("`integration.*` deliveries whose `data.status` normalises to none of")
    assert "`queued`" in other
    assert "`partially_synced`" in other


def test_headers_say_name_meaning_format_and_whether_always_there(config: Config) -> None:
    topics = contract_document(config)["topics"]
    completed = topics["integration.status.completed"]["headers"]
    dlq = topics["webhooks.dlq"]["headers"]

    assert completed["required"] == ["delivery-id", "event", "uid", "status"]
    assert completed["properties"]["received-at"]["format"] == "date-time"
    assert completed["properties"]["uid"]["description"] == "`data.uid`"
    assert dlq["required"] == [
        "error.class",
        "error.message",
        "source.topic",
        "source.partition",
        "source.offset",
    ]
    assert dlq["properties"]["source.offset"]["pattern"] == "^[0-9]+$"
    assert "status" not in dlq["properties"]
    assert "status" not in topics["webhooks.unrouted"]["headers"]["required"]


def test_a_derived_topic_value_schema_accepts_what_the_worker_routes(config: Config) -> None:
    schema = contract_document(config)["topics"]["integration.status.active"]["value"]
    validator = Draft202012Validator(schema)
    broken = json.loads(SPEC_EXAMPLE)
    broken["data"]["status"] = 3

    assert validator.is_valid(json.loads(SPEC_EXAMPLE))
    assert not validator.is_valid(broken)
    assert not validator.is_valid({**json.loads(SPEC_EXAMPLE), "id": "abc"})


def test_a_category_gets_its_own_model_or_what_its_route_needs(config: Config) -> None:
    routed = with_routes(
        config,
        wallet="wallet.all",
        portfolio=Route(topic="portfolio.{status}", statuses=("open",), other_status="rest"),
    )
    contracts = {c.topic: c for c in topic_contracts(routed)}
    topics = contract_document(routed)["topics"]

    assert contracts["integration.status.error"].data is IntegrationData
    assert contracts["wallet.all"].data is BaseData
    assert contracts["portfolio.open"].data is StatusData
    assert topics["wallet.all"]["description"] == "every one of the `wallet.*` deliveries."
    assert "status" not in topics["wallet.all"]["headers"]["required"]
    assert "status" in topics["portfolio.rest"]["headers"]["required"]
    assert (
        "routed now: `integration`, `wallet`, `portfolio`"
        in (topics["webhooks.unrouted"]["description"])
    )


def test_a_topic_two_routes_share_names_both_rules_and_their_common_model(config: Config) -> None:
    shared = with_routes(config, wallet="integration.status.other")
    contract = next(c for c in topic_contracts(shared) if c.topic == "integration.status.other")

    assert contract.data is BaseData
    assert "; or every one of the `wallet.*` deliveries." in contract.description


def test_the_json_is_one_document_with_sorted_keys(config: Config) -> None:
    text = contract_json(config)

    assert text == contract_json(config)
    assert list(json.loads(text)["topics"]) == sorted(json.loads(text)["topics"])
    assert "\n    " not in json.dumps(json.loads(text)), "docstrings are dedented"


def test_docs_contract_json_is_the_contract_of_the_default_config(config: Config) -> None:
    assert CONTRACT.read_text() == contract_json(config), (
        "docs/contract.json is out of date with the code: run `make contract` and commit it"
    )


def assert_keeps_every_promise(config: Config) -> None:
    """The compatibility test: the code against the contract subscribers were given."""
    promised: dict[str, Any] = json.loads(CONTRACT.read_text())
    breaks = contract_breaks(promised, contract_document(config))
    assert not breaks, (
        "these changes break subscribers of docs/contract.json:\n  "
        + "\n  ".join(breaks)
        + "\nKeep what subscribers read (additions are fine, then `make contract`); a "
        "breaking change goes to a new topic, announced, before docs/contract.json changes."
    )


def test_the_code_keeps_every_promise_of_docs_contract_json(config: Config) -> None:
    assert_keeps_every_promise(config)


def test_removing_a_field_from_a_model_fails_the_compatibility_test(
    config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    inherited = set(StatusData.__struct_fields__)
    fields = [(f.name, f.type, f.default)
              for f in msgspec.structs.fields(IntegrationData)
              if f.name not in inherited and f.name != "wallet_id"]  # fmt: skip
    trimmed = msgspec.defstruct(
        "IntegrationData", fields, bases=(StatusData,), frozen=True, kw_only=True, rename="camel"
    )
    monkeypatch.setitem(DATA_TYPES, "integration", trimmed)

    with pytest.raises(AssertionError) as failed:
        assert_keeps_every_promise(config)
    assert "integration.status.completed value: $.data.walletId: removed" in str(failed.value)
