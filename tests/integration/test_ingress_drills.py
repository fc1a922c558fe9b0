"""Drills for `processor ingress` as a process: Kafka stopped under load, SIGTERM at start-up.

Bounded by what an operator would see: log lines, CPU, time to exit; and nothing
answered 202 that is not in the raw topic.
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
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from processor.devtools.broker import LocalBroker
from processor.devtools.ports import free_port
from tests.harness import REPO, read_topic
from tests.ingress_harness import SECRET, delivery, signed
from tests.integration.test_ingress import ids_of

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def entries(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{")]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def ingress_process(log: Path, **env: str) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "processor.cli",
                "--config",
                str(REPO / "config.yaml"),
                "ingress",
            ],
            env=os.environ
            | {
                "WEBHOOK_SECRET": SECRET,
                "PROCESSOR_LOGGING__FORMAT": "json",
                "PROCESSOR_INGRESS__MANAGEMENT_PORT": str(free_port()),
            }
            | env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()


@contextlib.asynccontextmanager
async def session_for(port: int) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(f"http://127.0.0.1:{port}") as session:
        async with asyncio.timeout(30):
            while True:
                with contextlib.suppress(aiohttp.ClientConnectionError):
                    async with session.get("/healthz") as response:
                        if response.status == 200:
                            break
                await asyncio.sleep(0.1)
        yield session


async def test_sigterm_while_kafka_is_still_being_reached_ends_the_ingress_at_once(
    tmp_path: Path,
) -> None:
    log = tmp_path / "ingress.log"
    with ingress_process(
        log,
        KAFKA_BOOTSTRAP_SERVERS=f"127.0.0.1:{free_port()}",
        PROCESSOR_INGRESS__PORT=str(free_port()),
    ) as process:
        # Until it says it is waiting for a Kafka that is not there (however slow its
        # imports on a busy machine): its signal handlers are in place by then.
        async with asyncio.timeout(30):
            while "kafka.waiting" not in [e["event"] for e in entries(log)]:
                assert process.poll() is None, log.read_text()
                await asyncio.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        started = time.monotonic()
        async with asyncio.timeout(10):
            while process.poll() is None:
                await asyncio.sleep(0.05)

    assert time.monotonic() - started < 3
    assert process.returncode == 0, log.read_text()
    assert "ingress.stopped" in [e["event"] for e in entries(log)]


async def test_graceful_broker_stop_under_load_is_one_warning_not_a_flood(
    tmp_path: Path, kafka_jars: Path, unique_name: Any
) -> None:
    topic = unique_name("raw")
    port = free_port()
    log = tmp_path / "ingress.log"
    with LocalBroker.temporary() as broker:
        from aiokafka.admin import AIOKafkaAdminClient, NewTopic

        admin = AIOKafkaAdminClient(bootstrap_servers=broker.bootstrap)
        await admin.start()
        await admin.create_topics([NewTopic(topic, num_partitions=3, replication_factor=1)])
        await admin.close()
        accepted: set[str] = set()
        with ingress_process(
            log,
            KAFKA_BOOTSTRAP_SERVERS=broker.bootstrap,
            PROCESSOR_TOPICS__RAW=topic,
            PROCESSOR_INGRESS__PORT=str(port),
            PROCESSOR_INGRESS__PUBLISH_TIMEOUT_S="2",
        ) as process:
            async with session_for(port) as session:
                sent = 0

                done = asyncio.Event()

                async def client(index: int) -> None:
                    nonlocal sent
                    while not done.is_set():
                        sent += 1
                        name = f"{index}-{sent}"
                        body = delivery(name)
                        async with session.post("/webhooks", data=body, headers=signed(body)) as r:
                            if r.status == 202:
                                accepted.add(f"whd_{name}")
                            else:
                                assert r.status == 503, await r.text()
                                await asyncio.sleep(0.2)

                load = [asyncio.create_task(client(i)) for i in range(8)]
                await asyncio.sleep(3)
                healthy = entries(log)
                await asyncio.to_thread(broker.stop)  # SIGTERM: a graceful broker shutdown
                lines_before, cpu_before = len(entries(log)), cpu_seconds(process.pid)
                await asyncio.sleep(10)
                outage = entries(log)[lines_before:]
                cpu = cpu_seconds(process.pid) - cpu_before
                await asyncio.to_thread(broker.start)
                await asyncio.sleep(5)  # load goes on until the producer writes again
                done.set()
                await asyncio.gather(*load)
            process.send_signal(signal.SIGTERM)
            assert process.wait(30) == 0
        stored = set(ids_of(await read_topic(broker.bootstrap, topic)))

    assert accepted <= stored, "a delivery answered 202 is not in the raw topic"
    assert not [e for e in healthy if e["level"] in ("error", "critical")], healthy
    noise = [e for e in outage if e["event"] not in ("ingress.rejected", "kafka.unreachable")]
    assert len(noise) <= 5, noise
    rejected = [e for e in outage if e["event"] == "ingress.rejected"]
    assert all(e["status"] == 503 for e in rejected)
    assert len(rejected) <= sent
    assert cpu < 2.0, f"{cpu:.2f} CPU seconds in a 10 s outage"
    events = [e["event"] for e in entries(log)]
    assert events.count("kafka.unreachable") == 1
    assert events.count("kafka.reachable") == 1


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


async def test_memory_of_stalled_large_bodies_is_given_back_once_they_end(
    tmp_path: Path, kafka_bootstrap: str
) -> None:
    port = free_port()
    stalled = 60
    with ingress_process(
        tmp_path / "ingress.log",
        KAFKA_BOOTSTRAP_SERVERS=kafka_bootstrap,
        PROCESSOR_INGRESS__PORT=str(port),
        PROCESSOR_INGRESS__BODY_TIMEOUT_S="3",
    ) as process:
        async with session_for(port):
            before = rss_mb(process.pid)
            head = (
                b"POST /webhooks HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
                b"Content-Length: 1048576\r\n\r\n"
            )
            connections = []
            for _ in range(stalled):  # each 10 bytes short of its 1 MiB body, then silent
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(head + b"x" * (1_048_576 - 10))
                connections.append((reader, writer))
            await asyncio.sleep(2)
            peak = rss_mb(process.pid)
            for reader, writer in connections:  # each is answered 408 at its deadline
                async with asyncio.timeout(10):
                    assert (await reader.readline()).startswith(b"HTTP/1.1 408 ")
                writer.close()
            await asyncio.sleep(2)
            after = rss_mb(process.pid)

    assert peak - before > 30, "the bodies were never held: the drill measured nothing"
    assert after - before < 15, f"{before:.0f} MB before, {peak:.0f} at the peak, {after:.0f} after"
