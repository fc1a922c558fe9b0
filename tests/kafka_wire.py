"""Record batches as any client could write them, byte for byte, and a raw produce.

aiokafka's producer only writes what aiokafka can read back (UTF-8 header names, the
codecs it has): tests of what a worker does with anything else build the batch here
(Kafka's format v2) and send it with a bare ProduceRequest, as another client would.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Sequence

from aiokafka import TopicPartition, codec
from aiokafka.client import AIOKafkaClient
from aiokafka.errors import KafkaError, for_code
from aiokafka.protocol.produce import ProduceRequest
from aiokafka.record.util import calc_crc32c

Header = tuple[bytes, bytes | None]

CODECS = {"none": 0, "gzip": 1, "snappy": 2, "lz4": 3, "zstd": 4}
_COMPRESS = {
    1: codec.gzip_encode,
    2: codec.snappy_encode,
    3: codec.lz4_encode,
    4: codec.zstd_encode,
}


def varint(value: int) -> bytes:
    """Kafka's zig-zag varint."""
    zigzag = (value << 1) ^ (value >> 63)
    out = bytearray()
    while True:
        byte = zigzag & 0x7F
        zigzag >>= 7
        if zigzag:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _sized(data: bytes | None) -> bytes:
    return varint(-1) if data is None else varint(len(data)) + data


def record(
    offset_delta: int,
    *,
    key: bytes | None = None,
    value: bytes | None = None,
    headers: Sequence[Header] = (),
    timestamp_delta: int = 0,
) -> bytes:
    body = bytearray(b"\x00")  # attributes
    body += varint(timestamp_delta) + varint(offset_delta) + _sized(key) + _sized(value)
    body += varint(len(headers))
    for name, header_value in headers:
        body += _sized(name) + _sized(header_value)
    return varint(len(body)) + bytes(body)


def batch(
    records: Sequence[bytes],
    *,
    base_offset: int = 0,
    codec_id: int = 0,
    timestamp: int = 1_700_000_000_000,
    compressed: bytes | None = None,
    magic: int = 2,
) -> bytes:
    """A v2 batch of `records` (from `record`), compressed with `codec_id`.

    `compressed` replaces the (compressed) records section as given: for batches
    whose data does not match their codec.
    """
    payload = b"".join(records)
    if compressed is not None:
        payload = compressed
    elif codec_id:
        payload = _COMPRESS[codec_id](payload)
    after_crc = (
        struct.pack(
            ">hiqqqhii",
            codec_id,  # attributes: the codec, create time, not transactional
            len(records) - 1,
            timestamp,
            timestamp,
            -1,  # no producer id
            -1,
            -1,
            len(records),
        )
        + payload
    )
    crc = calc_crc32c(after_crc)
    after_length = struct.pack(">ibI", 0, magic, crc) + after_crc
    return struct.pack(">qi", base_offset, len(after_length)) + after_length


async def produce_raw(bootstrap: str, topic: str, partition: int, data: bytes) -> None:
    """Append the batch `data` to topic/partition as it is (acks=all); raise on refusal.

    Retries what Kafka says to retry (a topic created moments ago has no leader yet).
    """
    client = AIOKafkaClient(bootstrap_servers=bootstrap)
    await client.bootstrap()
    try:
        async with asyncio.timeout(30):
            while True:
                await client.force_metadata_update()
                leader = client.cluster.leader_for_partition(TopicPartition(topic, partition))
                if leader is not None:
                    error = await _send(client, leader, topic, partition, data)
                    if error is None:
                        return
                    if not error.retriable:
                        raise error
                await asyncio.sleep(0.1)
    finally:
        await client.close()


async def _send(
    client: AIOKafkaClient, leader: int, topic: str, partition: int, data: bytes
) -> KafkaError | None:
    request = ProduceRequest(
        transactional_id=None,
        required_acks=-1,
        timeout=30_000,
        topics=[(topic, [(partition, data)])],
    )
    response = await client.send(leader, request)
    for _, partitions in response.topics:
        for part in partitions:
            if part[1]:
                error: KafkaError = for_code(part[1])(f"{topic}/{partition} refused the batch")
                return error
    return None
