"""Soak: the worker's and the ingress's memory over 10 million records and 1 million requests.

The bar ("Flat memory"): a process's RSS after 10,000,000 records (worker) or
1,000,000 requests (ingress) within 10 % of its RSS after the first 100,000.

Every process under test is the real command, `processor worker` or `processor ingress`,
a subprocess with the default config (`config.yaml`) and, as a deployment would set
them, its topics, group and switches through the environment; its log goes to a file.
Its RSS is read from /proc/<pid>/status (VmRSS; VmHWM is the peak) once 100,000 are
done, then every tenth of the run (every 1,000,000 records, every 100,000 requests).

Worker soaks: topics made with `processor.kafka.topics.create_topics` (6 raw partitions;
every topic keeps 128 MiB a partition, so a 10M run does not fill the disk), and a
loader in this process keeping the raw topic fed with `produce_batch`, 10,000 records
a chunk, at most 200,000 ahead of the worker. Progress is the worker's committed
offsets. The deliveries look like the provider's (~490 bytes, 1,000 users): 96 %
integration events over the documented statuses and one unknown, 3 % of a category
without a route, 1 % truncated JSON (dead-lettered, one warning each in the log).

- `worker-nodedup`: dedup off, every delivery id distinct: all of the routing and
  produce path. The bar applies.
- `worker-dedup-bounded`: dedup on (4-day window) and the same 50,000 deliveries
  (`--bounded-ids`) sent again and again with the same bytes, as a provider retries:
  after the first pass every valid record is a retry, looked up and suppressed (the
  truncated 1 % still go to the DLQ), and the window holds 50,000 ids. The bar applies.
  (A short `dedup.window_s` does not make a flat soak: expired ids are dropped at most
  every 60 s (`processor.dedup.screen.EVICT_EVERY_S`), and the oldest segment once about a
  quarter of it has expired, so the window settles at a few minutes of ids, millions
  at these rates, only after millions of records: bounded, but far above the 100k
  sample by design.)
- `worker-dedup-distinct`: dedup on, the default 4-day window, every id distinct. The
  window keeps every id by design, so RSS grows; reported is that growth per
  remembered id (from the worker's `processor_worker_dedup_ids`, read on its metrics
  port) beside the window's own estimate (`processor_worker_dedup_bytes`), and what
  the process holds besides the window (RSS - window bytes) against its 100k sample.

Ingress soak: `processor ingress` with a random signing secret, and a load generator in
another process sending `--requests` signed deliveries at `--concurrency` connections:
wrk (one thread; its Lua script takes each request's body and signature from a pool of
100,000 distinct deliveries signed here, and stops after the last answer) when it is
installed, else an aiohttp client (`--client python`) that signs each delivery itself,
every id distinct. Progress is the ingress's own count of answers (its /metrics,
read every 0.25 s).

Rerun (from the repository root; starts and stops its own broker unless given one):

    .venv/bin/python benchmarks/bench_soak.py           # 10M records a worker soak, 1M requests
    .venv/bin/python benchmarks/bench_soak.py --quick   # 1M records, 200k requests
    .venv/bin/python benchmarks/bench_soak.py --soaks worker-nodedup,ingress --records 2000000
    .venv/bin/python benchmarks/bench_soak.py --bootstrap 127.0.0.1:9092

Logs of the processes, and the benchmark's own warnings, go to `--log-dir` (a new
temporary folder unless given). Topics the benchmark made are deleted after each soak.

Chasing a leak: `--tracemalloc` runs the worker under tracemalloc (about 10x slower:
for a short run), has it dump a snapshot at every sample (SIGUSR2) and prints what grew
most from the first to the last, by line; `--worker-env NAME=VALUE` adds to the worker's
environment, e.g. `MALLOC_MMAP_THRESHOLD_=1048576` to tell glibc's keeping of freed
arrays (see benchmarks/bench_idwindow.py) from memory the process still holds:

    .venv/bin/python benchmarks/bench_soak.py --soaks worker-dedup-distinct \\
        --records 600000 --tracemalloc
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, NamedTuple

import aiohttp
import msgspec
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import GroupCoordinatorNotAvailableError
from bench_ingress import WRK_POOL
from harness import cpu_seconds, memory
from prometheus_client.parser import text_string_to_metric_families

from processor.config import Config, LoggingConfig, load_config
from processor.devtools.broker import LocalBroker
from processor.devtools.ports import free_port
from processor.headers import CONTENT_TYPE, DELIVERY_ID, EVENT, RECEIVED_AT
from processor.ingress.signing import sign_hmac_sha256
from processor.kafka.batching import RawRecord, produce_batch
from processor.kafka.clients import client_options, worker_producer_options
from processor.kafka.topics import all_topics, create_topics
from processor.logging import configure_logging

REPO: Final = Path(__file__).resolve().parent.parent
CONFIG: Final = REPO / "config.yaml"
PROCESSOR: Final = Path(sys.executable).parent / "processor"  # the console script
# The bar: RSS at the end at most this many times the RSS after the first BASELINE.
BAR: Final = 1.10
BASELINE: Final = 100_000
USERS: Final = 1000
# Records per produce_batch call of the loader, and how far it may run ahead of the
# worker's commits: enough to never starve it, little enough to stay in the page cache.
LOAD_CHUNK: Final = 10_000
MAX_AHEAD: Final = 200_000
# Each topic's partitions keep this much (the broker checks every 5 minutes).
RETENTION: Final = {"retention.bytes": str(128 << 20), "segment.bytes": str(16 << 20)}
# How often progress (committed offsets, the ingress's answer count) is read.
POLL_S: Final = 0.25
# A soak going slower than this has stalled.
MIN_RATE: Final = 500
# Distinct signed deliveries wrk cycles through.
POOL: Final = 100_000
# SIGTERM to exit, then SIGKILL.
STOP_TIMEOUT_S: Final = 90.0

# Statuses as the provider spells them (one unknown: routed to `other`), event names.
STATUSES: Final = (
    b"COMPLETED",
    b"ONGOING",
    b"QUEUED",
    b"FAILED",
    b"active",
    b"inactive",
    b"error",
    b"PARTIALLY SYNCED",
    b"PAUSED",
)
# A delivery's body after its id; the id comes first, so that a delivery is its shape's
# bytes with its own id spliced in: cheap enough to keep a worker fed from this process.
TAIL: Final = (
    b'","event":"%s","timestamp":"2025-02-19T12:%02d:%02d.000Z",'
    b'"data":{"uid":"%s","provider":"binance","providerPublicName":"Binance",'
    b'"publicAddress":null,"walletId":"wallet_%012x",'
    b'"logoUrl":"https://storage.googleapis.com/kryptos-public/logos/binance.png",'
    b'"isContract":false,"alias":"Main Trading Account","status":"%s",'
    b'"addedOn":1640995200000,"lastSyncedAt":%d,"category":"exchange","type":"api",'
    b'"totalTransactions":%d}}'
)
# Deliveries take one of this many shapes (user, event, status, ...), by a hash of n.
SHAPES: Final = 4096
RAW_HEADERS: Final = [
    (RECEIVED_AT, b"2025-02-19T12:00:00.123Z"),
    (CONTENT_TYPE, b"application/json"),
]


class Shape(NamedTuple):
    uid: bytes
    event: bytes
    tail: bytes  # as sent: 1 % of the shapes are truncated, and dead-lettered
    whole: bytes  # never truncated (what the ingress soak sends)


def _shape(k: int) -> Shape:
    """3 % of the shapes have an event without a route, 1 % are truncated."""
    uid = b"user_%03d" % (k % USERS)
    kind = k * 7919 % 100
    event = b"wallet.created" if kind < 3 else b"integration.updated"
    status = STATUSES[k // 7 % len(STATUSES)]
    whole = TAIL % (event, k % 60, k // 60 % 60, uid, k, status, 1672531200000 + k, k)
    return Shape(uid, event, whole[:170] if kind == 99 else whole, whole)


_SHAPES: Final = [_shape(k) for k in range(SHAPES)]


class Delivery(NamedTuple):
    uid: bytes
    event: bytes
    body: bytes
    id: bytes


def delivery(n: int, *, whole: bool = False) -> Delivery:
    """Delivery number `n`: the same bytes for the same n, a distinct id for each n."""
    shape = _SHAPES[(n * 2654435761 & 0xFFFFFFFF) >> 20]  # Knuth's multiplicative hash
    delivery_id = b"whd_%016x" % n
    body = b'{"id":"' + delivery_id + (shape.whole if whole else shape.tail)
    return Delivery(shape.uid, shape.event, body, delivery_id)


# --- processes and their memory ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Memory:
    """A process's memory (/proc/<pid>/status), in bytes, and its CPU time so far."""

    rss: int
    peak: int  # VmHWM: the highest RSS so far
    anon: int  # RssAnon: heap, arrays, stacks (the rest of RSS is mapped files)
    cpu_s: float  # user + system

    @classmethod
    def of(cls, pid: int) -> Memory:
        fields = memory(pid)
        return cls(fields["VmRSS"], fields["VmHWM"], fields["RssAnon"], cpu_seconds(pid))


