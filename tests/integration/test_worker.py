"""The worker against a real broker: every delivery in exactly one topic, at least once.

What comes out of the topics is the evidence: bytes, keys, headers, per-user order
and counts. Crash, graceful stop and rebalance run `processor worker` as real
processes, signalled the way an orchestrator would.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
from collections import Counter
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from processor.config import Config
from processor.devtools.ports import free_port
from processor.kafka.topics import create_topics
from tests.deliveries import Delivery, integration_event, mixed_stream
from tests.harness import (
    BATCH,
    SpawnWorker,
    assert_each_delivered,
    kafka_worker,
    produce_raw,
    read_outputs,
    wait_exit,
    wait_for_outputs,
    wait_for_partitions,
    worker_running,
)

pytestmark = pytest.mark.integration


async def test_mixed_stream_lands_each_delivery_in_exactly_one_topic(config: Config) -> None:
    await create_topics(config)
    stream = mixed_stream(10_000)
    await produce_raw(config, stream)

    async with worker_running(config):
        outputs = await read_outputs(config, len(stream))

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
    from processor.errors import TopicsMissing

    # Nothing created: the first batch would stall on an unknown topic, so refuse to start.
    with pytest.raises(TopicsMissing, match=r"topics missing on .*`processor topics create`"):
        await kafka_worker(config).run(asyncio.Event())


# --- the worker as a process ------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.usefixtures("topics")
async def test_sigkill_mid_stream_loses_nothing_and_duplicates_at_most_one_checkpoint(
    config: Config, spawn_worker: SpawnWorker
) -> None:
    # A checkpoint per second (the default) or per 2,000 records: it holds at most those
    # and what the batch that reached them added.
    checkpoint = 2_000
    stream = mixed_stream(20_000, seed=11)
    await produce_raw(config, stream[:10_000])
    first = spawn_worker(PROCESSOR_WORKER__COMMIT_EVERY_RECORDS=str(checkpoint))
    await wait_for_outputs(config, 3_000)
    first.send_signal(signal.SIGKILL)
    assert await wait_exit(first, 10) == -signal.SIGKILL
    await produce_raw(config, stream[10_000:])

    spawn_worker()
    outputs = await read_outputs(config, len(stream))
    written = assert_each_delivered(config, stream, outputs)
    duplicates = sum(n - 1 for n in written.values())
    assert duplicates <= checkpoint + BATCH, f"{duplicates} duplicates: more than a checkpoint"


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

    assert records == {"routed": 4, "unrouted": 1, "dlq": 1, "duplicate": 0}
    worker.send_signal(signal.SIGTERM)
    code = await wait_exit(worker, config.worker.shutdown_timeout_s)
    assert code == 0, (tmp_path / "worker0.log").read_text()
