"""Routing throughput: the real worker against a bare pipe and a naive per-record loop.

Loads N deliveries into a fresh raw topic (6 partitions) with the batch API, then,
on the same broker, lets three consumers read the whole topic, each with a consumer
group and output topics of its own:

- `worker`: `processor.worker.Worker`, unchanged: decode, route, produce, commit;
- `bare`:   the same loop without decoding: `getmany`, every record passed through
            unchanged to one topic with `processor.batching.produce_batch`, wait for
            the acks, commit;
- `naive`:  the same loop producing with one `producer.send()` per record, then
            awaiting all the futures, then committing.

All three use the worker's own producer and consumer settings
(`processor.kafka_clients.worker_producer_options` / `worker_consumer_options`:
acks=all, idempotence, manual commit, `worker.max_batch_records` per `getmany`).
Output topics are created with `processor.topics.create_topics` and written to a
little before each run,
as the broker is slow on the first writes to a new partition (`Bench.warm_up`).

A run starts when the variant's task is created (clients start, join the group)
and ends when the group's committed offsets reach the raw topic's end offsets,
seen by polling the group coordinator every 20 ms. `join s` is the time until
the group is Stable; `rec/s` counts the records over the time after the join,
`rec/s incl. join` over the whole run. `CPU us/rec` is this process's CPU time
(the Python clients, not the broker) per record: steadier than rec/s when other
processes share the machine. Rounds alternate the order of the variants; the
summary takes medians over rounds.

The deliveries look like the provider's (about 500 bytes, keyed by one of 1000
user ids): 88 % valid integration events across the documented statuses as the
provider spells them and variants, 5 % with statuses outside the list, 6 % of
categories without a route, 1 % malformed (broken JSON, empty, missing uid, naive
timestamp, wrong types, a status without letters). Every run's output is counted
per kind of topic and checked against that mix.

Rerun (from the repository root; starts and stops its own broker unless given one):

    .venv/bin/python benchmarks/bench_route.py                  # 100,000 records, 2 rounds
    .venv/bin/python benchmarks/bench_route.py --records 20000 --rounds 3
    .venv/bin/python benchmarks/bench_route.py --bootstrap 127.0.0.1:9092
    .venv/bin/python benchmarks/bench_route.py --rounds 0 --profile worker.prof

A first worker run warms the broker up and is not counted. `--profile` adds one
more worker run under cProfile and prints its hot spots. Logs go at WARNING to a
file (the worker logs every dead-lettered delivery as a warning), so the terminal
shows only the results. Topics the benchmark made are deleted at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import pstats
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import msgspec
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import GroupCoordinatorNotAvailableError

from processor.batching import produce_batch
from processor.config import Config, KafkaConfig, LoggingConfig, TopicsConfig
from processor.devtools.broker import LocalBroker
from processor.kafka_clients import client_options, worker_consumer_options, worker_producer_options
from processor.logging import configure_logging
from processor.routing import Outcome, Router
from processor.topics import create_topics
from processor.worker import Worker

RAW_PARTITIONS: Final = 6
USERS: Final = 1000
# Records per produce_batch call while loading the raw topic.
LOAD_CHUNK: Final = 10_000
# Writes of 8 records to every output partition before a run (see Bench.warm_up).
WARM_UP_ROUNDS: Final = 8
# How often the group's state and committed offsets are polled while a variant runs.
POLL_S: Final = 0.02
# A variant that has not committed everything by then has stalled.
RUN_TIMEOUT_S: Final = 900.0

# A consumer under test: runs until the event is set.
Variant = Callable[[Config, asyncio.Event], Coroutine[Any, Any, None]]

# The documented statuses as the provider spells them in its two documents, and variants.
DOCUMENTED_SPELLINGS: Final = (
    "QUEUED",
    "ONGOING",
    "COMPLETED",
    "FAILED",
    "active",
    "inactive",
    "error",
    "PARTIALLY SYNCED",
    "Completed",
    "completed",
    "queued",
    "partially_synced",
    "PARTIALLY-SYNCED",
)
UNKNOWN_STATUSES: Final = ("PAUSED", "archived", "Syncing", "rate_limited")
INTEGRATION_EVENTS: Final = (
    "integration.created",
    "integration.updated",
    "integration.synced",
    "integration.status_changed",
)
UNROUTED_EVENTS: Final = ("wallet.created", "transaction.imported", "account.updated")
PROVIDERS: Final = (("binance", "Binance"), ("coinbase", "Coinbase"), ("kraken", "Kraken"))


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A record to produce, in the shape `produce_batch` takes."""

    topic: str
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]  # a list: aiokafka's C batch builder takes no other
    partition: int | None = None  # by key