def clean_env(**overrides: str) -> dict[str, str]:
    """This environment without any processor setting, plus `overrides`: the defaults."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("PROCESSOR_", "KAFKA_", "WEBHOOK_"))
    }
    return {**env, **overrides}


@contextlib.contextmanager
def running(
    command: list[str], env: dict[str, str], log: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """`command` with stdout and stderr into `log`; stopped (SIGTERM, then SIGKILL) after."""
    with log.open("wb") as output:
        process = subprocess.Popen(
            command, env=env, cwd=REPO, stdout=output, stderr=subprocess.STDOUT
        )
        try:
            yield process
        finally:
            stop(process)


def stop(process: subprocess.Popen[bytes]) -> int:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


def require_alive(process: subprocess.Popen[bytes], log: Path) -> None:
    if process.poll() is not None:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-20:])
        raise RuntimeError(
            f"{process.args!r} exited with {process.returncode}; its log ends:\n{tail}"
        )


def log_counts(log: Path) -> str:
    """Lines of a process's JSON log by level, e.g. `info 5,021, warning 100,114`."""
    levels: dict[str, int] = {}
    with log.open("rb") as lines:
        for line in lines:
            start = line.find(b'"level":"')
            level = line[start + 9 : line.find(b'"', start + 9)].decode() if start >= 0 else "?"
            levels[level] = levels.get(level, 0) + 1
    return ", ".join(f"{level} {count:,}" for level, count in sorted(levels.items()))


