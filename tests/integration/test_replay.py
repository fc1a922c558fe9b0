"""`processor replay` on a real broker: unrouted deliveries moved once into a new route,
DLQ records that keep failing skipped after `replay.max_attempts`, a dry run that writes
nothing, and a replay cut short that goes on where it stopped."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import msgspec
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from processor.config import Config
from processor.devtools.ports import free_port
from processor.kafka.clients import partitions_of, read_to_end
from processor.kafka.topics import create_topics
from processor.ops.replay import ReplayFilters, replay
from tests.deliveries import Delivery, integration_event
from tests.harness import (
    REPO,
    Output,
    produce_raw,
    read_all_outputs,
    read_outputs,
    until_drained,
    worker_env,
    worker_running,
)

pytestmark = pytest.mark.integration


def wallet_event(index: int) -> bytes:
    return msgspec.json.encode(
        {
            "id": f"whd_wallet{index:05d}",
            "event": "wallet.updated",
            "timestamp": "2025-02-19T12:00:00Z",
            "data": {"uid": f"user_{index % 5}", "balance": index},
        }
    )


def with_wallet_route(config: Config, topic: str) -> Config:
    routes = {**config.routing.routes, "wallet": topic}
    return msgspec.structs.replace(
        config, routing=msgspec.structs.replace(config.routing, routes=routes)
    )


async def raw_count(config: Config) -> int:
    """Records in the raw topic, read back (transaction markers take offsets too)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=config.kafka.bootstrap_servers, isolation_level="read_committed"
    )
    await consumer.start()
    try:
        partitions = [TopicPartition(config.topics.raw, p) for p in range(3)]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        count = 0
        async with asyncio.timeout(30):
            async for _, records in read_to_end(consumer, partitions):
                count += len(records)
        return count
    finally:
        await consumer.stop()


async def records_of(config: Config, topic: str) -> list[Output]:
    return [o for o in await read_all_outputs(config) if o.topic == topic]


async def until_in(config: Config, topic: str, count: int) -> list[Output]:
    """The records of `topic` once the group has routed all of the raw topic, and at
    least `count` of them are there."""
    async with asyncio.timeout(60):
        while len(found := await records_of(config, topic)) < count:
            await asyncio.sleep(0.3)
    await until_drained(config)
    return await records_of(config, topic) if found else found


async def test_unrouted_deliveries_move_once_into_a_new_route_and_a_second_run_replays_nothing(
    config: Config, unique_name: object
) -> None:
    await create_topics(config)
    wallets = [Delivery(b"user_0", wallet_event(i), "unrouted") for i in range(200)]
    others = [
        Delivery(b"user_1", integration_event(index=i, uid="user_1", status="active"), "routed")
        for i in range(100)
    ]
    await produce_raw(config, wallets + others)
    async with worker_running(config):
        await read_outputs(config, 300)
    assert len(await records_of(config, config.topics.unrouted)) == 200

    routed = with_wallet_route(config, unique_name("wallet"))  # type: ignore[operator]
    await create_topics(routed)
    filters = ReplayFilters(source=config.topics.unrouted, target=config.topics.raw)
    first = await replay(routed, filters)
    async with worker_running(routed):
        moved = await until_in(routed, routed.routing.routes["wallet"], 200)  # type: ignore[arg-type]
        second = await replay(routed, filters)
        await until_drained(routed)
        after = await records_of(routed, routed.routing.routes["wallet"])  # type: ignore[arg-type]

    assert (first.replayed, first.skipped_max_attempts) == (200, 0)
    assert first.by_event == {"wallet.updated": 200}
    assert Counter(o.value for o in moved) == Counter(d.value for d in wallets)
    assert {o.headers["replay-count"] for o in moved} == {b"1"}
    assert all(o.headers["replay-of"].startswith(config.topics.unrouted.encode()) for o in moved)
    assert (second.scanned, second.replayed) == (0, 0), "a second run replays nothing"
    assert len(after) == 200
    assert len(await records_of(routed, config.topics.unrouted)) == 200, "nothing new unrouted"


async def test_a_delivery_that_keeps_failing_returns_with_its_count_then_is_skipped(
    config: Config,
) -> None:
    config = msgspec.structs.replace(
        config, replay=msgspec.structs.replace(config.replay, max_attempts=2)
    )
    await create_topics(config)
    broken = b'{"id": "whd_broken1", "event": "integration.updated"}'
    await produce_raw(config, [Delivery(b"user_9", broken, "dlq")])
    filters = ReplayFilters(source=config.topics.dlq, target=config.topics.raw)
    summaries = []
    async with worker_running(config):
        for attempt in range(1, 4):
            await until_in(config, config.topics.dlq, attempt)
            summaries.append(await replay(config, filters))
        dead = await records_of(config, config.topics.dlq)

    assert [s.replayed for s in summaries] == [1, 1, 0]
    assert summaries[2].skipped_max_attempts == 1
    assert summaries[2].skipped_ids == ["whd_broken1"]
    assert summaries[0].by_error_class == {"ValidationError": 1}
    assert [o.headers.get("replay-count") for o in dead] == [None, b"1", b"2"]
    assert {o.value for o in dead} == {broken}


