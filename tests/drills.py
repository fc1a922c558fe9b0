"""The whole pipeline as an operator runs it, for outage drills: an ingress and two worker
groups (one per guarantee) as `processor` processes on a cluster of the drill's own,
a provider that sends and retries as a provider does, and the checks every drill ends
with: what was accepted is in the raw topic, what is in the raw topic is routed, every
partition accepts deliveries again soon after Kafka is back, and nobody logged an error.

Timeouts come in two scales. `FAST` (make test) shortens every client timeout so that
an outage of a few tens of seconds outlasts each of them, as the long outages of
production do; `REAL` keeps the defaults of config.yaml and takes the outages the
issue names (10 s to 5 minutes): `PROCESSOR_DRILL_SCALE=real make drills`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
from aiokafka.partitioner import murmur2

from processor.config import Config, KafkaConfig, TopicsConfig
from processor.devtools.ports import free_port
from processor.kafka.topics import create_topics
from tests.harness import REPO, read_all_outputs, read_topic, until_drained
from tests.ingress_harness import SECRET, delivery, signed

PARTITIONS = 3


@dataclass(frozen=True)
class Scale:
    """Client timeouts for a drill, and the outage lengths it runs, by name."""

    name: str
    env: dict[str, str]
    outages_s: dict[str, float]
    # The longest any client waits for one thing (request, produce, session, transaction).
    longest_timeout_s: float
    # How long one broker of three stays away in the cluster drill.
    node_away_s: float


FAST = Scale(
    "fast",
    {
        "PROCESSOR_KAFKA__REQUEST_TIMEOUT_MS": "6000",
        "PROCESSOR_INGRESS__PUBLISH_TIMEOUT_S": "2",
        "PROCESSOR_INGRESS__RETRY_AFTER_S": "1",
        "PROCESSOR_WORKER__PRODUCE_TIMEOUT_S": "6",
        "PROCESSOR_WORKER__COMMIT_TIMEOUT_S": "6",
        "PROCESSOR_WORKER__SESSION_TIMEOUT_MS": "10000",
        "PROCESSOR_WORKER__HEARTBEAT_INTERVAL_MS": "1000",
        "PROCESSOR_WORKER__TRANSACTION_TIMEOUT_MS": "12000",
        "PROCESSOR_WORKER__RETRY_BACKOFF_S": "0.2",
        "PROCESSOR_WORKER__MAX_RETRY_BACKOFF_S": "2",
    },
    # past the request and produce timeouts only; past every timeout, twice over
    {"past_request_timeout": 9, "past_every_timeout": 25},
    longest_timeout_s=12,
    node_away_s=25,
)
REAL = Scale(
    "real",
    {"PROCESSOR_WORKER__RETRY_BACKOFF_S": "1", "PROCESSOR_WORKER__MAX_RETRY_BACKOFF_S": "30"},
    {"10s": 10, "45s": 45, "100s": 100, "5min": 300},
    longest_timeout_s=60,
    node_away_s=120,
)
SCALE = REAL if os.environ.get("PROCESSOR_DRILL_SCALE") == "real" else FAST


def users_per_partition(partitions: int = PARTITIONS, per_partition: int = 8) -> list[str]:
    """User ids spread so that each raw partition has `per_partition` of them."""
    by_partition: dict[int, list[str]] = {p: [] for p in range(partitions)}
    n = 0
    while any(len(users) < per_partition for users in by_partition.values()):
        uid = f"user_{n}"
        n += 1
        partition = (murmur2(uid.encode()) & 0x7FFFFFFF) % partitions
        if len(by_partition[partition]) < per_partition:
            by_partition[partition].append(uid)
    return [uid for users in by_partition.values() for uid in users]


def partition_of(uid: str, partitions: int = PARTITIONS) -> int:
    hashed: int = murmur2(uid.encode())
    return (hashed & 0x7FFFFFFF) % partitions


def log_entries(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{")]


def error_lines(path: Path) -> list[str]:
    """Lines an operator would count as errors: ERROR and worse, and any traceback."""
    found = []
    for line in path.read_text().splitlines() if path.exists() else ():
        entry = json.loads(line) if line.startswith("{") else None
        if entry is None:
            if "Traceback" in line or "ERROR" in line:
                found.append(line)
        elif entry.get("level") in ("error", "critical") or "exception" in entry:
            found.append(line)
    return found


@dataclass
class Process:
    name: str
    log: Path
    popen: subprocess.Popen[bytes]
    http: str  # base URL of its /readyz (the ingress's management port)

    def alive(self) -> bool:
        return self.popen.poll() is None


@dataclass
class Group:
    """One worker group and the topics it routes into."""

    guarantee: str
    config: Config
    processes: list[Process] = field(default_factory=list)


def group_config(base: Config, raw: str, guarantee: str, tag: str) -> Config:
    topics = TopicsConfig(
        raw=raw,
        unrouted=f"{tag}.unrouted",
        dlq=f"{tag}.dlq",
        dedup=f"{tag}.dedup",
        partitions=PARTITIONS,
        replication_factor=base.topics.replication_factor,
    )
    return msgspec.structs.replace(
        base,
        topics=topics,
        routing=msgspec.structs.replace(
            base.routing, routes={"integration": f"{tag}.status.{{status}}"}
        ),
        worker=msgspec.structs.replace(base.worker, group_id=f"{tag}.group", guarantee=guarantee),
    )


class Pipeline:
    """Ingress plus an at-least-once and an exactly-once worker group, as processes."""

    def __init__(
        self, *, bootstrap: str, directory: Path, replication: int = 1, tag: str = "drill"
    ) -> None:
        base = Config()
        base = msgspec.structs.replace(
            base,
            kafka=KafkaConfig(bootstrap_servers=bootstrap),
            topics=msgspec.structs.replace(base.topics, replication_factor=replication),
        )
        self.raw = f"{tag}.raw"
        self.bootstrap = bootstrap
        self.directory = directory
        self.groups = [
            group_config(base, self.raw, "at_least_once", f"{tag}.alo"),
            group_config(base, self.raw, "exactly_once", f"{tag}.eos"),
        ]
        self.ingress: Process | None = None
        self.webhooks = ""  # where the provider posts, once started
        self.workers: list[Process] = []

    @property
    def processes(self) -> list[Process]:
        return [p for p in (self.ingress, *self.workers) if p is not None]

    async def start(self) -> None:
        for config in self.groups:
            await create_topics(config)
        port, management = free_port(), free_port()
        self.ingress = self._spawn(
            "ingress",
            "ingress",
            self.groups[0],
            {
                "PROCESSOR_INGRESS__PORT": str(port),
                "PROCESSOR_INGRESS__MANAGEMENT_PORT": str(management),
                "WEBHOOK_SECRET": SECRET,
            },
            f"http://127.0.0.1:{management}",
        )
        self.webhooks = f"http://127.0.0.1:{port}{self.groups[0].ingress.path}"
        for config in self.groups:
            port = free_port()
            self.workers.append(
                self._spawn(
                    f"worker-{config.worker.guarantee}",
                    "worker",
                    config,
                    {"PROCESSOR_WORKER__METRICS_PORT": str(port)},
                    f"http://127.0.0.1:{port}",
                )
            )
        async with aiohttp.ClientSession() as session:
            await self.until_ready(session, timeout=60)

    def _spawn(
        self, name: str, command: str, config: Config, env: dict[str, str], http: str
    ) -> Process:
        log = self.directory / f"{name}.log"
        environment = {
            **os.environ,
            **SCALE.env,
            "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap,
            "PROCESSOR_TOPICS__RAW": config.topics.raw,
            "PROCESSOR_TOPICS__UNROUTED": config.topics.unrouted,
            "PROCESSOR_TOPICS__DLQ": config.topics.dlq,
            "PROCESSOR_TOPICS__DEDUP": config.topics.dedup,
            "PROCESSOR_TOPICS__PARTITIONS": str(PARTITIONS),
            "PROCESSOR_ROUTING__ROUTES": (
                f"{{integration: '{config.routing.routes['integration']}'}}"
            ),
            "PROCESSOR_WORKER__GROUP_ID": config.worker.group_id,
            "PROCESSOR_WORKER__GUARANTEE": config.worker.guarantee,
            "PROCESSOR_LOGGING__FORMAT": "json",
            **env,
        }
        with log.open("wb") as out:
            popen = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "processor.cli",
                    "--config",
                    str(REPO / "config.yaml"),
                    command,
                ],
                env=environment,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        return Process(name, log, popen, http)

    async def readiness(self, session: aiohttp.ClientSession) -> dict[str, int]:
        """Each process's /readyz status now (0: no answer)."""
        statuses = {}
        for process in self.processes:
            try:
                async with asyncio.timeout(5):
                    async with session.get(f"{process.http}/readyz") as response:
                        statuses[process.name] = response.status
            except (aiohttp.ClientError, TimeoutError):
                statuses[process.name] = 0
        return statuses

    async def until_ready(self, session: aiohttp.ClientSession, *, timeout: float) -> float:
        started = time.monotonic()
        async with asyncio.timeout(timeout):
            while set((await self.readiness(session)).values()) != {200}:
                for process in self.processes:
                    assert process.alive(), process.log.read_text()[-3000:]
                await asyncio.sleep(0.25)
        return time.monotonic() - started

    async def stop(self) -> None:
        """SIGTERM, as an orchestrator stops a process; each must exit 0 in time."""
        for process in self.processes:
            if process.alive():
                process.popen.send_signal(signal.SIGTERM)
        for process in self.processes:
            code = await asyncio.to_thread(process.popen.wait, 90)
            assert code == 0, f"{process.name} exited {code}: {process.log.read_text()[-3000:]}"

    def kill_leftovers(self) -> None:
        for process in self.processes:
            if process.alive():
                process.popen.kill()
                process.popen.wait()

    def errors(self) -> dict[str, list[str]]:
        return {p.name: lines for p in self.processes if (lines := error_lines(p.log))}

    def events(self, name: str) -> list[dict[str, Any]]:
        [process] = [p for p in self.processes if p.name == name]
        return log_entries(process.log)