@dataclass(frozen=True, slots=True)
class Result:
    variant: str
    round: int
    records: int  # read and committed
    join_s: float
    total_s: float
    cpu_s: float  # CPU time of this process (the clients, not the broker) during the run
    written: Counter[Outcome]  # records the run added to its output topics, by kind of topic

    @property
    def rate(self) -> float:
        """Records per second after the join."""
        return self.records / (self.total_s - self.join_s)

    @property
    def rate_with_join(self) -> float:
        return self.records / self.total_s

    @property
    def cpu_us_per_record(self) -> float:
        return self.cpu_s / self.records * 1e6


# --- the deliveries -------------------------------------------------------------------


def _integration(rng: random.Random, uid: str, status: object) -> dict[str, Any]:
    provider, public_name = rng.choice(PROVIDERS)
    return {
        "id": f"whd_{rng.getrandbits(64):016x}",
        "event": rng.choice(INTEGRATION_EVENTS),
        "timestamp": f"2025-02-19T12:{rng.randrange(60):02d}:{rng.randrange(60):02d}.000Z",
        "data": {
            "uid": uid,
            "provider": provider,
            "providerPublicName": public_name,
            "publicAddress": None,
            "walletId": f"wallet_{rng.getrandbits(48):012x}",
            "logoUrl": f"https://storage.googleapis.com/kryptos-public/logos/{provider}.png",
            "isContract": False,
            "alias": "Main Trading Account",
            "status": status,
            "addedOn": 1640995200000,
            "lastSyncedAt": 1672531200000 + rng.randrange(10**9),
            "category": "exchange",
            "type": "api",
            "totalTransactions": rng.randrange(100_000),
        },
    }


def _malformed(rng: random.Random, uid: str) -> bytes:
    document = _integration(rng, uid, "completed")
    kind = rng.randrange(7)
    if kind == 0:
        return msgspec.json.encode(document)[:200]  # truncated
    if kind == 1:
        return b"<html><body>502 Bad Gateway</body></html>"
    if kind == 2:
        return b""
    if kind == 3:
        del document["data"]["uid"]
    elif kind == 4:
        document["timestamp"] = "2025-02-19T12:00:00"  # no timezone
    elif kind == 5:
        document["data"]["status"] = 3
    else:
        document["data"]["status"] = "---"  # nothing to name a topic after
    return msgspec.json.encode(document)


def make_deliveries(topic: str, count: int, seed: int) -> tuple[list[Outgoing], Counter[Outcome]]:
    """`count` raw records as the ingress writes them, and how many should go where."""
    rng = random.Random(seed)  # noqa: S311 - reproducible test data, not secrets
    users = [f"user_{rng.getrandbits(40):010x}" for _ in range(USERS)]
    records: list[Outgoing] = []
    expected: Counter[Outcome] = Counter()
    for _ in range(count):
        uid = rng.choice(users)
        draw = rng.random()
        outcome: Outcome = "routed"
        if draw < 0.01:
            value, outcome = _malformed(rng, uid), "dlq"
        elif draw < 0.07:
            document = _integration(rng, uid, "active")
            document["event"] = rng.choice(UNROUTED_EVENTS)
            value, outcome = msgspec.json.encode(document), "unrouted"
        elif draw < 0.12:
            value = msgspec.json.encode(_integration(rng, uid, rng.choice(UNKNOWN_STATUSES)))
        else:
            value = msgspec.json.encode(_integration(rng, uid, rng.choice(DOCUMENTED_SPELLINGS)))
        headers = [
            ("received-at", b"2025-02-19T12:00:00.123Z"),
            ("content-type", b"application/json"),
        ]
        records.append(Outgoing(topic=topic, key=uid.encode(), value=value, headers=headers))
        expected[outcome] += 1
    return records, expected


# --- the three consumers ---------------------------------------------------------------


async def run_worker(config: Config, stop: asyncio.Event) -> None:
    await Worker(config=config).run(stop)


Produce = Callable[[AIOKafkaProducer, str, list[Any]], Awaitable[None]]


async def _produce_batched(producer: AIOKafkaProducer, topic: str, records: list[Any]) -> None:
    outgoing = [Outgoing(topic, r.key, r.value, list(r.headers)) for r in records]
    await asyncio.gather(*await produce_batch(producer, outgoing))


async def _produce_per_record(producer: AIOKafkaProducer, topic: str, records: list[Any]) -> None:
    futures = [
        await producer.send(topic, value=r.value, key=r.key, headers=list(r.headers))
        for r in records
    ]
    await asyncio.gather(*futures)


