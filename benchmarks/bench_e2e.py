"""End-to-end latency: signed deliveries sent at a fixed rate, from each one's scheduled
send time to its arrival in its derived topic, through the real pipeline.

    .venv/bin/python benchmarks/bench_e2e.py              # 500, 2,000, 5,000/s, 60 s each
    .venv/bin/python benchmarks/bench_e2e.py --quick      # 10 s each: a smoke run
    .venv/bin/python benchmarks/bench_e2e.py --rates 1000,3000 --duration 30 \\
        [--bootstrap 127.0.0.1:9092] [--log-level INFO] [--env PROCESSOR_KEY=VALUE ...]

The pipeline is the one production runs, each part a process of its own: a local broker
(`LocalBroker.temporary()`, unless --bootstrap), `processor topics create`, `processor
ingress` and two `processor worker`s, all with config.yaml's defaults. The environment
sets only what a run needs: the bootstrap address, a signing secret, free ports (the
workers' metrics ports on, which serve `/metrics` and change nothing else), and JSON
logs (`--log-level` changes their level). `--env` adds any other setting, to try one;
the header prints what differs from config.yaml. Children's output goes to files in
--log-dir. With --bootstrap, topics and group get names of their own (names only),
deleted at the end.

The load is open loop, in a process of its own: request i is fired at t0 + i/rate
whether or not earlier ones have answered (a lean keep-alive HTTP/1.1 client opening
up to --connections; `--client aiohttp` for aiohttp's), and carries its scheduled time
(`data.sentAt`, Unix ns) and a unique id. Latency is measured from that scheduled time,
so a stall delays every request scheduled during it instead of pausing the load (no
coordinated omission); if the generator itself falls behind schedule, its lag is
printed, and it counts in the latency.

A reader in this process consumes every output topic (the derived topics, unrouted and
the DLQ) with read_committed from before the load, and takes `time.time_ns()` when a
delivery is handed to it: latency = arrival - sentAt (one host, one clock). Every
delivery answered 202 must arrive exactly once: missing ones and duplicates are counted.
The deliveries look like the provider's (about 480 B, 1,000 users): 90 % integration
events of the documented statuses as the provider spells them, 5 % unknown statuses
(to `integration.status.other`), 5 % categories without a route (`webhooks.unrouted`).

A warm-up (not counted) runs first: the broker is slow on the first writes to new
partitions and its JIT is cold. For each rate it prints sent, answered 202, missing,
duplicates, p50/p99/p99.9/max; the CPU of ingress, workers, broker and load generator
over the rate (from /proc; % of one core and us per delivery); and where the time goes:
the generator's lag, scheduled send to the 202, the ingress's acks=all publish and the
workers' fetch-to-commit batch time (their /metrics histograms, quantiles interpolated
within buckets), and per delivery, scheduled send to the ingress's `received-at`,
`received-at` to the worker's produce (the derived record's timestamp), and that to the
reader (millisecond resolution). Last, the highest rate whose p99 stayed under 100 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import random
import secrets
import statistics
import sys
import tempfile
import time
import urllib.parse
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Final

import aiohttp
import msgspec
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment
from aiokafka.errors import KafkaError
from bench_route import DOCUMENTED_SPELLINGS, UNKNOWN_STATUSES, integration_event
from harness import cpu_seconds
from prometheus_client.parser import text_string_to_metric_families

from processor.config import Config, load_config
from processor.devtools.broker import LocalBroker
from processor.devtools.dev import stop_processes
from processor.devtools.ports import free_port
from processor.headers import RECEIVED_AT
from processor.ingress.signing import sign_hmac_sha256
from processor.kafka.clients import client_options, partitions_of
from processor.kafka.topics import all_topics, output_topics

ROOT: Final = Path(__file__).resolve().parent.parent
DEFAULT_RATES: Final = (500, 2000, 5000)
WORKERS: Final = 2
USERS: Final = 1000
# The bar the summary line reports against, and the target at 2,000/s.
P99_BAR_MS: Final = 100.0
# Warm-up: the broker's first writes to a partition are slow, its JIT starts cold.
WARMUP_RATE: Final = 1000
# The generator's first request is scheduled this long after it starts timing, so
# that its first tick does not start behind.
START_DELAY_S: Final = 0.5
# A request not answered by then counts as an error (ingress.publish_timeout_s is 10 s).
REQUEST_TIMEOUT_S: Final = 30.0
# After the last request, how long deliveries may take to arrive before they are missing.
DRAIN_TIMEOUT_S: Final = 60.0
# Quiet time between two rates, so one's tail does not fall into the next.
SETTLE_S: Final = 2.0
# Starting processes, joining the group: a slower start is a failure.
READY_TIMEOUT_S: Final = 90.0
# The generator lags behind schedule: its p99 above this is flagged in the report.
LAG_WARN_MS: Final = 5.0

UNROUTED_EVENTS: Final = ("wallet.created", "transaction.imported", "account.updated")


# --- the deliveries -----------------------------------------------------------------------


class Deliveries:
    """Delivery `index` of a phase as the provider would send it, stamped with `sent_at`.

    Ids are `whd_e2e<run>-<phase>-<index>`, unique per run, so dedup never drops one
    and the reader knows which phase and request a record is.
    """

    def __init__(self, *, run: str, phase: str, seed: int) -> None:
        self._rng = random.Random(seed)  # noqa: S311 - reproducible test data
        users = random.Random(0)  # noqa: S311 - the same users in every phase
        self._users = [f"user_{users.getrandbits(40):010x}" for _ in range(USERS)]
        self._prefix = f"whd_e2e{run}-{phase}-"
        self._encode = msgspec.json.encode

    def body(self, index: int, sent_at: int) -> bytes:
        rng = self._rng
        draw = rng.random()
        if draw < 0.05:
            status: str = "active"
        elif draw < 0.10:
            status = rng.choice(UNKNOWN_STATUSES)
        else:
            status = rng.choice(DOCUMENTED_SPELLINGS)
        document = integration_event(rng, rng.choice(self._users), status)
        document["id"] = f"{self._prefix}{index}"
        if draw < 0.05:
            document["event"] = rng.choice(UNROUTED_EVENTS)
        document["data"]["sentAt"] = sent_at
        return self._encode(document)


def parse_id(delivery_id: str) -> tuple[str, str, int] | None:
    """(run, phase, index) of an id `Deliveries` made; None for anything else."""
    head, _, rest = delivery_id.partition("-")
    phase, _, index = rest.partition("-")
    if not head.startswith("whd_e2e") or not index.isdigit():
        return None
    return head.removeprefix("whd_e2e"), phase, int(index)


# --- the load generator (a child process: `--generate`) -------------------------------------


class Answer(Exception):
    """A request without an HTTP answer: the connection broke, or the answer was unreadable."""


class _Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection, one request at a time.

    Reads only what the ingress sends back: a status line, headers with a
    Content-Length, and that many bytes of body.
    """

    def __init__(self, pool: RawClient) -> None:
        self._pool = pool
        self._buffer = bytearray()
        self._waiter: asyncio.Future[int] | None = None
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def send(self, request: bytes) -> asyncio.Future[int]:
        assert self.transport is not None
        self._waiter = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        return self._waiter

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        status_line, *lines = bytes(buffer[:end]).lower().split(b"\r\n")
        fields = dict(line.partition(b":")[::2] for line in lines)
        length = fields.get(b"content-length", b"").strip()
        if not status_line.startswith(b"http/1.1 ") or not length.isdigit():
            self._fail(Answer(f"unreadable answer: {status_line[:80]!r}"))
            return
        size = int(length)
        if len(buffer) < end + 4 + size:
            return
        del buffer[: end + 4 + size]
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(int(status_line[9:12]))
        if fields.get(b"connection", b"").strip() == b"close":
            self._fail(None)
        else:
            self._pool.release(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(Answer(f"connection lost: {exc!r}"))

    def _fail(self, error: Answer | None) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done() and error is not None:
            waiter.set_exception(error)
        self._pool.discard(self)
        if self.transport is not None:
            self.transport.close()


class RawClient:
    """A pool of up to `limit` keep-alive connections: requests wait for a free one.

    aiohttp's client costs about 300 us of CPU per request on the 2-core machine,
    which at 5,000/s is more than a core taken from the pipeline under test; this
    costs a tenth of that.
    """

    def __init__(self, url: str, *, limit: int) -> None:
        parsed = urllib.parse.urlsplit(url)
        self._host, self._port = parsed.hostname or "127.0.0.1", parsed.port or 80
        self._head = (
            f"POST {parsed.path} HTTP/1.1\r\nHost: {parsed.netloc}\r\n"
            "Content-Type: application/json\r\n"
        ).encode()
        self._limit = limit
        self._idle: list[_Connection] = []
        self._open: set[_Connection] = set()
        self._queue: collections.deque[asyncio.Future[_Connection]] = collections.deque()
        self.opened = 0

    async def post(self, body: bytes, signature: str) -> int:
        """The status of a signed POST of `body`; Answer or TimeoutError without one."""
        request = b"%sX-Webhook-Signature: %s\r\nContent-Length: %d\r\n\r\n%s" % (
            self._head, signature.encode(), len(body), body,
        )  # fmt: skip
        async with asyncio.timeout(REQUEST_TIMEOUT_S):
            connection = await self._acquire()
            return await connection.send(request)

    async def _acquire(self) -> _Connection:
        if self._idle:
            return self._idle.pop()
        if len(self._open) < self._limit:
            connection = _Connection(self)
            self._open.add(connection)
            self.opened += 1
            try:
                await asyncio.get_running_loop().create_connection(
                    lambda: connection, self._host, self._port
                )
            except OSError as exc:
                self._open.discard(connection)
                raise Answer(f"cannot connect: {exc!r}") from None
            return connection
        waiter: asyncio.Future[_Connection] = asyncio.get_running_loop().create_future()
        self._queue.append(waiter)
        return await waiter

    def release(self, connection: _Connection) -> None:
        while self._queue:
            waiter = self._queue.popleft()
            if not waiter.done():
                waiter.set_result(connection)
                return
        self._idle.append(connection)

    def discard(self, connection: _Connection) -> None:
        self._open.discard(connection)
        with contextlib.suppress(ValueError):
            self._idle.remove(connection)

    def close(self) -> None:
        for connection in list(self._open):
            if connection.transport is not None:
                connection.transport.close()


class AiohttpClient:
    """aiohttp's client with a pool of `limit` connections: `--client aiohttp`."""

    def __init__(self, url: str, *, limit: int) -> None:
        self._url = url
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=limit),
            timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S),
        )

    async def post(self, body: bytes, signature: str) -> int:
        headers = {"Content-Type": "application/json", "X-Webhook-Signature": signature}
        try:
            async with self._session.post(self._url, data=body, headers=headers) as response:
                await response.read()
                return response.status
        except aiohttp.ClientError as exc:
            raise Answer(repr(exc)) from None

    async def aclose(self) -> None:
        await self._session.close()


