"""A real Apache Kafka broker for development and tests, without Docker.

The official broker jars come from Maven Central (`deploy/kafka/pom.xml`), are
cached once per Kafka version outside the checkout, and run as a plain `java`
process in KRaft mode on 127.0.0.1. `LocalBroker` is one combined
broker+controller node; `LocalCluster` is three of them with a static quorum, for
fault tests. Both are context managers that always stop their JVMs.

A broker directory holds everything of one broker: `server.properties`, `data/`,
`broker.log` and `broker.pid`, so `processor broker start --dir D` after a stop
restarts the same broker with its topics.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Self

from processor.errors import BrokerError

__all__ = [
    "KAFKA_VERSION",
    "BrokerError",
    "BrokerStatus",
    "LocalBroker",
    "LocalCluster",
    "free_port",
]

# Newest Apache Kafka release tested with aiokafka 0.14 (README: "The local broker").
KAFKA_VERSION = "4.4.0"
# The log4j2 version Kafka was built with; the tarball ships this SLF4J binding.
LOG4J_VERSION = "2.25.3"

POM = Path(__file__).resolve().parents[2] / "deploy" / "kafka" / "pom.xml"
# A test broker needs little heap; three of them fit a CI machine comfortably.
JVM_FLAGS = ("-Xms512m", "-Xmx512m", "-XX:+UseG1GC", "-Djava.awt.headless=true")
# A JVM that ignores SIGTERM this long is killed: a graceful stop takes ~2 s.
STOP_TIMEOUT_S = 30.0
# First start on a machine includes the JIT warm-up of the whole broker.
START_TIMEOUT_S = 90.0
# Fetching ~45 jars (~40 MiB) from Maven Central; a stalled network fails, not hangs.
FETCH_TIMEOUT_S = 600.0
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


class BrokerStatus:
    """What `processor broker status` reports."""

    def __init__(self, *, running: bool, pid: int | None, bootstrap: str | None) -> None:
        self.running = running
        self.pid = pid
        self.bootstrap = bootstrap

    def __str__(self) -> str:
        if self.running:
            return f"running (pid {self.pid}) on {self.bootstrap}"
        return "stopped"


def free_port() -> int:
    """A port the kernel just handed out; a start retries if it was taken since."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return True
        return False


def cache_dir() -> Path:
    """Where jars live: `$PROCESSOR_CACHE_DIR`, else `$XDG_CACHE_HOME/processor`."""
    if configured := os.environ.get("PROCESSOR_CACHE_DIR"):
        return Path(configured)
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "processor"


def kafka_libs(version: str = KAFKA_VERSION) -> Path:
    """The folder of broker jars for `version`, fetched with Maven on first use."""
    libs = cache_dir() / f"kafka-{version}" / "libs"
    if (libs / f"kafka_2.13-{version}.jar").exists():
        return libs
    _require_tool("java", "install OpenJDK 17 or newer (apt-get install openjdk-17-jre-headless)")
    mvn = _require_tool("mvn", "install Apache Maven (apt-get install maven)")
    if not POM.exists():
        raise BrokerError(f"{POM} is missing: run the broker from a checkout of the repository")
    libs.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix="libs.", dir=libs.parent))
    command = [
        mvn, "-B", "-q", "-f", str(POM),
        f"-Dkafka.version={version}", f"-Dlog4j.version={LOG4J_VERSION}",
        "dependency:copy-dependencies", "-DincludeScope=runtime",
        f"-DoutputDirectory={staging}",
    ]  # fmt: skip
    try:
        result = subprocess.run(
            command, capture_output=True, text=True, check=False, timeout=FETCH_TIMEOUT_S
        )
    except subprocess.TimeoutExpired:
        shutil.rmtree(staging, ignore_errors=True)
        raise BrokerError(
            f"Maven did not fetch the Apache Kafka {version} jars within {FETCH_TIMEOUT_S:.0f} s: "
            "check that Maven Central is reachable (mvn's proxy settings in ~/.m2/settings.xml), "
            "or set KAFKA_BOOTSTRAP_SERVERS to use an existing cluster instead."
        ) from None
    if result.returncode != 0:
        shutil.rmtree(staging, ignore_errors=True)
        raise BrokerError(
            f"Maven could not fetch Apache Kafka {version} jars (exit {result.returncode}):\n"
            f"{result.stdout[-2000:]}{result.stderr[-2000:]}\n"
            "Check that Maven Central is reachable, or set KAFKA_BOOTSTRAP_SERVERS "
            "to use an existing cluster instead."
        )
    try:
        staging.rename(libs)
    except OSError:  # another process finished first: its copy is as good as ours
        shutil.rmtree(staging, ignore_errors=True)
    return libs