async def _pipe(config: Config, stop: asyncio.Event, produce: Produce) -> None:
    """The worker's loop without routing: everything goes to `topics.unrouted`.

    (With no routes configured, every delivery is unrouted: that topic is the one
    `create_topics` makes for this config.)
    """
    consumer = AIOKafkaConsumer(**worker_consumer_options(config))
    producer = AIOKafkaProducer(**worker_producer_options(config))
    try:
        await producer.start()
        consumer.subscribe([config.topics.raw])
        await consumer.start()
        while not stop.is_set():
            batch = await consumer.getmany(
                timeout_ms=config.worker.fetch_timeout_ms,
                max_records=config.worker.max_batch_records,
            )
            if not batch:
                continue
            records = [record for records in batch.values() for record in records]
            async with asyncio.timeout(config.worker.produce_timeout_s):
                await produce(producer, config.topics.unrouted, records)
            offsets = {tp: records[-1].offset + 1 for tp, records in batch.items()}
            async with asyncio.timeout(config.worker.commit_timeout_s):
                await consumer.commit(offsets)
    finally:
        await consumer.stop()
        await producer.stop()


async def run_bare(config: Config, stop: asyncio.Event) -> None:
    await _pipe(config, stop, _produce_batched)


async def run_naive(config: Config, stop: asyncio.Event) -> None:
    await _pipe(config, stop, _produce_per_record)


VARIANTS: Final[dict[str, Variant]] = {"worker": run_worker, "bare": run_bare, "naive": run_naive}


# --- measuring -------------------------------------------------------------------------


def unique(prefix: str) -> str:
    return f"{prefix}.{uuid.uuid4().hex[:10]}"


def variant_config(base: Config, name: str) -> Config:
    """Topics and a group of the variant's own; the pipes get no routes at all."""
    routes = (
        {"integration": unique(f"bench.{name}.status") + ".{status}"} if name == "worker" else {}
    )
    return msgspec.structs.replace(
        base,
        topics=msgspec.structs.replace(
            base.topics, unrouted=unique(f"bench.{name}.unrouted"), dlq=unique(f"bench.{name}.dlq")
        ),
        routing=msgspec.structs.replace(base.routing, routes=routes),
        worker=msgspec.structs.replace(base.worker, group_id=unique(f"bench.{name}")),
    )


def output_topics(config: Config) -> list[str]:
    return Router(routing=config.routing, topics=config.topics).destination_topics()