@contextlib.contextmanager
def cleaned_up(pipeline: Pipeline) -> Iterator[Pipeline]:
    try:
        yield pipeline
    finally:
        pipeline.kill_leftovers()


class Provider:
    """Sends each user's deliveries one after another, as the provider does: the next
    once the last was accepted, a refused or unanswered one again after a pause."""

    def __init__(self, url: str, users: list[str], *, pause_s: float = 0.4) -> None:
        self.url = url
        self.users = users
        self.pause_s = pause_s
        self.accepted: dict[str, float] = {}  # delivery id -> when
        self.statuses: Counter[int] = Counter()
        self.refused_at: list[float] = []

    async def run(self, session: aiohttp.ClientSession, stop: asyncio.Event) -> None:
        await asyncio.gather(*(self._user(session, uid, stop) for uid in self.users))

    async def _user(self, session: aiohttp.ClientSession, uid: str, stop: asyncio.Event) -> None:
        n = 0
        while not stop.is_set():
            name = f"{uid}-{n}"
            status = await self.post(session, name, uid)
            if status == 202:
                n += 1
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.pause_s):
                    await stop.wait()

    async def post(self, session: aiohttp.ClientSession, name: str, uid: str) -> int:
        body = delivery(name, uid=uid)
        try:
            # Longer than any publish timeout: no answer in time means the ingress hung.
            async with asyncio.timeout(30):
                async with session.post(self.url, data=body, headers=signed(body)) as response:
                    status = response.status
        except (aiohttp.ClientError, TimeoutError):
            status = 0
        self.statuses[status] += 1
        if status == 202:
            self.accepted[f"whd_{name}"] = time.monotonic()
        else:
            assert status in (0, 503), f"{name}: {status}"
            self.refused_at.append(time.monotonic())
        return status


