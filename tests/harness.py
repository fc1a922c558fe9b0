"""What the worker tests share: writing raw deliveries, running `processor worker`
processes, and reading back what landed in the output topics.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
from collections import Counter, defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from processor.config import Config
from processor.kafka.batching import produce_batch
from processor.kafka.clients import partitions_of, read_to_end
from processor.kafka.topics import output_topics
from processor.metrics import WorkerMetrics
from processor.worker.loop import Worker
from processor.worker.parts import kafka_parts
from tests.deliveries import Delivery

REPO = Path(__file__).resolve().parents[1]
# Small batches, so a crash or a rebalance lands in the middle of a stream.
BATCH = 500


@dataclass(frozen=True)
class Output:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: dict[str, bytes]


@dataclass(frozen=True)
class RawRecord:
    topic: str
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]] = field(default_factory=list)
    partition: int | None = None


async def produce_raw(config: Config, deliveries: list[Delivery]) -> None:
    async with AIOKafkaProducer(
        bootstrap_servers=config.kafka.bootstrap_servers, acks="all", enable_idempotence=True
    ) as producer:
        records = [RawRecord(config.topics.raw, d.key, d.value) for d in deliveries]
        await asyncio.gather(*await produce_batch(producer, records))


def kafka_worker(config: Config, metrics: WorkerMetrics | None = None) -> Worker:
    """A Worker on Kafka, made as `processor worker` makes it."""
    metrics = WorkerMetrics() if metrics is None else metrics
    return Worker(config=config, parts=kafka_parts(config, metrics), metrics=metrics)


@contextlib.asynccontextmanager
async def worker_running(
    config: Config, *, stop_timeout_s: float = 30
) -> AsyncIterator[asyncio.Task[None]]:
    """A `Worker` routing in this process for the block, then stopped as SIGTERM stops it."""
    stop = asyncio.Event()
    task = asyncio.create_task(kafka_worker(config).run(stop))
    try:
        yield task
    finally:
        stop.set()
        await asyncio.wait_for(task, stop_timeout_s)


async def read_topic(
    bootstrap: str, topic: str, *, partitions: int = 3
) -> list[ConsumerRecord[bytes, bytes]]:
    """Every record in `topic` now: read from the beginning up to the end offsets."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        assigned = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(assigned)
        await consumer.seek_to_beginning(*assigned)
        records: list[ConsumerRecord[bytes, bytes]] = []
        async with asyncio.timeout(30):
            async for _, batch in read_to_end(consumer, assigned):
                records.extend(batch)
        return records
    finally:
        await consumer.stop()


async def until_drained(config: Config, *, timeout: float = 120) -> None:
    """Until the worker group has committed every record of the raw topic there is now:
    nothing more of it will arrive in the outputs (a fact, not a pause). Read, not
    compared: transaction markers (a replay's) take offsets no commit covers."""
    bootstrap = config.kafka.bootstrap_servers
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, isolation_level="read_committed"
    )
    await admin.start()
    await consumer.start()
    try:
        partitions = await partitions_of(consumer, config.topics.raw)
        consumer.assign(partitions)
        ends = await consumer.end_offsets(partitions)
        async with asyncio.timeout(timeout):
            while True:
                try:
                    committed = await admin.list_consumer_group_offsets(config.worker.group_id)
                except KafkaError as exc:  # the group's coordinator still loading, say
                    if not exc.retriable:
                        raise
                    await asyncio.sleep(0.2)
                    continue
                for tp in partitions:
                    if tp in committed:
                        consumer.seek(tp, committed[tp].offset)
                    else:
                        await consumer.seek_to_beginning(tp)
                left = [batch async for batch in read_to_end(consumer, partitions, ends=ends)]
                if not left:
                    return
                await asyncio.sleep(0.2)
    finally:
        await consumer.stop()
        await admin.close()


async def read_outputs(config: Config, expected: int, *, timeout: float = 120) -> list[Output]:
    """Every output record, once the group has routed and committed all of the raw topic;
    at least `expected` distinct ones, or the test says what is missing at once."""
    await until_drained(config, timeout=timeout)
    found = await read_all_outputs(config)
    distinct = len({o.value for o in found})
    assert distinct >= expected, f"{distinct} distinct outputs once drained, {expected} expected"
    return found


async def read_all_outputs(config: Config) -> list[Output]:
    """Every record the output topics hold now: read from the start to the end offsets."""
    outputs = output_topics(config)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=config.kafka.bootstrap_servers,
        enable_auto_commit=False,
        # Exactly-once outputs are transactional: an aborted batch must not count.
        isolation_level="read_committed",
    )
    await consumer.start()
    found: list[Output] = []
    try:
        await consumer._client.force_metadata_update()
        partitions = [
            TopicPartition(t, p) for t in outputs for p in consumer.partitions_for_topic(t) or ()
        ]
        consumer.assign(partitions)
        await until_no_transaction_open(config, consumer, partitions)
        await consumer.seek_to_beginning()
        async with asyncio.timeout(60):
            async for tp, records in read_to_end(consumer, partitions):
                found.extend(
                    Output(tp.topic, tp.partition, r.offset, r.key, r.value, dict(r.headers))
                    for r in records
                )
        return found
    finally:
        await consumer.stop()


