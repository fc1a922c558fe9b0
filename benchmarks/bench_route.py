"""Routing throughput: the worker in both guarantees, dedup on and off, against a bare
pipe and a naive per-record loop.

Loads N deliveries and the provider's retries of some of them into a fresh raw topic
(6 partitions) with the batch API, then, on the same broker, lets each variant read
the whole topic, each with a consumer group, output topics and (dedup on) a dedup
changelog topic of its own:

- `worker-alo`:         `processor.worker.loop.Worker` with the default config: at least
                        once, dedup on;
- `worker-alo-nodedup`: at least once, dedup off;
- `worker-alo-per-batch`, `worker-eos-per-batch`: `worker-alo`, `worker-eos` with a
                        checkpoint per batch (`worker.commit_interval_ms: 0`) instead
                        of their default interval (1 s, 100 ms);
- `worker-alo-gc-default`: `worker-alo` with CPython's garbage-collector settings
                        instead of the worker's (processor.worker.collector; every
                        other worker variant runs with the worker's, as
                        `processor worker` does);
- `worker-eos`:         exactly once (a transaction per checkpoint), dedup on;
- `worker-eos-nodedup`: exactly once, dedup off;
- `bare`:   the worker's loop without decoding: `getmany`, every record passed through
            unchanged to one topic with `processor.kafka.batching.produce_batch`, wait for
            the acks, commit;
- `naive`:  the same loop producing with one `producer.send()` per record, then
            awaiting all the futures, then committing.

All of them use the worker's own producer and consumer settings
(`processor.kafka.clients.worker_producer_options` / `worker_consumer_options`:
acks=all, idempotence, manual commit, `worker.max_batch_records` per `getmany`).
Topics are created with `processor.kafka.topics.create_topics` (the changelog as
deployed) and written to a little before each run, as the broker is slow on the
first writes to a new partition (`Bench.warm_up`).

A run starts when the variant's task is created (clients start, join the group)
and ends when the group's committed offsets reach the raw topic's end offsets,
seen by polling the group coordinator every 20 ms; exactly once commits its offsets
inside its transactions, and the coordinator reports them once those commit.
`join s` is the time until the group is Stable (dedup then restores its changelog:
that counts in the run);
`rec/s` counts the raw records, retries included, over the time after the join,
`rec/s incl. join` over the whole run. `CPU us/rec` is this process's CPU time (the
Python clients, not the broker) per record: steadier than rec/s when other processes
share the machine. `ms/batch` is the worker's mean time from a batch's fetch to its
commit (its `processor_worker_batch_seconds`), `rec/batch` the raw records per batch
(exactly once commits a transaction per checkpoint). Rounds alternate
the order of the variants; the summary takes medians over rounds, each variant's
rec/s as a ratio to `bare`'s and `worker-alo`'s, and the exactly-once / at-least-once
throughput ratio (dedup on both) by which the default guarantee is chosen: exactly
once when it is >= 0.8.

The deliveries look like the provider's (about 500 bytes, keyed by one of 1000
user ids): 88 % valid integration events across the documented statuses as the
provider spells them and variants, 5 % with statuses outside the list, 6 % of
categories without a route, 1 % malformed (broken JSON, empty, missing uid, naive
timestamp, wrong types, a status without letters). Then a fraction (`--retries`,
0.33) of the valid ones is written again, same key and same bytes, once or twice
more, each copy 1 to N/4 records after its first: a few in the batch of their
first copy, most in later batches, after it was routed.

After each run its topics are read back with read_committed (an aborted
transaction's records do not count) and checked: the records per kind of topic
against the mix; for the worker with dedup, every valid delivery id once in the
outputs and its hash once in its changelog, and `suppressed` (the worker's own count of
retries it did not produce) equal to the retries written; without dedup, every copy
once and nothing suppressed. A difference is printed with a `!`.

Rerun (from the repository root; starts and stops its own broker unless given one):

    .venv/bin/python benchmarks/bench_route.py                  # 100,000 deliveries, 2 rounds
    .venv/bin/python benchmarks/bench_route.py --records 20000 --rounds 3
    .venv/bin/python benchmarks/bench_route.py --variants worker-alo,worker-eos --retries 0
    .venv/bin/python benchmarks/bench_route.py --bootstrap 127.0.0.1:9092
    .venv/bin/python benchmarks/bench_route.py --rounds 0 --profile eos.prof \
        --profile-variant worker-eos

A first run of each guarantee the selected variants use (and of a pipe) warms the
broker up and is not counted. `--profile` adds one more run (of `--profile-variant`,
`worker-alo` unless given) under cProfile and prints its hot spots. Logs go at
WARNING to a file (the worker logs every dead-lettered delivery as a warning), so
the terminal shows only the results. Topics the benchmark made are deleted at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
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
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

import msgspec
import numpy as np
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import GroupCoordinatorNotAvailableError
from harness import write_results

from processor.config import Config, KafkaConfig, LoggingConfig, TopicsConfig
from processor.dedup.idwindow import id_hash
from processor.dedup.record import RestoredBuilder
from processor.devtools.broker import LocalBroker
from processor.headers import DELIVERY_ID
from processor.kafka.batching import produce_batch
from processor.kafka.clients import (
    client_options,
    read_to_end,
    worker_consumer_options,
    worker_producer_options,
)
from processor.kafka.topics import all_topics, create_topics
from processor.logging import configure_logging
from processor.metrics import WorkerMetrics
from processor.outcomes import Outcome
from processor.worker.collector import tuned_collection
from processor.worker.loop import Worker
from processor.worker.parts import kafka_parts

RAW_PARTITIONS: Final = 6
USERS: Final = 1000
# Records per produce_batch call while loading the raw topic.
LOAD_CHUNK: Final = 10_000
# Writes of 8 records to every partition a run writes to, before it (see Bench.warm_up).
WARM_UP_ROUNDS: Final = 8
# How often the group's state and committed offsets are polled while a variant runs.
POLL_S: Final = 0.02
# A variant that has not committed everything by then has stalled.
RUN_TIMEOUT_S: Final = 900.0
# Reading a run's outputs back: large fetches, as the dedup changelog's restore does.
READ_FETCH_BYTES: Final = 8 * 1024 * 1024
# What the summary compares every variant with, and the exactly-once bar for the default.
BASELINES: Final = ("bare", "worker-alo")
EXACTLY_ONCE_BAR: Final = 0.8

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


# --- the deliveries -------------------------------------------------------------------


def integration_event(rng: random.Random, uid: str, status: object) -> dict[str, Any]:
    """An integration event as the provider sends it (bench_e2e builds on it too)."""
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
    document = integration_event(rng, uid, "completed")
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


@dataclass(frozen=True, slots=True)
class Deliveries:
    """The raw records in the order they are written, and what the outputs should hold."""

    records: list[Outgoing]  # first copies and retries, interleaved
    first: Counter[Outcome]  # where each delivery's first copy goes
    retried: Counter[Outcome]  # where the retries go (valid deliveries only)
    copies: Counter[str]  # valid delivery id -> copies written, 1 to 3

    @property
    def retries(self) -> int:
        return self.retried.total()


def make_deliveries(topic: str, count: int, seed: int, retries: float) -> Deliveries:
    """`count` deliveries as the ingress writes them, `retries` of the valid ones again.

    Each retried delivery comes back once or twice, each copy 1 to count/4 records
    after its first (the same user, so the same raw partition).
    """
    rng = random.Random(seed)  # noqa: S311 - reproducible test data, not secrets
    users = [f"user_{rng.getrandbits(40):010x}" for _ in range(USERS)]
    # (position in the stream, 0 for a first copy and 1 for a retry, record)
    placed: list[tuple[int, int, Outgoing]] = []
    first: Counter[Outcome] = Counter()
    retried: Counter[Outcome] = Counter()
    copies: Counter[str] = Counter()
    headers = [("received-at", b"2025-02-19T12:00:00.123Z"), ("content-type", b"application/json")]
    for position in range(count):
        uid = rng.choice(users)
        draw = rng.random()
        outcome: Outcome = "routed"
        delivery_id = None
        if draw < 0.01:
            value, outcome = _malformed(rng, uid), "dlq"
        else:
            if draw < 0.07:
                document = integration_event(rng, uid, "active")
                document["event"] = rng.choice(UNROUTED_EVENTS)
                outcome = "unrouted"
            elif draw < 0.12:
                document = integration_event(rng, uid, rng.choice(UNKNOWN_STATUSES))
            else:
                document = integration_event(rng, uid, rng.choice(DOCUMENTED_SPELLINGS))
            value, delivery_id = msgspec.json.encode(document), document["id"]
        record = Outgoing(topic=topic, key=uid.encode(), value=value, headers=list(headers))
        placed.append((position, 0, record))
        first[outcome] += 1
        if delivery_id is None:
            continue
        copies[delivery_id] = 1
        if rng.random() >= retries:
            continue
        for _ in range(rng.choice((1, 2))):
            placed.append((position + rng.randint(1, max(1, count // 4)), 1, record))
            retried[outcome] += 1
            copies[delivery_id] += 1
    placed.sort(key=lambda entry: entry[:2])  # stable: a retry stays after its first copy
    return Deliveries([record for _, _, record in placed], first, retried, copies)


# --- the variants ----------------------------------------------------------------------


async def _produce_batched(producer: AIOKafkaProducer, topic: str, records: list[Any]) -> None:
    outgoing = [Outgoing(topic, r.key, r.value, list(r.headers)) for r in records]
    await asyncio.gather(*await produce_batch(producer, outgoing))


async def _produce_per_record(producer: AIOKafkaProducer, topic: str, records: list[Any]) -> None:
    futures = [
        await producer.send(topic, value=r.value, key=r.key, headers=list(r.headers))
        for r in records
    ]
    await asyncio.gather(*futures)


Produce = Callable[[AIOKafkaProducer, str, list[Any]], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Variant:
    """A consumer under test: the worker with a guarantee, dedup on or off; or a pipe."""

    guarantee: Literal["at_least_once", "exactly_once"] | None = None  # None: a pipe
    dedup: bool = False
    produce: Produce | None = None  # how a pipe produces
    # The worker's garbage-collector settings (processor.worker.collector), as
    # `processor worker` runs; False: CPython's defaults.
    tuned_gc: bool = True
    commit_interval_ms: int | None = None  # worker.commit_interval_ms; None: the default

    @property
    def kind(self) -> str:
        """What a warm-up run stands for: a guarantee of the worker, or the pipes."""
        return self.guarantee or "pipe"


VARIANTS: Final[dict[str, Variant]] = {
    "worker-alo": Variant(guarantee="at_least_once", dedup=True),
    "worker-alo-nodedup": Variant(guarantee="at_least_once"),
    "worker-alo-gc-default": Variant(guarantee="at_least_once", dedup=True, tuned_gc=False),
    "worker-eos": Variant(guarantee="exactly_once", dedup=True),
    "worker-alo-per-batch": Variant(guarantee="at_least_once", dedup=True, commit_interval_ms=0),
    "worker-eos-per-batch": Variant(guarantee="exactly_once", dedup=True, commit_interval_ms=0),
    "worker-eos-nodedup": Variant(guarantee="exactly_once"),
    "bare": Variant(produce=_produce_batched),
    "naive": Variant(produce=_produce_per_record),
}


async def run_variant(
    variant: Variant, config: Config, stop: asyncio.Event, metrics: WorkerMetrics
) -> None:
    if variant.produce is None:
        worker = Worker(config=config, parts=kafka_parts(config, metrics), metrics=metrics)
        with tuned_collection() if variant.tuned_gc else contextlib.nullcontext():
            await worker.run(stop)
    else:
        await _pipe(config, stop, variant.produce)


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


def unique(prefix: str) -> str:
    return f"{prefix}.{uuid.uuid4().hex[:10]}"


def variant_config(base: Config, name: str) -> Config:
    """A group, output topics and changelog of the variant's own; pipes get no routes."""
    variant = VARIANTS[name]
    prefix = f"bench.{name}"
    routes = {} if variant.guarantee is None else {"integration": unique(prefix) + ".{status}"}
    return msgspec.structs.replace(
        base,
        topics=msgspec.structs.replace(
            base.topics,
            unrouted=unique(f"{prefix}.unrouted"),
            dlq=unique(f"{prefix}.dlq"),
            dedup=unique(f"{prefix}.dedup"),
        ),
        routing=msgspec.structs.replace(base.routing, routes=routes),
        dedup=msgspec.structs.replace(base.dedup, enabled=variant.dedup),
        worker=msgspec.structs.replace(
            base.worker,
            group_id=unique(prefix),
            guarantee=variant.guarantee or base.worker.guarantee,
            commit_interval_ms=variant.commit_interval_ms,
        ),
    )


