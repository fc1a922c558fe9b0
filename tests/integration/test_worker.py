"""The worker against a real broker: every delivery in exactly one topic, at least once.

What comes out of the topics is the evidence: bytes, keys, headers, per-user order
and counts. Crash, graceful stop and rebalance run `processor worker` as real
processes, signalled the way an orchestrator would.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import aiohttp
import msgspec
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from processor.batching import produce_batch
from processor.config import Config, KafkaConfig
from processor.devbroker import LocalBroker, free_port
from processor.topics import all_topics, create_topics
from processor.worker import Worker
from tests.deliveries import Delivery, integration_event, mixed_stream

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
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


async def produce_raw(config: Config, deliveries: list[Delivery]) -> None:
    async with AIOKafkaProducer(
        bootstrap_servers=config.kafka.bootstrap_servers, acks="all", enable_idempotence=True
    ) as producer:
        records = [RawRecord(config.topics.raw, d.key, d.value) for d in deliveries]
        await asyncio.gather(*await produce_batch(producer, records))


async def read_outputs(config: Config, expected: int, *, settle_s: float = 1.0) -> list[Output]:
    """Every record in the output topics once `expected` arrived and `settle_s` brought no more."""
    outputs = [t for t in all_topics(config) if t != config.topics.raw]
    consumer = AIOKafkaConsumer(
        bootstrap_servers=config.kafka.bootstrap_servers, enable_auto_commit=False
    )
    await consumer.start()
    found: list[Output] = []
    try:
        partitions = [
            TopicPartition(t, p) for t in outputs for p in consumer.partitions_for_topic(t) or ()
        ]
        if len(partitions) < len(outputs):
            await consumer._client.force_metadata_update()  # topics created moments ago
            partitions = [
                TopicPartition(t, p) for t in outputs for p in consumer.partitions_for_topic(t)
            ]
        consumer.assign(partitions)
        await consumer.seek_to_beginning()
        async with asyncio.timeout(120):
            quiet_since: float | None = None
            while True:
                batch = await consumer.getmany(timeout_ms=200)
                for tp, records in batch.items():
                    found.extend(
                        Output(tp.topic, tp.partition, r.offset, r.key, r.value, dict(r.headers))
                        for r in records
                    )
                now = asyncio.get_running_loop().time()
                # Distinct values: after a crash, duplicates can reach the count early.
                if batch or len({o.value for o in found}) < expected:
                    quiet_since = now
                elif quiet_since is not None and now - quiet_since >= settle_s:
                    return found
    finally:
        await consumer.stop()


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


async def test_mixed_stream_lands_each_delivery_in_exactly_one_topic(config: Config) -> None:
    await create_topics(config)
    stream = mixed_stream(10_000)
    await produce_raw(config, stream)

    stop = asyncio.Event()
    worker = asyncio.create_task(Worker(config=config).run(stop))
    try:
        outputs = await read_outputs(config, len(stream))
    finally:
        stop.set()
        await asyncio.wait_for(worker, 30)

    written = assert_each_delivered(config, stream, outputs)
    assert set(written.values()) == {1}, "a clean run writes each delivery once"
    kinds = Counter(d.kind.partition(":")[0] for d in stream)
    assert Counter(o.topic for o in outputs)[config.topics.dlq] == kinds["dlq"]
    assert Counter(o.topic for o in outputs)[config.topics.unrouted] == kinds["unrouted"]
    for out in outputs:
        assert out.headers["delivery-id"].startswith(b"whd_") or out.topic == config.topics.dlq
        assert "received-at" in out.headers
    dead = [o for o in outputs if o.topic == config.topics.dlq]
    assert all(o.headers["source.topic"] == config.topics.raw.encode() for o in dead)
    assert all(b"error.class" in {k.encode() for k in o.headers} for o in dead)


async def test_worker_fails_fast_when_a_destination_topic_is_missing(config: Config) -> None:
    from processor.kafka_clients import BrokerUnavailable

    # Nothing created: the first batch would stall on an unknown topic, so refuse to start.
    with pytest.raises(BrokerUnavailable, match="processor topics create"):
        await Worker(config=config).run(asyncio.Event())


# --- the worker as a process ------------------------------------------------------------


def worker_env(config: Config) -> dict[str, str]:
    """The test's config as a user would pass it: environment over config.yaml."""
    return {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": config.kafka.bootstrap_servers,
        "PROCESSOR_TOPICS__RAW": config.topics.raw,
        "PROCESSOR_TOPICS__UNROUTED": config.topics.unrouted,
        "PROCESSOR_TOPICS__DLQ": config.topics.dlq,
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


@pytest.fixture
def spawn_worker(config: Config, tmp_path: Path) -> Iterator[SpawnWorker]:
    started: list[subprocess.Popen[bytes]] = []

    def spawn(**env: str) -> subprocess.Popen[bytes]:
        log = (tmp_path / f"worker{len(started)}.log").open("wb")
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "processor.cli",
                "--config",
                str(REPO / "config.yaml"),
                "worker",
            ],
            env=worker_env(config) | env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        started.append(process)
        return process

    yield spawn
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.fixture
async def topics(config: Config) -> None:
    await create_topics(config)


