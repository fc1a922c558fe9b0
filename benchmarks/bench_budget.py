"""Where the worker's CPU goes per record, stage by stage, without Kafka's I/O.

    .venv/bin/python benchmarks/bench_budget.py [--records 100000 --repeats 5]

The deliveries are `bench_route`'s mix (88 % valid integration events, 6 % unrouted,
1 % malformed, a third of the valid ones retried), each with the headers the ingress
writes (a `received-at` per millisecond, as live traffic has), packed into Kafka
record batches per raw partition (6) in fetches of `worker.max_batch_records`.

- `read`: aiokafka reading the fetched batches into ConsumerRecords, as its fetcher
  does (through processor.kafka.unreadable, as in the worker);
- `decode`: `decode_delivery`, the contract check;
- `route`: the rest of `Router.route`: topic, headers, the carried headers;
- `dedup`: `Dedup.screen`, `changelog` and `remember` (dedup on, as by default), a
  checkpoint per fetch;
- `build`: `produce_batch` of the outputs and the changelog records into aiokafka's
  batch builders, serialised as the producer would send them;
- `worker`: `Worker.run` over the same fetches with everything above but `read`
  (a consumer that hands the ConsumerRecords out, a producer that acknowledges at
  once), at least once, logging JSON lines to /dev/null; its own share is what is
  left of it after `decode` to `build`: the loop, the DLQ breaker, metrics, logs.

Each stage's figure is the best of `--repeats` passes, CPU time per raw record. What
a run against Kafka costs beyond `read` + `worker` (fetch and produce requests, acks,
commits, the event loop's I/O) is the difference to `bench_route`'s CPU µs/record.
Compare versions on one machine by running this file against each checkout:
`PYTHONPATH=<other checkout> .venv/bin/python benchmarks/bench_budget.py`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

from aiokafka import TopicPartition
from aiokafka.partitioner import murmur2
from aiokafka.producer.message_accumulator import BatchBuilder
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from aiokafka.structs import ConsumerRecord
from bench_route import RAW_PARTITIONS, make_deliveries
from harness import write_results

from processor.config import Config, LoggingConfig
from processor.dedup.record import Restored
from processor.dedup.screen import Dedup
from processor.events import decode_delivery
from processor.headers import RECEIVED_AT, format_received_at
from processor.kafka import unreadable
from processor.kafka.batching import produce_batch
from processor.kafka.topics import all_topics
from processor.logging import configure_logging
from processor.routing import Router
from processor.testing import FakeConsumer
from processor.worker.checkpoint import AtLeastOnce
from processor.worker.loop import Worker
from processor.worker.parts import WorkerParts

# Deliveries the ingress stamps within one millisecond, at ~20,000 a second.
PER_MILLISECOND: Final = 20
# Large enough for any fetch of one partition.
BATCH_BYTES: Final = 64 * 1024 * 1024

Fetch = dict[TopicPartition, list[Any]]


def fetched_bytes(config: Config, count: int) -> list[dict[TopicPartition, bytes]]:
    """The deliveries as fetch responses: per fetch, a record batch per raw partition."""
    deliveries = make_deliveries(config.topics.raw, count, seed=1, retries=0.33)
    started = datetime(2026, 12, 1, tzinfo=UTC)
    per_fetch = config.worker.max_batch_records
    offsets = [0] * RAW_PARTITIONS  # the next offset of each raw partition
    fetches: list[dict[TopicPartition, bytes]] = []
    for first in range(0, len(deliveries.records), per_fetch):
        builders: dict[int, tuple[int, DefaultRecordBatchBuilder]] = {}
        for index, record in enumerate(deliveries.records[first : first + per_fetch], first):
            partition = (murmur2(record.key) & 0x7FFFFFFF) % RAW_PARTITIONS
            if partition not in builders:
                builders[partition] = (
                    offsets[partition],
                    DefaultRecordBatchBuilder(2, 0, 0, -1, -1, -1, BATCH_BYTES),
                )
            base, builder = builders[partition]
            moment = started + timedelta(milliseconds=index // PER_MILLISECOND)
            headers = [(name, value) for name, value in record.headers if name != RECEIVED_AT]
            headers.insert(0, (RECEIVED_AT, format_received_at(moment).encode()))
            builder.append(
                offsets[partition] - base,  # offsets in a batch are relative to its first
                timestamp=int(moment.timestamp() * 1000),
                key=record.key,
                value=record.value,
                headers=headers,
            )
            offsets[partition] += 1
        fetches.append(
            {
                # A batch starts with its base offset (int64), which its CRC does not cover.
                TopicPartition(config.topics.raw, partition): base.to_bytes(8, "big")
                + bytes(builder.build())[8:]
                for partition, (base, builder) in builders.items()
            }
        )
    return fetches


def read(fetches: list[dict[TopicPartition, bytes]]) -> list[Fetch]:
    """ConsumerRecords from fetched bytes, the way aiokafka's fetcher makes them."""
    unreadable.install()
    from aiokafka.consumer import fetcher

    out: list[Fetch] = []
    for fetch in fetches:
        batch: Fetch = {}
        for tp, raw in fetch.items():
            records = fetcher.MemoryRecords(raw)
            batch[tp] = [
                ConsumerRecord(
                    tp.topic,
                    tp.partition,
                    record.offset,
                    record.timestamp,
                    record.timestamp_type,
                    record.key,
                    record.value,
                    record.checksum,
                    len(record.key) if record.key is not None else -1,
                    len(record.value) if record.value is not None else -1,
                    tuple(record.headers),
                )
                for record in iter_records(records)
            ]
        out.append(batch)
    return out