class Bench:
    """Topics, warm-up, group polling and end offsets around the variants' runs."""

    def __init__(self, base: Config) -> None:
        self.base = base
        self.admin = AIOKafkaAdminClient(**client_options(base.kafka))
        self.probe = AIOKafkaConsumer(**client_options(base.kafka))
        self.warmer = AIOKafkaProducer(**worker_producer_options(base))
        self.coordinator = -1
        self.raw_partitions = [TopicPartition(base.topics.raw, p) for p in range(RAW_PARTITIONS)]
        self.created: list[str] = []

    async def start(self) -> None:
        await self.admin.start()
        await self.probe.start()
        await self.warmer.start()
        # The raw topic alone, shaped as `create_topics` shapes every topic.
        raw = NewTopic(
            self.base.topics.raw,
            num_partitions=RAW_PARTITIONS,
            replication_factor=self.base.topics.replication_factor,
            topic_configs={"max.message.bytes": str(self.base.topics.max_message_bytes)},
        )
        await self.admin.create_topics([raw])
        self.created.append(raw.name)
        await self.end_offsets([raw.name])  # returns once every partition has a leader
        # Fresh clusters have no __consumer_offsets yet: the coordinator appears with it.
        async with asyncio.timeout(60):
            while self.coordinator < 0:
                try:
                    self.coordinator = await self.admin.find_coordinator("bench")
                except GroupCoordinatorNotAvailableError:
                    await asyncio.sleep(0.2)

    async def close(self) -> None:
        if self.created:
            await self.admin.delete_topics(self.created)
        await self.warmer.stop()
        await self.probe.stop()
        await self.admin.close()

    async def end_offsets(self, topics: Sequence[str]) -> dict[TopicPartition, int]:
        partitions = [
            TopicPartition(t, p) for t in topics for p in range(self.base.topics.partitions)
        ]
        offsets: dict[TopicPartition, int] = await self.probe.end_offsets(partitions)
        return offsets

    async def warm_up(self, topics: Sequence[str]) -> dict[TopicPartition, int]:
        """Write a little to every partition of `topics`; their end offsets after that.

        The broker stalls (up to seconds) on the first writes to new partitions; with
        a record or two per partition, the worker's produce requests to its 66 fresh
        partitions still took 100 ms instead of 5-10 ms. Production topics are long
        past that, so every run starts on partitions with WARM_UP_ROUNDS writes.
        """
        # Asking every leader for an end offset first waits until all of them serve.
        await self.end_offsets(topics)
        # Records without a key go round-robin: 8 to each partition per round.
        per_topic = 8 * self.base.topics.partitions
        records = [
            Outgoing(topic, None, b"w" * 500, []) for topic in topics for _ in range(per_topic)
        ]
        for _ in range(WARM_UP_ROUNDS):
            await asyncio.gather(*await produce_batch(self.warmer, records))
        return await self.end_offsets(topics)

    async def stable(self, group: str) -> bool:
        responses = await self.admin.describe_consumer_groups(
            [group], group_coordinator_id=self.coordinator
        )
        state: str = responses[0].groups[0][2]
        return state == "Stable"

    async def committed_all(self, group: str, ends: dict[TopicPartition, int]) -> bool:
        committed = await self.admin.list_consumer_group_offsets(
            group, group_coordinator_id=self.coordinator, partitions=self.raw_partitions
        )
        return all(committed[tp].offset >= end for tp, end in ends.items())

    async def measure(
        self,
        name: str,
        round_: int,
        ends: dict[TopicPartition, int],
        profile: cProfile.Profile | None = None,
    ) -> Result:
        """Run variant `name` over the whole raw topic; `profile` covers the run only."""
        config = variant_config(self.base, name)
        outputs = output_topics(config)
        await create_topics(config)
        self.created += outputs
        before = await self.warm_up(outputs)
        group = config.worker.group_id
        stop = asyncio.Event()
        if profile is not None:
            profile.enable()
        started, cpu_started = time.perf_counter(), time.process_time()
        task = asyncio.create_task(VARIANTS[name](config, stop))
        try:
            joined = await _poll_until(task, lambda: self.stable(group)) - started
            done = await _poll_until(task, lambda: self.committed_all(group, ends)) - started
            cpu = time.process_time() - cpu_started
        finally:
            if profile is not None:
                profile.disable()
            stop.set()
            await task
        kinds: dict[str, Outcome] = {config.topics.unrouted: "unrouted", config.topics.dlq: "dlq"}
        written: Counter[Outcome] = Counter()
        for tp, end in (await self.end_offsets(outputs)).items():
            written[kinds.get(tp.topic, "routed")] += end - before[tp]
        return Result(name, round_, sum(ends.values()), joined, done, cpu, written)


async def _poll_until(task: asyncio.Task[None], check: Callable[[], Awaitable[bool]]) -> float:
    """The perf_counter time at which `check` first held while `task` kept running."""
    async with asyncio.timeout(RUN_TIMEOUT_S):
        while True:
            if task.done():
                task.result()  # raises what the variant raised
                raise RuntimeError("the consumer stopped before it had committed everything")
            if await check():
                return time.perf_counter()
            await asyncio.sleep(POLL_S)


async def load(config: Config, count: int, seed: int) -> Counter[Outcome]:
    """Write `count` deliveries to the raw topic with the batch API, and say how fast.

    Returns how many of them the worker should route, leave unrouted, dead-letter.
    """
    records, expected = make_deliveries(config.topics.raw, count, seed)
    size = sum(len(r.value or b"") for r in records) / count
    producer = AIOKafkaProducer(**worker_producer_options(config))
    try:
        await producer.start()
        started = time.perf_counter()
        futures: list[asyncio.Future[Any]] = []
        for first in range(0, count, LOAD_CHUNK):
            futures += await produce_batch(producer, records[first : first + LOAD_CHUNK])
        await asyncio.gather(*futures)
        seconds = time.perf_counter() - started
    finally:
        await producer.stop()
    print(
        f"loaded {count:,} deliveries (mean value {size:.0f} B; expected routed "
        f"{expected['routed']:,}, unrouted {expected['unrouted']:,}, dlq {expected['dlq']:,}) "
        f"in {seconds:.2f} s = {count / seconds:,.0f} rec/s on "
        f"{config.kafka.bootstrap_servers}, {os.cpu_count()} CPUs\n"
    )
    return expected


# --- reporting -------------------------------------------------------------------------


