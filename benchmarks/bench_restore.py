"""Dedup restore, end to end: a partition's changelog read from Kafka into its window.

What a worker does when it is assigned a raw partition: `Dedup.assigned` reads the
partition of the changelog topic from its start to its end with the worker's own
reader (`processor.dedup.changelog.KafkaChangelog`: read_committed, big fetches) and loads
it into a fresh IdWindow. The benchmark writes N ids to one partition of a changelog
in each format the worker restores: as the worker writes them (`checkpoint`: a record
per raw partition per checkpoint, `--ids-per-record` ids each) and as earlier versions
wrote them (`per-id`: key = the delivery id, value = id hash + fingerprint), then times
the restore of each, in turn, R times, and prints ids/s, wall and CPU seconds.

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
from processor.dedup.record import ChangelogRecord, changelog_records
from processor.dedup.screen import Dedup
from processor.kafka.batching import produce_batch

FORMATS: Final = ("checkpoint", "per-id")
CHUNK: Final = 50_000  # ids per produce_batch while loading


def topic(form: str) -> str:
    return f"bench.dedup.restore.{form}"


def records(form: str, first: int, end: int, per_record: int) -> list[ChangelogRecord]:
    """Ids `first` to `end` as changelog records of `form`."""
    ids = {id_hash(f"whd_{index:012d}"): index & 0xFFFFFFFF for index in range(first, end)}
    if form == "checkpoint":
        return changelog_records(topic(form), 0, ids, offsets=(first, end), per_record=per_record)
    # As earlier versions wrote them: the key was the id, the value its hash and fingerprint.
    return [
        ChangelogRecord(
            topic(form),
            0,
            f"whd_{index:012d}".encode(),
            key.to_bytes(8, "little") + print_.to_bytes(4, "little"),
            [],
        )
        for index, (key, print_) in enumerate(ids.items(), start=first)
    ]


async def load(config: Config, count: int, per_record: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=config.kafka.bootstrap_servers)
    await admin.start()
    try:
        await admin.create_topics(
            [NewTopic(topic(form), num_partitions=1, replication_factor=1) for form in FORMATS]
        )
    finally:
        await admin.close()
    async with AIOKafkaProducer(
        bootstrap_servers=config.kafka.bootstrap_servers,
        acks="all",
        linger_ms=0,
        max_request_size=config.topics.max_message_bytes,
    ) as producer:
        for form in FORMATS:
            for first in range(0, count, CHUNK):
                chunk = records(form, first, min(first + CHUNK, count), per_record)
                await asyncio.gather(*await produce_batch(producer, chunk))


async def restore_once(config: Config, form: str) -> tuple[float, float, int]:
    config = msgspec.structs.replace(config, topics=TopicsConfig(dedup=topic(form)))
    changelog = KafkaChangelog(config)
    await changelog.start()
    try:
        dedup = Dedup(topic=topic(form), window_s=10**9, reader=changelog)
        wall, cpu = time.perf_counter(), time.process_time()
        await dedup.assigned([TopicPartition("bench.raw", 0)])
        return time.perf_counter() - wall, time.process_time() - cpu, dedup.remembered
    finally:
        await changelog.stop()


async def bench(bootstrap: str, count: int, rounds: int, per_record: int) -> None:
    config = msgspec.structs.replace(Config(), kafka=KafkaConfig(bootstrap_servers=bootstrap))
    started = time.perf_counter()
    await load(config, count, per_record)
    print(f"loaded {count:,} ids in each format in {time.perf_counter() - started:.1f} s")
    runs: dict[str, list[tuple[float, float, int]]] = {form: [] for form in FORMATS}
    for _ in range(rounds):  # the formats in turn: both see the same machine
        for form in FORMATS:
            wall, cpu, remembered = await restore_once(config, form)
            assert remembered == count, f"{form}: restored {remembered} of {count}"
            runs[form].append((wall, cpu, remembered))
            print(
                f"  {form:>10}: {wall:6.2f} s wall, {cpu:6.2f} s CPU, {count / wall:>12,.0f} ids/s"
            )
    for form in FORMATS:
        wall = statistics.median(w for w, _, _ in runs[form])
        cpu = statistics.median(c for _, c, _ in runs[form])
        print(
            f"median {form:>10}: {count / wall:>12,.0f} ids/s ({wall:.2f} s wall,"
            f" {cpu / count * 1e6:.2f} CPU µs per id)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ids", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--ids-per-record",
        type=int,
        default=300,
        help="ids per checkpoint record (default: a second's at 300 deliveries/s)",
    )
    parser.add_argument("--bootstrap", help="an existing Kafka (default: a local broker)")
    args = parser.parse_args()
    with broker(args.bootstrap) as bootstrap:
        asyncio.run(bench(bootstrap, args.ids, args.rounds, args.ids_per_record))


if __name__ == "__main__":
    main()
