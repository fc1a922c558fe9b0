"""The platform the product stands on: aiokafka against the pinned Apache Kafka.

These pin down what later code relies on: keys and headers survive, committed
offsets resume a group, the idempotent producer and transactions work (the
exactly-once routing to come builds on them), and `acks=all` on a replicated topic
survives the loss of a partition leader.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from tests.cluster import LocalCluster
from tests.conftest import CreateTopics

pytestmark = pytest.mark.integration


async def consume_all(
    bootstrap: str, topic: str, expected: int, *, group: str | None = None, **options: object
) -> list[tuple[bytes | None, bytes | None, tuple[tuple[str, bytes], ...]]]:
    """Read until `expected` records arrived (or 20 s passed) and return them."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        **options,
    )
    await consumer.start()
    records: list[tuple[bytes | None, bytes | None, tuple[tuple[str, bytes], ...]]] = []
    try:
        async with asyncio.timeout(20):
            while len(records) < expected:
                batch = await consumer.getmany(timeout_ms=500)
                for partition_records in batch.values():
                    records.extend((r.key, r.value, tuple(r.headers)) for r in partition_records)
        if group is not None:
            await consumer.commit()
    finally:
        await consumer.stop()
    return records


async def test_keys_headers_and_committed_offsets_survive_a_round_trip(
    kafka_bootstrap: str, create_topics: CreateTopics, unique_name: Callable[[str], str]
) -> None:
    topic, group = unique_name("roundtrip"), unique_name("group")
    await create_topics(topic, partitions=3)
    sent = [
        (f"user_{i % 4}".encode(), f"value {i}".encode(), (("n", str(i).encode()),))
        for i in range(30)
    ]
    async with AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all") as producer:
        for key, value, headers in sent:
            await producer.send(topic, value, key=key, headers=list(headers))
        await producer.flush()

    received = await consume_all(kafka_bootstrap, topic, len(sent), group=group)
    assert sorted(received) == sorted(sent)

    async with AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all") as producer:
        await producer.send_and_wait(topic, b"after commit", key=b"user_0")
    # The group resumes after its committed offsets: only the new record comes back.
    assert await consume_all(kafka_bootstrap, topic, 1, group=group) == [
        (b"user_0", b"after commit", ())
    ]


async def test_records_of_one_key_keep_their_order(
    kafka_bootstrap: str, create_topics: CreateTopics, unique_name: Callable[[str], str]
) -> None:
    topic = unique_name("order")
    await create_topics(topic, partitions=4)
    async with AIOKafkaProducer(
        bootstrap_servers=kafka_bootstrap, acks="all", enable_idempotence=True
    ) as producer:
        for i in range(200):
            await producer.send(topic, str(i).encode(), key=f"user_{i % 5}".encode())
        await producer.flush()
    received = await consume_all(kafka_bootstrap, topic, 200)
    for user in range(5):
        values = [int(v) for k, v, _ in received if k == f"user_{user}".encode() and v]
        assert values == sorted(values)
        assert len(values) == 40


async def test_committed_transaction_is_visible_and_aborted_one_is_not(
    kafka_bootstrap: str, create_topics: CreateTopics, unique_name: Callable[[str], str]
) -> None:
    source, sink, group = unique_name("tx-in"), unique_name("tx-out"), unique_name("tx-group")
    await create_topics(source, sink)
    async with AIOKafkaProducer(bootstrap_servers=kafka_bootstrap) as plain:
        await plain.send_and_wait(source, b"input", key=b"k")

    producer = AIOKafkaProducer(
        bootstrap_servers=kafka_bootstrap, transactional_id=unique_name("tx"), acks="all"
    )
    await producer.start()
    try:
        async with producer.transaction():
            await producer.send(sink, b"committed", key=b"k")
            await producer.send_offsets_to_transaction({TopicPartition(source, 0): 1}, group)
        await producer.begin_transaction()
        await producer.send(sink, b"aborted", key=b"k")
        await producer.abort_transaction()
        async with producer.transaction():
            await producer.send(sink, b"second", key=b"k")
    finally:
        await producer.stop()

    committed = await consume_all(kafka_bootstrap, sink, 2, isolation_level="read_committed")
    assert [value for _, value, _ in committed] == [b"committed", b"second"]
    # The offsets sent inside the transaction are the group's committed position.
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka_bootstrap, group_id=group)
    await consumer.start()
    try:
        assert await consumer.committed(TopicPartition(source, 0)) == 1
    finally:
        await consumer.stop()


@pytest.mark.slow
@pytest.mark.usefixtures("kafka_jars")
async def test_acknowledged_records_survive_sigkill_of_the_partition_leader(
    unique_name: Callable[[str], str],
) -> None:
    topic = unique_name("replicated")
    with LocalCluster.temporary(size=3) as cluster:
        admin = AIOKafkaAdminClient(bootstrap_servers=cluster.bootstrap)
        await admin.start()
        try:
            await admin.create_topics(
                [
                    NewTopic(
                        topic,
                        num_partitions=1,
                        replication_factor=3,
                        topic_configs={"min.insync.replicas": "2"},
                    )
                ]
            )
            await asyncio.sleep(1)  # let every broker learn the new partition's leader
            described = await admin.describe_topics([topic])
            leader = described[0]["partitions"][0]["leader"]
        finally:
            await admin.close()

        acknowledged: list[bytes] = []
        async with AIOKafkaProducer(
            bootstrap_servers=cluster.bootstrap, acks="all", enable_idempotence=True
        ) as producer:
            for i in range(500):
                value = f"record {i}".encode()
                await producer.send_and_wait(topic, value)
                acknowledged.append(value)
                if i == 250:
                    cluster.kill(leader)
        assert cluster.node(leader).running_pid() is None

        survivors = ",".join(n.bootstrap for n in cluster.nodes if n.node_id != leader)
        received = await consume_all(survivors, topic, len(acknowledged))
        assert [value for _, value, _ in received] == acknowledged
