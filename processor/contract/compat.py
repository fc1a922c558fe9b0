"""Whether a change of the contract breaks a subscriber. Pure; no I/O.

A subscriber was written against the old schema, and its topic holds records written
under the old one while new ones arrive under the new one. So a change breaks it when:

- a field (or header) it may read is removed;
- a field's type changes (its set of JSON types, and a string's `format`, differ);
- a field it did not need becomes required (older records lack it), new or not;
- a topic it subscribes to is no longer produced.

Additions pass: a new optional field or header, a new topic, and a required field
becoming optional. Constraints within a type (lengths, patterns, bounds) are not
compared. The schemas are the JSON Schemas `processor.contract.schema` generates: `$ref`s
point into the same document, nullable fields are `anyOf`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from processor.errors import ContractError

__all__ = ["breaking_changes", "contract_breaks"]

Schema = Mapping[str, Any] | bool


def breaking_changes(old: Schema, new: Schema) -> list[str]:
    """Why a subscriber of `old` breaks on `new`, one line per change ([] if it does not)."""
    return list(_Comparison(old, new).changes("$", old, new))


def contract_breaks(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """`breaking_changes` of each topic of two `processor schema` documents."""
    found: list[str] = []
    for topic, before in old["topics"].items():
        after = new["topics"].get(topic)
        if after is None:
            found.append(f"{topic}: no longer produced")
            continue
        for part in ("key", "headers", "value"):
            found += [f"{topic} {part}: {c}" for c in breaking_changes(before[part], after[part])]
    return found


class _Comparison:
    """Walks two schemas side by side, each resolving its `$ref`s in its own root."""

    def __init__(self, old: Schema, new: Schema) -> None:
        self._roots = (old, new)
        self._seen: set[tuple[tuple[int, ...], tuple[int, ...]]] = set()

    def changes(self, path: str, old: Schema, new: Schema) -> Iterator[str]:
        old_shapes = self._shapes(old, self._roots[0])
        new_shapes = self._shapes(new, self._roots[1])
        # A definition is compared once: a recursive model ends, a shared one is named once.
        pair = (tuple(map(id, old_shapes)), tuple(map(id, new_shapes)))
        if pair in self._seen:
            return
        self._seen.add(pair)
        old_types, new_types = _types(old_shapes), _types(new_shapes)
        if old_types != new_types:
            yield f"{path}: type {_shown(old_types)} became {_shown(new_types)}"
        before, after = _first(old_shapes, "object"), _first(new_shapes, "object")
        if before is not None and after is not None:
            yield from self._objects(path, before, after)
        before, after = _first(old_shapes, "array"), _first(new_shapes, "array")
        if before is not None and after is not None:
            yield from self.changes(
                f"{path}[]", before.get("items", True), after.get("items", True)
            )

    def _objects(self, path: str, old: Mapping[str, Any], new: Mapping[str, Any]) -> Iterator[str]:
        old_fields, new_fields = old.get("properties", {}), new.get("properties", {})
        old_required, new_required = set(old.get("required", ())), set(new.get("required", ()))
        for name, schema in old_fields.items():
            if name not in new_fields:
                yield f"{path}.{name}: removed"
                continue
            if name in new_required and name not in old_required:
                yield f"{path}.{name}: became required"
            yield from self.changes(f"{path}.{name}", schema, new_fields[name])
        for name in sorted(new_fields.keys() - old_fields.keys()):
            if name in new_required:
                yield f"{path}.{name}: new required field"

    def _shapes(self, schema: Schema, root: Schema) -> list[Mapping[str, Any]]:
        """The alternatives a value may take: `$ref`s followed, `anyOf`/`oneOf` flattened."""
        if isinstance(schema, bool):
            return [{}] if schema else []
        while "$ref" in schema:
            schema = _pointer(root, schema["$ref"])
        alternatives = schema.get("anyOf", schema.get("oneOf"))
        if alternatives is None:
            return [schema]
        return [shape for alt in alternatives for shape in self._shapes(alt, root)]


def _types(shapes: list[Mapping[str, Any]]) -> frozenset[str]:
    """`string`, `string(date-time)`, `null`, ...; `any` for a schema without a type."""
    found: set[str] = set()
    for shape in shapes:
        kinds = shape.get("type")
        if kinds is None and "enum" in shape:
            kinds = sorted({_json_type(value) for value in shape["enum"]})
        if kinds is None:
            kinds = "object" if "properties" in shape else "any"
        for kind in [kinds] if isinstance(kinds, str) else kinds:
            found.add(f"{kind}({shape['format']})" if "format" in shape else kind)
    return frozenset(found)


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    return {float: "number", str: "string", list: "array"}.get(type(value), "object")


def _first(shapes: list[Mapping[str, Any]], kind: str) -> Mapping[str, Any] | None:
    for shape in shapes:
        kinds = shape.get("type", "object" if "properties" in shape else None)
        if kinds == kind or (isinstance(kinds, list) and kind in kinds):
            return shape
    return None


def _shown(types: frozenset[str]) -> str:
    return " | ".join(sorted(types)) or "nothing"


def _pointer(root: Schema, ref: str) -> Mapping[str, Any]:
    """The schema a local `$ref` (`#/$defs/Name`) points to."""
    if not ref.startswith("#"):
        raise ContractError(f"only local $refs can be compared, got {ref!r}")
    target: Any = root
    try:
        for part in ref[1:].split("/")[1:]:
            target = target[part.replace("~1", "/").replace("~0", "~")]
    except (KeyError, IndexError, TypeError):
        target = None
    if not isinstance(target, Mapping):
        raise ContractError(f"$ref {ref!r} points to no schema in its document")
    return target
