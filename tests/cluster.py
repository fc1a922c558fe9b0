"""Three local KRaft nodes with a static quorum: the cluster of the fault tests.

Built on the same node machinery as `processor.devtools.broker.LocalBroker`; only
tests need more than one broker, so it lives here rather than in the package.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path

from processor.devtools.jars import kafka_libs
from processor.devtools.node import Node
from processor.devtools.ports import free_port
from processor.devtools.quorum import Quorum, start_on_free_ports


class LocalCluster(Quorum):
    """Three KRaft nodes with a static quorum, replication factor 3, for fault tests."""

    def __init__(self, *, directory: str | Path, size: int = 3) -> None:
        root = Path(directory).resolve()
        self.nodes = tuple(
            Node(
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
            cluster = start_on_free_ports(lambda path: cls(directory=path, size=size), directory)
            try:
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

    def node(self, node_id: int) -> Node:
        return next(n for n in self.nodes if n.node_id == node_id)

    def kill(self, node_id: int) -> None:
        """SIGKILL one node, as a crash would."""
        self.node(node_id).kill()

    def restart(self, node_id: int) -> None:
        """Start a node that was killed, with its data, and wait until all brokers answer."""
        self.node(node_id).spawn(kafka_libs(), tie_to_parent=self.tie_to_parent)
        self._wait_ready()
