"""Each delivery once in the derived topics: provider retries swallowed by dedup in both
guarantees, and exactly-once transactions that a zombie cannot commit into.

Outputs are read with isolation_level="read_committed", as subscribers are told to.
"""

from __future__ import annotations

import asyncio
import dataclasses

import msgspec
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.partitioner import DefaultPartitioner

from processor.config import Config
from processor.dedup.idwindow import fingerprint, id_hash
from processor.kafka.aiokafka_internals import GroupFenced, GroupMember, group_member
from processor.kafka.batching import produce_batch
from processor.kafka.clients import StableOffsetsConsumer, read_to_end
from processor.kafka.producers import MemberProducer
from processor.kafka.topics import changelog_configs, create_topics
from tests.deliveries import mixed_stream, with_retries
from tests.harness import (
    RawRecord,
    assert_each_delivered,
    produce_raw,
    read_all_outputs,
    read_outputs,
    read_topic,
    until_drained,
    worker_running,
)

pytestmark = pytest.mark.integration


def with_guarantee(config: Config, guarantee: str) -> Config:
    return msgspec.structs.replace(
        config, worker=msgspec.structs.replace(config.worker, guarantee=guarantee)
    )


@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
async def test_provider_retries_are_swallowed_and_each_delivery_lands_once(
    config: Config, guarantee: str
) -> None:
    config = with_guarantee(config, guarantee)
    await create_topics(config)
    stream = mixed_stream(3_000, seed=41)
    sent = with_retries(stream)
    assert len(sent) > len(stream) * 1.2
    await produce_raw(config, sent)

    async with worker_running(config):
        outputs = await read_outputs(config, len(stream))

    written = assert_each_delivered(config, stream, outputs)
    assert set(written.values()) == {1}, "a provider retry got through"
    assert len(outputs) == len(stream)


async def test_a_transactions_offsets_commit_as_the_member_and_a_stale_one_is_refused(
    kafka_bootstrap: str, create_topics: object, unique_name: object
) -> None:
    """KIP-447 through aiokafka: offsets committed as the group's current member show in
    the group; a member of an older generation (a zombie) is refused with GroupFenced,
    and nothing of its transaction becomes visible."""
    raw, out, group = (unique_name(n) for n in ("raw", "out", "group"))  # type: ignore[operator]
    await create_topics(raw, out)  # type: ignore[operator]
    partition = TopicPartition(raw, 0)
    async with AIOKafkaProducer(bootstrap_servers=kafka_bootstrap) as plain:
        for value in (b"a", b"b", b"c"):
            await plain.send_and_wait(raw, value, partition=0)
    consumer = StableOffsetsConsumer(
        bootstrap_servers=kafka_bootstrap, group_id=group, enable_auto_commit=False
    )
    producer = MemberProducer(
        bootstrap_servers=kafka_bootstrap, transactional_id=group, flush_timeout_s=5
    )
    await consumer.start()
    await producer.start()
    try:
        await producer.require_kip447()  # Kafka 4.4 speaks both versions
        consumer.subscribe([raw])
        async with asyncio.timeout(30):
            while not consumer.assignment():
                await consumer.getmany(timeout_ms=200)
        member = group_member(consumer)
        async with producer.transaction():
            await (await producer.send(out, b"by the member"))
            await producer.send_offsets_as({partition: 2}, member)
        assert await consumer.committed(partition) == 2

        zombie = dataclasses.replace(member, generation_id=member.generation_id - 1)
        await producer.begin_transaction()
        await (await producer.send(out, b"by a zombie"))
        with pytest.raises(GroupFenced, match="IllegalGenerationError"):
            await producer.send_offsets_as({partition: 3}, zombie)
        async with asyncio.timeout(5):
            await producer.abort_transaction()
        assert await consumer.committed(partition) == 2
        # Aborted on the broker now, not after the transaction timeout: subscribers go on.
        assert await no_open_transaction(kafka_bootstrap, TopicPartition(out, 0))
    finally:
        await producer.stop()
        await consumer.stop()
    assert await read_committed(kafka_bootstrap, TopicPartition(out, 0)) == [b"by the member"]


