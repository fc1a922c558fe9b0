"""Drills for each delivery once: crashes, a broker stop (exactly once), the group growing
and shrinking, a rebalance every ten seconds (`make drills`), a paused zombie, an
expiring dedup window; in both guarantees.

Each sends 20,000 distinct deliveries, a third of them two or three times as the
provider retries (some retries after the first copy was routed), through `processor
worker` processes, and reads every derived topic back with read_committed. Exactly
once: every delivery exactly once, nothing else. At least once with dedup: no provider
retry gets through; a crash duplicates at most one checkpoint. Both: nothing lost, each
user's order kept.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

import msgspec
import pytest

from processor.config import Config, KafkaConfig
from processor.devtools.broker import LocalBroker
from processor.kafka.topics import create_topics
from tests.deliveries import Delivery, mixed_stream, with_retries
from tests.drills import error_lines
from tests.harness import (
    BATCH,
    SpawnWorker,
    assert_each_delivered,
    produce_raw,
    read_outputs,
    wait_exit,
    wait_for_outputs,
    wait_for_partitions,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DELIVERIES = 20_000
GUARANTEES = ["at_least_once", "exactly_once"]


def chunks(sent: list[Delivery], count: int) -> list[list[Delivery]]:
    size = -(-len(sent) // count)
    return [sent[i : i + size] for i in range(0, len(sent), size)]


def events(log: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]


def check(
    config: Config,
    stream: list[Delivery],
    outputs: list[Any],
    guarantee: str,
    *,
    crashes: int,
    per_crash: int = BATCH,
) -> None:
    """Nothing lost, order kept; exactly once: nothing twice; at least once: at most a
    checkpoint (`per_crash` records: a batch, by default) twice per crash, and no
    provider retry (every copy of a retried delivery beyond the first is a retry)."""
    written = assert_each_delivered(config, stream, outputs)
    twice = sum(count - 1 for count in written.values())
    if guarantee == "exactly_once":
        assert twice == 0, f"{twice} records in the read_committed view more than once"
    else:
        assert twice <= per_crash * crashes, f"{twice} duplicates after {crashes} crashes"


# A checkpoint per batch, and per second or 4,000 records (at least once's default
# interval, with fewer records than the default 10,000).
CHECKPOINTS = {
    "per_batch": {"COMMIT_INTERVAL_MS": "0"},
    "per_second": {"COMMIT_INTERVAL_MS": "1000", "COMMIT_EVERY_RECORDS": "4000"},
}


@pytest.mark.usefixtures("topics")
@pytest.mark.parametrize("checkpoints", list(CHECKPOINTS))
@pytest.mark.parametrize("guarantee", GUARANTEES)
async def test_worker_killed_and_restarted(
    config: Config, spawn_worker: SpawnWorker, guarantee: str, checkpoints: str
) -> None:
    env = {"PROCESSOR_WORKER__GUARANTEE": guarantee} | {
        f"PROCESSOR_WORKER__{name}": value for name, value in CHECKPOINTS[checkpoints].items()
    }
    if guarantee == "exactly_once":
        # As deploy/ runs it: the restart, a static member of the same id, aborts the
        # transaction the kill left open at once. A dynamic one waits for Kafka to abort
        # it (worker.transaction_timeout_ms, 60 s: this test took 66 s so).
        env["PROCESSOR_WORKER__GROUP_INSTANCE_ID"] = "killed-and-restarted"
    stream = mixed_stream(DELIVERIES, seed=51)
    first_half, second_half = chunks(with_retries(stream), 2)
    await produce_raw(config, first_half)
    first = spawn_worker(**env)
    await wait_for_outputs(config, 3_000)
    first.send_signal(signal.SIGKILL)
    assert await wait_exit(first, 10) == -signal.SIGKILL

    spawn_worker(**env)
    await produce_raw(config, second_half)
    outputs = await read_outputs(config, len(stream))

    # A checkpoint holds commit_every_records and what the batch that reached it added.
    per_crash = BATCH if checkpoints == "per_batch" else 4_000 + BATCH
    check(config, stream, outputs, guarantee, crashes=1, per_crash=per_crash)


# Exactly once only: at least once through a broker outage (dedup on, as by default) is
# tests/integration/test_outage_drills.py's, with the ingress and outages past every timeout.
@pytest.mark.usefixtures("kafka_jars")
async def test_broker_stopped_under_load_and_started_again_routes_each_delivery_once(
    config: Config, spawn_worker: SpawnWorker
) -> None:
    guarantee = "exactly_once"
    stream = mixed_stream(DELIVERIES, seed=53)
    parts = chunks(with_retries(stream), 4)
    with LocalBroker.temporary() as broker:
        config = msgspec.structs.replace(
            config, kafka=KafkaConfig(bootstrap_servers=broker.bootstrap)
        )
        await create_topics(config)
        await produce_raw(config, parts[0])
        worker = spawn_worker(
            KAFKA_BOOTSTRAP_SERVERS=broker.bootstrap,
            PROCESSOR_WORKER__GUARANTEE=guarantee,
            PROCESSOR_WORKER__PRODUCE_TIMEOUT_S="5",
        )
        await produce_raw(config, parts[1])
        await wait_for_outputs(config, 3_000)
        await asyncio.to_thread(broker.stop)  # graceful: SIGTERM, as an operator would
        await asyncio.sleep(3)
        await asyncio.to_thread(broker.start)  # the same directory and ports
        for part in parts[2:]:
            await produce_raw(config, part)
        outputs = await read_outputs(config, len(stream))
        assert worker.poll() is None, "the worker outlived the broker's restart"

    check(config, stream, outputs, guarantee, crashes=0)


@pytest.mark.usefixtures("topics")
@pytest.mark.parametrize("guarantee", GUARANTEES)
async def test_group_grows_to_three_and_shrinks_to_one_under_load(
    config: Config, spawn_worker: SpawnWorker, tmp_path: Path, guarantee: str
) -> None:
    stream = mixed_stream(DELIVERIES, seed=57)
    parts = chunks(with_retries(stream), 10)
    env = {"PROCESSOR_WORKER__GUARANTEE": guarantee}
    first = spawn_worker(**env)
    joined: list[subprocess.Popen[bytes]] = []
    for index, part in enumerate(parts):
        await produce_raw(config, part)
        if index == 2:
            joined = [spawn_worker(**env), spawn_worker(**env)]
            await wait_for_partitions(tmp_path / "worker2.log")
        if index == 6:
            for worker in joined:
                worker.send_signal(signal.SIGTERM)  # they leave: everything moves back
        await asyncio.sleep(0.3)
    for worker in joined:
        assert await wait_exit(worker, config.worker.shutdown_timeout_s) == 0
    outputs = await read_outputs(config, len(stream))

    assert first.poll() is None, "the first worker is still running"
    check(config, stream, outputs, guarantee, crashes=0)


@pytest.mark.usefixtures("topics")
async def test_a_paused_zombie_cannot_commit_into_the_read_committed_view(
    config: Config, spawn_worker: SpawnWorker, tmp_path: Path
) -> None:
    stream = mixed_stream(DELIVERIES, seed=59)
    parts = chunks(with_retries(stream), 4)
    env = {"PROCESSOR_WORKER__GUARANTEE": "exactly_once"}
    await produce_raw(config, parts[0])
    zombie = spawn_worker(**env)
    await wait_for_outputs(config, 2_000)
    await produce_raw(config, parts[1])
    zombie.send_signal(signal.SIGSTOP)  # mid-stream, most likely mid-transaction
    try:
        owner = spawn_worker(**env)  # gets the partitions once the zombie's session expires
        await wait_for_partitions(tmp_path / "worker1.log")
        await produce_raw(config, parts[2])
    finally:
        zombie.send_signal(signal.SIGCONT)
    await produce_raw(config, parts[3])
    outputs = await read_outputs(config, len(stream))

    check(config, stream, outputs, "exactly_once", crashes=0)
    assert owner.poll() is None
    woke = events(tmp_path / "worker0.log")
    reported = {e["event"] for e in woke}
    # The zombie learns it lost the partitions (a fenced transaction, a failed heartbeat)
    # and rejoins, still running, or has left cleanly.
    assert "partition.fenced" in reported or "partitions.revoked" in reported, reported
    assert zombie.poll() in (None, 0)
    # Quietly: a fence is a warning once per partition, never a traceback or an error.
    fenced = [e["partition"] for e in woke if e["event"] == "partition.fenced"]
    assert len(fenced) == len(set(fenced)), fenced
    for log in ("worker0.log", "worker1.log"):
        assert not error_lines(tmp_path / log), error_lines(tmp_path / log)


@pytest.mark.usefixtures("topics")
@pytest.mark.parametrize(
    "guarantee",
    # Dedup's window does not depend on the guarantee: make test runs the stricter one
    # (each takes 45 s of waiting for the window), `make drills` both.
    [pytest.param("at_least_once", marks=pytest.mark.drill), "exactly_once"],
)
async def test_a_worker_restarted_after_its_window_partly_expired(
    config: Config, spawn_worker: SpawnWorker, guarantee: str
) -> None:
    # The recent half's ids must outlive the restart by a wide margin, however slowly
    # a busy machine starts the second worker and restores its ids.
    window_s = 30
    env = {
        "PROCESSOR_WORKER__GUARANTEE": guarantee,
        "PROCESSOR_DEDUP__WINDOW_S": str(window_s),
    }
    stream = mixed_stream(DELIVERIES, seed=61)
    old, recent = stream[: DELIVERIES // 2], stream[DELIVERIES // 2 :]
    loop = asyncio.get_running_loop()
    await produce_raw(config, old)
    first = spawn_worker(**env)
    await wait_for_outputs(config, len(old))
    old_routed_by = loop.time()
    await asyncio.sleep(window_s / 2)
    await produce_raw(config, recent)
    await wait_for_outputs(config, len(stream))
    first.send_signal(signal.SIGTERM)
    assert await wait_exit(first, config.worker.shutdown_timeout_s) == 0
    # The old half's ids have expired by then, the recent half's not.
    await asyncio.sleep(max(0.0, old_routed_by + window_s + 1 - loop.time()))

    spawn_worker(**env)
    valid = [d for d in stream if d.kind != "dlq"]
    await produce_raw(config, valid)  # every valid delivery retried once
    expired = sum(1 for d in old if d.kind != "dlq")
    outputs = await read_outputs(config, len(stream))
    assert len(outputs) >= len(stream) + expired

    written = Counter(o.value for o in outputs)
    assert {written[d.value] for d in old if d.kind != "dlq"} == {2}, "expired ids route again"
    assert {written[d.value] for d in recent if d.kind != "dlq"} == {1}, "a retry got through"
    assert {written[d.value] for d in stream if d.kind == "dlq"} == {1}


# Long: `make drills` runs it, not make test.
CHURN_S = 120
CHURN_EVERY_S = 10
CHURN_STEP_S = 0.5  # a chunk of deliveries this often


@pytest.mark.drill
@pytest.mark.timeout(CHURN_S + 300)
@pytest.mark.usefixtures("topics")
@pytest.mark.parametrize("guarantee", GUARANTEES)
async def test_a_rebalance_every_ten_seconds_for_two_minutes_under_load(
    config: Config, spawn_worker: SpawnWorker, tmp_path: Path, guarantee: str
) -> None:
    """Workers join and leave (SIGTERM) in turn, 1 → 2 → 3 → 2 → 1 ..., while the raw
    topic fills at about 200 records/s: every rebalance commits what each member staged
    before its partitions move, so nothing is routed twice, in either guarantee."""
    stream = mixed_stream(DELIVERIES, seed=61)
    parts = chunks(with_retries(stream), int(CHURN_S / CHURN_STEP_S))
    env = {"PROCESSOR_WORKER__GUARANTEE": guarantee}
    first = spawn_worker(**env)
    await wait_for_partitions(tmp_path / "worker0.log")
    joined: list[subprocess.Popen[bytes]] = []
    rebalances = 0
    spawned = 1
    clock = asyncio.get_running_loop().time
    started = clock()
    for index, part in enumerate(parts):
        await produce_raw(config, part)
        if clock() - started >= (rebalances + 1) * CHURN_EVERY_S:
            rebalances += 1
            if rebalances % 4 in (1, 2):
                joined.append(spawn_worker(**env))
                spawned += 1
            else:
                leaving = joined.pop()
                leaving.send_signal(signal.SIGTERM)  # a dynamic member leaves the group
                assert await wait_exit(leaving, config.worker.shutdown_timeout_s) == 0
        await asyncio.sleep(max(0.0, started + (index + 1) * CHURN_STEP_S - clock()))
    outputs = await read_outputs(config, len(stream))

    print(
        json.dumps(
            {
                "drill": f"a rebalance every {CHURN_EVERY_S} s, {guarantee}",
                "rebalances": rebalances,
                "workers": spawned,
                "deliveries": len(stream),
                "outputs": len(outputs),
            }
        )
    )
    assert rebalances >= CHURN_S // CHURN_EVERY_S - 1, rebalances
    assert first.poll() is None, "the first worker is still running"
    check(config, stream, outputs, guarantee, crashes=0)
    for number in range(spawned):
        log = tmp_path / f"worker{number}.log"
        assert not error_lines(log), error_lines(log)
