"""Record batches aiokafka cannot read: every record kept or parked, never an exception.

The batches are built byte for byte (tests/kafka_wire.py) as another client could
write them; aiokafka's own fetcher path is exercised through the MemoryRecords that
`processor.kafka.unreadable` installs, with the fetcher's own record loop.
"""

from __future__ import annotations

from typing import Any

import pytest
from aiokafka.consumer.fetcher import PartitionRecords
from aiokafka.structs import TopicPartition

from processor.config import RoutingConfig, TopicsConfig
from processor.headers import UNREADABLE_HEADER, unreadable_reason
from processor.kafka import unreadable
from processor.kafka.recordbatch import read_batch
from processor.routing import Router
from tests import kafka_wire as wire
from tests.deliveries import SPEC_EXAMPLE

BAD_NAME = (b"\xff\xfe\x80", b"v")


def three_records(*, middle: list[wire.Header]) -> list[bytes]:
    return [
        wire.record(0, key=b"k0", value=b"v0", headers=[(b"a", b"1")]),
        wire.record(1, key=b"k1", value=b"v1", headers=middle),
        wire.record(2, key=b"k2", value=b"v2", timestamp_delta=5),
    ]


def test_every_record_of_a_sound_batch_is_read_as_written() -> None:
    data = wire.batch(three_records(middle=[(b"b", None)]), base_offset=100)

    records = list(read_batch(data))

    assert [(r.offset, r.key, r.value, r.headers) for r in records] == [
        (100, b"k0", b"v0", [("a", b"1")]),
        (101, b"k1", b"v1", [("b", None)]),
        (102, b"k2", b"v2", []),
    ]
    assert [r.timestamp for r in records] == [1_700_000_000_000] * 2 + [1_700_000_000_005]


def test_a_header_name_that_is_not_utf8_spoils_only_its_record() -> None:
    data = wire.batch(three_records(middle=[BAD_NAME]), base_offset=7)

    records = list(read_batch(data))

    assert [r.offset for r in records] == [7, 8, 9]
    assert [unreadable_reason(r.headers) for r in records] == [
        None,
        "the name of header 0 is not UTF-8",
        None,
    ]
    assert (records[1].key, records[1].value) == (b"k1", b"v1")


@pytest.mark.parametrize("codec", ["gzip", "snappy", "lz4", "zstd"])
def test_compressed_batches_are_read_record_by_record(codec: str) -> None:
    data = wire.batch(three_records(middle=[BAD_NAME]), codec_id=wire.CODECS[codec])

    records = list(read_batch(data))

    assert [r.value for r in records] == [b"v0", b"v1", b"v2"]
    assert unreadable_reason(records[1].headers) == "the name of header 0 is not UTF-8"


@pytest.mark.parametrize(
    ("codec_id", "compressed", "reason"),
    [
        (5, b"whatever", "unknown compression codec 5"),
        (4, b"not zstd at all", "zstd data cannot be decompressed"),
        (1, b"not gzip either", "gzip data cannot be decompressed"),
    ],
)
def test_a_batch_that_cannot_be_decompressed_is_one_parked_record_holding_its_bytes(
    codec_id: int, compressed: bytes, reason: str
) -> None:
    data = wire.batch(
        three_records(middle=[]), base_offset=40, codec_id=codec_id, compressed=compressed
    )

    (record,) = read_batch(data)

    assert record.offset == 42  # the last: the consumer moves past the whole batch
    assert record.value == data
    assert record.key is None
    parked = unreadable_reason(record.headers)
    assert parked is not None
    assert parked.startswith(f"record batch at offsets 40..42: {reason}")


def test_records_already_handed_on_are_not_repeated() -> None:
    data = wire.batch(three_records(middle=[BAD_NAME]), base_offset=10)

    assert [r.offset for r in read_batch(data, after=10)] == [11, 12]
    assert list(read_batch(data, after=12)) == []


