"""The DLQ circuit breaker on a real broker: a stream that turns bad mid-way is held in
the raw topic, not dead-lettered, and the worker says so on /readyz."""

from __future__ import annotations

import asyncio
import signal
from collections import Counter
from pathlib import Path

import aiohttp
import pytest

from processor.config import Config
from processor.devtools.ports import free_port
from tests.deliveries import Delivery, integration_event
from tests.harness import (
    SpawnWorker,
    produce_raw,
    read_all_outputs,
    read_outputs,
    wait_exit,
    wait_for_outputs,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def stream_turning_bad(good: int, bad: int) -> list[Delivery]:
    """Valid deliveries, then a provider format change: `status` became a number."""
    deliveries = [
        Delivery(
            f"user_{i % 7}".encode(),
            integration_event(index=i, uid=f"user_{i % 7}", status="active"),
            "routed:active",
        )
        for i in range(good)
    ]
    for i in range(good, good + bad):
        value = integration_event(index=i, uid=f"user_{i % 7}", status="active")
        deliveries.append(
            Delivery(
                f"user_{i % 7}".encode(), value.replace(b'"status":"active"', b'"status":7'), "dlq"
            )
        )
    return deliveries


@pytest.mark.usefixtures("topics")
async def test_a_stream_turning_bad_is_held_not_dead_lettered_and_reported_until_fixed(
    config: Config, spawn_worker: SpawnWorker, tmp_path: Path
) -> None:
    stream = stream_turning_bad(good=600, bad=600)
    await produce_raw(config, stream)
    port = free_port()
    guarded = spawn_worker(
        PROCESSOR_WORKER__METRICS_PORT=str(port), PROCESSOR_WORKER__DLQ_MAX_CONSECUTIVE="50"
    )
    await wait_for_outputs(config, 600)
    async with aiohttp.ClientSession(f"http://127.0.0.1:{port}") as session:
        async with asyncio.timeout(30):
            while True:
                async with session.get("/readyz") as response:
                    if response.status == 503:
                        body = await response.json()
                        break
                await asyncio.sleep(0.2)
        async with session.get("/healthz") as response:
            assert response.status == 200, "a data problem is not a liveness problem"
    async with asyncio.timeout(30):  # every good delivery before the held ones routed
        while True:
            held = await read_all_outputs(config)
            if sum(o.topic != config.topics.dlq for o in held) >= 600:
                break
            await asyncio.sleep(0.2)
    guarded.send_signal(signal.SIGTERM)
    assert await wait_exit(guarded, 30) == 0

    assert body["error"] == "dlq_breaker_open"
    assert body["partitions"], body
    dead = [o for o in held if o.topic == config.topics.dlq]
    assert len(dead) <= 3 * 50, "the breaker let a whole stream into the DLQ"
    assert len(held) - len(dead) == 600, "every good delivery was routed"

    # The way out here: turn the breaker off; the held records were never lost.
    spawn_worker(PROCESSOR_WORKER__DLQ_MAX_RATIO="1.0")
    outputs = await read_outputs(config, len(stream))
    written = Counter(o.value for o in outputs)
    assert set(written) == {d.value for d in stream}
    assert sum(written.values()) == len(stream), "held records were routed once"
    log = (tmp_path / "worker0.log").read_text()
    assert '"partition.dlq_breaker_open"' in log
