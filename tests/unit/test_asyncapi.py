"""`processor schema --asyncapi`: an AsyncAPI 3.0 document valid against the official
JSON Schema (npm `@asyncapi/specs`, installed by `make setup`), every `$ref` resolving,
and a checked-in copy for the default config that is kept current."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
import yaml
from jsonschema import Draft7Validator
from referencing import Registry
from referencing.jsonschema import DRAFT7, DRAFT202012

from processor.config import Config, KafkaConfig, load_config
from processor.contract.asyncapi import asyncapi_document, asyncapi_yaml

ROOT = Path(__file__).resolve().parents[2]
CHECKED_IN = ROOT / "docs" / "asyncapi.yaml"
SPECS = ROOT / "tools" / "asyncapi" / "node_modules" / "@asyncapi" / "specs" / "schemas"


@pytest.fixture(scope="module")
def config() -> Config:
    return load_config(ROOT / "config.yaml", env={})


@pytest.fixture(scope="module")
def validator() -> Draft7Validator:
    """The official AsyncAPI 3.0.0 schema: draft-07, its definitions `$ref`ed by `$id`."""
    path = SPECS / "3.0.0.json"
    assert path.exists(), f"{path} is missing: run `make setup` (it runs npm ci in tools/asyncapi)"
    spec = json.loads(path.read_text())
    registry: Registry[Any] = Registry().with_resources(
        (uri, DRAFT7.create_resource(definition)) for uri, definition in spec["definitions"].items()
    )
    return Draft7Validator(spec, registry=registry)


def problems(validator: Draft7Validator, document: dict[str, Any]) -> list[str]:
    # Through YAML and back, as a reader of the file would load it.
    loaded = yaml.safe_load(yaml.safe_dump(document))
    return [f"{e.json_path}: {e.message[:200]}" for e in validator.iter_errors(loaded)]


def refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        if isinstance(node.get("$ref"), str):
            yield node["$ref"]
        for value in node.values():
            yield from refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from refs(value)


def test_the_document_of_the_default_config_is_valid_asyncapi_3(validator: Draft7Validator) -> None:
    document = yaml.safe_load(CHECKED_IN.read_text())

    assert document["asyncapi"] == "3.0.0"
    assert problems(validator, document) == []


@pytest.mark.parametrize(
    "breakage",
    [
        lambda d: d["operations"]["send.webhooks.dlq"].update(action="publish"),  # AsyncAPI 2
        lambda d: d["channels"]["webhooks.dlq"].update(address=3),
        lambda d: d["channels"]["webhooks.raw"]["bindings"]["kafka"].update(partitions=0),
        lambda d: d.pop("info"),
    ],
    ids=["operation-action", "address-type", "partitions", "no-info"],
)
def test_a_broken_document_fails_the_validation(
    config: Config, validator: Draft7Validator, breakage: Any
) -> None:
    broken = copy.deepcopy(asyncapi_document(config))
    breakage(broken)

    assert problems(validator, broken) != []


def test_every_ref_resolves() -> None:
    document = yaml.safe_load(CHECKED_IN.read_text())
    resource = DRAFT202012.create_resource(document)
    resolver = Registry().with_resource("urn:asyncapi", resource).resolver("urn:asyncapi")

    found = set(refs(document))

    assert "#/components/schemas/IntegrationData" in found
    for ref in found:
        resolver.lookup(ref)  # raises Unresolvable for a dangling one


def test_docs_asyncapi_yaml_is_the_document_of_the_default_config(config: Config) -> None:
    assert CHECKED_IN.read_text() == asyncapi_yaml(config), (
        "docs/asyncapi.yaml is out of date with the code: run `make contract` and commit it"
    )


def test_each_channel_carries_its_rule_payload_headers_and_key(config: Config) -> None:
    channel = asyncapi_document(config)["channels"]["integration.status.completed"]
    message = channel["messages"]["record"]

    assert channel["address"] == "integration.status.completed"
    assert "normalises to `completed`" in channel["description"]
    assert message["payload"] == {"$ref": "#/components/schemas/Delivery_IntegrationData_"}
    assert message["headers"] == {"$ref": "#/components/schemas/RoutedHeadersWithStatus"}
    assert message["bindings"]["kafka"]["key"]["type"] == "string"
    assert channel["bindings"]["kafka"]["partitions"] == config.topics.partitions


def test_a_server_per_bootstrap_address_with_its_security(
    config: Config, validator: Draft7Validator
) -> None:
    kafka = KafkaConfig(
        bootstrap_servers="k1.example:9093, k2.example:9093,k3.example:9093",
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username="svc",
        sasl_password="pw-9f2e",
    )
    document = asyncapi_document(msgspec.structs.replace(config, kafka=kafka))

    assert [s["host"] for s in document["servers"].values()] == [
        "k1.example:9093",
        "k2.example:9093",
        "k3.example:9093",
    ]
    assert {s["protocol"] for s in document["servers"].values()} == {"kafka-secure"}
    assert document["components"]["securitySchemes"]["sasl"]["type"] == "scramSha512"
    assert "pw-9f2e" not in yaml.safe_dump(document)
    assert problems(validator, document) == []