# --- measuring -------------------------------------------------------------------------


@dataclass(slots=True)
class Written:
    """What a run committed to its topics, read back with read_committed."""

    kinds: Counter[Outcome] = field(default_factory=Counter)  # records per kind of topic
    ids: Counter[str] = field(default_factory=Counter)  # delivery-id of routed and unrouted
    changelog: Counter[int] = field(default_factory=Counter)  # id hashes the changelog holds


class Rates:
    """Rates of a run with `records`, `join_s`, `total_s` and `cpu_s` (peers/run.py too)."""

    __slots__ = ()
    records: int
    join_s: float
    total_s: float
    cpu_s: float

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


@dataclass(frozen=True, slots=True)
class Result(Rates):
    variant: str
    round: int
    records: int  # raw records read and committed, retries included
    join_s: float
    total_s: float
    cpu_s: float  # CPU time of this process (the clients, not the broker) during the run
    written: Written
    suppressed: int | None  # retries the worker did not produce; None for a pipe
    batches: int  # batches the worker committed whole (0 for a pipe)
    batch_s: float  # their total time from fetch to commit
    failures: int  # the worker's failed produces and commits

    @property
    def ms_per_batch(self) -> float | None:
        return self.batch_s / self.batches * 1e3 if self.batches else None

    @property
    def records_per_batch(self) -> float | None:
        return self.records / self.batches if self.batches else None