def iter_records(records: Any) -> Iterable[Any]:
    while records.has_next():
        yield from records.next_batch()


class Acknowledging:
    """A producer that builds and serialises batches as aiokafka's does, then
    acknowledges at once: the worker's produce path without the network."""

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def partitions_for(self, topic: str) -> set[int]:
        return set(range(RAW_PARTITIONS))

    def create_batch(self) -> BatchBuilder:
        return BatchBuilder(BATCH_BYTES, 0, is_transactional=0)

    async def send_batch(self, batch: BatchBuilder, topic: str, *, partition: int) -> Any:
        batch.close()
        batch._build()
        done = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done


class NothingRemembered:
    async def read(self, partition: int) -> Restored:
        return Restored(b"", b"", b"")


def new_dedup(config: Config) -> Dedup:
    return Dedup(
        topic=config.topics.dedup, window_s=config.dedup.window_s, reader=NothingRemembered()
    )


def best(repeats: int, run: Callable[[], object]) -> float:
    """The least CPU seconds of `repeats` calls of `run`."""
    times = []
    for _ in range(repeats):
        started = time.process_time()
        run()
        times.append(time.process_time() - started)
    return min(times)


class CountingConsumer(FakeConsumer):
    """Hands out fetches; `done` is set once the worker committed the last of them,
    whenever its checkpoints fall (`worker.commit_interval_ms`)."""

    def __init__(self, config: Config) -> None:
        super().__init__(topics=all_topics(config))
        self.ends: dict[TopicPartition, int] = {}
        self.committed_ends: dict[TopicPartition, int] = {}
        self.done = asyncio.Event()

    async def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        await super().commit(offsets)
        self.committed_ends.update(offsets)
        if all(self.committed_ends.get(tp, -1) >= end for tp, end in self.ends.items()):
            self.done.set()

    async def routed(self, batches: list[Fetch]) -> None:
        """Hand out `batches` and wait until the worker committed them all."""
        self.done.clear()
        for batch in batches:
            for tp, records in batch.items():
                self.ends[tp] = max(self.ends.get(tp, 0), records[-1].offset + 1)
            self.batches.put_nowait(batch)
        await asyncio.wait_for(self.done.wait(), 600)


async def run_worker(config: Config, batches: list[Fetch]) -> float:
    """CPU seconds of Worker.run routing `batches`, from the first fetch to the last commit."""
    consumer = CountingConsumer(config)
    guarantee = AtLeastOnce(
        producer=Acknowledging(),
        consumer=consumer,
        produce_timeout_s=30,
        commit_timeout_s=30,
    )
    parts = WorkerParts(consumer=consumer, guarantee=guarantee, dedup=new_dedup(config))
    worker = Worker(config=config, parts=parts)
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    # Restore the partitions (empty) and warm the caches before the clock starts.
    await consumer.routed(batches[:1])
    started = time.process_time()
    await consumer.routed(batches)
    seconds = time.process_time() - started
    stop.set()
    await asyncio.wait_for(task, 10)
    return seconds