def _require_tool(name: str, fix: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise BrokerError(
            f"`{name}` is not on PATH; the local Kafka broker needs it: {fix}. "
            "Or set KAFKA_BOOTSTRAP_SERVERS to use an existing cluster."
        )
    return path


def _set_parent_death_signal() -> None:
    """Runs in the child before exec: the JVM gets SIGTERM when its parent dies."""
    pr_set_pdeathsig = 1
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(pr_set_pdeathsig, signal.SIGTERM)


class _Node:
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
            _require_tool("java", "install OpenJDK 17 or newer"),
            *JVM_FLAGS,
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
        while _port_in_use(self.port) and time.monotonic() < deadline:
            time.sleep(0.05)


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] == "Z"


def _cluster_id() -> str:
    """16 random bytes, url-safe base64 without padding, never starting with '-'."""
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not text.startswith("-"):
            return text


def _count_brokers(bootstrap: str) -> int:
    """Brokers in the cluster's metadata, via a real client call; 0 if unreachable."""

    async def probe() -> int:
        from aiokafka.admin import AIOKafkaAdminClient

        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=3000)
        try:
            async with asyncio.timeout(5):
                await admin.start()
                cluster: dict[str, Any] = await admin.describe_cluster()
                return len(cluster.get("brokers", []))
        except Exception:  # any failure means "not ready yet"
            return 0
        finally:
            with contextlib.suppress(Exception):
                await admin.close()

    # Own thread and loop, so callers inside a running event loop can use it too.
    result: list[int] = [0]
    thread = threading.Thread(target=lambda: result.__setitem__(0, asyncio.run(probe())))
    thread.start()
    thread.join()
    return result[0]


class _Nodes:
    """Start, wait and stop shared by the single broker and the cluster."""

    nodes: Sequence[_Node]
    tie_to_parent: bool

    @property
    def bootstrap(self) -> str:
        return ",".join(node.bootstrap for node in self.nodes)

    def _start(self, *, standalone: bool, quorum: dict[str, str], extra: dict[str, str]) -> str:
        libs = kafka_libs()
        cluster_id = _cluster_id()
        for node in self.nodes:
            fresh = not node.formatted
            node.write_properties(quorum, extra)
            if fresh:
                node.format(libs, cluster_id, standalone=standalone)
        for node in self.nodes:
            node.spawn(libs, tie_to_parent=self.tie_to_parent)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self.bootstrap

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            for node in self.nodes:
                code = node.exited()
                if code is not None:
                    tail = node.log_file.read_text(errors="replace")[-3000:]
                    raise BrokerError(
                        f"Kafka node {node.node_id} exited with code {code} during start-up; "
                        f"its log ({node.log_file}) ends with:\n{tail}"
                    )
            listening = all(_port_in_use(node.port) for node in self.nodes)
            if listening and _count_brokers(self.bootstrap) >= len(self.nodes):
                return
            time.sleep(0.2)
        raise BrokerError(
            f"Kafka did not answer on {self.bootstrap} within {START_TIMEOUT_S:.0f} s; "
            f"see {self.nodes[0].log_file}"
        )

    def stop(self) -> None:
        """Stop every JVM, gracefully first; safe to call twice."""
        for node in self.nodes:
            pid = node.running_pid()
            if pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGTERM)
        for node in self.nodes:
            node.stop()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class LocalBroker(_Nodes):
    """One KRaft node on 127.0.0.1: `processor broker`, `processor dev` and tests."""

    def __init__(
        self,
        *,
        directory: str | Path,
        port: int | None = None,
        controller_port: int | None = None,
        tie_to_parent: bool = False,
    ) -> None:
        directory = Path(directory).resolve()
        saved = _saved_ports(directory)
        # A restart of an existing directory keeps its ports unless told otherwise.
        port = port or saved.get("port") or 9092
        if controller_port is None:
            controller_port = saved.get("controller_port") or free_port()
        self.node = _Node(
            directory=directory, node_id=1, port=port, controller_port=controller_port
        )
        self.nodes = (self.node,)
        # Tests tie the JVM's life to theirs; `processor broker start` leaves it running.
        self.tie_to_parent = tie_to_parent

    @classmethod
    @contextlib.contextmanager
    def temporary(cls) -> Iterator[LocalBroker]:
        """A broker on free ports in a fresh directory, removed afterwards."""
        with tempfile.TemporaryDirectory(prefix="kafka-") as directory:
            broker = cls._start_on_free_ports(directory)
            try:
                yield broker
            finally:
                broker.stop()

    @classmethod
    def _start_on_free_ports(cls, directory: str) -> LocalBroker:
        for attempt in range(3):
            broker = cls(
                directory=Path(directory) / f"try{attempt}", port=free_port(), tie_to_parent=True
            )
            try:
                broker.start()
            except BrokerError as exc:
                if "Address already in use" not in str(exc) or attempt == 2:
                    raise
                continue
            return broker
        raise AssertionError("unreachable")

    def status(self) -> BrokerStatus:
        pid = self.node.running_pid()
        bootstrap = _saved_bootstrap(self.node.directory) if pid else None
        return BrokerStatus(running=pid is not None, pid=pid, bootstrap=bootstrap)

    def start(self) -> str:
        """Start (or restart with its data) and return the bootstrap address."""
        if self.node.running_pid() is not None:
            raise BrokerError(
                f"a broker is already running from {self.node.directory} on "
                f"{_saved_bootstrap(self.node.directory)}; stop it first with "
                f"`processor broker stop --dir {self.node.directory}`"
            )
        for port in (self.node.port, self.node.controller_port):
            if _port_in_use(port):
                raise BrokerError(
                    f"port {port} on 127.0.0.1 is already in use: stop what listens there, "
                    "pick another with --port, or set KAFKA_BOOTSTRAP_SERVERS to use "
                    "the Kafka that is already running"
                )
        quorum = {"controller.quorum.bootstrap.servers": f"127.0.0.1:{self.node.controller_port}"}
        single_node = {
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "1",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
        }
        return self._start(standalone=True, quorum=quorum, extra=single_node)

    def kill(self) -> None:
        """SIGKILL the JVM (a crash), keeping its data for a restart."""
        self.node.kill()


