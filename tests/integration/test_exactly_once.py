"""Each delivery once in the derived topics: provider retries swallowed by dedup in both
guarantees, and exactly-once transactions that a zombie cannot commit into.

Outputs are read with isolation_level="read_committed", as subscribers are told to.
"""

from __future__ import annotations

import asyncio
from collections import Counter

import msgspec
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import ProducerFenced
from aiokafka.partitioner import DefaultPartitioner

from processor.config import Config
from processor.dedup.idwindow import fingerprint, id_hash
from processor.kafka.batching import produce_batch
from processor.kafka.clients import read_to_end
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


async def test_the_next_owners_producer_fences_a_zombies_open_transaction(
    kafka_bootstrap: str, create_topics: object, unique_name: object
) -> None:
    """The mechanism exactly-once relies on: a second producer with the same
    transactional id aborts the first one's open transaction, whose commit then fails."""
    topic = unique_name("fenced")  # type: ignore[operator]
    await create_topics(topic)  # type: ignore[operator]
    zombie = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, transactional_id=topic)
    owner = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, transactional_id=topic)
    await zombie.start()
    try:
        await zombie.begin_transaction()
        await (await zombie.send(topic, b"from the zombie"))
        await owner.start()  # init_transactions: fences the zombie, aborts its transaction
        async with owner.transaction():
            await (await owner.send(topic, b"from the owner"))
        with pytest.raises(ProducerFenced, match="ProducerFenced"):
            await zombie.commit_transaction()
    finally:
        await owner.stop()
        await zombie.stop()

    consumer = AIOKafkaConsumer(bootstrap_servers=kafka_bootstrap, isolation_level="read_committed")
    await consumer.start()
    try:
        partition = TopicPartition(topic, 0)
        consumer.assign([partition])
        await consumer.seek_to_beginning(partition)
        values: Counter[bytes] = Counter()
        async with asyncio.timeout(30):
            async for _, records in read_to_end(consumer, [partition]):
                values.update(record.value for record in records)
    finally:
        await consumer.stop()
    assert values == Counter({b"from the owner": 1})


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