async def no_open_transaction(bootstrap: str, partition: TopicPartition) -> bool:
    """Whether read_committed subscribers may read `partition` to its end: its last
    stable offset (where its first open transaction begins) is its high watermark."""
    committed = AIOKafkaConsumer(bootstrap_servers=bootstrap, isolation_level="read_committed")
    uncommitted = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await committed.start()
    await uncommitted.start()
    try:
        stable: int = (await committed.end_offsets([partition]))[partition]
        high: int = (await uncommitted.end_offsets([partition]))[partition]
        return stable == high
    finally:
        await committed.stop()
        await uncommitted.stop()


async def read_committed(bootstrap: str, partition: TopicPartition) -> list[bytes]:
    """What a subscriber sees of `partition`: its committed records, in order."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, isolation_level="read_committed")
    await consumer.start()
    try:
        consumer.assign([partition])
        await consumer.seek_to_beginning(partition)
        values: list[bytes] = []
        async with asyncio.timeout(30):
            async for _, records in read_to_end(consumer, [partition]):
                values.extend(record.value for record in records)
        return values
    finally:
        await consumer.stop()


async def test_the_next_owner_waits_for_a_transaction_that_holds_offsets_to_end(
    kafka_bootstrap: str, create_topics: object, unique_name: object
) -> None:
    """A transaction that sent its offsets and has not ended yet holds the next owner's
    committed offset back (require_stable) until it ends, so that the owner never starts
    from before a transaction that commits after all."""
    raw, group = unique_name("raw"), unique_name("group")  # type: ignore[operator]
    await create_topics(raw)  # type: ignore[operator]
    partition = TopicPartition(raw, 0)
    owner = StableOffsetsConsumer(
        bootstrap_servers=kafka_bootstrap, group_id=group, enable_auto_commit=False
    )
    producer = MemberProducer(
        bootstrap_servers=kafka_bootstrap, transactional_id=group, flush_timeout_s=5
    )
    await owner.start()
    await producer.start()
    try:
        owner.assign([partition])
        member = GroupMember(group_id=group, generation_id=-1, member_id="", group_instance_id=None)
        await producer.begin_transaction()
        await producer.send_offsets_as({partition: 7}, member)
        asking = asyncio.create_task(owner.committed(partition))
        await asyncio.sleep(1)
        assert not asking.done(), f"read {asking.result()} while the transaction was open"
        await producer.commit_transaction()
        assert await asyncio.wait_for(asking, 10) == 7
    finally:
        await producer.stop()
        await owner.stop()


async def test_a_worker_upgraded_in_place_restores_a_changelog_written_one_record_per_id(
    config: Config,
) -> None:
    """Earlier versions created the changelog compacted and wrote a record per id (key =
    the id): a worker restores those and adds its own records beside them."""
    admin = AIOKafkaAdminClient(bootstrap_servers=config.kafka.bootstrap_servers)
    await admin.start()
    try:
        configs = changelog_configs(config) | {"cleanup.policy": "compact,delete"}
        await admin.create_topics(
            [NewTopic(config.topics.dedup, config.topics.partitions, 1, topic_configs=configs)]
        )
    finally:
        await admin.close()
    await create_topics(config)
    stream = [d for d in mixed_stream(600, seed=5) if d.kind != "dlq"]
    earlier, later = stream[:300], stream[300:]
    partitions = list(range(config.topics.partitions))
    old = [
        RawRecord(
            config.topics.dedup,
            d.key,  # any key: only the value and timestamp are restored
            id_hash(msgspec.json.decode(d.value)["id"]).to_bytes(8, "little")
            + fingerprint(d.value).to_bytes(4, "little"),
            partition=DefaultPartitioner()(d.key, partitions, partitions),
        )
        for d in earlier
    ]
    async with AIOKafkaProducer(bootstrap_servers=config.kafka.bootstrap_servers) as producer:
        await asyncio.gather(*await produce_batch(producer, old))
    await produce_raw(config, [*earlier, *later])  # the earlier ones are retries

    async with worker_running(config):
        outputs = await read_outputs(config, len(later))
    assert_each_delivered(config, later, outputs)
    assert len(outputs) == len(later), "a retry of an id the earlier version remembered"

    # Restored again from both formats: every delivery is a retry now.
    await produce_raw(config, stream)
    async with worker_running(config):
        await until_drained(config)
    assert len(await read_all_outputs(config)) == len(later)
    changelog = await read_topic(
        config.kafka.bootstrap_servers, config.topics.dedup, partitions=len(partitions)
    )
    written = [r.value for r in changelog if r.value and r.value.startswith(b"ids1")]
    assert 1 <= len(written) < len(later), "a record per checkpoint, not per id"
