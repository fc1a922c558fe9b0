"""`processor dev` end to end, driven by the README's own examples.

One pipeline for the module: the dev command as a user starts it, on free ports.
The README's marked shell and Python blocks run against it unchanged but for the
ports, so the README cannot drift from what works. The last test presses Ctrl-C.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer

from processor.devtools.ports import free_port, port_in_use
from tests.readme import readme_block

pytestmark = [pytest.mark.slow, pytest.mark.integration, pytest.mark.usefixtures("kafka_jars")]

REPO = Path(__file__).resolve().parents[2]
SECRET = "readme-example-secret"


@dataclass
class Pipeline:
    process: subprocess.Popen[str]
    ingress_port: int
    management_port: int
    metrics_port: int
    kafka_port: int
    directory: Path
    output: list[str] = field(default_factory=list)

    def localise(self, text: str) -> str:
        """README examples use the default ports; this pipeline runs on free ones."""
        return (
            text.replace("127.0.0.1:8080", f"127.0.0.1:{self.ingress_port}")
            .replace("127.0.0.1:8081", f"127.0.0.1:{self.management_port}")
            .replace("127.0.0.1:9092", f"127.0.0.1:{self.kafka_port}")
        )

    def wait_for_output(self, text: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not any(text in line for line in self.output):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"no {text!r} from processor dev:\n{''.join(self.output)}")
            time.sleep(0.1)


def pipeline_pids(pipeline: Pipeline) -> list[int]:
    """Processes of this pipeline: its children (by their environment) and its JVM."""
    marker = f"KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:{pipeline.kafka_port}".encode()
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes()
            environ = (proc / "environ").read_bytes()
        except OSError:
            continue
        if str(pipeline.directory).encode() in cmdline or marker in environ.split(b"\0"):
            found.append(int(proc.name))
    return found


def free_ports_in_a_row(count: int) -> int:
    """The first of `count` consecutive free ports, for the dev workers' metrics."""
    while True:
        first = free_port()
        if not any(port_in_use(first + offset) for offset in range(1, count)):
            return first


def dev_command(*options: str) -> list[str]:
    return [sys.executable, "-m", "processor.cli", "--config", str(REPO / "config.yaml"),
            "dev", *options]  # fmt: skip


