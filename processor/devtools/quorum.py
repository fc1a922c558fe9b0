"""KRaft nodes started, awaited and stopped together: one node or several.

Every node is formatted with one cluster id, all are spawned before any is waited
for (a quorum of several needs a majority up), and the group is ready when a real
client call sees every broker, not merely when the ports are open.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol, Self, TypeVar

from processor.devtools.jars import kafka_libs
from processor.devtools.node import Node
from processor.devtools.ports import port_in_use
from processor.errors import BrokerError

__all__ = ["Quorum", "start_on_free_ports"]

# First start on a machine includes the JIT warm-up of the whole broker.
START_TIMEOUT_S = 90.0


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


class _Startable(Protocol):
    def start(self) -> str: ...


StartableT = TypeVar("StartableT", bound=_Startable)


def start_on_free_ports(make: Callable[[Path], StartableT], directory: str) -> StartableT:
    """`make(<directory>/tryN)`, which picks free ports, started; made again on others
    while a port is taken before its node binds it (another process took it between the
    pick and the bind: tests start brokers in parallel)."""
    for attempt in range(3):
        started = make(Path(directory) / f"try{attempt}")
        try:
            started.start()
        except BrokerError as exc:
            if "Address already in use" not in str(exc) or attempt == 2:
                raise
            continue
        return started
    raise AssertionError("unreachable")


class Quorum:
    """Start, wait and stop shared by the single broker and the three-node cluster.

    A subclass sets `nodes` and `tie_to_parent`, and starts with `_start`, giving the
    quorum settings (bootstrap servers or static voters) and its own broker settings.
    """

    nodes: Sequence[Node]
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
            listening = all(port_in_use(node.port) for node in self.nodes)
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
