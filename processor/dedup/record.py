"""The dedup changelog's record, written by the screen and read back by the restore.

One record per remembered delivery: to the raw partition's number of the changelog
topic, keyed by the delivery id (compaction keeps its latest), its value the id's
64-bit hash and the delivery's 32-bit fingerprint, little-endian; when it was
remembered is the record's own timestamp. A value of another length was not written
by a worker and is skipped on restore.
"""

from __future__ import annotations

import struct
import sys
from array import array
from typing import Final, NamedTuple

__all__ = ["ChangelogRecord", "Restored", "RestoredBuilder", "changelog_record"]

_VALUE: Final = struct.Struct("<QI")


class ChangelogRecord(NamedTuple):
    """One remembered id, as produce_batch takes it: to the raw partition's number."""

    topic: str
    partition: int
    key: bytes
    value: bytes
    headers: list[tuple[str, bytes]]


def changelog_record(
    topic: str, partition: int, delivery_id: str, id_hash: int, fingerprint: int
) -> ChangelogRecord:
    return ChangelogRecord(
        topic, partition, delivery_id.encode(), _VALUE.pack(id_hash, fingerprint), []
    )


class Restored(NamedTuple):
    """A partition's changelog, packed as IdWindow.restore takes it: little-endian uint64
    id hashes, uint32 fingerprints, uint32 seconds since the epoch."""

    id_hashes: bytes
    fingerprints: bytes
    seen_at: bytes

    def __len__(self) -> int:
        return len(self.id_hashes) // 8


class RestoredBuilder:
    """Changelog records, as read, gathered into a Restored."""

    def __init__(self) -> None:
        self._hashes = bytearray()
        self._prints = bytearray()
        self._seen_at = array("I")

    def add(self, value: bytes | None, timestamp_ms: int) -> None:
        if value is None or len(value) != _VALUE.size:
            return  # not written by a worker: nothing to restore
        self._hashes += value[:8]
        self._prints += value[8:]
        self._seen_at.append(timestamp_ms // 1000)

    def build(self) -> Restored:
        seen_at = array("I", self._seen_at)
        if sys.byteorder == "big":
            seen_at.byteswap()
        return Restored(bytes(self._hashes), bytes(self._prints), seen_at.tobytes())
