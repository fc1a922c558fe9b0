"""aiokafka's idempotent producer after an outage longer than its request timeout, and
what `processor.kafka.producers` makes of it, against real brokers.

The outage is scaled down (request_timeout_ms of 3 s, a broker away for 8 s) but of the
kind that wedged the ingress: it outlasts the timeout while partitions have no leader,
so batches expire, leaving gaps in the producer's sequence numbers. On three brokers,
with the topic's partitions unreplicated, the partitions of the broker that is away
are reported leaderless by the others: the gap happens every time, not only when a
metadata refresh falls into a single broker's restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, OutOfOrderSequenceNumber
from prometheus_client import CollectorRegistry

from processor.devtools.broker import LocalBroker
from processor.kafka.batching import RawRecord, produce_batch
from processor.kafka.connectivity import Connectivity
from processor.kafka.producers import BoundedProducer, RenewingProducer
from tests.cluster import LocalCluster
from tests.drills import partition_of, users_per_partition
from tests.harness import read_topic

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TOPIC = "renewal"
PARTITIONS = 3
REQUEST_TIMEOUT_MS = 3000
OUTAGE_S = 8
# A key that lands on each partition (murmur2, as the Java client places keys).
KEY_OF_PARTITION = {partition_of(uid): uid.encode() for uid in users_per_partition(PARTITIONS, 1)}


@pytest.fixture
def broker() -> Iterator[LocalBroker]:
    with LocalBroker.temporary() as broker:
        yield broker


@pytest.fixture
async def loop_errors() -> AsyncIterator[list[dict[str, Any]]]:
    """What asyncio would log as an error meanwhile ("Future exception was never
    retrieved", "Task was destroyed but it is pending"...)."""
    reported: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _, context: reported.append(context))
    try:
        yield reported
    finally:
        loop.set_exception_handler(None)