async def scrape(session: aiohttp.ClientSession, url: str) -> dict[tuple[str, str], float]:
    """A /metrics page as {(sample name, label values joined): value}."""
    async with session.get(url) as response:
        text = await response.text()
    return {
        (sample.name, ",".join(sample.labels.values())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def wait_for_200(
    session: aiohttp.ClientSession, url: str, process: subprocess.Popen[bytes], log: Path
) -> None:
    async with asyncio.timeout(120):
        while True:
            require_alive(process, log)
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(url) as response:
                    if response.status == 200:
                        return
            await asyncio.sleep(0.2)


# --- samples, tables, the verdict --------------------------------------------------------

MIB: Final = 1 << 20


@dataclass(frozen=True, slots=True)
class Sample:
    done: int  # records committed, or requests answered
    seconds: float  # since the load started
    memory: Memory
    window_ids: int | None = None  # the worker's remembered ids (dedup on)
    window_bytes: int | None = None  # their memory, as the window estimates it


@dataclass(slots=True)
class Soak:
    name: str
    what: str  # the process and its stream, in a line
    unit: str  # "records" or "requests"
    judged: bool  # whether the bar applies
    start: Sample | None = None  # when the load started
    samples: list[Sample] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @staticmethod
    def marks(total: int) -> list[int]:
        """Where to sample: after BASELINE, every tenth of the run (at least BASELINE
        apart) and at the end."""
        step = max(BASELINE, total // 10)
        return list(dict.fromkeys([BASELINE, *range(step, total, step), total]))

    @property
    def ratio(self) -> float:
        return self.samples[-1].memory.rss / self.samples[0].memory.rss

    @property
    def passed(self) -> bool:
        return self.ratio <= BAR


async def sample_until(
    soak: Soak,
    total: int,
    *,
    progress: Callable[[], Awaitable[int]],
    sample: Callable[[int, float], Awaitable[Sample]],
    check: Callable[[], None],
) -> None:
    """Poll `progress` and take a `sample` at each of the soak's marks, up to `total`;
    `check` raises if a process of the soak died."""
    started = time.perf_counter()
    soak.start = await sample(0, 0.0)
    done = 0
    async with asyncio.timeout(total / MIN_RATE + 120):
        for mark in soak.marks(total):
            while done < mark:
                check()
                await asyncio.sleep(POLL_S)
                done = await progress()
            soak.samples.append(await sample(done, time.perf_counter() - started))
            rss = soak.samples[-1].memory.rss / MIB
            print(f"  {soak.name}: {done:,} {soak.unit}, RSS {rss:.1f} MiB", flush=True)


def print_soak(soak: Soak) -> None:
    first, last = soak.samples[0], soak.samples[-1]
    window = first.window_ids is not None
    header = (
        f"{soak.unit:>12}{'s':>7}{soak.unit[:3] + '/s':>9}{'CPU %':>7}{'RSS MiB':>9}{'x first':>9}"
        f"{'peak MiB':>10}{'anon MiB':>10}"
    )
    if window:
        header += f"{'window ids':>12}{'window MiB':>12}{'RSS-window':>12}{'x first':>9}"
    print(f"\n{soak.name}: {soak.what}\n{header}\n{'-' * len(header)}")
    before = soak.start or Sample(0, 0.0, Memory(0, 0, 0, 0.0))
    for s in soak.samples:
        seconds = s.seconds - before.seconds
        rate = (s.done - before.done) / seconds
        cpu = (s.memory.cpu_s - before.memory.cpu_s) / seconds * 100
        line = (
            f"{s.done:>12,}{s.seconds:>7.0f}{rate:>9,.0f}{cpu:>7.0f}{s.memory.rss / MIB:>9.1f}"
            f"{s.memory.rss / first.memory.rss:>9.3f}{s.memory.peak / MIB:>10.1f}"
            f"{s.memory.anon / MIB:>10.1f}"
        )
        if window:
            rest = s.memory.rss - (s.window_bytes or 0)
            rest_first = first.memory.rss - (first.window_bytes or 0)
            line += (
                f"{s.window_ids or 0:>12,}{(s.window_bytes or 0) / MIB:>12.1f}"
                f"{rest / MIB:>12.1f}{rest / rest_first:>9.3f}"
            )
        print(line)
        before = s
    if soak.judged:
        highest = max(s.memory.rss for s in soak.samples) / first.memory.rss
        print(
            f"{'PASS' if soak.passed else 'FAIL'}: RSS after {last.done:,} {soak.unit} is "
            f"{soak.ratio:.3f}x its RSS after {first.done:,} (bar: <= {BAR:.2f}x); "
            f"highest sample {highest:.3f}x"
            + ("; the fall is memory given back, not growth" if soak.ratio < 2 - BAR else "")
        )
    if window and (ids := (last.window_ids or 0) - (first.window_ids or 0)) > 0:
        grown = last.memory.rss - first.memory.rss
        estimated = (last.window_bytes or 0) - (first.window_bytes or 0)
        # RSS steps with the window's merges: a fit over every sample is steadier.
        fitted = statistics.linear_regression(
            [s.window_ids or 0 for s in soak.samples], [s.memory.rss for s in soak.samples]
        ).slope
        print(
            f"memory per remembered id, from {first.window_ids:,} to {last.window_ids:,} ids: "
            f"RSS {grown / ids:.1f} B/id ({grown / ids * 1e6 / MIB:.1f} MiB per million ids), "
            f"{fitted:.1f} B/id fitted over the samples; RssAnon "
            f"{(last.memory.anon - first.memory.anon) / ids:.1f} B/id; the window's own "
            f"estimate {estimated / ids:.1f} B/id"
        )
    for note in soak.notes:
        print(note)


# --- worker soaks ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WorkerStream:
    dedup: bool
    bounded: bool  # the same --bounded-ids deliveries over and over; else all distinct
    judged: bool


WORKER_STREAMS: Final = {
    "worker-nodedup": WorkerStream(dedup=False, bounded=False, judged=True),
    "worker-dedup-bounded": WorkerStream(dedup=True, bounded=True, judged=True),
    "worker-dedup-distinct": WorkerStream(dedup=True, bounded=False, judged=False),
}
SOAKS: Final = (*WORKER_STREAMS, "ingress")


def worker_env(bootstrap: str, name: str, *, dedup: bool, metrics_port: int) -> dict[str, str]:
    """The default config with names of this soak's own, as a deployment would set them."""
    prefix = f"soak.{name}.{uuid.uuid4().hex[:8]}"
    return clean_env(
        KAFKA_BOOTSTRAP_SERVERS=bootstrap,
        PROCESSOR_TOPICS__RAW=f"{prefix}.raw",
        PROCESSOR_TOPICS__UNROUTED=f"{prefix}.unrouted",
        PROCESSOR_TOPICS__DLQ=f"{prefix}.dlq",
        PROCESSOR_TOPICS__DEDUP=f"{prefix}.dedup",
        PROCESSOR_ROUTING__ROUTES=f'{{integration: "{prefix}.status.{{status}}"}}',
        PROCESSOR_WORKER__GROUP_ID=prefix,
        PROCESSOR_WORKER__METRICS_PORT=str(metrics_port),
        PROCESSOR_DEDUP__ENABLED=str(dedup).lower(),
        PROCESSOR_LOGGING__FORMAT="json",
    )


def with_retention(config: Config) -> Config:
    topics = msgspec.structs.replace(config.topics, configs=RETENTION)
    return msgspec.structs.replace(config, topics=topics)


@dataclass(slots=True)
class Loader:
    """Writes `total` records to the raw topic, at most MAX_AHEAD past `committed`."""

    config: Config
    total: int
    ids: int | None  # deliveries 0 to ids - 1 over and over; None: every one distinct
    committed: int = 0

    def chunk(self, start: int, count: int) -> list[RawRecord]:
        """Records `start` to `start + count` as the ingress writes them."""
        topic, ids = self.config.topics.raw, self.ids
        records = []
        for n in range(start, start + count):
            uid, event, body, delivery_id = delivery(n if ids is None else n % ids)
            headers = [(DELIVERY_ID, delivery_id), (EVENT, event), *RAW_HEADERS]
            records.append(RawRecord(topic, uid, body, headers))
        return records

    async def run(self) -> None:
        producer = AIOKafkaProducer(**worker_producer_options(self.config))
        await producer.start()
        try:
            sent = 0
            acks: list[asyncio.Future[object]] = []
            while sent < self.total:
                if sent - self.committed >= MAX_AHEAD:
                    await asyncio.sleep(POLL_S / 5)
                    continue
                count = min(LOAD_CHUNK, self.total - sent)
                queued = await produce_batch(producer, self.chunk(sent, count))
                await asyncio.gather(*acks)  # the chunk before: one in flight, one forming
                acks, sent = queued, sent + count
            await asyncio.gather(*acks)
        finally:
            await producer.stop()


class Admin:
    """An admin client for the soaks: a group's committed offsets, topics deleted."""

    def __init__(self, config: Config) -> None:
        self._config = config
        self._admin = AIOKafkaAdminClient(**client_options(config.kafka))

    async def __aenter__(self) -> Admin:
        await self._admin.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        with contextlib.suppress(Exception):  # a temporary broker goes with its topics
            await self._admin.delete_topics(all_topics(self._config))
        await self._admin.close()

    async def committed(self, group: str) -> Callable[[], Awaitable[int]]:
        """A reader of the group's committed offsets on the raw topic, summed."""
        # A fresh cluster has no __consumer_offsets yet: the coordinator comes with it.
        async with asyncio.timeout(60):
            while True:
                try:
                    coordinator = await self._admin.find_coordinator(group)
                    break
                except GroupCoordinatorNotAvailableError:
                    await asyncio.sleep(0.2)
        topics = self._config.topics
        partitions = [TopicPartition(topics.raw, p) for p in range(topics.partitions)]

        async def read() -> int:
            offsets = await self._admin.list_consumer_group_offsets(
                group, group_coordinator_id=coordinator, partitions=partitions
            )
            return sum(max(0, offsets[tp].offset) for tp in partitions if tp in offsets)

        return read

    async def records_in(self, topic: str) -> int:
        """The end offsets of `topic`'s partitions, summed."""
        partitions = [TopicPartition(topic, p) for p in range(self._config.topics.partitions)]
        consumer = AIOKafkaConsumer(**client_options(self._config.kafka))
        await consumer.start()
        try:
            return sum((await consumer.end_offsets(partitions)).values())
        finally:
            await consumer.stop()


# `--tracemalloc`: the worker under tracemalloc, dumping a snapshot on each SIGUSR2.
TRACED_WORKER: Final = """
import os, signal, sys, tracemalloc
from processor.cli import main

folder, taken = sys.argv[1], 0

def dump(signum, frame):
    global taken
    taken += 1
    path = os.path.join(folder, f"{taken}.snapshot")
    tracemalloc.take_snapshot().dump(path + ".part")
    os.replace(path + ".part", path)

signal.signal(signal.SIGUSR2, dump)
sys.exit(main(sys.argv[2:]))
"""
TRACE_FRAMES: Final = 8


async def snapshot(pid: int, path: Path) -> tracemalloc.Snapshot:
    """Have the traced worker dump its next snapshot, to `path`, and load it."""
    os.kill(pid, signal.SIGUSR2)
    async with asyncio.timeout(300):
        while not path.exists():  # noqa: ASYNC110, ASYNC240 - the worker writes it
            await asyncio.sleep(0.1)
    return tracemalloc.Snapshot.load(str(path))


def traced_growth(first: tracemalloc.Snapshot, last: tracemalloc.Snapshot) -> list[str]:
    """What grew most between two snapshots, by line, and where the top three came from."""
    traced = [sum(trace.size for trace in s.traces) / MIB for s in (first, last)]
    lines = [
        f"tracemalloc: {traced[1]:.1f} MiB traced at the last sample, {traced[0]:.1f} at the "
        "first; what grew most, by line:"
    ]
    lines += [
        f"  {stat.size_diff / MIB:+9.2f} MiB {stat.count_diff:+11,} blocks  {stat.traceback[0]}"
        for stat in last.compare_to(first, "lineno")[:15]
    ]
    for stat in last.compare_to(first, "traceback")[:3]:
        lines.append(f"  {stat.size_diff / MIB:+.2f} MiB from:")
        lines += [f"      {frame.strip()}" for frame in stat.traceback.format()[::2]]
    return lines


async def worker_soak(name: str, args: argparse.Namespace, bootstrap: str) -> Soak:
    stream = WORKER_STREAMS[name]
    port = free_port()
    env = worker_env(bootstrap, name, dedup=stream.dedup, metrics_port=port)
    config = load_config(CONFIG, env=env)
    env.update(args.worker_env)
    command = [str(PROCESSOR), "--config", str(CONFIG), "worker"]
    snapshots: list[tracemalloc.Snapshot] = []
    traces = args.log_dir / f"{name}.tracemalloc"
    if args.tracemalloc:
        traces.mkdir(exist_ok=True)
        command = [sys.executable, "-X", f"tracemalloc={TRACE_FRAMES}", "-c", TRACED_WORKER,
                   str(traces), *command[1:]]  # fmt: skip
    total = args.records
    loader = Loader(config=config, total=total, ids=args.bounded_ids if stream.bounded else None)
    soak = Soak(
        name=name,
        what=(
            "`processor worker`, "
            + (f"dedup on, {config.dedup.window_s:,} s window" if stream.dedup else "dedup off")
            + f", {total:,} records, "
            + (
                f"the same {loader.ids:,} deliveries over and over (retries)"
                if loader.ids
                else "every delivery id distinct"
            )
        ),
        unit="records",
        # tracemalloc's own tables and snapshots grow RSS: then the traced lines tell
        judged=stream.judged and not args.tracemalloc,
    )
    log = args.log_dir / f"{name}.log"
    metrics_url = f"http://127.0.0.1:{port}/metrics"

    async def sample(done: int, seconds: float) -> Sample:
        memory = Memory.of(worker.pid)  # before the scrape, which allocates a little
        metrics = await scrape(session, metrics_url)
        if args.tracemalloc and done:  # the first and the latest
            taken = await snapshot(worker.pid, traces / f"{len(soak.samples) + 1}.snapshot")
            snapshots[1 if snapshots else 0 :] = [taken]
        ids = metrics.get(("processor_worker_dedup_ids", "")) if stream.dedup else None
        nbytes = metrics.get(("processor_worker_dedup_bytes", "")) if stream.dedup else None
        return Sample(done, seconds, memory, None if ids is None else int(ids), int(nbytes or 0))

    def check() -> None:
        require_alive(worker, log)
        if feeding.done():
            feeding.result()  # raises what the loader raised

    await create_topics(with_retention(config))
    async with Admin(config) as admin, aiohttp.ClientSession() as session:
        committed = await admin.committed(config.worker.group_id)

        async def progress() -> int:
            loader.committed = await committed()
            return loader.committed

        with running(command, env, log) as worker:
            await wait_for_200(session, f"http://127.0.0.1:{port}/healthz", worker, log)
            feeding = asyncio.create_task(loader.run())
            try:
                await sample_until(soak, total, progress=progress, sample=sample, check=check)
                await feeding
            finally:
                feeding.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await feeding
            metrics = await scrape(session, metrics_url)
            code = stop(worker)
    counted = ", ".join(
        f"{outcome} {int(metrics.get(('processor_worker_records_total', outcome), 0)):,}"
        for outcome in ("routed", "unrouted", "dlq", "duplicate")
    )
    soak.notes.append(
        f"the worker counted {counted}; exit code {code} after SIGTERM; "
        f"log {log}: {log_counts(log)}"
    )
    if args.worker_env:
        soak.notes.append(f"the worker's environment also had {args.worker_env}")
    if len(snapshots) == 2:
        soak.notes.append(
            "RSS under tracemalloc includes its own tables and snapshot copies: not judged"
        )
        soak.notes += traced_growth(*snapshots)
    return soak


# --- ingress soak ------------------------------------------------------------------------

# Each request takes the next signed delivery of the pool; after `limit` answers the
# thread stops (wrk itself runs until -d or SIGINT, then prints the RESULT line).
WRK_SCRIPT: Final = (
    WRK_POOL
    + """
local answered, limit = 0, 0
function init(args)
  limit = tonumber(args[2])
  load_pool(args[1])
end
function response(status, headers, body)
  answered = answered + 1
  if answered == limit then wrk.thread:stop() end
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("RESULT %d %d %d\\n", summary.requests,
    e.connect + e.read + e.write + e.status + e.timeout, latency:percentile(99)))
end
"""
)


def signed(n: int, secret: str) -> tuple[str, bytes]:
    """Delivery `n` whole (the ingress would refuse a truncated one), and its signature."""
    body = delivery(n, whole=True).body
    return sign_hmac_sha256(body, secret), body


async def load_with_python(url: str, requests: int, concurrency: int, secret: str) -> None:
    """The load without wrk (`--load-client URL`): each delivery distinct, signed here."""
    answered = failures = 0
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def client(first: int) -> None:
            nonlocal answered, failures
            for n in range(first, requests, concurrency):
                signature, body = signed(n, secret)
                headers = {"Content-Type": "application/json", "X-Webhook-Signature": signature}
                async with session.post(url, data=body, headers=headers) as response:
                    await response.read()
                    failures += response.status != 202
                answered += 1

        await asyncio.gather(*(client(first) for first in range(concurrency)))
    print(f"RESULT {answered} {failures} -1", flush=True)


def load_command(args: argparse.Namespace, url: str, secret: str) -> list[str]:
    total = args.requests
    if args.client == "python":
        return [sys.executable, __file__, "--load-client", url, "--requests", str(total),
                "--concurrency", str(args.concurrency), "--secret", secret]  # fmt: skip
    pool = args.log_dir / "ingress-pool.tsv"
    with pool.open("w") as lines:
        for n in range(min(POOL, total)):
            signature, body = signed(n, secret)
            lines.write(f"{signature}\t{body.decode()}\n")
    script = args.log_dir / "ingress-soak.lua"
    script.write_text(WRK_SCRIPT)
    return ["wrk", "-t1", f"-c{args.concurrency}", "-d3600s", "--timeout", "30s",
            "-s", str(script), url, "--", str(pool), str(total)]  # fmt: skip


async def ingress_soak(args: argparse.Namespace, bootstrap: str) -> Soak:
    port, management = free_port(), free_port()
    env = clean_env(
        KAFKA_BOOTSTRAP_SERVERS=bootstrap,
        WEBHOOK_SECRET=secrets.token_hex(32),
        PROCESSOR_INGRESS__PORT=str(port),
        PROCESSOR_INGRESS__MANAGEMENT_PORT=str(management),
        PROCESSOR_TOPICS__RAW=f"soak.ingress.{uuid.uuid4().hex[:8]}.raw",
        PROCESSOR_LOGGING__FORMAT="json",
    )
    config = load_config(CONFIG, env=env)
    total = args.requests
    soak = Soak(
        name="ingress",
        what=f"`processor ingress`, {total:,} signed requests over {args.concurrency} "
        f"connections from {args.client}",
        unit="requests",
        judged=True,
    )
    log, load_log = args.log_dir / "ingress.log", args.log_dir / "ingress-load.log"
    base, probes = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{management}"
    load = load_command(args, f"{base}{config.ingress.path}", config.ingress.secrets[0])
    by_code: dict[str, int] = {}

    async def progress() -> int:
        metrics = await scrape(session, f"{probes}/metrics")
        by_code.clear()
        for (name, code), value in metrics.items():
            if name == "processor_ingress_requests_total":
                by_code[code] = int(value)
        return sum(by_code.values())

    async def sample(done: int, seconds: float) -> Sample:
        return Sample(done, seconds, Memory.of(ingress.pid))

    def check() -> None:
        require_alive(ingress, log)
        if generator.poll():  # exited with an error
            require_alive(generator, load_log)

    await create_topics(with_retention(config))
    async with Admin(config) as admin, aiohttp.ClientSession() as session:
        command = [str(PROCESSOR), "--config", str(CONFIG), "ingress"]
        with running(command, env, log) as ingress:
            await wait_for_200(session, f"{probes}/readyz", ingress, log)
            with running(load, clean_env(), load_log) as generator:
                await sample_until(soak, total, progress=progress, sample=sample, check=check)
                generator.send_signal(signal.SIGINT)  # wrk: print the summary and exit
                generator.wait(STOP_TIMEOUT_S)
            code = stop(ingress)
        written = await admin.records_in(config.topics.raw)
    summary = [ln.split()[1:] for ln in load_log.read_text().splitlines() if ln[:6] == "RESULT"]
    answers = ", ".join(f"{code} {count:,}" for code, count in sorted(by_code.items()))
    soak.notes.append(
        f"the ingress answered {answers}; {written:,} records in the raw topic"
        + (
            f"; the load generator counted {int(summary[0][0]):,} requests, "
            f"{int(summary[0][1]):,} errors"
            if summary
            else "; no summary from the load generator"
        )
        + f"; exit code {code} after SIGTERM; log {log}: {log_counts(log)}"
    )
    return soak


# --- main --------------------------------------------------------------------------------


async def soak_all(args: argparse.Namespace, bootstrap: str) -> list[Soak]:
    print(
        f"{os.cpu_count()} CPUs; Kafka on {bootstrap}; logs in {args.log_dir}; "
        f"{args.records:,} records a worker soak, {args.requests:,} ingress requests",
        flush=True,
    )
    soaks = []
    for name in args.soaks:
        if name == "ingress":
            soak = await ingress_soak(args, bootstrap)
        else:
            soak = await worker_soak(name, args, bootstrap)
        print_soak(soak)
        print(flush=True)
        soaks.append(soak)
    return soaks


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--records", type=int, default=10_000_000, help="records each worker soak routes"
    )
    parser.add_argument(
        "--requests", type=int, default=1_000_000, help="requests the ingress soak sends"
    )
    parser.add_argument(
        "--quick", action="store_true", help="a smoke run: 1,000,000 records, 200,000 requests"
    )
    parser.add_argument(
        "--soaks", default=",".join(SOAKS), help=f"comma-separated subset of: {', '.join(SOAKS)}"
    )
    parser.add_argument(
        "--bounded-ids",
        type=int,
        default=50_000,
        help="deliveries worker-dedup-bounded sends over and over",
    )
    parser.add_argument("--concurrency", type=int, default=64, help="ingress connections")
    parser.add_argument(
        "--client",
        choices=["auto", "wrk", "python"],
        default="auto",
        help="the ingress's load generator; auto: wrk when installed",
    )
    parser.add_argument("--bootstrap", help="HOST:PORT of a Kafka to use instead of starting one")
    parser.add_argument("--log-dir", type=Path, help="for the logs (default: a new temporary one)")
    parser.add_argument(
        "--worker-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="also set this in the worker's environment (e.g. MALLOC_MMAP_THRESHOLD_=1048576)",
    )
    parser.add_argument(
        "--tracemalloc",
        action="store_true",
        help="run the worker under tracemalloc (slower: for a short run) and print what "
        "grew from the first sample to the last",
    )
    parser.add_argument("--load-client", help=argparse.SUPPRESS)  # the python load: its URL
    parser.add_argument("--secret", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.records, args.requests = 1_000_000, 200_000
    if min(args.records, args.requests) < BASELINE:
        parser.error(f"--records and --requests start at {BASELINE:,}, the first sample")
    if not 0 < args.bounded_ids < BASELINE:
        parser.error(f"--bounded-ids must be under {BASELINE:,}: all of them sent by then")
    args.soaks = list(dict.fromkeys(s.strip() for s in args.soaks.split(",") if s.strip()))
    if not args.soaks or any(s not in SOAKS for s in args.soaks):
        parser.error(f"--soaks takes names from: {', '.join(SOAKS)}")
    if any("=" not in setting for setting in args.worker_env):
        parser.error("--worker-env takes NAME=VALUE")
    args.worker_env = dict(setting.split("=", 1) for setting in args.worker_env)
    if args.client == "auto":
        args.client = "wrk" if shutil.which("wrk") else "python"
    return args


def main() -> None:
    args = parse_args()
    if args.load_client:
        asyncio.run(
            load_with_python(args.load_client, args.requests, args.concurrency, args.secret)
        )
        return
    args.log_dir = args.log_dir or Path(tempfile.mkdtemp(prefix="bench_soak-"))
    args.log_dir.mkdir(parents=True, exist_ok=True)
    with (args.log_dir / "bench.log").open("w") as log:
        configure_logging(LoggingConfig(level="WARNING", format="json"), stream=log)
        if args.bootstrap:
            soaks = asyncio.run(soak_all(args, args.bootstrap))
        else:
            with LocalBroker.temporary() as broker:
                soaks = asyncio.run(soak_all(args, broker.bootstrap))
    print("summary:")
    for soak in soaks:
        verdict = ("PASS" if soak.passed else "FAIL") if soak.judged else "not judged"
        print(f"  {soak.name:<24}RSS {soak.ratio:.3f}x the first sample's  {verdict}")


if __name__ == "__main__":
    main()