def test_framing_that_does_not_add_up_parks_the_rest_of_the_batch() -> None:
    records = three_records(middle=[])
    cut = records[2][:-3]  # claims more bytes than the batch holds
    data = wire.batch([*records[:2], cut], base_offset=0)

    read = list(read_batch(data))

    assert [r.offset for r in read] == [0, 1, 2]
    assert unreadable_reason(read[2].headers) == (
        "record batch at offsets 2..2: a record claims 10 bytes at byte 26"
    )


def test_a_legacy_format_batch_is_parked_whole() -> None:
    data = wire.batch(three_records(middle=[]), magic=1)

    (record,) = read_batch(data)

    assert record.offset == 2
    assert unreadable_reason(record.headers) == (
        "record batch at offsets 0..2: message format v1 is not read here"
    )


@pytest.mark.parametrize("length", [0, 10, 61, 70])
def test_truncated_bytes_never_raise(length: int) -> None:
    data = wire.batch(three_records(middle=[BAD_NAME]))[:length]

    for record in read_batch(data):
        assert unreadable_reason(record.headers) is not None


def fetched(*batches: bytes, fetch_offset: int = 0) -> list[Any]:
    """What aiokafka's fetcher hands getmany for these batches, with the patch installed."""
    unreadable.install()
    from aiokafka.consumer import fetcher

    records = fetcher.MemoryRecords(b"".join(batches))
    partition = PartitionRecords(
        TopicPartition("webhooks.raw", 0), records, [], fetch_offset, None, None, True, 0
    )
    return list(partition)


def test_the_fetcher_hands_on_every_record_around_an_unreadable_one() -> None:
    first = wire.batch(three_records(middle=[BAD_NAME]), base_offset=0)
    second = wire.batch([wire.record(0, key=b"k3", value=b"v3")], base_offset=3)

    records = fetched(first, second)

    assert [(r.offset, r.value) for r in records] == [
        (0, b"v0"),
        (1, b"v1"),
        (2, b"v2"),
        (3, b"v3"),
    ]
    assert records[1].headers == ((UNREADABLE_HEADER, b"the name of header 0 is not UTF-8"),)
    assert records[0].headers == (("a", b"1"),)


def test_the_fetcher_starting_inside_a_batch_skips_what_came_before() -> None:
    data = wire.batch(three_records(middle=[BAD_NAME]), base_offset=0)

    assert [r.offset for r in fetched(data, fetch_offset=2)] == [2]


def test_a_batch_whose_crc_does_not_match_is_parked_whole() -> None:
    data = bytearray(wire.batch(three_records(middle=[]), base_offset=5))
    data[-1] ^= 0xFF

    (record,) = fetched(bytes(data))

    assert record.offset == 7
    assert record.value == bytes(data)
    assert unreadable_reason(record.headers) == (
        "record batch at offsets 5..7: its CRC does not match its bytes"
    )


def test_install_is_idempotent_and_keeps_aiokafka_reading_sound_batches() -> None:
    unreadable.install()
    unreadable.install()
    data = wire.batch(three_records(middle=[(b"b", b"2")]), codec_id=wire.CODECS["lz4"])

    assert [r.headers for r in fetched(data)] == [(("a", b"1"),), (("b", b"2"),), ()]


def test_the_router_parks_an_unreadable_record_with_its_key_value_and_reason() -> None:
    router = Router(routing=RoutingConfig(), topics=TopicsConfig())
    data = wire.batch([wire.record(0, key=b"k1", value=SPEC_EXAMPLE, headers=[BAD_NAME])])
    (record,) = fetched(data)

    routed = router.route(record)

    assert (routed.topic, routed.outcome) == ("webhooks.dlq", "dlq")
    assert (routed.key, routed.value) == (b"k1", SPEC_EXAMPLE)
    headers = dict(routed.headers)
    assert headers["error.class"] == b"RecordError"
    assert headers["error.message"] == b"the name of header 0 is not UTF-8"
    assert headers["source.offset"] == b"0"
    assert headers["delivery-id"] == b"whd_abc123def456"  # salvaged from the value
