"""produce_batch without a broker: which batches go to which partition, in what order.

Partitions are pinned with published vectors, so a change of hash or mask fails here
before a key lands somewhere another client would not put it.
"""

from __future__ import annotations

import asyncio
import gc
import inspect
from typing import NamedTuple

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from processor.kafka.batching import RawRecord, produce_batch
from processor.testing import Appended, FakeBatchProducer


class Out(NamedTuple):
    topic: str
    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]]
    partition: int | None = None


def out(value: str, *, topic: str = "out", key: bytes | None = b"k") -> Out:
    return Out(topic, key, value.encode(), [("n", value.encode())])


async def test_a_full_batch_goes_out_and_the_next_record_starts_a_new_one() -> None:
    producer = FakeBatchProducer(partitions={"out": 1}, batch_bytes=25)
    records = [out(f"value-{n}") for n in range(5)]  # 1 + 7 bytes: three fit in 25

    await produce_batch(producer, records)

    assert producer.where() == [
        ("out", 0, [b"value-0", b"value-1", b"value-2"]),
        ("out", 0, [b"value-3", b"value-4"]),
    ]
    assert [record for sent in producer.sent for record in sent.records] == [
        Appended(r.key, r.value, r.headers) for r in records
    ]


async def test_a_record_larger_than_a_batch_goes_out_alone_in_a_fresh_batch() -> None:
    producer = FakeBatchProducer(partitions={"out": 1}, batch_bytes=25)
    big = "x" * 100

    await produce_batch(producer, [out("small-0"), out(big), out("small-1"), out("small-2")])

    assert producer.where() == [
        ("out", 0, [b"small-0"]),
        ("out", 0, [big.encode()]),
        ("out", 0, [b"small-1", b"small-2"]),
    ]


async def test_unkeyed_records_take_the_topics_partitions_in_turn() -> None:
    producer = FakeBatchProducer(partitions={"out": 3})

    await produce_batch(producer, [out(f"v{n}", key=None) for n in range(7)])

    assert producer.where() == [
        ("out", 0, [b"v0", b"v3", b"v6"]),
        ("out", 1, [b"v1", b"v4"]),
        ("out", 2, [b"v2", b"v5"]),
    ]


async def test_unkeyed_records_of_two_topics_take_each_topics_partitions_in_turn() -> None:
    producer = FakeBatchProducer(partitions={"a": 2, "b": 2})
    records = [out(f"{topic}{n}", topic=topic, key=None) for n in range(3) for topic in "ab"]

    await produce_batch(producer, records)

    assert producer.where() == [
        ("a", 0, [b"a0", b"a2"]),
        ("b", 0, [b"b0", b"b2"]),
        ("a", 1, [b"a1"]),
        ("b", 1, [b"b1"]),
    ]