def print_results(results: list[Result], expected: Counter[Outcome]) -> None:
    header = (
        f"{'variant':<8}{'round':>6}{'records':>10}{'join s':>8}{'total s':>9}"
        f"{'rec/s':>10}{'rec/s incl. join':>18}{'CPU us/rec':>12}{'written':>10}"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        print(
            f"{r.variant:<8}{r.round:>6}{r.records:>10,}{r.join_s:>8.2f}{r.total_s:>9.2f}"
            f"{r.rate:>10,.0f}{r.rate_with_join:>18,.0f}{r.cpu_us_per_record:>12.1f}"
            f"{r.written.total():>10,}"
        )

    def median(name: str, metric: Callable[[Result], float]) -> float:
        return statistics.median(metric(r) for r in results if r.variant == name)

    rate = {name: median(name, lambda r: r.rate) for name in VARIANTS}
    with_join = {name: median(name, lambda r: r.rate_with_join) for name in VARIANTS}
    cpu = {name: median(name, lambda r: r.cpu_us_per_record) for name in VARIANTS}
    print("\nmedian over rounds:")
    for name in VARIANTS:
        print(f"  {name:<7}{rate[name]:>10,.0f} rec/s {cpu[name]:>8.1f} CPU us/rec")
    for other, target in (("bare", " (target >= 0.80)"), ("naive", "")):
        print(
            f"worker/{other}: {rate['worker'] / rate[other]:.2f}{target}, "
            f"incl. join {with_join['worker'] / with_join[other]:.2f}"
        )
    for r in results:
        wanted = expected if r.variant == "worker" else Counter({"unrouted": r.records})
        if r.written != wanted:
            print(f"! {r.variant} round {r.round} wrote {dict(r.written)}, expected {dict(wanted)}")


def print_profile(profile: cProfile.Profile, path: Path) -> None:
    profile.dump_stats(path)
    stats = pstats.Stats(profile, stream=sys.stdout).strip_dirs()
    print(f"\nworker profile (saved to {path}), by own time:")
    stats.sort_stats("tottime").print_stats(25)
    print("by cumulative time:")
    stats.sort_stats("cumulative").print_stats(25)


# --- main ------------------------------------------------------------------------------


async def bench(args: argparse.Namespace, bootstrap: str) -> None:
    base = msgspec.structs.replace(
        Config(),
        kafka=KafkaConfig(bootstrap_servers=bootstrap),
        topics=TopicsConfig(raw=unique("bench.raw"), partitions=RAW_PARTITIONS),
    )
    bench = Bench(base)
    try:
        await bench.start()
        expected = await load(base, args.records, args.seed)
        ends = await bench.end_offsets([base.topics.raw])
        # A fresh broker JVM is still compiling its hot paths: whichever variant ran
        # first would pay for that, so one worker run goes first and is not counted.
        warm_up = await bench.measure("worker", 0, ends)
        print(f"  warm-up run, not counted: worker {warm_up.rate:,.0f} rec/s", flush=True)
        results: list[Result] = []
        for round_ in range(1, args.rounds + 1):
            order = list(VARIANTS) if round_ % 2 else list(reversed(VARIANTS))
            for name in order:
                results.append(await bench.measure(name, round_, ends))
                print(f"  {name} round {round_}: {results[-1].rate:,.0f} rec/s", flush=True)
        if results:
            print()
            print_results(results, expected)
        if args.profile:
            profile = cProfile.Profile()
            result = await bench.measure("worker", 0, ends, profile)
            print(f"\nprofiled worker run: {result.rate:,.0f} rec/s (slowed by cProfile)")
            print_profile(profile, args.profile)
    finally:
        await bench.close()


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=100_000, help="deliveries to load")
    parser.add_argument("--bootstrap", help="HOST:PORT of a Kafka to use instead of starting one")
    parser.add_argument("--rounds", type=int, default=2, help="runs of each variant")
    parser.add_argument("--seed", type=int, default=1, help="seed of the generated deliveries")
    parser.add_argument("--profile", type=Path, help="also profile one worker run into FILE")
    parser.add_argument(
        "--log-file",
        type=Path,
        default=Path(tempfile.gettempdir()) / "bench_route.log",
        help="where the clients' WARNING logs go",
    )
    args = parser.parse_args()
    if args.records <= 0 or args.rounds < 0:
        parser.error("--records must be positive and --rounds not negative")
    return args


def main() -> None:
    args = parse_args()
    with args.log_file.open("w") as log:
        configure_logging(LoggingConfig(level="WARNING", format="json"), stream=log)
        if args.bootstrap:
            asyncio.run(bench(args, args.bootstrap))
        else:
            with LocalBroker.temporary() as broker:
                asyncio.run(bench(args, broker.bootstrap))
    lines = len(args.log_file.read_text().splitlines())
    print(f"\n{lines} log lines at WARNING or above in {args.log_file}")


if __name__ == "__main__":
    main()
