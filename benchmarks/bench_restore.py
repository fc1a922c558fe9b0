"""Dedup restore, end to end: a partition's changelog read from Kafka into its window.

What a worker does when it is assigned a raw partition: `Dedup.assigned` reads the
partition of the changelog topic from its start to its end with the worker's own
reader (`processor.dedup.changelog.KafkaChangelog`: read_committed, big fetches) and loads
it into a fresh IdWindow. The benchmark writes N changelog records (as the worker
writes them: key = the delivery id, value = id hash + fingerprint) to one partition,
then times that restore R times and prints ids/s, wall and CPU seconds.

Rerun (from the repository root; starts and stops its own broker unless given one):

    .venv/bin/python benchmarks/bench_restore.py                     # 1,000,000 ids
    .venv/bin/python benchmarks/bench_restore.py --ids 200000 --rounds 5
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Final

import msgspec
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from harness import broker

from processor.config import Config, KafkaConfig, TopicsConfig
from processor.dedup.changelog import KafkaChangelog
from processor.dedup.idwindow import id_hash
from processor.dedup.record import changelog_record
from processor.dedup.screen import Dedup
from processor.kafka.batching import produce_batch

TOPIC: Final = "bench.dedup.restore"
CHUNK: Final = 50_000  # records per produce_batch while loading


async def load(config: Config, count: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=config.kafka.bootstrap_servers)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(TOPIC, num_partitions=1, replication_factor=1)])
    finally:
        await admin.close()
    async with AIOKafkaProducer(
        bootstrap_servers=config.kafka.bootstrap_servers, acks="all", linger_ms=0
    ) as producer:
        for first in range(0, count, CHUNK):
            records = []
            for index in range(first, min(first + CHUNK, count)):
                delivery_id = f"whd_{index:012d}"
                records.append(
                    changelog_record(
                        TOPIC, 0, delivery_id, id_hash(delivery_id), index & 0xFFFFFFFF
                    )
                )
            await asyncio.gather(*await produce_batch(producer, records))


async def restore_once(config: Config) -> tuple[float, float, int]:
    changelog = KafkaChangelog(config)
    await changelog.start()
    try:
        dedup = Dedup(topic=TOPIC, window_s=10**9, reader=changelog)
        wall, cpu = time.perf_counter(), time.process_time()
        await dedup.assigned([TopicPartition("bench.raw", 0)])
        return time.perf_counter() - wall, time.process_time() - cpu, dedup.remembered
    finally:
        await changelog.stop()


async def bench(bootstrap: str, count: int, rounds: int) -> None:
    base = Config()
    config = msgspec.structs.replace(
        base,
        kafka=KafkaConfig(bootstrap_servers=bootstrap),
        topics=TopicsConfig(dedup=TOPIC),
    )
    started = time.perf_counter()
    await load(config, count)
    print(f"loaded {count:,} changelog records in {time.perf_counter() - started:.1f} s")
    runs = [await restore_once(config) for _ in range(rounds)]
    for wall, cpu, remembered in runs:
        assert remembered == count, f"restored {remembered} of {count}"
        print(f"  restore: {wall:6.2f} s wall, {cpu:6.2f} s CPU, {count / wall:>12,.0f} ids/s")
    median = statistics.median(wall for wall, _, _ in runs)
    print(f"median: {count / median:,.0f} ids/s ({median:.2f} s for {count:,} ids)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ids", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--bootstrap", help="an existing Kafka (default: a local broker)")
    args = parser.parse_args()
    with broker(args.bootstrap) as bootstrap:
        asyncio.run(bench(bootstrap, args.ids, args.rounds))


if __name__ == "__main__":
    main()
