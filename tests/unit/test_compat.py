"""Which changes of a schema break a subscriber: `processor.contract.compat` on small schemas."""

from __future__ import annotations

from typing import Any

import pytest

from processor.contract.compat import breaking_changes, contract_breaks
from processor.errors import ContractError

NULLABLE_STR = {"anyOf": [{"type": "string"}, {"type": "null"}], "default": None}


def record(properties: dict[str, Any], required: tuple[str, ...] = ()) -> dict[str, Any]:
    """A delivery-like schema whose `data` is a $def, as msgspec writes them."""
    return {
        "$ref": "#/$defs/Delivery",
        "$defs": {
            "Delivery": {
                "type": "object",
                "properties": {"id": {"type": "string"}, "data": {"$ref": "#/$defs/Data"}},
                "required": ["id", "data"],
            },
            "Data": {"type": "object", "properties": properties, "required": list(required)},
        },
    }


BEFORE = record({"uid": {"type": "string"}, "alias": NULLABLE_STR}, required=("uid",))


def test_the_same_schema_breaks_nothing() -> None:
    assert breaking_changes(BEFORE, BEFORE) == []


def test_a_removed_field_breaks() -> None:
    after = record({"uid": {"type": "string"}}, required=("uid",))

    assert breaking_changes(BEFORE, after) == ["$.data.alias: removed"]


def test_a_changed_type_breaks() -> None:
    after = record({"uid": {"type": "integer"}, "alias": NULLABLE_STR}, required=("uid",))

    assert breaking_changes(BEFORE, after) == ["$.data.uid: type string became integer"]


@pytest.mark.parametrize(
    ("before", "after"),
    [
        ({"type": "string"}, NULLABLE_STR),  # may now be null
        (NULLABLE_STR, {"type": "string"}),  # old records may hold null
        ({"type": "string"}, {"type": "string", "format": "date-time"}),
        ({"type": "object", "properties": {}}, {"type": "array", "items": {}}),
    ],
    ids=["nullable", "not-nullable", "format", "object-to-array"],
)
def test_any_change_of_the_set_of_types_breaks(
    before: dict[str, Any], after: dict[str, Any]
) -> None:
    assert len(breaking_changes({"properties": {"f": before}}, {"properties": {"f": after}})) == 1


def test_a_new_required_field_breaks() -> None:
    after = record(
        {"uid": {"type": "string"}, "alias": NULLABLE_STR, "region": {"type": "string"}},
        required=("uid", "region"),
    )

    assert breaking_changes(BEFORE, after) == ["$.data.region: new required field"]


def test_an_optional_field_becoming_required_breaks() -> None:
    after = record({"uid": {"type": "string"}, "alias": NULLABLE_STR}, required=("uid", "alias"))

    assert breaking_changes(BEFORE, after) == ["$.data.alias: became required"]


def test_a_new_optional_field_is_fine() -> None:
    after = record(
        {"uid": {"type": "string"}, "alias": NULLABLE_STR, "region": NULLABLE_STR},
        required=("uid",),
    )

    assert breaking_changes(BEFORE, after) == []


def test_a_required_field_becoming_optional_is_fine() -> None:
    after = record({"uid": {"type": "string"}, "alias": NULLABLE_STR}, required=())

    assert breaking_changes(BEFORE, after) == []


def test_constraints_within_a_type_are_not_compared() -> None:
    after = record({"uid": {"type": "string", "maxLength": 9}, "alias": NULLABLE_STR}, ("uid",))

    assert breaking_changes(BEFORE, after) == []


def test_fields_of_array_items_are_compared() -> None:
    before = {"type": "array", "items": {"type": "object", "properties": {"a": {}, "b": {}}}}
    after = {"type": "array", "items": {"type": "object", "properties": {"a": {}}}}

    assert breaking_changes(before, after) == ["$[].b: removed"]


def test_a_recursive_model_is_compared_once_without_looping() -> None:
    def tree(*fields: str) -> dict[str, Any]:
        props: dict[str, Any] = {f: {"type": "string"} for f in fields}
        props["children"] = {"type": "array", "items": {"$ref": "#/$defs/Node"}}
        return {"$ref": "#/$defs/Node", "$defs": {"Node": {"type": "object", "properties": props}}}

    assert breaking_changes(tree("name", "size"), tree("name")) == ["$.size: removed"]


def test_a_dangling_ref_is_a_contract_error() -> None:
    with pytest.raises(ContractError, match="points to no schema"):
        breaking_changes({"$ref": "#/$defs/Gone"}, {})


def contract(**topics: dict[str, Any]) -> dict[str, Any]:
    return {"topics": topics}


def topic(value: dict[str, Any], headers: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "description": "",
        "key": {"type": "string"},
        "headers": headers or {"type": "object", "properties": {}, "required": []},
        "value": value,
    }


def test_a_topic_no_longer_produced_breaks_and_a_new_topic_is_fine() -> None:
    old = contract(a=topic(BEFORE), b=topic(BEFORE))
    new = contract(a=topic(BEFORE), c=topic(BEFORE))

    assert contract_breaks(old, new) == ["b: no longer produced"]


def test_headers_are_held_to_the_same_rules_as_fields() -> None:
    def headers(*always: str, optional: tuple[str, ...] = ()) -> dict[str, Any]:
        names = (*always, *optional)
        properties = {name: {"type": "string"} for name in names}
        return {"type": "object", "properties": properties, "required": list(always)}

    old = contract(t=topic(BEFORE, headers("delivery-id", "status")))

    gone = contract(t=topic(BEFORE, headers("delivery-id")))
    sometimes = contract(t=topic(BEFORE, headers("delivery-id", optional=("status",))))
    more = contract(t=topic(BEFORE, headers("delivery-id", "status", optional=("trace",))))
    assert contract_breaks(old, gone) == ["t headers: $.status: removed"]
    assert contract_breaks(old, sometimes) == []
    assert contract_breaks(old, more) == []