async def count_outputs(config: Config) -> int:
    """Records written to the output topics so far (sum of end offsets)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=config.kafka.bootstrap_servers)
    await consumer.start()
    try:
        await consumer._client.force_metadata_update()
        partitions = [
            TopicPartition(t, p)
            for t in all_topics(config)
            if t != config.topics.raw
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


@pytest.mark.slow
@pytest.mark.usefixtures("topics")
async def test_sigkill_mid_stream_loses_nothing_and_duplicates_at_most_one_batch(
    config: Config, spawn_worker: SpawnWorker
) -> None:
    stream = mixed_stream(20_000, seed=11)
    await produce_raw(config, stream[:10_000])
    first = spawn_worker()
    await wait_for_outputs(config, 3_000)
    first.send_signal(signal.SIGKILL)
    assert await wait_exit(first, 10) == -signal.SIGKILL
    await produce_raw(config, stream[10_000:])

    spawn_worker()
    outputs = await read_outputs(config, len(stream))
    written = assert_each_delivered(config, stream, outputs)
    duplicates = sum(n - 1 for n in written.values())
    assert duplicates <= BATCH, f"{duplicates} duplicates: more than the uncommitted batch"


@pytest.mark.slow
@pytest.mark.usefixtures("topics")
async def test_sigterm_finishes_the_batch_commits_and_exits_zero(
    config: Config, spawn_worker: SpawnWorker
) -> None:
    stream = mixed_stream(20_000, seed=13)
    await produce_raw(config, stream)
    first = spawn_worker()
    await wait_for_outputs(config, 3_000)
    first.send_signal(signal.SIGTERM)
    assert await wait_exit(first, config.worker.shutdown_timeout_s) == 0

    spawn_worker()
    outputs = await read_outputs(config, len(stream))
    written = assert_each_delivered(config, stream, outputs)
    assert set(written.values()) == {1}, "a graceful stop commits what it wrote: no duplicates"


@pytest.mark.slow
@pytest.mark.usefixtures("topics")
async def test_rebalance_between_two_workers_under_load_loses_nothing(
    config: Config, spawn_worker: SpawnWorker, tmp_path: Path
) -> None:
    stream = mixed_stream(30_000, seed=17)
    chunks = [stream[i : i + 2_000] for i in range(0, len(stream), 2_000)]
    first = spawn_worker()
    second: subprocess.Popen[bytes] | None = None
    for index, chunk in enumerate(chunks):
        await produce_raw(config, chunk)
        if index == 4:
            second = spawn_worker()  # joins: partitions move from the first to the second
            await wait_for_partitions(tmp_path / "worker1.log")
        if index == 10:
            first.send_signal(signal.SIGTERM)  # leaves: everything moves to the second
        await asyncio.sleep(0.2)
    assert second is not None
    assert await wait_exit(first, config.worker.shutdown_timeout_s) == 0

    outputs = await read_outputs(config, len(stream))
    written = assert_each_delivered(config, stream, outputs)
    duplicates = sum(n - 1 for n in written.values())
    assert duplicates <= BATCH, f"{duplicates} duplicates across two clean rebalances"
    assert second.poll() is None, "the surviving worker is still running"


@pytest.mark.slow
@pytest.mark.usefixtures("kafka_jars")
async def test_broker_outage_mid_stream_loses_nothing(config: Config) -> None:
    with LocalBroker.temporary() as broker:
        config = msgspec.structs.replace(
            config,
            kafka=KafkaConfig(bootstrap_servers=broker.bootstrap),
            # Fail fast while the broker is away, so the retries are what gets tested.
            worker=msgspec.structs.replace(config.worker, produce_timeout_s=3, commit_timeout_s=3),
        )
        await create_topics(config)
        stream = mixed_stream(6_000, seed=23)
        await produce_raw(config, stream[:3_000])
        stop = asyncio.Event()
        worker = asyncio.create_task(Worker(config=config).run(stop))
        try:
            await wait_for_outputs(config, 1_000)
            await asyncio.to_thread(broker.kill)  # a crash: acknowledged writes must survive
            await asyncio.sleep(3)
            await asyncio.to_thread(broker.start)  # same directory and ports
            await produce_raw(config, stream[3_000:])
            outputs = await read_outputs(config, len(stream))
        finally:
            stop.set()
            await asyncio.wait_for(worker, 60)
        assert_each_delivered(config, stream, outputs)


# --- the metrics port -------------------------------------------------------------------


async def records_by_outcome(session: aiohttp.ClientSession) -> dict[str, float]:
    """`processor_worker_records_total` by outcome, parsed from GET /metrics."""
    async with session.get("/metrics") as response:
        assert response.status == 200
        exposition = await response.text()
    return {
        sample.labels["outcome"]: sample.value
        for family in text_string_to_metric_families(exposition)
        for sample in family.samples
        if sample.name == "processor_worker_records_total"
    }


async def wait_for_healthz(session: aiohttp.ClientSession, timeout: float = 30) -> None:
    """Until /healthz answers 200 {"status": "ok"}; the process needs a moment to listen."""
    async with asyncio.timeout(timeout):
        while True:
            with contextlib.suppress(aiohttp.ClientConnectionError):
                async with session.get("/healthz") as response:
                    if response.status == 200 and await response.json() == {"status": "ok"}:
                        return
            await asyncio.sleep(0.1)


@pytest.mark.slow
@pytest.mark.usefixtures("topics")
async def test_metrics_port_answers_healthz_and_counts_each_committed_outcome(
    config: Config, spawn_worker: SpawnWorker, tmp_path: Path
) -> None:
    unrouted = (
        b'{"id": "whd_unrouted", "event": "portfolio.updated", '
        b'"timestamp": "2025-02-19T12:00:00Z", "data": {"uid": "user_2"}}'
    )
    stream = [
        *(
            Delivery(
                b"user_1",
                integration_event(index=i, uid="user_1", status="COMPLETED"),
                "routed:COMPLETED",
            )
            for i in range(4)
        ),
        Delivery(b"user_2", unrouted, "unrouted"),
        Delivery(b"user_3", b'{"id": "whd_malformed", "event":', "dlq"),
    ]
    await produce_raw(config, stream)
    port = free_port()
    worker = spawn_worker(PROCESSOR_WORKER__METRICS_PORT=str(port))

    async with aiohttp.ClientSession(f"http://127.0.0.1:{port}") as session:
        await wait_for_healthz(session)
        async with asyncio.timeout(60):
            while sum((records := await records_by_outcome(session)).values()) < len(stream):
                await asyncio.sleep(0.2)

    assert records == {"routed": 4, "unrouted": 1, "dlq": 1}
    worker.send_signal(signal.SIGTERM)
    code = await wait_exit(worker, config.worker.shutdown_timeout_s)
    assert code == 0, (tmp_path / "worker0.log").read_text()
