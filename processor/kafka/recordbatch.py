"""Kafka record batches (format v2) read record by record, trusting nothing. No I/O.

aiokafka reads a batch in one go and raises at the first thing it cannot read: a
header name that is not UTF-8, a compression codec it does not know, framing that
does not add up. This reader is for the batches it gave up on: it keeps every record
it can read, says why for each one it cannot, and never raises, so that one record
any client wrote is parked instead of stopping every worker that owns its partition.

When a batch cannot be split into records at all (its codec is unknown, its
compressed data or framing is broken) the rest of it comes back as one record: at
the batch's last offset, so that the consumer moves past the whole batch, with the
batch's own bytes as its value, so that nothing is thrown away.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from typing import Final, NamedTuple

from aiokafka import codec

from processor.headers import UNREADABLE_HEADER

__all__ = [
    "BatchRecord",
    "read_batch",
    "whole_batch",
]

# BaseOffset, Length, PartitionLeaderEpoch, Magic, CRC, Attributes, LastOffsetDelta,
# FirstTimestamp, MaxTimestamp, ProducerId, ProducerEpoch, BaseSequence, record count.
_HEADER: Final = struct.Struct(">qiibIhiqqqhii")
_CODEC_MASK: Final = 0x07
_LOG_APPEND_TIME: Final = 0x08
_DECOMPRESS: Final[dict[int, tuple[str, Callable[[bytes], bytes]]]] = {
    1: ("gzip", codec.gzip_decode),
    2: ("snappy", codec.snappy_decode),
    3: ("lz4", codec.lz4_decode),
    4: ("zstd", codec.zstd_decode),
}


class BatchRecord(NamedTuple):
    """A record as read, with the attributes aiokafka's fetcher reads of a record.

    A record that could not be read in full has the one header UNREADABLE_HEADER
    (processor.headers).
    """

    offset: int
    timestamp: int
    timestamp_type: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes | None]]
    checksum: None = None


def _unreadable(reason: str) -> list[tuple[str, bytes | None]]:
    return [(UNREADABLE_HEADER, reason.encode("utf-8", "backslashreplace"))]


class _Unreadable(Exception):
    """The rest of the batch cannot be split into records."""


def read_batch(raw: bytes, *, after: int = -1) -> Iterator[BatchRecord]:
    """Every record of the v2 batch `raw` with an offset above `after`, in order.

    Never raises: what cannot be read comes back marked with UNREADABLE_HEADER.
    """
    try:
        header = _HEADER.unpack_from(raw)
    except struct.error:
        return  # not even a batch header: nothing to place at an offset
    base_offset, _, _, magic, _, attributes, _, first_ts, max_ts = header[:9]
    if magic != 2:
        yield from whole_batch(raw, f"message format v{magic} is not read here", after=after)
        return
    log_append = attributes & _LOG_APPEND_TIME
    reached = after
    try:
        for offset_delta, ts_delta, key, value, headers in _records_of(
            raw, attributes & _CODEC_MASK
        ):
            offset = base_offset + offset_delta
            if offset <= reached:
                continue
            timestamp = max_ts if log_append else first_ts + ts_delta
            reached = offset
            yield BatchRecord(offset, timestamp, 1 if log_append else 0, key, value, headers)
    except Exception as exc:  # _Unreadable, or a flaw of this reader: park, never raise
        reason = str(exc) if isinstance(exc, _Unreadable) else repr(exc)
        yield from whole_batch(raw, reason, after=reached)


def whole_batch(raw: bytes, reason: str, *, after: int = -1) -> Iterator[BatchRecord]:
    """What is left of batch `raw` after offset `after`, as one marked record.

    It sits at the batch's last offset, so the consumer moves past the whole batch,
    and its value is the batch's own bytes, so nothing is thrown away.
    """
    try:
        header = _HEADER.unpack_from(raw)
    except struct.error:
        return
    base_offset, attributes, last_delta, max_ts = header[0], header[5], header[6], header[8]
    last_offset = base_offset + last_delta
    if last_offset <= after:
        return
    first = max(base_offset, after + 1)
    yield BatchRecord(
        last_offset,
        max_ts,
        1 if attributes & _LOG_APPEND_TIME else 0,
        None,
        bytes(raw),
        _unreadable(f"record batch at offsets {first}..{last_offset}: {reason}"),
    )


# offset delta, timestamp delta, key, value, headers
_Record = tuple[int, int, bytes | None, bytes | None, list[tuple[str, bytes | None]]]


def _records_of(raw: bytes, codec_id: int) -> Iterator[_Record]:
    body = memoryview(raw)[_HEADER.size :]
    if codec_id:
        if codec_id not in _DECOMPRESS:
            raise _Unreadable(f"unknown compression codec {codec_id}")
        name, decompress = _DECOMPRESS[codec_id]
        try:
            body = memoryview(decompress(bytes(body)))
        except Exception as exc:  # each codec library raises its own kinds
            raise _Unreadable(f"{name} data cannot be decompressed ({exc!r})") from None
    position = 0
    while position < len(body):
        try:
            length, start = _varint(body, position)
        except IndexError:
            raise _Unreadable(f"record framing is cut short at byte {position}") from None
        end = start + length
        if length <= 0 or end > len(body):
            raise _Unreadable(f"a record claims {length} bytes at byte {position}")
        yield _record(body[start:end])
        position = end


def _record(data: memoryview) -> _Record:
    """One record whose length is known; a flaw inside it spoils only this record."""
    try:
        _, pos = _varint(data, 0)  # attributes: unused by Kafka so far
        ts_delta, pos = _varint(data, pos)
        offset_delta, pos = _varint(data, pos)
    except IndexError:
        raise _Unreadable("a record ends inside its offset") from None
    key: bytes | None = None
    value: bytes | None = None
    try:
        key, pos = _bytes(data, pos)
        value, pos = _bytes(data, pos)
        count, pos = _varint(data, pos)
        headers: list[tuple[str, bytes | None]] = []
        for index in range(count):
            name, pos = _bytes(data, pos)
            header_value, pos = _bytes(data, pos)
            try:
                text = (name or b"").decode()
            except UnicodeDecodeError:
                reason = f"the name of header {index} is not UTF-8"
                return offset_delta, ts_delta, key, value, _unreadable(reason)
            headers.append((text, header_value))
    except IndexError as exc:
        return offset_delta, ts_delta, key, value, _unreadable(f"record is malformed ({exc})")
    return offset_delta, ts_delta, key, value, headers


def _varint(data: memoryview, pos: int) -> tuple[int, int]:
    """A zig-zag varint at `pos` and the position after it; IndexError past the end."""
    result = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return (result >> 1) ^ -(result & 1), pos
        shift += 7
        if shift > 63:
            raise IndexError("varint longer than 10 bytes")


def _bytes(data: memoryview, pos: int) -> tuple[bytes | None, int]:
    length, pos = _varint(data, pos)
    if length < 0:
        return None, pos
    end = pos + length
    if end > len(data):
        raise IndexError(f"{length} bytes claimed, {len(data) - pos} left")
    return bytes(data[pos:end]), end
