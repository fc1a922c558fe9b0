"""`processor broker start|status|stop` as a user runs them, as subprocesses."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from processor.devtools.ports import free_port

pytestmark = [pytest.mark.slow, pytest.mark.integration, pytest.mark.usefixtures("kafka_jars")]

REPO = Path(__file__).resolve().parents[2]


def processor(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "processor.cli", "--config", str(REPO / "config.yaml"), *args],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def kafka_pids(directory: Path) -> list[int]:
    """PIDs of JVMs running Kafka out of `directory`, found the way `ps` would."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if b"kafka.Kafka" in cmdline and str(directory).encode() in cmdline:
            pids.append(int(proc.name))
    return [pid for pid in pids if pid != os.getpid()]


async def test_broker_cli_starts_a_reachable_broker_and_stops_it_without_leftovers(
    tmp_path: Path,
) -> None:
    port = free_port()
    directory = tmp_path / "broker"
    try:
        started = processor("broker", "start", "--port", str(port), "--dir", str(directory))
        assert started.returncode == 0, started.stderr
        assert f"127.0.0.1:{port}" in started.stdout

        again = processor("broker", "start", "--port", str(port), "--dir", str(directory))
        assert again.returncode == 0
        assert "already running" in again.stdout
        assert len(kafka_pids(directory)) == 1

        admin = AIOKafkaAdminClient(bootstrap_servers=f"127.0.0.1:{port}")
        await admin.start()
        try:
            await admin.create_topics([NewTopic("kept.topic", 1, 1)])
        finally:
            await admin.close()

        status = processor("broker", "status", "--dir", str(directory))
        assert status.returncode == 0
        assert "running" in status.stdout

        stopped = processor("broker", "stop", "--dir", str(directory))
        assert stopped.returncode == 0, stopped.stderr
        assert kafka_pids(directory) == []
        assert processor("broker", "status", "--dir", str(directory)).returncode == 3

        # The same directory restarts the same broker, topics included.
        restarted = processor("broker", "start", "--dir", str(directory))
        assert restarted.returncode == 0, restarted.stderr
        admin = AIOKafkaAdminClient(bootstrap_servers=f"127.0.0.1:{port}")
        await admin.start()
        try:
            assert "kept.topic" in await admin.list_topics()
        finally:
            await admin.close()
    finally:
        processor("broker", "stop", "--dir", str(directory))
    assert kafka_pids(directory) == []


def test_broker_start_on_a_taken_port_says_what_to_do(tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = processor("broker", "start", "--port", str(port), "--dir", str(tmp_path / "b"))
    assert result.returncode == 2
    assert f"port {port}" in result.stderr
    assert "KAFKA_BOOTSTRAP_SERVERS" in result.stderr
    assert kafka_pids(tmp_path / "b") == []


def test_dev_on_a_taken_kafka_port_names_its_own_option(tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = processor(
            "dev", "--kafka-port", str(port), "--port", str(free_port()),
            "--dir", str(tmp_path / "b"),
        )  # fmt: skip
    assert result.returncode == 2
    assert f"port {port}" in result.stderr
    assert "pick another with --kafka-port" in result.stderr, result.stderr
    assert kafka_pids(tmp_path / "b") == []