async def accepted_again(
    session: aiohttp.ClientSession, provider: Provider, *, within_s: float
) -> dict[int, float]:
    """Seconds until each raw partition took a fresh delivery (a probe per partition)."""
    uids: dict[int, str] = {}
    for uid in provider.users:
        uids.setdefault(partition_of(uid), uid)
    started = time.monotonic()
    took: dict[int, float] = {}
    probe = 0
    async with asyncio.timeout(within_s):
        while len(took) < len(uids):
            for partition, uid in uids.items():
                if partition in took:
                    continue
                probe += 1
                if await provider.post(session, f"probe-{partition}-{probe}", uid) == 202:
                    took[partition] = round(time.monotonic() - started, 1)
            await asyncio.sleep(0.25)
    return took


async def raw_ids(bootstrap: str, topic: str) -> Counter[str]:
    """Delivery ids in the raw topic, with how often each was written."""
    records = await read_topic(bootstrap, topic, partitions=PARTITIONS)
    return Counter(dict(r.headers)["delivery-id"].decode() for r in records)


async def routed_ids(group: Config) -> Counter[str]:
    """Delivery ids in the group's outputs (read_committed), with how often each."""
    return Counter(o.headers["delivery-id"].decode() for o in await read_all_outputs(group))


@dataclass
class Outcome:
    """What a drill's pipeline did: the raw delivery ids, each group's routed ids (at
    least once, exactly once), and every process's error lines."""

    raw: Counter[str]
    at_least_once: Counter[str]
    exactly_once: Counter[str]
    errors: dict[str, list[str]]


@contextlib.asynccontextmanager
async def under_load(
    pipeline: Pipeline,
) -> AsyncIterator[tuple[Provider, aiohttp.ClientSession]]:
    """The pipeline started and a provider sending to it, for 3 s before the block and
    until its end."""
    await pipeline.start()
    assert pipeline.ingress is not None
    provider = Provider(pipeline.webhooks, users_per_partition())
    stop = asyncio.Event()
    async with aiohttp.ClientSession() as session:
        task = asyncio.create_task(provider.run(session, stop))
        try:
            await asyncio.sleep(3)
            yield provider, session
        finally:
            stop.set()
            await task


async def settle(pipeline: Pipeline) -> Outcome:
    """Once both groups have routed everything: what is in the topics, then the
    processes stopped as an orchestrator stops them, and what they logged."""
    for group in pipeline.groups:
        await until_drained(group, timeout=120)
    raw = await raw_ids(pipeline.bootstrap, pipeline.raw)
    at_least_once, exactly_once = [await routed_ids(group) for group in pipeline.groups]
    await pipeline.stop()
    return Outcome(raw, at_least_once, exactly_once, pipeline.errors())


def assert_conserved(provider: Provider, outcome: Outcome) -> None:
    """Every 202 is in Kafka; every raw delivery routed by both groups, once by the
    exactly-once one; nothing else routed; no process logged an error."""
    raw = set(outcome.raw)
    assert set(provider.accepted) <= raw, "a delivery answered 202 is not in Kafka"
    assert set(outcome.at_least_once) == raw, "the at-least-once group lost or invented one"
    assert set(outcome.exactly_once) == raw, "the exactly-once group lost or invented one"
    assert set(outcome.exactly_once.values()) == {1}, "exactly once wrote a delivery twice"
    assert not outcome.errors, outcome.errors
