"""A record aiokafka cannot read is handed on marked, instead of failing every getmany.

Why this patches aiokafka: aiokafka 0.14 reads the fetched batches inside `getmany`
and raises at the first record it cannot read (UnicodeDecodeError for a header name
that is not UTF-8, UnsupportedCodecError, CorruptRecordException). The partition's
position stays before that record, so every later `getmany`, in this worker or in
whichever worker gets the partition next, raises again: one record written by any
client stops the partition for good, and aiokafka has no setting or hook to skip it.

`install()` wraps the fetcher's `MemoryRecords` (one partition's fetched bytes) so
that each batch is still read by aiokafka's fast reader and, only when that raises,
again from the batch's own bytes by `processor.kafka.recordbatch`, which keeps every record
it can read and marks the others with UNREADABLE_HEADER. Positions, commits and
transactions stay aiokafka's: the fetcher sees ordinary records in offset order.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import Any, Final

from processor.kafka.aiokafka_internals import MemoryRecords, read_fetched_records_with
from processor.kafka.recordbatch import read_batch, whole_batch

__all__ = ["install"]

# A batch is framed as BaseOffset (int64) then Length (int32) of what follows.
_LENGTH: Final = struct.Struct(">i")
_LOG_OVERHEAD: Final = 12


def install() -> None:
    """Read every fetched batch tolerantly from now on, in this process. Idempotent."""
    read_fetched_records_with(_TolerantMemoryRecords)


class _TolerantMemoryRecords:
    """aiokafka's MemoryRecords, keeping the bytes to re-read a batch it cannot."""

    __slots__ = ("_inner", "_position", "_raw")

    def __init__(self, data: bytes) -> None:
        self._inner = MemoryRecords(data)
        self._raw = data
        self._position = 0

    def size_in_bytes(self) -> int:
        size: int = self._inner.size_in_bytes()
        return size

    def has_next(self) -> bool:
        more: bool = self._inner.has_next()
        return more

    def next_batch(self) -> _TolerantBatch | None:
        batch = self._inner.next_batch()
        if batch is None:
            return None
        start = self._position
        (length,) = _LENGTH.unpack_from(self._raw, start + 8)
        self._position = end = start + _LOG_OVERHEAD + length
        return _TolerantBatch(batch, self._raw, start, end)


class _TolerantBatch:
    """One batch: aiokafka's reader first, processor.kafka.recordbatch where it gives up."""

    __slots__ = ("_batch", "_corrupt", "_end", "_raw", "_start")

    def __init__(self, batch: Any, raw: bytes, start: int, end: int) -> None:
        self._batch = batch
        self._raw = raw
        self._start = start
        self._end = end
        self._corrupt = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._batch, name)

    def validate_crc(self) -> bool:
        # The broker checks CRCs on produce, so a mismatch here is damage that every
        # fetch returns again: park the batch rather than raise forever.
        self._corrupt = not self._batch.validate_crc()
        return True

    def __next__(self) -> Any:
        # aiokafka reads a control batch's one record this way.
        return next(self._batch)

    def __iter__(self) -> Iterator[Any]:
        if self._corrupt:
            yield from whole_batch(self._bytes(), "its CRC does not match its bytes")
            return
        reached = -1
        try:
            for record in self._batch:
                reached = record.offset
                yield record
        except Exception:  # whatever aiokafka's reader raises, the batch is read again
            yield from read_batch(self._bytes(), after=reached)

    def _bytes(self) -> bytes:
        return self._raw[self._start : self._end]
