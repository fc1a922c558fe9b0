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
from aiokafka.errors import ProducerFenced

from processor.config import Config
from processor.kafka.clients import read_to_end
from processor.kafka.topics import create_topics
from tests.deliveries import mixed_stream, with_retries
from tests.harness import assert_each_delivered, produce_raw, read_outputs, worker_running

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