async def test_a_dry_run_reports_what_it_would_replay_and_writes_nothing(
    config: Config,
) -> None:
    await create_topics(config)
    broken = [
        Delivery(b"u", f'{{"id": "whd_b{i}", "event": "integration.updated"}}'.encode(), "dlq")
        for i in range(12)
    ]
    await produce_raw(config, broken)
    async with worker_running(config):
        await until_in(config, config.topics.dlq, 12)
    raw_before = await raw_count(config)
    filters = ReplayFilters(source=config.topics.dlq, target=config.topics.raw)

    dry = await replay(config, filters, dry_run=True)
    real = await replay(config, filters)

    assert dry.dry_run
    assert (dry.scanned, dry.replayed) == (12, 12)
    assert dry.by_error_class == {"ValidationError": 12}
    assert dry.by_event == {"integration.updated": 12}
    assert len(dry.first_ids) == 10
    assert '"would_replay":12' in dry.json()
    assert real.replayed == 12, "the dry run committed nothing"
    # A committed transaction's markers are written after the commit returns.
    async with asyncio.timeout(30):
        while await raw_count(config) < raw_before + 12:
            await asyncio.sleep(0.2)
    assert await raw_count(config) == raw_before + 12


async def test_a_replay_cut_short_goes_on_where_it_stopped_replaying_nothing_twice(
    config: Config,
) -> None:
    await create_topics(config)
    broken = [
        Delivery(f"u{i % 3}".encode(), f'{{"id": "whd_c{i}", "event": "a.b"}}'.encode(), "dlq")
        for i in range(90)
    ]
    await produce_raw(config, broken)
    async with worker_running(config):
        await until_in(config, config.topics.dlq, 90)
    filters = ReplayFilters(source=config.topics.dlq, target=config.topics.raw)

    cut = await replay(config, filters, limit=25)  # as if interrupted after 25
    rest = await replay(config, filters)

    assert (cut.replayed, rest.replayed) == (25, 65)
    # A commit returns before its markers reach the partitions; until they do, a
    # read_committed reader stops short of the transaction's records.
    async with asyncio.timeout(30):
        while len(replays := await replays_in_raw(config)) < 90:
            await asyncio.sleep(0.2)
    assert len(replays) == 90
    assert set(replays.values()) == {1}, "a record was replayed twice"


async def replays_in_raw(config: Config) -> Counter[bytes]:
    """How often each `replay-of` occurs in the raw topic, read committed."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=config.kafka.bootstrap_servers, isolation_level="read_committed"
    )
    await consumer.start()
    try:
        partitions = await partitions_of(consumer, config.topics.raw)
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        replays: Counter[bytes] = Counter()
        async for _, records in read_to_end(consumer, partitions):
            for record in records:
                if (source := dict(record.headers).get("replay-of")) is not None:
                    replays[source] += 1
    finally:
        await consumer.stop()
    return replays


@pytest.mark.usefixtures("topics")
async def test_the_command_prints_one_json_summary_line(config: Config) -> None:
    env = worker_env(config) | {"PROCESSOR_LOGGING__FORMAT": "json"}
    result = await asyncio.to_thread(
        subprocess.run,
        [
            sys.executable,
            *("-m", "processor.cli", "--config", str(REPO / "config.yaml")),
            *("replay", "--from", config.topics.dlq, "--dry-run"),
        ],
        env=env,
        capture_output=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 0, result.stderr.decode()
    summary = json.loads(result.stdout.decode().strip().splitlines()[-1])
    assert summary["event"] == "replay.summary"
    assert (summary["dry_run"], summary["would_replay"], summary["scanned"]) == (True, 0, 0)


def spawn_replay(
    log: Path, *args: str, source: str = "webhooks.dlq", **env: str
) -> subprocess.Popen[bytes]:
    """`processor replay --from SOURCE ARGS` as a process, logging JSON to `log`."""
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "processor.cli", "--config", str(REPO / "config.yaml"),
             "replay", "--from", source, *args],
            env=os.environ | {"PROCESSOR_LOGGING__FORMAT": "json"} | env,
            stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip


async def test_sigterm_ends_a_replay_at_once_even_while_kafka_is_being_reached(
    tmp_path: Path,
) -> None:
    log = tmp_path / "replay.log"
    process = spawn_replay(log, KAFKA_BOOTSTRAP_SERVERS=f"127.0.0.1:{free_port()}")
    try:
        async with asyncio.timeout(30):  # until it is waiting for a Kafka that is not there
            while "kafka.waiting" not in log.read_text():
                assert process.poll() is None, log.read_text()
                await asyncio.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        started = time.monotonic()
        code = await asyncio.to_thread(process.wait, 10)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()

    assert time.monotonic() - started < 3
    assert code == 0, log.read_text()
    assert '"replayed":0' in log.read_text().replace(" ", "")


async def test_a_dry_run_ends_cleanly_without_a_producer_left_unclosed(
    config: Config, tmp_path: Path
) -> None:
    await create_topics(config)
    log = tmp_path / "replay.log"
    process = spawn_replay(
        log,
        "--dry-run",
        source=config.topics.dlq,
        KAFKA_BOOTSTRAP_SERVERS=config.kafka.bootstrap_servers,
        PROCESSOR_TOPICS__DLQ=config.topics.dlq,
    )
    code = await asyncio.to_thread(process.wait, 60)

    output = log.read_text()
    assert code == 0, output
    assert '"dry_run":true' in output.replace(" ", "")
    assert "Unclosed" not in output
    assert '"level":"error"' not in output.replace(" ", "")