class Bench:
    """Topics, warm-up, group polling, end offsets and read-back around the variants' runs."""

    def __init__(self, base: Config) -> None:
        self.base = base
        self.admin = AIOKafkaAdminClient(**client_options(base.kafka))
        self.probe = AIOKafkaConsumer(**client_options(base.kafka))
        self.reader = AIOKafkaConsumer(
            **client_options(base.kafka),
            enable_auto_commit=False,
            isolation_level="read_committed",
            max_partition_fetch_bytes=READ_FETCH_BYTES,
            fetch_max_bytes=READ_FETCH_BYTES,
        )
        self.warmer = AIOKafkaProducer(**worker_producer_options(base))
        self.coordinator = -1
        self.raw_partitions = [TopicPartition(base.topics.raw, p) for p in range(RAW_PARTITIONS)]
        self.created: list[str] = []

    async def start(self) -> None:
        await self.admin.start()
        await self.probe.start()
        await self.reader.start()
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
        await self.reader.stop()
        await self.probe.stop()
        await self.admin.close()

    def partitions(self, topics: Sequence[str]) -> list[TopicPartition]:
        return [TopicPartition(t, p) for t in topics for p in range(self.base.topics.partitions)]

    async def end_offsets(self, topics: Sequence[str]) -> dict[TopicPartition, int]:
        offsets: dict[TopicPartition, int] = await self.probe.end_offsets(self.partitions(topics))
        return offsets

    async def warm_up(self, topics: Sequence[str]) -> dict[TopicPartition, int]:
        """Write a little to every partition of `topics`; their end offsets after that.

        The broker stalls (up to seconds) on the first writes to new partitions; with
        a record or two per partition, the worker's produce requests to its 66 fresh
        partitions still took 100 ms instead of 5-10 ms. Production topics are long
        past that, so every run starts on partitions with WARM_UP_ROUNDS writes. The
        records have a key, which a compacted changelog requires, and a value dedup's
        restore skips (not the shape of a worker's).
        """
        # Asking every leader for an end offset first waits until all of them serve.
        await self.end_offsets(topics)
        records = [
            Outgoing(tp.topic, b"warm-up", b"w" * 500, [], tp.partition)
            for tp in self.partitions(topics)
            for _ in range(8)
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

    async def read_back(self, config: Config, since: dict[TopicPartition, int]) -> Written:
        """What was committed to the partitions of `since` after those offsets."""
        kinds: dict[str, Outcome] = {config.topics.unrouted: "unrouted", config.topics.dlq: "dlq"}
        written = Written()
        self.reader.assign(list(since))
        for tp, offset in since.items():
            self.reader.seek(tp, offset)
        async for tp, records in read_to_end(self.reader, list(since)):
            if tp.topic == config.topics.dedup:
                restored = RestoredBuilder()
                for record in records:
                    restored.add(record.value, record.timestamp)
                hashes = restored.build().id_hashes
                written.changelog.update(np.frombuffer(hashes, dtype="<u8").tolist())
                continue
            kind = kinds.get(tp.topic, "routed")
            written.kinds[kind] += len(records)
            if kind == "dlq":
                continue  # a DLQ record's id is salvaged from bytes nobody vouches for
            for record in records:
                for name, value in record.headers:
                    if name == DELIVERY_ID:
                        written.ids[value.decode()] += 1
        return written

    async def measure(
        self,
        name: str,
        round_: int,
        ends: dict[TopicPartition, int],
        profile: cProfile.Profile | None = None,
    ) -> Result:
        """Run variant `name` over the whole raw topic; `profile` covers the run only."""
        config = variant_config(self.base, name)
        topics = [t for t in all_topics(config) if t != config.topics.raw]
        await create_topics(config)
        self.created += topics
        before = await self.warm_up(topics)
        group = config.worker.group_id
        metrics = WorkerMetrics()
        stop = asyncio.Event()
        if profile is not None:
            profile.enable()
        started, cpu_started = time.perf_counter(), time.process_time()
        task = asyncio.create_task(run_variant(VARIANTS[name], config, stop, metrics))
        try:
            joined = await _poll_until(task, lambda: self.stable(group)) - started
            done = await _poll_until(task, lambda: self.committed_all(group, ends)) - started
            cpu = time.process_time() - cpu_started
        finally:
            if profile is not None:
                profile.disable()
            stop.set()
            await task
        written = await self.read_back(config, before)
        sample = metrics.registry.get_sample_value
        return Result(
            variant=name,
            round=round_,
            records=sum(ends.values()),
            join_s=joined,
            total_s=done,
            cpu_s=cpu,
            written=written,
            suppressed=(
                None
                if VARIANTS[name].guarantee is None
                else int(sample("processor_worker_records_total", {"outcome": "duplicate"}) or 0)
            ),
            batches=int(sample("processor_worker_batch_seconds_count") or 0),
            batch_s=sample("processor_worker_batch_seconds_sum") or 0.0,
            failures=int(
                (sample("processor_worker_produce_failures_total") or 0)
                + (sample("processor_worker_commit_failures_total") or 0)
            ),
        )


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


async def load(config: Config, deliveries: Deliveries) -> None:
    """Write the deliveries to the raw topic with the batch API, and say how fast."""
    records = deliveries.records
    count = len(records)
    size = sum(len(r.value or b"") for r in records) / count
    producer = AIOKafkaProducer(**worker_producer_options(config))
    try:
        await producer.start()
        started = time.perf_counter()
        futures: list[asyncio.Future[Any]] = []
        for start in range(0, count, LOAD_CHUNK):
            futures += await produce_batch(producer, records[start : start + LOAD_CHUNK])
        await asyncio.gather(*futures)
        seconds = time.perf_counter() - started
    finally:
        await producer.stop()
    first, retried = deliveries.first, deliveries.retried
    print(
        f"loaded {first.total():,} deliveries (expected routed {first['routed']:,}, unrouted "
        f"{first['unrouted']:,}, dlq {first['dlq']:,}) and {retried.total():,} retries of "
        f"{sum(1 for n in deliveries.copies.values() if n > 1):,} of them (routed "
        f"{retried['routed']:,}, unrouted {retried['unrouted']:,}): {count:,} raw records, "
        f"mean value {size:.0f} B, in {seconds:.2f} s = {count / seconds:,.0f} rec/s on "
        f"{config.kafka.bootstrap_servers}, {os.cpu_count()} CPUs\n"
    )


# --- checking and reporting ------------------------------------------------------------


def problems(result: Result, deliveries: Deliveries) -> list[str]:
    """How what `result`'s run wrote differs from what its variant must write."""
    variant = VARIANTS[result.variant]
    written = result.written
    found: list[str] = []
    if variant.guarantee is None:
        wanted = Counter({"unrouted": result.records})
        if written.kinds != wanted:
            found.append(f"wrote {dict(written.kinds)}, expected {dict(wanted)}")
        return found
    once = Counter(dict.fromkeys(deliveries.copies, 1))
    changelog: Counter[int] = Counter()
    if variant.dedup:
        changelog = Counter(dict.fromkeys(map(id_hash, deliveries.copies), 1))
        kinds, ids, suppressed = deliveries.first, once, deliveries.retries
    else:
        kinds = deliveries.first + deliveries.retried
        ids, suppressed = deliveries.copies, 0
    if written.kinds != kinds:
        found.append(f"wrote {dict(written.kinds)}, expected {dict(kinds)}")
    found += differences("outputs", written.ids, ids)
    found += differences("changelog", written.changelog, changelog)
    if result.suppressed != suppressed:
        found.append(f"suppressed {result.suppressed:,} retries, expected {suppressed:,}")
    if result.failures:
        found.append(f"{result.failures} failed produces or commits (see the log file)")
    return found


def differences(what: str, got: Counter[Any], want: Counter[Any]) -> list[str]:
    if got == want:
        return []
    missing, extra = want - got, got - want
    return [
        f"{what}: {missing.total():,} ids missing, {extra.total():,} too many "
        f"({len(got):,} distinct ids, expected {len(want):,})"
    ]


def print_results(results: list[Result], deliveries: Deliveries) -> None:
    header = (
        f"{'variant':<20}{'round':>6}{'records':>10}{'join s':>8}{'total s':>9}"
        f"{'rec/s':>10}{'rec/s incl. join':>18}{'CPU us/rec':>12}{'written':>10}"
        f"{'suppressed':>12}{'ms/batch':>10}{'rec/batch':>11}"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        print(
            f"{r.variant:<20}{r.round:>6}{r.records:>10,}{r.join_s:>8.2f}{r.total_s:>9.2f}"
            f"{r.rate:>10,.0f}{r.rate_with_join:>18,.0f}{r.cpu_us_per_record:>12.1f}"
            f"{r.written.kinds.total():>10,}{_maybe(r.suppressed, ',d'):>12}"
            f"{_maybe(r.ms_per_batch, '.1f'):>10}{_maybe(r.records_per_batch, ',.0f'):>11}"
        )

    names = list(dict.fromkeys(r.variant for r in results))

    def median(name: str, metric: Callable[[Result], float | None]) -> float | None:
        values = [v for r in results if r.variant == name if (v := metric(r)) is not None]
        return statistics.median(values) if values else None

    rate = {name: median(name, lambda r: r.rate) for name in names}
    with_join = {name: median(name, lambda r: r.rate_with_join) for name in names}
    baselines = [b for b in BASELINES if b in names]
    header = (
        f"{'median over rounds':<20}{'rec/s':>10}{'rec/s incl. join':>18}{'CPU us/rec':>12}"
        + "".join(f"{'x ' + b:>14}" for b in baselines)
        + f"{'suppressed':>12}{'ms/batch':>10}"
    )
    print(f"\n{header}\n{'-' * len(header)}")
    for name in names:
        ratios = "".join(f"{_ratio(rate[name], rate[b]):>14}" for b in baselines)
        print(
            f"{name:<20}{_maybe(rate[name], ',.0f'):>10}{_maybe(with_join[name], ',.0f'):>18}"
            f"{_maybe(median(name, lambda r: r.cpu_us_per_record), '.1f'):>12}{ratios}"
            f"{_maybe(median(name, lambda r: r.suppressed), ',.0f'):>12}"
            f"{_maybe(median(name, lambda r: r.ms_per_batch), '.1f'):>10}"
        )
    if "worker-eos" in names and "worker-alo" in names:
        print(
            f"\nexactly-once / at-least-once throughput: "
            f"{_ratio(rate['worker-eos'], rate['worker-alo'])} (default is exactly_once "
            f"when >= {EXACTLY_ONCE_BAR}); incl. join "
            f"{_ratio(with_join['worker-eos'], with_join['worker-alo'])}"
        )
    for r in results:
        for problem in problems(r, deliveries):
            print(f"! {r.variant} round {r.round}: {problem}")


def _maybe(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _ratio(value: float | None, base: float | None) -> str:
    return "-" if value is None or not base else f"{value / base:.2f}"


def print_profile(name: str, profile: cProfile.Profile, path: Path) -> None:
    profile.dump_stats(path)
    stats = pstats.Stats(profile, stream=sys.stdout).strip_dirs()
    print(f"\n{name} profile (saved to {path}), by own time:")
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
        deliveries = make_deliveries(base.topics.raw, args.records, args.seed, args.retries)
        await load(base, deliveries)
        ends = await bench.end_offsets([base.topics.raw])
        # A fresh broker JVM is still compiling its hot paths, and the first transaction
        # creates the transaction log: whichever variant ran first would pay for that,
        # so one run of each kind (a guarantee, or a pipe) goes first and is not counted.
        kinds: dict[str, str] = {}
        for name in args.variants:
            kinds.setdefault(VARIANTS[name].kind, name)
        for name in kinds.values():
            warm_up = await bench.measure(name, 0, ends)
            print(f"  warm-up run, not counted: {name} {warm_up.rate:,.0f} rec/s", flush=True)
        results: list[Result] = []
        for round_ in range(1, args.rounds + 1):
            order = args.variants if round_ % 2 else args.variants[::-1]
            for name in order:
                results.append(await bench.measure(name, round_, ends))
                print(f"  {name} round {round_}: {results[-1].rate:,.0f} rec/s", flush=True)
        if results:
            print()
            print_results(results, deliveries)
            write_results(
                args.results,
                "bench_route",
                [
                    {
                        "variant": r.variant,
                        "round": r.round,
                        "records": r.records,
                        "rec_per_s": round(r.rate),
                        "cpu_us_per_record": round(r.cpu_us_per_record, 2),
                        "ms_per_batch": r.ms_per_batch,
                    }
                    for r in results
                ],
            )
        if args.profile:
            profile = cProfile.Profile()
            result = await bench.measure(args.profile_variant, 0, ends, profile)
            print(
                f"\nprofiled {args.profile_variant} run: {result.rate:,.0f} rec/s "
                "(slowed by cProfile)"
            )
            for problem in problems(result, deliveries):
                print(f"! {result.variant} profiled: {problem}")
            print_profile(args.profile_variant, profile, args.profile)
    finally:
        await bench.close()


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=100_000, help="deliveries to load")
    parser.add_argument(
        "--retries",
        type=float,
        default=0.33,
        help="fraction of the valid deliveries written again, once or twice more",
    )
    parser.add_argument("--bootstrap", help="HOST:PORT of a Kafka to use instead of starting one")
    parser.add_argument("--rounds", type=int, default=2, help="runs of each variant")
    parser.add_argument(
        "--variants",
        default=",".join(VARIANTS),
        help=f"comma-separated subset of: {', '.join(VARIANTS)}",
    )
    parser.add_argument("--seed", type=int, default=1, help="seed of the generated deliveries")
    parser.add_argument(
        "--results", type=Path, help="also write the results to DIR/bench_route.json"
    )
    parser.add_argument("--profile", type=Path, help="also profile one run into FILE")
    parser.add_argument(
        "--profile-variant",
        default="worker-alo",
        choices=list(VARIANTS),
        help="the variant --profile runs",
    )
    parser.add_argument(
        "--log-file",
        type=Path,
        default=Path(tempfile.gettempdir()) / "bench_route.log",
        help="where the clients' WARNING logs go",
    )
    args = parser.parse_args()
    if args.records <= 0 or args.rounds < 0:
        parser.error("--records must be positive and --rounds not negative")
    if not 0 <= args.retries <= 1:
        parser.error("--retries is a fraction, from 0 to 1")
    args.variants = list(dict.fromkeys(v.strip() for v in args.variants.split(",") if v.strip()))
    unknown = [name for name in args.variants if name not in VARIANTS]
    if unknown or not args.variants:
        parser.error(f"--variants takes names from: {', '.join(VARIANTS)}; not {unknown}")
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