async def generate(args: argparse.Namespace) -> dict[str, Any]:
    """Fire `rate * duration` requests on schedule, whatever the answers; return the tally.

    Each tick fires every request that is due and sleeps until the next one is; a tick
    that starts late fires the overdue ones at once (their lag is recorded).
    """
    secret = os.environ["WEBHOOK_SECRET"]
    count = round(args.rate * args.duration)
    interval_ns = 1e9 / args.rate
    deliveries = Deliveries(run=args.run, phase=args.phase, seed=args.seed)
    lag_ns = [0] * count
    answered_ns = [0] * count  # monotonic time of the answer, for scheduled -> 202
    statuses: Counter[int] = Counter()
    errors: Counter[str] = Counter()
    failed: list[int] = []
    in_flight = max_in_flight = 0
    client: RawClient | AiohttpClient
    if args.client == "aiohttp":
        client = AiohttpClient(args.url, limit=args.connections)
    else:
        client = RawClient(args.url, limit=args.connections)

    async def send(index: int, body: bytes) -> None:
        nonlocal in_flight
        try:
            status = await client.post(body, sign_hmac_sha256(body, secret))
        except (Answer, TimeoutError) as exc:
            errors[str(exc) if isinstance(exc, Answer) else "timeout"] += 1
            failed.append(index)
            return
        finally:
            in_flight -= 1
        answered_ns[index] = time.monotonic_ns()
        statuses[status] += 1
        if status != 202:
            failed.append(index)

    tasks: set[asyncio.Task[None]] = set()
    start_mono = time.monotonic_ns() + int(START_DELAY_S * 1e9)
    start_wall = time.time_ns() + int(START_DELAY_S * 1e9)
    cpu_started = time.process_time()
    index = 0
    try:
        while index < count:
            now = time.monotonic_ns()
            while index < count and (offset := int(index * interval_ns)) <= now - start_mono:
                lag_ns[index] = now - start_mono - offset
                task = asyncio.create_task(send(index, deliveries.body(index, start_wall + offset)))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                in_flight += 1
                index += 1
            max_in_flight = max(max_in_flight, in_flight)
            if index < count:
                due = start_mono + int(index * interval_ns)
                await asyncio.sleep(max(0, due - time.monotonic_ns()) / 1e9)
        await asyncio.gather(*tasks)
        cpu_s = time.process_time() - cpu_started
    finally:
        if isinstance(client, AiohttpClient):
            await client.aclose()
        else:
            client.close()

    to_answer = sorted(
        (answered - start_mono - int(i * interval_ns)) / 1e6
        for i, answered in enumerate(answered_ns)
        if answered
    )
    lags = sorted(lag / 1e6 for lag in lag_ns)
    return {
        "sent": count,
        "ok": statuses[202],
        "statuses": {str(code): n for code, n in sorted(statuses.items())},
        "errors": dict(errors),
        "failed": sorted(failed),
        "lag_ms": quantiles(lags),
        "answer_ms": quantiles(to_answer),
        "late_10ms": sum(1 for lag in lags if lag > 10),
        "cpu_s": cpu_s,
        "cpu_total_s": time.process_time(),  # imports and start-up included
        "max_in_flight": max_in_flight,
        "connections": client.opened if isinstance(client, RawClient) else None,
        "mean_bytes": statistics.mean(len(deliveries.body(i, start_wall)) for i in range(100)),
    }