def stages(
    config: Config, fetches: list[dict[TopicPartition, bytes]], repeats: int
) -> dict[str, float]:
    """CPU seconds per stage over all the records, each the best of `repeats`."""
    router = Router(routing=config.routing, topics=config.topics)
    batches = read(fetches)
    # Fetch by fetch, as the worker goes: what one fetch made is dropped before the next.
    fetched = [[r for records in batch.values() for r in records] for batch in batches]
    status_categories = router._status_categories

    def decode() -> None:
        for records in fetched:
            for record in records:
                try:
                    decode_delivery(record.value, status_categories=status_categories)
                except Exception:  # noqa: S112 - the malformed ones: DLQ-bound, still measured
                    continue

    def route() -> None:
        for records in fetched:
            [router.route(record) for record in records]

    routed_batches = [
        {tp: [router.route(record) for record in part] for tp, part in batch.items()}
        for batch in batches
    ]

    def dedup() -> None:
        deduplicated = new_dedup(config)
        asyncio.run(deduplicated.assigned({tp for batch in batches for tp in batch}))
        for batch in routed_batches:
            for tp, routed in batch.items():
                kept = deduplicated.screen(tp, routed)
                deduplicated.changelog(tp, (0, 0))
                deduplicated.remember(tp, kept)

    screened: list[list[Any]] = []
    deduplicated = new_dedup(config)
    asyncio.run(deduplicated.assigned({tp for batch in batches for tp in batch}))
    for batch in routed_batches:
        out: list[Any] = []
        for tp, routed in batch.items():
            kept = deduplicated.screen(tp, routed)
            out += kept.outputs
            out += deduplicated.changelog(tp, (0, 0))
            deduplicated.remember(tp, kept)
        screened.append(out)

    async def build_all() -> None:
        producer = Acknowledging()
        for outgoing in screened:
            await asyncio.gather(*await produce_batch(producer, outgoing))

    return {
        "read": best(repeats, lambda: read(fetches)),
        "decode": best(repeats, decode),
        "route": best(repeats, route),
        "dedup": best(repeats, dedup),
        "build": best(repeats, lambda: asyncio.run(build_all())),
        "worker": min(asyncio.run(run_worker(config, batches)) for _ in range(repeats)),
    }


def print_budget(seconds: dict[str, float], records: int) -> dict[str, float]:
    us = {stage: value / records * 1e6 for stage, value in seconds.items()}
    own = us["worker"] - us["route"] - us["dedup"] - us["build"]
    rows: Sequence[tuple[str, float]] = [
        ("read (aiokafka: fetched bytes to ConsumerRecords)", us["read"]),
        ("decode (msgspec, the contract)", us["decode"]),
        ("route (topic, headers, carried headers)", us["route"] - us["decode"]),
        ("dedup (screen, changelog records, remember)", us["dedup"]),
        ("build (produce_batch: outputs + changelog into batches)", us["build"]),
        ("loop (fetch/commit steps, breaker, metrics, logs)", own),
    ]
    total = us["read"] + us["worker"]
    print(f"{'stage':58} {'CPU us/rec':>10} {'share':>6}")
    for name, value in rows:
        print(f"{name:58} {value:10.2f} {value / total:6.0%}")
    print(f"{'total without Kafka I/O':58} {total:10.2f}")
    return {name.split(" ")[0]: round(value, 3) for name, value in rows} | {"total": total}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=100_000, help="distinct deliveries")
    parser.add_argument("--repeats", type=int, default=5, help="passes per stage; the best counts")
    parser.add_argument(
        "--results", type=Path, help="also write the results to DIR/bench_budget.json"
    )
    args = parser.parse_args()
    configure_logging(LoggingConfig(format="json"), stream=open(os.devnull, "w"))  # noqa: SIM115
    config = Config()
    fetches = fetched_bytes(config, args.records)
    records = sum(len(read([fetch])[0][tp]) for fetch in fetches for tp in fetch)
    print(
        f"{records} raw records ({args.records} deliveries and retries), "
        f"{len(fetches)} fetches, best of {args.repeats}; processor from "
        f"{os.path.dirname(os.path.dirname(sys.modules['processor'].__file__ or ''))}"
    )
    budget = print_budget(stages(config, fetches, args.repeats), records)
    write_results(args.results, "bench_budget", {"records": records, "cpu_us_per_record": budget})


if __name__ == "__main__":
    main()
