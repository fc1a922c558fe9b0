"""The changelog's records round-trip, and whatever else a changelog partition holds
(another writer's bytes, a truncated value) is skipped, never a crash of the restore."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from processor.dedup.record import RestoredBuilder, changelog_records
from tests.properties import examples

PROPERTY = settings(max_examples=examples(300), deadline=None, database=None)

ids = st.dictionaries(st.integers(1, 2**64 - 1), st.integers(0, 2**32 - 1), max_size=40)


@PROPERTY
@given(ids, st.integers(1, 50), st.integers(0, 2**41))
def test_a_checkpoints_records_restore_its_ids_in_order(
    remembered: dict[int, int], per_record: int, timestamp_ms: int
) -> None:
    builder = RestoredBuilder()
    for record in changelog_records("t", 0, remembered, offsets=(0, 9), per_record=per_record):
        builder.add(record.value, timestamp_ms)
    restored = builder.build()

    assert restored.id_hashes == b"".join(k.to_bytes(8, "little") for k in remembered)
    assert restored.fingerprints == b"".join(v.to_bytes(4, "little") for v in remembered.values())
    assert restored.seen_at == (timestamp_ms // 1000).to_bytes(4, "little") * len(remembered)


@PROPERTY
@given(st.lists(st.one_of(st.none(), st.binary(max_size=64)), max_size=10))
def test_any_value_is_restored_whole_or_skipped(values: list[bytes | None]) -> None:
    builder = RestoredBuilder()
    for value in values:
        builder.add(value, 0)
    restored = builder.build()

    count = len(restored)
    assert len(restored.fingerprints) == len(restored.seen_at) == 4 * count
    assert len(restored.id_hashes) == 8 * count