def quantiles(ordered: Sequence[float]) -> dict[str, float]:
    """p50, p99, p99.9 and max of sorted values (nearest rank); NaN when empty."""
    if not ordered:
        return dict.fromkeys(("p50", "p99", "p99.9", "max"), float("nan"))

    def rank(q: float) -> float:
        return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]

    return {"p50": rank(0.5), "p99": rank(0.99), "p99.9": rank(0.999), "max": ordered[-1]}


# --- the pipeline -------------------------------------------------------------------------


@dataclass
class Child:
    name: str
    process: asyncio.subprocess.Process
    metrics_url: str | None = None


class Pipeline:
    """`processor topics create`, the ingress and the workers, as subprocesses."""

    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        self.env = env
        self.log_dir = log_dir
        self.children: list[Child] = []
        self.command = [
            sys.executable,
            "-m",
            "processor.cli",
            "--config",
            str(ROOT / "config.yaml"),
        ]
        self.url = f"http://127.0.0.1:{env['PROCESSOR_INGRESS__PORT']}"
        self.management = f"http://127.0.0.1:{env['PROCESSOR_INGRESS__MANAGEMENT_PORT']}"

    async def _spawn(self, name: str, argv: list[str], env: Mapping[str, str]) -> Child:
        with (self.log_dir / f"{name}.log").open("wb") as log:
            process = await asyncio.create_subprocess_exec(
                *self.command, *argv, env=dict(env), cwd=ROOT, stdin=asyncio.subprocess.DEVNULL,
                stdout=log, stderr=asyncio.subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        return Child(name, process)

    async def start(self, config: Config) -> None:
        topics = await self._spawn("topics", ["topics", "create"], self.env)
        if await topics.process.wait() != 0:
            raise SystemExit(f"`processor topics create` failed: see {self.log_dir}/topics.log")
        ingress = await self._spawn("ingress", ["ingress"], self.env)
        ingress.metrics_url = f"{self.management}/metrics"
        self.children.append(ingress)
        for n in range(1, WORKERS + 1):
            port = free_port()
            worker = await self._spawn(
                f"worker-{n}", ["worker"], {**self.env, "PROCESSOR_WORKER__METRICS_PORT": str(port)}
            )
            worker.metrics_url = f"http://127.0.0.1:{port}/metrics"
            self.children.append(worker)
        async with asyncio.timeout(READY_TIMEOUT_S):
            await self._until(self._ingress_ready)
            await self._until(lambda: _group_assigned(config))

    @property
    def workers(self) -> list[Child]:
        return self.children[1:]

    def check_alive(self) -> None:
        for child in self.children:
            if child.process.returncode is not None:
                raise SystemExit(
                    f"{child.name} exited with {child.process.returncode}: "
                    f"see {self.log_dir}/{child.name}.log"
                )

    async def _until(self, ready: Any) -> None:
        while not await ready():
            self.check_alive()
            await asyncio.sleep(0.2)

    async def _ingress_ready(self) -> bool:
        with contextlib.suppress(aiohttp.ClientError):
            async with (
                aiohttp.ClientSession() as session,
                session.get(f"{self.management}/readyz") as r,
            ):
                return r.status == 200
        return False

    async def stop(self) -> None:
        await stop_processes([(c.name, c.process) for c in self.children], say=print)


async def _group_assigned(config: Config) -> bool:
    """Whether the worker group is Stable with every raw partition assigned to a member."""
    admin = AIOKafkaAdminClient(**client_options(config.kafka))
    try:
        await admin.start()
        response = (await admin.describe_consumer_groups([config.worker.group_id]))[0]
    except KafkaError:
        return False  # no coordinator yet, the group not formed
    finally:
        await admin.close()
    _, _, state, _, _, members, *_ = response.groups[0]
    assigned = sum(
        len(ConsumerProtocolMemberAssignment.decode(member[4]).partitions())
        for member in members
        if member[4]
    )
    return (
        bool(state == "Stable" and len(members) == WORKERS) and assigned == config.topics.partitions
    )


def machine_busy_seconds() -> float:
    """CPU time every core spent on anything but idling, so far (Linux /proc/stat)."""
    ticks = [int(n) for n in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = ticks[3] + ticks[4]  # idle, iowait
    return (sum(ticks[:8]) - idle) / os.sysconf("SC_CLK_TCK")


# --- metrics ------------------------------------------------------------------------------


@dataclass
class Histogram:
    """A Prometheus histogram's cumulative buckets, summed over processes."""

    buckets: dict[float, float] = field(default_factory=dict)
    total: float = 0.0
    count: float = 0.0

    def __add__(self, other: Histogram) -> Histogram:
        keys = self.buckets.keys() | other.buckets.keys()
        return Histogram(
            {k: self.buckets.get(k, 0) + other.buckets.get(k, 0) for k in keys},
            self.total + other.total,
            self.count + other.count,
        )

    def __sub__(self, other: Histogram) -> Histogram:
        return Histogram(
            {k: v - other.buckets.get(k, 0) for k, v in self.buckets.items()},
            self.total - other.total,
            self.count - other.count,
        )

    def quantile_ms(self, q: float) -> float:
        """Prometheus' histogram_quantile: linear within the bucket that holds rank q."""
        if self.count <= 0:
            return float("nan")
        rank, lower, below = q * self.count, 0.0, 0.0
        for bound, cumulative in sorted(self.buckets.items()):
            if cumulative >= rank:
                if bound == float("inf"):
                    return lower * 1e3
                inside = cumulative - below
                return (lower + (bound - lower) * (rank - below) / inside) * 1e3
            lower, below = bound, cumulative
        return lower * 1e3


async def scrape(url: str, name: str) -> Histogram:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        text = await response.text()
    histogram = Histogram()
    for family in text_string_to_metric_families(text):
        if family.name != name:
            continue
        for sample in family.samples:
            if sample.name == f"{name}_bucket":
                histogram.buckets[float(sample.labels["le"])] = sample.value
            elif sample.name == f"{name}_sum":
                histogram.total = sample.value
            elif sample.name == f"{name}_count":
                histogram.count = sample.value
    return histogram


# --- the reader ---------------------------------------------------------------------------


class _SentData(msgspec.Struct):
    sentAt: int  # as the delivery spells it


class _Sent(msgspec.Struct):
    id: str
    data: _SentData


@dataclass(slots=True)
class Arrival:
    arrived_ns: int  # when the reader was handed the record (time.time_ns)
    sent_ns: int  # the scheduled send time carried in the delivery
    created_ms: int  # the derived record's timestamp: when the worker produced it
    received_at: bytes | None  # the ingress's `received-at` header


class Reader:
    """Every output topic from its end, read_committed; arrivals by phase and index."""

    def __init__(self, config: Config, run: str) -> None:
        self.config = config
        self.run = run
        self.consumer = AIOKafkaConsumer(
            **client_options(config.kafka),
            enable_auto_commit=False,
            isolation_level="read_committed",
        )
        self.arrivals: dict[str, dict[int, Arrival]] = {}
        self.duplicates: Counter[str] = Counter()
        self.dead_lettered: Counter[str] = Counter()
        self.foreign = 0
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.consumer.start()
        partitions = [
            tp for topic in output_topics(self.config)
            for tp in await partitions_of(self.consumer, topic)
        ]  # fmt: skip
        self.consumer.assign(partitions)
        await self.consumer.seek_to_end(*partitions)
        for tp in partitions:
            await self.consumer.position(tp)  # resolved now, before any load
        self._task = asyncio.create_task(self._read())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.consumer.stop()

    async def _read(self) -> None:
        decode = msgspec.json.Decoder(_Sent).decode
        dlq = self.config.topics.dlq
        while True:
            batch = await self.consumer.getmany(timeout_ms=100)
            now = time.time_ns()
            for tp, records in batch.items():
                for record in records:
                    try:
                        sent = decode(record.value)
                        run, phase, index = parse_id(sent.id) or ("", "", 0)
                    except (msgspec.DecodeError, TypeError):
                        run = ""
                    if run != self.run:
                        self.foreign += 1
                        continue
                    if tp.topic == dlq:
                        self.dead_lettered[phase] += 1
                        continue
                    seen = self.arrivals.setdefault(phase, {})
                    if index in seen:
                        self.duplicates[phase] += 1
                        continue
                    received_at = next((v for k, v in record.headers if k == RECEIVED_AT), None)
                    seen[index] = Arrival(now, sent.data.sentAt, record.timestamp, received_at)

    async def wait_for(self, phase: str, indices: Sequence[int], timeout_s: float) -> None:
        """Until every one of `indices` of `phase` has arrived, or `timeout_s`."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                while True:
                    seen = self.arrivals.get(phase, {})
                    if len(seen) >= len(indices) and all(i in seen for i in indices):
                        return
                    await asyncio.sleep(0.1)


# --- a run --------------------------------------------------------------------------------


@dataclass
class PhaseResult:
    rate: int
    load: dict[str, Any]  # what the generator reported
    latency_ms: dict[str, float]
    missing: int
    duplicates: int
    dead_lettered: int
    stray: int  # arrived although not answered 202 (a timeout the ingress still wrote)
    cpu_s: dict[str, float]  # per process group, over the phase
    window_s: float  # the phase from the load's start to the last arrival or the drain timeout
    stages_ms: dict[str, dict[str, float]]  # budget: p50/p99 per stage
    batches: Histogram
    publishes: Histogram


async def run_phase(
    args: argparse.Namespace,
    pipeline: Pipeline,
    reader: Reader,
    pids: dict[str, list[int]],
    *,
    phase: str,
    rate: int,
    duration: float,
) -> PhaseResult:
    """One rate: load it, wait for its deliveries, measure."""
    workers = [c.metrics_url for c in pipeline.workers if c.metrics_url]
    ingress_metrics = f"{pipeline.management}/metrics"
    publish_before = await scrape(ingress_metrics, "processor_ingress_publish_seconds")
    batch_before = await _workers_histogram(workers)
    cpu_before = {name: sum(cpu_seconds(p) for p in group) for name, group in pids.items()}
    busy_before, started = machine_busy_seconds(), time.monotonic()
    argv = [
        __file__, "--generate", "--url", f"{pipeline.url}/webhooks", "--rate", str(rate),
        "--duration", str(duration), "--phase", phase, "--run", args.run,
        "--seed", str(rate), "--connections", str(args.connections), "--client", args.client,
    ]  # fmt: skip
    with (args.log_dir / f"load-{phase}.log").open("wb") as log:
        generator = await asyncio.create_subprocess_exec(
            sys.executable, *argv, env=pipeline.env, stdout=asyncio.subprocess.PIPE, stderr=log
        )
    try:
        output, _ = await generator.communicate()
    finally:
        if generator.returncode is None:
            generator.kill()
            await generator.wait()
    if generator.returncode != 0:
        raise SystemExit(f"the load generator failed: see {args.log_dir}/load-{phase}.log")
    load = json.loads(output)
    failed = set(load["failed"])
    ok = [i for i in range(load["sent"]) if i not in failed]
    await reader.wait_for(phase, ok, DRAIN_TIMEOUT_S)
    pipeline.check_alive()
    cpu = {
        name: sum(cpu_seconds(p) for p in group) - cpu_before[name] for name, group in pids.items()
    }
    cpu["load"] = load["cpu_s"]
    # Everything else on the machine: on a shared one, the noise in these numbers.
    ours = sum(cpu.values()) - cpu["load"] + load["cpu_total_s"]
    cpu["others"] = max(0.0, machine_busy_seconds() - busy_before - ours)
    window_s = time.monotonic() - started
    publishes = await scrape(ingress_metrics, "processor_ingress_publish_seconds") - publish_before
    batches = await _workers_histogram(workers) - batch_before

    seen = reader.arrivals.get(phase, {})
    arrived = [seen[i] for i in ok if i in seen]
    latencies = sorted((a.arrived_ns - a.sent_ns) / 1e6 for a in arrived)
    return PhaseResult(
        rate=rate,
        load=load,
        latency_ms=quantiles(latencies),
        missing=len(ok) - len(arrived),
        duplicates=reader.duplicates[phase],
        dead_lettered=reader.dead_lettered[phase],
        stray=sum(1 for i in failed if i in seen),
        cpu_s=cpu,
        window_s=window_s,
        stages_ms=_stages(arrived),
        batches=batches,
        publishes=publishes,
    )


async def _workers_histogram(urls: Sequence[str]) -> Histogram:
    total = Histogram()
    for url in urls:
        total = total + await scrape(url, "processor_worker_batch_seconds")
    return total


def _stages(arrived: Sequence[Arrival]) -> dict[str, dict[str, float]]:
    """Per delivery, in ms: scheduled send -> ingress received it -> worker produced it ->
    reader got it (the middle two from millisecond timestamps)."""
    to_ingress, to_worker, to_reader = [], [], []
    for a in arrived:
        created_ns = a.created_ms * 1_000_000
        to_reader.append((a.arrived_ns - created_ns) / 1e6)
        if a.received_at is None:
            continue
        received_ns = (
            round(datetime.fromisoformat(a.received_at.decode()).timestamp() * 1e3) * 10**6
        )
        to_ingress.append((received_ns - a.sent_ns) / 1e6)
        to_worker.append((created_ns - received_ns) / 1e6)
    return {
        "sent -> received-at": quantiles(sorted(to_ingress)),
        "received-at -> produced": quantiles(sorted(to_worker)),
        "produced -> read": quantiles(sorted(to_reader)),
    }


# --- reporting ----------------------------------------------------------------------------


def print_results(results: Sequence[PhaseResult], duration: float) -> None:
    header = (
        f"{'rate/s':>7}{'sent':>9}{'202':>9}{'missing':>8}{'dup':>5}"
        f"{'p50 ms':>8}{'p99 ms':>8}{'p99.9 ms':>9}{'max ms':>8}"
    )
    print(f"\nlatency, scheduled send -> arrival in the derived topic\n{header}")
    print("-" * len(header))
    for r in results:
        q = r.latency_ms
        print(
            f"{r.rate:>7,}{r.load['sent']:>9,}{r.load['ok']:>9,}{r.missing:>8,}{r.duplicates:>5}"
            f"{q['p50']:>8.1f}{q['p99']:>8.1f}{q['p99.9']:>9.1f}{q['max']:>8.1f}"
        )

    names = ("ingress", "workers", "broker", "load", "reader", "others")
    per_delivery = ("ingress", "workers")
    header = f"{'rate/s':>7}" + "".join(
        f"{name + ' %':>11}" + (f"{'us/dlv':>8}" if name in per_delivery else "") for name in names
    )
    print(
        "\nCPU from the load's start to the last arrival (% of one core), and per delivery "
        f"sent\n{header}"
    )
    print("-" * len(header))
    for r in results:
        cells = ""
        for name in names:
            seconds = r.cpu_s.get(name)
            cells += "{:>11}".format("-" if seconds is None else f"{seconds / r.window_s:.0%}")
            if name in per_delivery and seconds is not None:
                cells += f"{seconds / r.load['sent'] * 1e6:>8.0f}"
        print(f"{r.rate:>7,}{cells}")

    print("\nwhere the time goes (p50 / p99 ms)")
    rows: list[tuple[str, list[str]]] = [
        ("load: generator lag", [_pair(r.load["lag_ms"]) for r in results]),
        ("load: scheduled -> 202", [_pair(r.load["answer_ms"]) for r in results]),
        ("ingress: publish, acks=all *", [_hist(r.publishes) for r in results]),
        ("worker: fetch -> commit *", [_hist(r.batches) for r in results]),
    ]
    rows += [(name, [_pair(r.stages_ms[name]) for r in results]) for name in results[0].stages_ms]
    rows.append(("end to end", [_pair(r.latency_ms) for r in results]))
    print(f"{'':32}" + "".join(f"{f'{r.rate:,}/s':>20}" for r in results))
    for label, row in rows:
        print(f"{label:32}" + "".join(f"{cell:>20}" for cell in row))
    per_batch = [
        f"{r.batches.count / duration:.0f}, {r.load['ok'] / max(r.batches.count, 1):.1f}"
        for r in results
    ]
    print(f"{'worker: batches/s, records/batch':32}" + "".join(f"{c:>20}" for c in per_batch))
    print("* from the processes' /metrics histograms, interpolated within buckets")

    for r in results:
        load = r.load
        notes = []
        if load["lag_ms"]["p99"] > LAG_WARN_MS:
            notes.append(
                f"the load generator fell behind schedule (lag p99 {load['lag_ms']['p99']:.1f} ms, "
                f"{load['late_10ms']:,} requests over 10 ms late): the latencies include it"
            )
        if load["ok"] != load["sent"]:
            notes.append(f"answers {load['statuses']}, errors {load['errors'] or 'none'}")
        if r.missing or r.duplicates or r.dead_lettered or r.stray:
            notes.append(
                f"{r.missing} missing, {r.duplicates} duplicates, {r.dead_lettered} in the DLQ, "
                f"{r.stray} arrived without a 202"
            )
        for note in notes:
            print(f"! {r.rate:,}/s: {note}")

    passing = [r.rate for r in results if r.latency_ms["p99"] < P99_BAR_MS and not r.missing]
    best = f"{max(passing):,}/s" if passing else f"none of {[r.rate for r in results]}"
    print(f"\nhighest rate with p99 < {P99_BAR_MS:.0f} ms: {best}")


def _pair(q: Mapping[str, float]) -> str:
    return f"{q['p50']:.1f} / {q['p99']:.1f}"


def _hist(h: Histogram) -> str:
    return f"{h.quantile_ms(0.5):.1f} / {h.quantile_ms(0.99):.1f}"


# --- main ---------------------------------------------------------------------------------


def child_env(args: argparse.Namespace, bootstrap: str) -> dict[str, str]:
    """The children's environment: no inherited PROCESSOR_ setting, only the run's own."""
    inherited = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("PROCESSOR_") and k not in ("KAFKA_BOOTSTRAP_SERVERS", "WEBHOOK_SECRET")
    }
    run: dict[str, str] = {
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "WEBHOOK_SECRET": secrets.token_hex(24),
        "PROCESSOR_INGRESS__PORT": str(free_port()),
        "PROCESSOR_INGRESS__MANAGEMENT_PORT": str(free_port()),
        "PROCESSOR_LOGGING__LEVEL": args.log_level,
        "PROCESSOR_LOGGING__FORMAT": "json",
    }
    if args.bootstrap:  # someone else's cluster: names of our own
        prefix = f"bench.e2e.{args.run}"
        run |= {
            "PROCESSOR_TOPICS__RAW": f"{prefix}.raw",
            "PROCESSOR_TOPICS__UNROUTED": f"{prefix}.unrouted",
            "PROCESSOR_TOPICS__DLQ": f"{prefix}.dlq",
            "PROCESSOR_TOPICS__DEDUP": f"{prefix}.dedup",
            "PROCESSOR_ROUTING__ROUTES": "{integration: "
            + prefix
            + ".integration.status.{status}}",
            "PROCESSOR_WORKER__GROUP_ID": prefix,
        }
    return inherited | run | dict(args.env)


async def bench(args: argparse.Namespace, bootstrap: str, broker_pid: int | None) -> None:
    env = child_env(args, bootstrap)
    config = load_config(ROOT / "config.yaml", env=env)
    args.log_dir.mkdir(parents=True, exist_ok=True)
    pipeline = Pipeline(env, args.log_dir)
    reader = Reader(config, args.run)
    ours = {"PROCESSOR_LOGGING__FORMAT", "PROCESSOR_INGRESS__PORT"}
    ours.add("PROCESSOR_INGRESS__MANAGEMENT_PORT")
    changed = [f"{k}={v}" for k, v in sorted(env.items())
               if k.startswith("PROCESSOR_") and k not in ours]  # fmt: skip
    print(
        f"pipeline: Kafka at {bootstrap} ({'given' if args.bootstrap else 'started for the run'}), "
        f"ingress, {WORKERS} workers; config.yaml + {', '.join(changed)}; {os.cpu_count()} CPUs; "
        f"logs in {args.log_dir}",
        flush=True,
    )
    try:
        await pipeline.start(config)
        await reader.start()
        pids = {
            "ingress": [pipeline.children[0].process.pid],
            "workers": [c.process.pid for c in pipeline.workers],
            "reader": [os.getpid()],
        }
        if broker_pid is not None:
            pids["broker"] = [broker_pid]
        if args.warmup > 0:
            warm = await run_phase(
                args, pipeline, reader, pids, phase="warmup", rate=WARMUP_RATE, duration=args.warmup
            )
            print(
                f"warm-up, not counted: {warm.load['sent']:,} at {WARMUP_RATE:,}/s, "
                f"{warm.missing} missing, p99 {warm.latency_ms['p99']:.1f} ms",
                flush=True,
            )
            print(
                f"deliveries: ~{warm.load['mean_bytes']:.0f} B, signed, {USERS:,} users; load: "
                f"open loop, {args.client} HTTP client, up to {args.connections} connections",
                flush=True,
            )
        results = []
        for rate in args.rates:
            await asyncio.sleep(SETTLE_S)
            result = await run_phase(
                args, pipeline, reader, pids, phase=f"r{rate}", rate=rate, duration=args.duration
            )
            q = result.latency_ms
            print(
                f"  {rate:,}/s: {result.load['ok']:,} answered 202, p50 {q['p50']:.1f} ms, "
                f"p99 {q['p99']:.1f} ms, max {q['max']:.1f} ms; up to "
                f"{result.load['max_in_flight']:,} in flight, {result.load['connections']} "
                "connections opened",
                flush=True,
            )
            results.append(result)
        print_results(results, args.duration)
        if reader.foreign:
            print(f"({reader.foreign} records of other runs in the output topics, ignored)")
    finally:
        await reader.stop()
        await pipeline.stop()
        if args.bootstrap:
            admin = AIOKafkaAdminClient(**client_options(config.kafka))
            await admin.start()
            try:
                await admin.delete_topics(all_topics(config))
            finally:
                await admin.close()


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bootstrap", help="HOST:PORT of a Kafka to use instead of starting one")
    parser.add_argument(
        "--rates",
        default=",".join(map(str, DEFAULT_RATES)),
        help="deliveries per second, comma-separated (default: %(default)s)",
    )
    parser.add_argument("--duration", type=float, default=60, help="seconds per rate")
    parser.add_argument("--quick", action="store_true", help="10 s per rate, 5 s warm-up")
    parser.add_argument("--warmup", type=float, default=10, help="seconds at 1,000/s first")
    parser.add_argument(
        "--connections", type=int, default=1024, help="most connections the load opens"
    )
    parser.add_argument(
        "--client",
        choices=["raw", "aiohttp"],
        default="raw",
        help="the load's HTTP client: a lean keep-alive pool, or aiohttp's (3x its CPU)",
    )
    parser.add_argument(
        "--log-level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="the children's logging.level (config.yaml: INFO)",
    )
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="PROCESSOR_KEY=VALUE",
        help="a setting for the ingress and workers (repeatable), e.g. "
        "PROCESSOR_WORKER__FETCH_TIMEOUT_MS=100",
    )
    parser.add_argument(
        "--log-dir",
        type=Path,
        default=Path(tempfile.gettempdir()) / "bench_e2e",
        help="where the children's output goes",
    )
    # The load generator's own arguments (it runs this file with --generate).
    for name in ("--url", "--phase", "--run"):
        parser.add_argument(name, help=argparse.SUPPRESS)
    parser.add_argument("--generate", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--rate", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.generate:
        return args
    if args.quick:
        args.duration, args.warmup = 10, 5
    args.rates = [int(r) for r in args.rates.split(",") if r.strip()]
    if not args.rates or min(args.rates) <= 0 or args.duration <= 0:
        parser.error("--rates and --duration must be positive")
    pairs = [item.partition("=") for item in args.env]
    if any(not sep or not key.startswith("PROCESSOR_") for key, sep, _ in pairs):
        parser.error("--env takes PROCESSOR_<SECTION>__<KEY>=VALUE")
    args.env = [(key, value) for key, _, value in pairs]
    args.run = secrets.token_hex(3)
    return args


def main() -> None:
    args = parse_args()
    if args.generate:
        print(json.dumps(asyncio.run(generate(args))))
        return
    if args.bootstrap:
        asyncio.run(bench(args, args.bootstrap, None))
        return
    with LocalBroker.temporary() as broker:
        asyncio.run(bench(args, broker.bootstrap, broker.node.running_pid()))


if __name__ == "__main__":
    main()