async def test_each_partition_gets_its_records_in_input_order() -> None:
    # Small batches, so that a partition's records span several of them.
    producer = FakeBatchProducer(partitions={"a": 4, "b": 3}, batch_bytes=40)
    users = [b"21", b"foobar", b"abc", b"a-little-bit-long-string"]
    records = [out(f"{n:03}", topic="ab"[n % 2], key=users[n // 2 % 4]) for n in range(64)]

    await produce_batch(producer, records)

    partitions_of: dict[tuple[str, bytes | None], set[int]] = {}
    received: dict[tuple[str, int], list[bytes | None]] = {}
    for sent in producer.sent:
        received.setdefault((sent.topic, sent.partition), []).extend(sent.values)
        for record in sent.records:
            partitions_of.setdefault((sent.topic, record.key), set()).add(sent.partition)
    assert len(producer.sent) > len(received), "some partition took several batches"
    assert {user: len(p) for user, p in partitions_of.items()} == {
        (topic, user): 1 for topic in "ab" for user in users
    }, "each user's records in one partition of each topic"
    placed = {user: partition for user, (partition,) in partitions_of.items()}
    expected: dict[tuple[str, int], list[bytes | None]] = {}
    for r in records:
        expected.setdefault((r.topic, placed[r.topic, r.key]), []).append(r.value)
    assert received == expected


async def test_it_returns_the_future_of_every_batch_it_sent_in_send_order() -> None:
    producer = FakeBatchProducer(partitions={"a": 1, "b": 1}, batch_bytes=6)
    records = [out(f"v{n}", topic="ab"[n % 2]) for n in range(9)]  # 1 + 2 bytes: two fit

    futures = await produce_batch(producer, records)

    assert producer.where() == [
        ("a", 0, [b"v0", b"v2"]),
        ("a", 0, [b"v4", b"v6"]),
        ("a", 0, [b"v8"]),
        ("b", 0, [b"v1", b"v3"]),
        ("b", 0, [b"v5", b"v7"]),
    ]
    for index, sent in enumerate(producer.sent):
        sent.ack.set_result(index)
    assert await asyncio.gather(*futures) == list(range(len(producer.sent)))


async def test_a_caller_that_stops_waiting_leaves_the_ack_itself_uncancelled() -> None:
    # Cancelling aiokafka's ack (a shield) would detach the batch's own future, whose
    # failure asyncio would then log as never retrieved.
    producer = FakeBatchProducer(partitions={"a": 1})
    [future] = await produce_batch(producer, [out("v", topic="a")])
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(future, 0.01)

    [sent] = producer.sent
    assert future.cancelled()
    assert not sent.ack.cancelled()


async def test_no_records_send_nothing() -> None:
    producer = FakeBatchProducer(partitions={"out": 1})

    assert await produce_batch(producer, []) == []
    assert (producer.sent, producer.partitions_asked) == ([], [])


async def test_partitions_are_asked_once_per_topic_per_call() -> None:
    producer = FakeBatchProducer(partitions={"a": 2, "b": 2})
    records = [out(f"v{n}", topic=topic) for n, topic in enumerate("ababa")]

    await produce_batch(producer, records)
    assert producer.partitions_asked == ["a", "b"]

    # Not remembered across calls: a topic may have gained partitions meanwhile.
    await produce_batch(producer, records)
    assert producer.partitions_asked == ["a", "b", "a", "b"]


# The Java client's murmur2 of these keys, from apache/kafka
# clients/src/test/java/org/apache/kafka/common/utils/UtilsTest.java (testMurmur2). Its
# default partitioner (BuiltInPartitioner.partitionForKey) takes
# `Utils.toPositive(murmur2(key)) % partitions`, toPositive being `& 0x7fffffff`.
JAVA_MURMUR2 = {
    b"21": -973932308,
    b"foobar": -790332482,
    b"a-little-bit-long-string": -985981536,
    b"a-little-bit-longer-string": -1486304829,
    b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
    b"abc": 479470107,
}
# Their partitions among 100 and 1000, worked out from the hashes above.
JAVA_PARTITIONS = [
    (b"21", 100, 40),
    (b"21", 1000, 340),
    (b"foobar", 100, 66),
    (b"foobar", 1000, 166),
    (b"a-little-bit-long-string", 100, 12),
    (b"a-little-bit-long-string", 1000, 112),
    (b"a-little-bit-longer-string", 100, 19),
    (b"a-little-bit-longer-string", 1000, 819),
    (b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", 100, 77),
    (b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", 1000, 677),
    (b"abc", 100, 7),
    (b"abc", 1000, 107),
]
# aiokafka's tests/test_partitioner.py (test_murmur2_java_compatibility): the partitions
# Kafka's Java partitioner chose among 1000.
AIOKAFKA_PARTITIONS = [
    (b"", 1000, 681),
    (b"a", 1000, 524),
    (b"ab", 1000, 434),
    (b"abc", 1000, 107),
    (b"123456789", 1000, 566),
    (b"\x00 ", 1000, 742),
]


@pytest.mark.parametrize(("key", "partitions", "partition"), JAVA_PARTITIONS + AIOKAFKA_PARTITIONS)
async def test_a_key_lands_where_the_java_client_puts_it(
    key: bytes, partitions: int, partition: int
) -> None:
    producer = FakeBatchProducer(partitions={"out": partitions})

    await produce_batch(producer, [Out("out", key, b"v", [])])

    assert producer.where() == [("out", partition, [b"v"])]


def test_the_java_partitions_are_the_java_hashes_masked() -> None:
    # Ties the worked-out table to the published hashes, so neither drifts alone.
    assert [
        (key, n, (hashed & 0x7FFFFFFF) % n)
        for key, hashed in JAVA_MURMUR2.items()
        for n in (100, 1000)
    ] == JAVA_PARTITIONS


async def test_aiokafkas_producer_offers_what_produce_batch_uses() -> None:
    """The fake stands in for AIOKafkaProducer (untyped, so mypy cannot compare them):
    the same calls bind, and its BatchBuilder fills up as FakeBatch does."""
    for name in ("partitions_for", "send_batch"):
        assert inspect.iscoroutinefunction(getattr(AIOKafkaProducer, name)), name
    inspect.signature(AIOKafkaProducer.partitions_for).bind(None, "out")
    inspect.signature(AIOKafkaProducer.send_batch).bind(None, object(), "out", partition=0)
    producer = AIOKafkaProducer(max_batch_size=100)  # never started: no broker needed
    try:
        batch = producer.create_batch()
        assert batch.append(key=b"k", value=b"x" * 1000, timestamp=None, headers=[("n", b"1")])
        assert batch.append(key=b"k", value=b"y", timestamp=None, headers=[]) is None
        assert batch.append(key=None, value=b"", timestamp=None, headers=[]) is None
    finally:
        await producer.stop()


async def test_a_record_naming_its_partition_goes_there_whatever_its_key() -> None:
    producer = FakeBatchProducer(partitions={"out": 6})
    records = [Out("out", b"k", b"a", [], partition=4), Out("out", None, b"b", [], partition=0)]

    await produce_batch(producer, records)

    assert producer.where() == [("out", 4, [b"a"]), ("out", 0, [b"b"])]


async def test_a_failed_ack_nobody_awaits_is_not_logged_when_collected() -> None:
    # A batch given up (a timeout, an abandoned transaction) fails later, unawaited.
    producer = FakeBatchProducer(partitions={"out": 1})
    await produce_batch(producer, [RawRecord("out", b"user_1", b"v", [])])
    reported: list[dict[str, object]] = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _, context: reported.append(context))
    try:
        producer.sent.pop().ack.set_exception(KafkaError("the producer was fenced"))
        await asyncio.sleep(0)  # its done callbacks run
        gc.collect()
    finally:
        loop.set_exception_handler(None)
    assert reported == []
