"""The dedup changelog's records, written by the screen and read back by the restore.

A checkpoint writes the ids it remembers of a raw partition as one record (a few for a
big one, `ids_per_record` each) to the raw partition's number of the changelog topic:
its value `ids1`, then the ids' 64-bit hashes, then their 32-bit fingerprints, all
little-endian; when they were remembered is the record's own timestamp. Its key names
the raw offsets it stands for plus a random tag: unique, so that a compacted
changelog (as earlier versions created it) keeps every record.

Workers of earlier versions wrote one record per id (key = the id, value = its hash
and fingerprint, 12 bytes): those are still restored, so a worker upgrades in place.
A value of any other shape was not written by a worker and is skipped on restore.
"""

from __future__ import annotations

import secrets
import sys
from array import array
from collections.abc import Mapping
from typing import Final, NamedTuple

import numpy as np

__all__ = [
    "MOST_IDS",
    "ChangelogRecord",
    "Restored",
    "RestoredBuilder",
    "changelog_records",
    "ids_per_record",
]

MAGIC: Final = b"ids1"
_ID_BYTES: Final = 12  # a hash and a fingerprint
# A record's key, headers and batch framing, with room to spare.
_FRAMING_BYTES: Final = 1024
# Ids per record at most, whatever the topic allows: a restore reads a fetch at a time.
MOST_IDS: Final = 65_536  # 768 KiB


def ids_per_record(max_message_bytes: int) -> int:
    """How many ids one changelog record may hold within the topic's record size limit."""
    return max(1, min(MOST_IDS, (max_message_bytes - _FRAMING_BYTES - len(MAGIC)) // _ID_BYTES))


class ChangelogRecord(NamedTuple):
    """A checkpoint's remembered ids, as produce_batch takes it: to the raw partition's number."""

    topic: str
    partition: int
    key: bytes
    value: bytes
    headers: list[tuple[str, bytes]]


def changelog_records(
    topic: str,
    partition: int,
    ids: Mapping[int, int],
    *,
    offsets: tuple[int, int],
    per_record: int,
) -> list[ChangelogRecord]:
    """`ids` (id hash -> fingerprint) as records of at most `per_record` ids each;
    `offsets`: the first and last raw offsets they were screened from."""
    hashes = np.fromiter(ids.keys(), dtype="<u8", count=len(ids))
    prints = np.fromiter(ids.values(), dtype="<u4", count=len(ids))
    tag = secrets.token_hex(4)
    key = f"{offsets[0]}-{offsets[1]}.{tag}"
    records = []
    for number, start in enumerate(range(0, len(ids), per_record)):
        end = start + per_record
        value = b"".join((MAGIC, hashes[start:end].tobytes(), prints[start:end].tobytes()))
        suffix = f".{number}" if number else ""
        records.append(ChangelogRecord(topic, partition, (key + suffix).encode(), value, []))
    return records


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
        if value is None:
            return
        if len(value) == _ID_BYTES:  # one id, written by an earlier version
            self._hashes += value[:8]
            self._prints += value[8:]
            self._seen_at.append(timestamp_ms // 1000)
            return
        count, rest = divmod(len(value) - len(MAGIC), _ID_BYTES)
        if rest or count < 1 or not value.startswith(MAGIC):
            return  # not written by a worker: nothing to restore
        middle = len(MAGIC) + 8 * count
        self._hashes += value[len(MAGIC) : middle]
        self._prints += value[middle:]
        self._seen_at.extend(array("I", [timestamp_ms // 1000]) * count)

    def build(self) -> Restored:
        seen_at = array("I", self._seen_at)
        if sys.byteorder == "big":
            seen_at.byteswap()
        return Restored(bytes(self._hashes), bytes(self._prints), seen_at.tobytes())