async def create_topic(bootstrap: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        # Unreplicated: a partition of a broker that is away has no leader at all.
        await admin.create_topics([NewTopic(TOPIC, PARTITIONS, 1)])
    finally:
        await admin.close()


def options(bootstrap: str, **more: Any) -> dict[str, Any]:
    return {
        "bootstrap_servers": bootstrap,
        "acks": "all",
        "enable_idempotence": True,
        "request_timeout_ms": REQUEST_TIMEOUT_MS,
        "flush_timeout_s": 1,
        **more,
    }


class Writer:
    """Writes a record to each partition in turn, each write given 1 s, and keeps what
    was acknowledged and how each write ended."""

    def __init__(self, producer: Any, name: str) -> None:
        self.producer = producer
        self.name = name
        self.acknowledged: list[str] = []
        self.outcomes: list[tuple[float, int, str]] = []  # (time, partition, outcome)
        self._count = 0

    async def write(self, partition: int) -> str:
        self._count += 1
        value = f"{self.name}-{self._count}"
        record = RawRecord(TOPIC, KEY_OF_PARTITION[partition], value.encode(), [])
        try:
            async with asyncio.timeout(1):
                await asyncio.gather(*await produce_batch(self.producer, [record]))
        except (KafkaError, TimeoutError) as exc:
            outcome = type(exc).__name__
        else:
            self.acknowledged.append(value)
            outcome = "ok"
        self.outcomes.append((time.monotonic(), partition, outcome))
        return outcome

    async def run(self, until: asyncio.Event) -> None:
        while not until.is_set():
            await asyncio.gather(*(self.write(p) for p in range(PARTITIONS)))
            await asyncio.sleep(0.05)

    def since(self, moment: float) -> dict[int, list[str]]:
        by_partition: dict[int, list[str]] = {p: [] for p in range(PARTITIONS)}
        for at, partition, outcome in self.outcomes:
            if at >= moment:
                by_partition[partition].append(outcome)
        return by_partition


@contextlib.asynccontextmanager
async def writing(*writers: Writer) -> AsyncIterator[None]:
    done = asyncio.Event()
    tasks = [asyncio.create_task(writer.run(done)) for writer in writers]
    try:
        yield
    finally:
        done.set()
        await asyncio.gather(*tasks)


async def test_a_producer_wedged_by_an_outage_longer_than_its_timeout_is_replaced(
    loop_errors: list[dict[str, Any]], kafka_jars: Path
) -> None:
    with LocalCluster.temporary() as cluster:
        await wedge_and_renew(cluster, loop_errors)


async def leader_of(bootstrap: str, partition: int) -> int:
    """The partition's leader, once the broker asked knows of one: a topic just created
    is described without partitions, or leaderless, for a moment."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        async with asyncio.timeout(30):
            while True:
                [topic] = await admin.describe_topics([TOPIC])
                leaders = [p["leader"] for p in topic["partitions"] if p["partition"] == partition]
                if leaders and leaders[0] >= 0:
                    return int(leaders[0])
                await asyncio.sleep(0.1)
    finally:
        await admin.close()


async def wedge_and_renew(cluster: LocalCluster, loop_errors: list[dict[str, Any]]) -> None:
    bootstrap = cluster.bootstrap
    await create_topic(bootstrap)
    away = await leader_of(bootstrap, 0)
    plain = BoundedProducer(**options(bootstrap))
    await plain.start()
    connectivity = Connectivity(bootstrap=bootstrap, registry=CollectorRegistry())

    def make() -> BoundedProducer:
        producer = BoundedProducer(**options(bootstrap))
        connectivity.watch(producer.client)
        return producer

    renewing = RenewingProducer(
        make,
        name="test",
        reachable=lambda: connectivity.reachable,
        renew_after_s=REQUEST_TIMEOUT_MS / 1000,
        start_timeout_s=REQUEST_TIMEOUT_MS / 1000,
    )
    await renewing.start()
    wedged, renewed = Writer(plain, "plain"), Writer(renewing, "renewing")
    try:
        async with writing(wedged, renewed):
            await asyncio.sleep(1)
            await asyncio.to_thread(cluster.kill, away)
            await asyncio.sleep(OUTAGE_S)
            await asyncio.to_thread(cluster.restart, away)
            back = time.monotonic()
            # Every partition takes a write of the renewing producer again, within 30 s.
            async with asyncio.timeout(30):
                while not all(
                    "ok" in outcomes for outcomes in renewed.since(time.monotonic() - 1).values()
                ):
                    await asyncio.sleep(0.2)
            recovered_s = time.monotonic() - back
            await asyncio.sleep(5)
        settled = time.monotonic() - 4
    finally:
        await renewing.stop()
        await plain.stop()

    assert recovered_s < 30
    assert all(set(o) == {"ok"} for o in renewed.since(settled).values()), renewed.since(settled)
    # aiokafka itself does not recover (aiokafka#1017): if this fails, an aiokafka release
    # fixed it, and RenewingProducer's replacement on OutOfOrderSequenceNumber can go.
    stuck = {p: o for p, o in wedged.since(settled).items() if "ok" not in o}
    assert 0 in stuck, "aiokafka's producer recovered from the outage by itself"
    assert {o for outcomes in stuck.values() for o in outcomes} <= {
        OutOfOrderSequenceNumber.__name__
    }
    # Nothing acknowledged is lost.
    stored = {record.value.decode() for record in await read_topic(bootstrap, TOPIC)}
    assert set(renewed.acknowledged) <= stored
    assert set(wedged.acknowledged) <= stored
    gc.collect()
    assert loop_errors == []


async def test_an_abandoned_producer_leaves_nothing_behind_when_the_broker_returns(
    broker: LocalBroker, loop_errors: list[dict[str, Any]]
) -> None:
    bootstrap = broker.bootstrap
    await create_topic(bootstrap)
    before = asyncio.all_tasks()
    producer = BoundedProducer(**options(bootstrap, transactional_id="abandoned"))
    await producer.start()
    await producer.begin_transaction()
    acknowledged = await produce_batch(producer, [RawRecord(TOPIC, b"user_1", b"a", [])])
    await asyncio.gather(*acknowledged)
    await asyncio.to_thread(broker.stop)
    pending = await produce_batch(producer, [RawRecord(TOPIC, b"user_1", b"b", [])])
    committing = asyncio.create_task(producer.commit_transaction())
    await asyncio.sleep(1)

    started = time.monotonic()
    await producer.abandon(KafkaError("abandoned by the test"))
    assert time.monotonic() - started < 1
    # Whoever waited on it hears why, at once.
    with pytest.raises(KafkaError, match="abandoned by the test"):
        await asyncio.wait_for(committing, 1)
    with pytest.raises(KafkaError):
        await asyncio.wait_for(asyncio.gather(*pending), 1)
    assert asyncio.all_tasks() - before - {asyncio.current_task()} == set()

    await asyncio.to_thread(broker.start)
    await asyncio.sleep(3)
    del producer, pending, committing
    gc.collect()
    assert loop_errors == []
