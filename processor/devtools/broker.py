"""A real Apache Kafka broker for development and tests, without Docker.

`LocalBroker` is one combined broker+controller node on 127.0.0.1, run from the
official jars (`processor.devtools.jars`) as a plain `java` process in KRaft mode;
`processor broker`, `processor dev`, the tests and the benchmarks use it. It is a
context manager that always stops its JVM.

A broker directory holds everything of one broker (`processor.devtools.node`), so
`processor broker start --dir D` after a stop restarts the same broker with its topics.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path

from processor.devtools.node import Node, saved_ports
from processor.devtools.ports import free_port, port_in_use
from processor.devtools.quorum import Quorum, start_on_free_ports
from processor.errors import BrokerError

__all__ = ["BrokerStatus", "LocalBroker"]


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


class LocalBroker(Quorum):
    """One KRaft node on 127.0.0.1: `processor broker`, `processor dev` and tests."""

    def __init__(
        self,
        *,
        directory: str | Path,
        port: int | None = None,
        controller_port: int | None = None,
        tie_to_parent: bool = False,
        port_option: str = "--port",
    ) -> None:
        directory = Path(directory).resolve()
        saved = saved_ports(directory)
        # A restart of an existing directory keeps its ports unless told otherwise.
        port = port or saved.get("port") or 9092
        if controller_port is None:
            controller_port = saved.get("controller_port") or free_port()
        self.node = Node(directory=directory, node_id=1, port=port, controller_port=controller_port)
        self.nodes = (self.node,)
        # Tests tie the JVM's life to theirs; `processor broker start` leaves it running.
        self.tie_to_parent = tie_to_parent
        # The command-line option that picks the port, named when it is taken.
        self.port_option = port_option

    @classmethod
    @contextlib.contextmanager
    def temporary(cls) -> Iterator[LocalBroker]:
        """A broker on free ports in a fresh directory, removed afterwards."""
        with tempfile.TemporaryDirectory(prefix="kafka-") as directory:
            broker = start_on_free_ports(
                lambda path: cls(directory=path, port=free_port(), tie_to_parent=True), directory
            )
            try:
                yield broker
            finally:
                broker.stop()

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
            if port_in_use(port):
                raise BrokerError(
                    f"port {port} on 127.0.0.1 is already in use: stop what listens there, "
                    f"pick another with {self.port_option}, or set KAFKA_BOOTSTRAP_SERVERS to use "
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


def _saved_bootstrap(directory: Path) -> str:
    port = saved_ports(directory).get("port")
    return f"127.0.0.1:{port}" if port else "an unknown port"