def _saved_ports(directory: Path) -> dict[str, int]:
    try:
        saved: dict[str, int] = json.loads((directory / "broker.json").read_text())
    except (FileNotFoundError, ValueError):
        return {}
    return saved


def _saved_bootstrap(directory: Path) -> str:
    port = _saved_ports(directory).get("port")
    return f"127.0.0.1:{port}" if port else "an unknown port"


class LocalCluster(_Nodes):
    """Three KRaft nodes with a static quorum, replication factor 3, for fault tests."""

    def __init__(self, *, directory: str | Path, size: int = 3) -> None:
        root = Path(directory).resolve()
        self.nodes = tuple(
            _Node(
                directory=root / f"node{i}",
                node_id=i,
                port=free_port(),
                controller_port=free_port(),
            )
            for i in range(1, size + 1)
        )
        self.tie_to_parent = True

    @classmethod
    @contextlib.contextmanager
    def temporary(cls, size: int = 3) -> Iterator[LocalCluster]:
        with tempfile.TemporaryDirectory(prefix="kafka-cluster-") as directory:
            cluster = cls(directory=directory, size=size)
            try:
                cluster.start()
                yield cluster
            finally:
                cluster.stop()

    def start(self) -> str:
        voters = ",".join(f"{n.node_id}@127.0.0.1:{n.controller_port}" for n in self.nodes)
        replicas = str(len(self.nodes))
        extra = {
            "default.replication.factor": replicas,
            "min.insync.replicas": "2",
            "unclean.leader.election.enable": "false",
            "offsets.topic.replication.factor": replicas,
            "offsets.topic.num.partitions": "1",
            "transaction.state.log.replication.factor": replicas,
            "transaction.state.log.min.isr": "2",
            "transaction.state.log.num.partitions": "1",
            "share.coordinator.state.topic.replication.factor": replicas,
            "share.coordinator.state.topic.min.isr": "2",
            # Fence a dead broker in 3 s instead of 9 s, so failover tests are quick.
            "broker.session.timeout.ms": "3000",
            "broker.heartbeat.interval.ms": "500",
        }
        return self._start(
            standalone=False, quorum={"controller.quorum.voters": voters}, extra=extra
        )

    def node(self, node_id: int) -> _Node:
        return next(n for n in self.nodes if n.node_id == node_id)

    def kill(self, node_id: int) -> None:
        """SIGKILL one node, as a crash would."""
        self.node(node_id).kill()