def printed_until(command: list[str], text: str, *, timeout: float) -> None:
    """Run `command` until it prints a line with `text` (then kill it), or fail."""
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    printed: list[str] = []
    reader = threading.Thread(target=lambda: printed.extend(process.stdout or ()))
    reader.start()
    try:
        deadline = time.monotonic() + timeout
        while not any(text in line for line in printed):
            assert process.poll() is None, f"it ended early:\n{''.join(printed)}"
            assert time.monotonic() < deadline, f"no {text!r} in {timeout} s:\n{''.join(printed)}"
            time.sleep(0.1)
    finally:
        os.killpg(process.pid, signal.SIGKILL)  # a shell's children with it
        process.wait()
        reader.join(10)


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pipeline]:
    directory = tmp_path_factory.mktemp("dev") / "kafka"
    env = {k: v for k, v in os.environ.items() if k != "KAFKA_BOOTSTRAP_SERVERS"}
    env["WEBHOOK_SECRET"] = SECRET
    ingress_port, management_port, kafka_port = free_port(), free_port(), free_port()
    metrics_port = free_ports_in_a_row(2)
    process = subprocess.Popen(
        dev_command("--port", str(ingress_port), "--management-port", str(management_port),
                    "--metrics-port", str(metrics_port), "--kafka-port", str(kafka_port),
                    "--dir", str(directory)),
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    running = Pipeline(process, ingress_port, management_port, metrics_port, kafka_port, directory)
    assert process.stdout is not None
    reader = threading.Thread(target=lambda: running.output.extend(process.stdout or ()))
    reader.start()
    try:
        running.wait_for_output("pipeline is up", timeout=180)
        yield running
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()
        for pid in pipeline_pids(running):
            os.kill(pid, signal.SIGKILL)
        reader.join(10)


def test_banner_shows_the_url_the_secret_and_every_topic(pipeline: Pipeline) -> None:
    banner = "".join(pipeline.output)
    assert f"POST http://127.0.0.1:{pipeline.ingress_port}/webhooks" in banner
    assert "from WEBHOOK_SECRET" in banner
    assert SECRET not in banner, "a secret the user gave is never printed"
    for topic in ("webhooks.raw", "integration.status.partially_synced", "webhooks.dlq"):
        assert topic in banner


def test_banner_lists_each_process_answering_ready_on_a_port_of_its_own(
    pipeline: Pipeline,
) -> None:
    banner = "".join(pipeline.output)
    probes = f"http://127.0.0.1:{pipeline.management_port}"
    assert f"{probes}   /healthz /readyz /metrics" in banner
    with urllib.request.urlopen(f"{probes}/readyz", timeout=5) as response:  # noqa: S310 (http)
        assert response.status == 200
    for index in (1, 2):
        url = f"http://127.0.0.1:{pipeline.metrics_port + index - 1}"
        assert f"worker-{index}: {url}" in banner
        with urllib.request.urlopen(f"{url}/readyz", timeout=5) as response:  # noqa: S310 (http)
            assert response.status == 200


@pytest.mark.parametrize(
    ("same", "refusal"),
    [
        ("directory", "another processor dev (pid {pid}) is running from {directory}"),
        ("ingress port", "127.0.0.1:{ingress_port}, for the ingress, is already taken"),
        ("metrics port", "127.0.0.1:{metrics_port}, for worker-1's metrics, is already taken"),
    ],
)
def test_a_second_dev_that_would_collide_is_refused_before_it_starts_anything(
    pipeline: Pipeline, tmp_path: Path, same: str, refusal: str
) -> None:
    options = {
        "--dir": str(pipeline.directory if same == "directory" else tmp_path / "kafka"),
        "--port": str(pipeline.ingress_port if same == "ingress port" else free_port()),
        "--management-port": str(free_port()),
        "--metrics-port": str(
            pipeline.metrics_port if same == "metrics port" else free_ports_in_a_row(2)
        ),
        "--kafka-port": str(free_port()),
    }
    second = subprocess.run(
        dev_command(*(part for option in options.items() for part in option)),
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip

    assert second.returncode == 2
    expected = refusal.format(
        pid=pipeline.process.pid,
        directory=pipeline.directory,
        ingress_port=pipeline.ingress_port,
        metrics_port=pipeline.metrics_port,
    )
    assert expected in second.stderr
    assert second.stdout == "", "nothing started: no broker, no secret, no child"


@pytest.fixture(scope="module")
def sent(pipeline: Pipeline) -> subprocess.CompletedProcess[str]:
    """The README's send example, run once: the delivery the other tests look for."""
    return subprocess.run(
        ["bash", "-euo", "pipefail", "-c", pipeline.localise(readme_block("send"))],
        env={**os.environ, "WEBHOOK_SECRET": SECRET},
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip


def test_readme_send_example_is_accepted(sent: subprocess.CompletedProcess[str]) -> None:
    result = sent
    assert result.returncode == 0, result.stderr
    assert "HTTP/1.1 202" in result.stdout
    assert '"id":"whd_readme0001"' in result.stdout.replace(" ", "")


@pytest.mark.usefixtures("sent")
async def test_sent_delivery_lands_in_its_status_topic_unchanged(pipeline: Pipeline) -> None:
    body = re.search(r"BODY='(.*)'", readme_block("send"))
    assert body
    consumer = AIOKafkaConsumer(
        "integration.status.completed",
        bootstrap_servers=f"127.0.0.1:{pipeline.kafka_port}",
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        found = None
        deadline = time.monotonic() + 30
        while found is None and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            found = next((r for rs in batch.values() for r in rs), None)
    finally:
        await consumer.stop()
    assert found is not None, "the delivery never reached integration.status.completed"
    assert found.value == body.group(1).encode()
    assert found.key == b"user_123"
    assert dict(found.headers)["status"] == b"COMPLETED"


@pytest.mark.usefixtures("sent")
def test_readme_subscriber_example_prints_the_delivery(pipeline: Pipeline) -> None:
    printed_until(
        [sys.executable, "-c", pipeline.localise(readme_block("subscribe"))],
        "whd_readme0001 user_123 COMPLETED",
        timeout=60,
    )


@pytest.mark.usefixtures("sent")
def test_the_banners_tail_command_shows_the_delivery_as_printed(pipeline: Pipeline) -> None:
    printed = next(line for line in pipeline.output if " tail integration.status.completed" in line)
    printed_until(["sh", "-c", printed.strip()], "whd_readme0001", timeout=60)


@pytest.mark.usefixtures("sent")
def test_readme_kcat_example_shows_the_delivery(pipeline: Pipeline) -> None:
    if subprocess.run(["sh", "-c", "command -v kcat"], capture_output=True).returncode:
        pytest.skip("kcat is not installed (optional: apt-get install kcat)")
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", pipeline.localise(readme_block("watch"))],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "delivery-id=whd_readme0001" in result.stdout


def test_ctrl_c_stops_every_child_and_the_broker(pipeline: Pipeline) -> None:
    assert len(pipeline_pids(pipeline)) >= 4, "ingress, two workers and the JVM should run"
    pipeline.process.send_signal(signal.SIGINT)
    assert pipeline.process.wait(60) == 0
    assert pipeline_pids(pipeline) == []
    assert not any("exited with code" in line for line in pipeline.output)
