"""Drills: a worker restarted at once, a broker stopped under load, a batch that keeps failing.

Each drill counts what went in and what came out of the topics, and bounds what the
operator would see: how long it took, how many log lines, how much CPU.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from processor.config import Config, KafkaConfig
from processor.devtools.broker import LocalBroker
from processor.kafka.topics import all_topics, create_topics
from processor.metrics import WorkerMetrics
from tests.deliveries import mixed_stream
from tests.harness import (
    SpawnWorker,
    assert_each_delivered,
    kafka_worker,
    produce_raw,
    read_outputs,
    wait_exit,
    wait_for_outputs,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# Long enough that the old 30 s connect deadline, shortened here to 5 s, would have
# run out while the dead member still held its partitions.
SESSION_TIMEOUT_S = 15
RESTART_ENV = {
    "PROCESSOR_WORKER__SESSION_TIMEOUT_MS": str(SESSION_TIMEOUT_S * 1000),
    "PROCESSOR_WORKER__HEARTBEAT_INTERVAL_MS": "1000",
    "PROCESSOR_KAFKA__CONNECT_TIMEOUT_S": "5",
}


def log_entries(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{")]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.mark.usefixtures("topics")
@pytest.mark.parametrize("membership", ["dynamic", "static"])
async def test_worker_killed_and_restarted_at_once_routes_everything_in_time(
    config: Config, spawn_worker: SpawnWorker, tmp_path: Path, membership: str
) -> None:
    env = dict(RESTART_ENV)
    if membership == "static":
        env["PROCESSOR_WORKER__GROUP_INSTANCE_ID"] = "worker-0"
    stream = mixed_stream(12_000, seed=31)
    await produce_raw(config, stream[:6_000])
    first = spawn_worker(**env)
    await wait_for_outputs(config, 2_000)
    first.send_signal(signal.SIGKILL)
    assert await wait_exit(first, 10) == -signal.SIGKILL

    restarted_at = time.monotonic()
    second = spawn_worker(**env)
    await produce_raw(config, stream[6_000:])
    # A dynamic member waits for the dead one's session to expire; a static one
    # takes its partitions back at once, and is done before that session would expire
    # (a start and 6,000 records take 5 to 10 s on a loaded machine).
    bound = SESSION_TIMEOUT_S + 10 if membership == "dynamic" else SESSION_TIMEOUT_S
    await wait_for_outputs(config, len(stream), timeout=bound)
    took = time.monotonic() - restarted_at

    outputs = await read_outputs(config, len(stream))
    assert_each_delivered(config, stream, outputs)
    assert second.poll() is None, (tmp_path / "worker1.log").read_text()
    assert took < bound
    if membership == "static":
        assert took < SESSION_TIMEOUT_S, "a static member must not wait for its own session"
    waiting = [e for e in log_entries(tmp_path / "worker1.log") if e["event"] == "worker.started"]
    assert len(waiting) == 1
    assert "worker.session_timeout_ms" in waiting[0]["detail"]


async def test_graceful_broker_stop_under_load_is_one_warning_not_a_flood(
    config: Config, spawn_worker: SpawnWorker, tmp_path: Path, kafka_jars: Path
) -> None:
    with LocalBroker.temporary() as broker:
        config = msgspec.structs.replace(
            config, kafka=KafkaConfig(bootstrap_servers=broker.bootstrap)
        )
        await create_topics(config)
        stream = mixed_stream(60_000, seed=37)
        await produce_raw(config, stream)
        worker = spawn_worker(
            KAFKA_BOOTSTRAP_SERVERS=broker.bootstrap,
            PROCESSOR_WORKER__PRODUCE_TIMEOUT_S="3",
            PROCESSOR_WORKER__COMMIT_TIMEOUT_S="3",
        )
        log = tmp_path / "worker0.log"
        await wait_for_outputs(config, 5_000)
        healthy = log_entries(log)

        await asyncio.to_thread(broker.stop)  # SIGTERM: a graceful broker shutdown
        lines_before, cpu_before = len(log.read_text().splitlines()), cpu_seconds(worker.pid)
        await asyncio.sleep(10)
        outage = log.read_text().splitlines()[lines_before:]
        cpu = cpu_seconds(worker.pid) - cpu_before
        await asyncio.to_thread(broker.start)  # same directory and ports

        outputs = await read_outputs(config, len(stream))
        assert_each_delivered(config, stream, outputs)
        worker.send_signal(signal.SIGTERM)
        assert await wait_exit(worker, 30) == 0

    assert not [e for e in healthy if e["level"] in ("error", "critical")], healthy
    # Nothing left behind either: a producer given up in the outage is closed, not
    # left to be destroyed pending at exit.
    errors = [e for e in log_entries(log) if e["level"] in ("error", "critical")]
    assert not errors, errors
    assert len(outage) <= 40, "\n".join(outage[:50])
    assert cpu < 1.5, f"{cpu:.2f} CPU seconds in a 10 s outage"
    events = [e["event"] for e in log_entries(log)]
    assert events.count("kafka.unreachable") == 1
    assert events.count("kafka.reachable") == 1


# --- a batch whose produce keeps failing ---------------------------------------------------


async def create_topics_refusing_deliveries(config: Config) -> None:
    """The raw topic as usual; every destination refuses records over 100 bytes."""
    admin = AIOKafkaAdminClient(bootstrap_servers=config.kafka.bootstrap_servers)
    await admin.start()
    try:
        await admin.create_topics(
            [
                NewTopic(
                    topic,
                    num_partitions=config.topics.partitions,
                    replication_factor=1,
                    topic_configs={}
                    if topic == config.topics.raw
                    else {"max.message.bytes": "100"},
                )
                for topic in all_topics(config)
            ]
        )
    finally:
        await admin.close()


def backing_off(config: Config) -> Config:
    """A worker that pauses 20 s after its first failed batch and heartbeats often."""
    return msgspec.structs.replace(
        config,
        worker=msgspec.structs.replace(
            config.worker, retry_backoff_s=20.0, heartbeat_interval_ms=300
        ),
    )


async def until_a_batch_failed(metrics: WorkerMetrics, task: asyncio.Task[None]) -> None:
    async with asyncio.timeout(30):
        while not metrics.registry.get_sample_value("processor_worker_produce_failures_total"):
            assert not task.done(), task
            await asyncio.sleep(0.05)


async def test_sigterm_ends_the_pause_before_a_retry_at_once(config: Config) -> None:
    config = backing_off(config)
    await create_topics_refusing_deliveries(config)
    await produce_raw(config, mixed_stream(50))
    metrics = WorkerMetrics()
    stop = asyncio.Event()
    task = asyncio.create_task(kafka_worker(config, metrics).run(stop))
    await until_a_batch_failed(metrics, task)

    stop.set()
    started = time.monotonic()
    await asyncio.wait_for(task, 10)

    assert time.monotonic() - started < 3, "the stop waited for the 20 s pause"


async def test_the_pause_before_a_retry_does_not_hold_partitions_a_rebalance_wants(
    config: Config,
) -> None:
    config = backing_off(config)
    await create_topics_refusing_deliveries(config)
    await produce_raw(config, mixed_stream(50))
    metrics = WorkerMetrics()
    stop = asyncio.Event()
    task = asyncio.create_task(kafka_worker(config, metrics).run(stop))
    try:
        await until_a_batch_failed(metrics, task)
        joiner = AIOKafkaConsumer(
            config.topics.raw,
            bootstrap_servers=config.kafka.bootstrap_servers,
            group_id=config.worker.group_id,
            enable_auto_commit=False,
            heartbeat_interval_ms=300,
        )
        started = time.monotonic()
        await asyncio.wait_for(joiner.start(), 10)  # returns once it has partitions
        try:
            assert joiner.assignment(), "the rebalance gave the new member nothing"
        finally:
            await joiner.stop()
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)

    assert time.monotonic() - started < 8


@pytest.mark.usefixtures("topics")
async def test_a_static_member_told_to_leave_hands_its_partitions_over_at_once(
    config: Config, spawn_worker: SpawnWorker, tmp_path: Path
) -> None:
    stream = mixed_stream(8_000, seed=43)
    await produce_raw(config, stream[:4_000])
    staying = spawn_worker(**RESTART_ENV, PROCESSOR_WORKER__GROUP_INSTANCE_ID="worker-a")
    leaving = spawn_worker(**RESTART_ENV, PROCESSOR_WORKER__GROUP_INSTANCE_ID="worker-b")
    async with asyncio.timeout(30):  # both own partitions
        while not all(
            any(e["event"] == "partitions.assigned" and e["partitions"] for e in log_entries(log))
            for log in (tmp_path / "worker0.log", tmp_path / "worker1.log")
        ):
            await asyncio.sleep(0.2)

    leaving.send_signal(signal.SIGUSR1)  # a scale-down: stop, and leave the group
    assert await wait_exit(leaving, 30) == 0
    left_at = time.monotonic()
    await produce_raw(config, stream[4_000:])
    # The partitions it had are the staying member's well before its session would
    # have expired (a static member stopped by SIGTERM keeps them until then).
    await wait_for_outputs(config, len(stream), timeout=SESSION_TIMEOUT_S - 5)
    took = time.monotonic() - left_at

    assert_each_delivered(config, stream, await read_outputs(config, len(stream)))
    assert took < SESSION_TIMEOUT_S - 5
    assert [e["event"] for e in log_entries(tmp_path / "worker1.log")].count(
        "worker.left_group"
    ) == 1
    assert staying.poll() is None
