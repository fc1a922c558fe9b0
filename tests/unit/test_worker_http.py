"""The worker's HTTP port on loopback: what it answers, a taken port, and closing it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import aiohttp
import pytest

from processor.devtools.ports import free_port
from processor.errors import ConfigError
from processor.metrics import WorkerMetrics
from processor.worker.http import Unready, serve_health_and_metrics

HOST = "127.0.0.1"


async def test_serves_healthz_and_the_workers_metrics_then_closes_the_port() -> None:
    metrics = WorkerMetrics()
    metrics.produce_failures.inc()
    port = free_port()
    async with (
        serve_health_and_metrics(host=HOST, port=port, metrics=metrics),
        aiohttp.ClientSession(f"http://{HOST}:{port}") as session,
    ):
        async with session.get("/healthz") as response:
            assert response.status == 200
            assert await response.json() == {"status": "ok"}
            assert response.headers["Server"] == "processor", "no versions given away"
        async with session.get("/metrics") as response:
            assert response.status == 200
            assert response.headers["Content-Type"].startswith("text/plain")
            assert "processor_worker_produce_failures_total 1.0" in await response.text()
    with socket.socket() as probe:
        assert probe.connect_ex((HOST, port)) != 0, "the port is still open"


async def test_a_taken_port_is_a_config_error_naming_the_setting() -> None:
    with socket.socket() as taken:
        taken.bind((HOST, 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match=r"PROCESSOR_WORKER__METRICS_PORT"):
            async with serve_health_and_metrics(host=HOST, port=port, metrics=WorkerMetrics()):
                pass


@pytest.mark.slow  # a Python process of its own
def test_a_worker_on_a_taken_port_stops_before_making_a_kafka_client() -> None:
    with socket.socket() as taken:
        taken.bind((HOST, 0))
        taken.listen()
        env = os.environ | {"PROCESSOR_WORKER__METRICS_PORT": str(taken.getsockname()[1])}
        exited = subprocess.run(
            [sys.executable, "-m", "processor.cli", "worker"],
            env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip

    assert exited.returncode == 2
    assert "PROCESSOR_WORKER__METRICS_PORT" in exited.stderr
    assert "Unclosed" not in exited.stderr, exited.stderr


async def test_readyz_is_503_naming_the_paused_partitions_while_healthz_stays_200() -> None:
    unready: list[Unready] = []
    port = free_port()
    async with (
        serve_health_and_metrics(
            host=HOST,
            port=port,
            metrics=WorkerMetrics(),
            not_ready=lambda: unready[-1] if unready else None,
        ),
        aiohttp.ClientSession(f"http://{HOST}:{port}") as session,
    ):
        async with session.get("/readyz") as response:
            assert (response.status, await response.json()) == (200, {"status": "ready"})
        unready.append(Unready("dlq_breaker_open", "paused", ("webhooks.raw/2",)))
        async with session.get("/readyz") as response:
            assert response.status == 503
            body = await response.json()
        async with session.get("/healthz") as response:
            assert response.status == 200

    assert body["error"] == "dlq_breaker_open"
    assert body["partitions"] == ["webhooks.raw/2"]