async def until_no_transaction_open(
    config: Config, committed: AIOKafkaConsumer, partitions: list[TopicPartition]
) -> None:
    """Until every transaction on `partitions` has ended: the offsets of a transaction
    can be committed before its markers reach every output partition, and until then
    a read_committed reader stops short of its records."""
    uncommitted = AIOKafkaConsumer(bootstrap_servers=config.kafka.bootstrap_servers)
    await uncommitted.start()
    try:
        async with asyncio.timeout(60):
            while await committed.end_offsets(partitions) != await uncommitted.end_offsets(
                partitions
            ):
                await asyncio.sleep(0.05)
    finally:
        await uncommitted.stop()


def assert_each_delivered(
    config: Config, stream: list[Delivery], outputs: list[Output]
) -> Counter[bytes]:
    """Every delivery landed, only where it belongs, bytes and key intact, order kept.

    Returns how often each value was written, for the duplicate checks of the caller.
    """
    by_value = {d.value: d for d in stream}
    assert len(by_value) == len(stream), "the stream itself must not repeat a value"
    written = Counter(o.value for o in outputs)
    missing = [v for v in by_value if v not in written]
    assert not missing, f"{len(missing)} deliveries lost, e.g. {missing[:2]}"
    assert set(written) <= set(by_value), "an output holds a record that was never sent"
    position = {d.value: i for i, d in enumerate(stream)}
    per_user: dict[tuple[str, bytes | None], list[Output]] = defaultdict(list)
    for out in outputs:
        delivery = by_value[out.value]
        assert out.topic == delivery.expected_topic(config), (delivery.kind, out.topic)
        assert out.key == delivery.key
        per_user[(out.topic, out.key)].append(out)
    for records in per_user.values():
        assert len({r.partition for r in records}) == 1, "one user's records span partitions"
        positions = [position[r.value] for r in sorted(records, key=lambda r: r.offset)]
        first_seen = list(dict.fromkeys(positions))  # a redelivered batch may repeat a run
        assert first_seen == sorted(first_seen), "one user's records were reordered"
    return written


def worker_env(config: Config) -> dict[str, str]:
    """The test's config as a user would pass it: environment over config.yaml."""
    return {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": config.kafka.bootstrap_servers,
        "PROCESSOR_TOPICS__RAW": config.topics.raw,
        "PROCESSOR_TOPICS__UNROUTED": config.topics.unrouted,
        "PROCESSOR_TOPICS__DLQ": config.topics.dlq,
        "PROCESSOR_TOPICS__DEDUP": config.topics.dedup,
        "PROCESSOR_ROUTING__ROUTES": f"{{integration: '{config.routing.routes['integration']}'}}",
        "PROCESSOR_WORKER__GROUP_ID": config.worker.group_id,
        "PROCESSOR_WORKER__MAX_BATCH_RECORDS": str(BATCH),
        # A killed member is noticed in 6 s (the broker's minimum) instead of 45 s.
        "PROCESSOR_WORKER__SESSION_TIMEOUT_MS": "6000",
        "PROCESSOR_WORKER__HEARTBEAT_INTERVAL_MS": "1000",
        "PROCESSOR_LOGGING__FORMAT": "json",
    }


class SpawnWorker(Protocol):
    """`spawn_worker()`, or `spawn_worker(PROCESSOR_...="value")` to set more environment."""

    def __call__(self, **env: str) -> subprocess.Popen[bytes]: ...


async def count_outputs(config: Config) -> int:
    """Records written to the output topics so far (sum of end offsets)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=config.kafka.bootstrap_servers)
    await consumer.start()
    try:
        await consumer._client.force_metadata_update()
        partitions = [
            TopicPartition(t, p)
            for t in output_topics(config)
            for p in consumer.partitions_for_topic(t) or ()
        ]
        ends = await consumer.end_offsets(partitions)
        return sum(ends.values())
    finally:
        await consumer.stop()


async def wait_for_outputs(config: Config, at_least: int, timeout: float = 60) -> None:
    async with asyncio.timeout(timeout):
        while await count_outputs(config) < at_least:
            await asyncio.sleep(0.2)


async def wait_for_partitions(log: Path, timeout: float = 60) -> None:
    """Until the worker logging to `log` has been assigned at least one partition."""
    async with asyncio.timeout(timeout):
        while True:
            for line in (await asyncio.to_thread(log.read_text)).splitlines():
                entry = json.loads(line) if line.startswith("{") else {}
                if entry.get("event") == "partitions.assigned" and entry.get("partitions"):
                    return
            await asyncio.sleep(0.2)


async def wait_exit(process: subprocess.Popen[bytes], timeout: float) -> int:
    async with asyncio.timeout(timeout):
        while process.poll() is None:
            await asyncio.sleep(0.1)
    return process.returncode
