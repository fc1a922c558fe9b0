"""One KRaft JVM (broker and controller) and the directory that holds it.

A node's directory keeps everything of it: `server.properties`, `data/`,
`broker.log`, `broker.pid` and `broker.json` (its ports), so a node stopped and
spawned again from the same directory is the same node with its data.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shlex
import signal
import subprocess
import time
from pathlib import Path

from processor.devtools.jars import require_tool
from processor.devtools.ports import port_in_use
from processor.errors import BrokerError

__all__ = ["Node", "saved_ports"]

# A test broker needs little heap; three of them fit a CI machine comfortably.
HEAP_FLAGS = ("-Xms512m", "-Xmx512m")
# Kafka's own; KAFKA_JVM_PERFORMANCE_OPTS replaces them, as it does in Kafka's scripts
# (the test suite's brokers start on a third less CPU with C1 only and a serial GC).
PERFORMANCE_FLAGS = ("-XX:+UseG1GC", "-Djava.awt.headless=true")
# A JVM that ignores SIGTERM this long is killed: a graceful stop takes ~2 s.
STOP_TIMEOUT_S = 30.0
# Formatting storage is one short JVM run.
FORMAT_TIMEOUT_S = 120.0

_LOG4J2 = """\
status = error
appender.console.type = Console
appender.console.name = console
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = warn
rootLogger.appenderRef.console.ref = console
logger.server.name = kafka.server.KafkaRaftServer
logger.server.level = info
"""


def _set_parent_death_signal() -> None:
    """Runs in the child before exec: the JVM gets SIGTERM when its parent dies."""
    pr_set_pdeathsig = 1
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(pr_set_pdeathsig, signal.SIGTERM)


def _performance_flags() -> list[str]:
    chosen = os.environ.get("KAFKA_JVM_PERFORMANCE_OPTS")
    return list(PERFORMANCE_FLAGS) if chosen is None else shlex.split(chosen)


class Node:
    """One KRaft JVM (broker and controller) and the files in its directory."""

    def __init__(self, *, directory: Path, node_id: int, port: int, controller_port: int) -> None:
        self.directory = directory
        self.node_id = node_id
        self.port = port
        self.controller_port = controller_port
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid_file(self) -> Path:
        return self.directory / "broker.pid"

    @property
    def log_file(self) -> Path:
        return self.directory / "broker.log"

    @property
    def formatted(self) -> bool:
        return (self.directory / "data" / "meta.properties").exists()

    def write_properties(self, quorum: dict[str, str], extra: dict[str, str]) -> Path:
        self.directory.mkdir(parents=True, exist_ok=True)
        settings = {
            "process.roles": "broker,controller",
            "node.id": str(self.node_id),
            **quorum,
            "listeners": (
                f"PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}"
            ),
            "advertised.listeners": (
                f"PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}"
            ),
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            "log.dirs": str(self.directory / "data"),
            # A new consumer group rebalances at once instead of waiting 3 s for peers.
            "group.initial.rebalance.delay.ms": "0",
            # The cleaner's default 128 MiB buffer does not fit a 512 MiB test heap.
            "log.cleaner.dedupe.buffer.size": "2097152",
            "num.network.threads": "2",
            "num.io.threads": "2",
            "auto.create.topics.enable": "false",
            **extra,
        }
        path = self.directory / "server.properties"
        path.write_text("".join(f"{k}={v}\n" for k, v in settings.items()))
        (self.directory / "log4j2.properties").write_text(_LOG4J2)
        return path

    def _java(self, libs: Path, *args: str) -> list[str]:
        return [
            require_tool("java", "install OpenJDK 17 or newer"),
            *HEAP_FLAGS,
            *_performance_flags(),
            f"-Dlog4j2.configurationFile={self.directory / 'log4j2.properties'}",
            "-cp",
            f"{libs}/*",
            *args,
        ]

    def format(self, libs: Path, cluster_id: str, *, standalone: bool) -> None:
        properties = str(self.directory / "server.properties")
        args = ["kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", properties]
        if standalone:
            args.append("--standalone")
        try:
            result = subprocess.run(
                self._java(libs, *args),
                capture_output=True,
                text=True,
                check=False,
                timeout=FORMAT_TIMEOUT_S,
            )
        except subprocess.TimeoutExpired:
            raise BrokerError(
                f"formatting {self.directory} took over {FORMAT_TIMEOUT_S:.0f} s; "
                "check that the disk is writable and not full"
            ) from None
        if result.returncode != 0:
            raise BrokerError(
                f"formatting {self.directory} failed:\n{result.stdout}{result.stderr}"
            )

    def spawn(self, libs: Path, *, tie_to_parent: bool) -> None:
        properties = str(self.directory / "server.properties")
        with self.log_file.open("ab") as log:
            self._process = subprocess.Popen(
                self._java(libs, "kafka.Kafka", properties),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                preexec_fn=_set_parent_death_signal if tie_to_parent else None,
            )
        self.pid_file.write_text(str(self._process.pid))
        (self.directory / "broker.json").write_text(
            json.dumps({"port": self.port, "controller_port": self.controller_port})
        )

    def exited(self) -> int | None:
        """The exit code if the JVM we spawned has ended, else None."""
        return None if self._process is None else self._process.poll()

    def running_pid(self) -> int | None:
        """The PID in `broker.pid` if that process is alive and is a Kafka JVM."""
        try:
            pid = int(self.pid_file.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return None
        # A recycled PID would not run Kafka with this directory's properties.
        if b"kafka.Kafka\x00" + str(self.directory).encode() not in cmdline:
            return None
        return pid

    def kill(self) -> None:
        """SIGKILL: a crash, for fault tests."""
        pid = self.running_pid()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
            self._reap(pid, STOP_TIMEOUT_S)

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """SIGTERM (a graceful shutdown), then SIGKILL of the process group."""
        pid = self.running_pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)
        if not self._reap(pid, timeout):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
            self._reap(pid, timeout)
        self.pid_file.unlink(missing_ok=True)
        self._wait_port_free(timeout)

    def _reap(self, pid: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process is not None and self._process.pid == pid:
                if self._process.poll() is not None:
                    return True
            elif not Path(f"/proc/{pid}").exists() or _is_zombie(pid):
                return True
            time.sleep(0.05)
        return False

    def _wait_port_free(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while port_in_use(self.port) and time.monotonic() < deadline:
            time.sleep(0.05)


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] == "Z"


def saved_ports(directory: Path) -> dict[str, int]:
    """The ports the node in `directory` last ran on (`broker.json`); empty if none."""
    try:
        saved: dict[str, int] = json.loads((directory / "broker.json").read_text())
    except (FileNotFoundError, ValueError):
        return {}
    return saved
