"""Fixtures shared by every test: one real Kafka for the session, unique topics.

Where the broker comes from:
- `KAFKA_BOOTSTRAP_SERVERS` set: that cluster (tests create uniquely named topics);
- `PROCESSOR_TEST_BROKER=testcontainers`: the official `apache/kafka` image, for
  machines with a Docker engine;
- otherwise: the project's own local broker (`processor.devtools`), started on free
  ports in a temporary directory and always stopped.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import msgspec
import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from processor.config import Config, KafkaConfig, TopicsConfig
from processor.devtools.broker import LocalBroker
from processor.devtools.jars import KAFKA_VERSION, kafka_libs
from processor.devtools.ports import free_port
from processor.kafka.topics import create_topics as create_pipeline_topics
from tests.harness import REPO, SpawnWorker, worker_env

CreateTopics = Callable[..., Awaitable[None]]

# The suite starts a few dozen short-lived brokers: with C1 only and a serial GC each
# start takes a third less CPU (4.5 s instead of 7), on two cores the suite's bottleneck.
# One set outside (a user's, a CI's) wins.
os.environ.setdefault(
    "KAFKA_JVM_PERFORMANCE_OPTS",
    "-XX:+UseSerialGC -XX:TieredStopAtLevel=1 -Xshare:auto -Djava.awt.headless=true",
)


def unique(prefix: str) -> str:
    """A name no other test uses, so tests never see each other's records."""
    return f"{prefix}.{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="session")
def kafka_jars() -> Path:
    """The local broker's jars, fetched (once per machine) before a test times a start."""
    return kafka_libs()


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    if servers := os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        yield servers
    elif os.environ.get("PROCESSOR_TEST_BROKER") == "testcontainers":
        with _kafka_container() as bootstrap:
            yield bootstrap
    else:
        with LocalBroker.temporary() as broker:
            yield broker.bootstrap


@contextlib.contextmanager
def _kafka_container() -> Iterator[str]:
    """The official image on a fixed host port, so it can advertise that port."""
    from testcontainers.core.container import DockerContainer
    from testcontainers.core.waiting_utils import wait_for_logs

    port = free_port()
    # The image ignores its defaults once any KAFKA_* variable is set: give them all.
    settings = {
        "KAFKA_NODE_ID": "1",
        "KAFKA_PROCESS_ROLES": "broker,controller",
        "KAFKA_CONTROLLER_QUORUM_VOTERS": "1@localhost:9093",
        "KAFKA_CONTROLLER_LISTENER_NAMES": "CONTROLLER",
        "KAFKA_LISTENERS": "PLAINTEXT://:9092,CONTROLLER://:9093",
        "KAFKA_ADVERTISED_LISTENERS": f"PLAINTEXT://127.0.0.1:{port}",
        "KAFKA_LISTENER_SECURITY_PROTOCOL_MAP": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR": "1",
        "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR": "1",
        "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR": "1",
        "KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS": "0",
        "KAFKA_AUTO_CREATE_TOPICS_ENABLE": "false",
    }
    container = DockerContainer(f"apache/kafka:{KAFKA_VERSION}").with_bind_ports(9092, port)
    for name, value in settings.items():
        container = container.with_env(name, value)
    with container:
        wait_for_logs(container, "Kafka Server started", timeout=120)
        yield f"127.0.0.1:{port}"


@pytest.fixture(scope="session")
async def admin(kafka_bootstrap: str) -> AsyncIterator[AIOKafkaAdminClient]:
    client = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await client.start()
    yield client
    await client.close()


@pytest.fixture(scope="session")
def create_topics(admin: AIOKafkaAdminClient) -> CreateTopics:
    """`await create_topics("a", "b", partitions=3)`: topics that exist before a test uses them."""

    async def create(*names: str, partitions: int = 1, replication: int = 1) -> None:
        await admin.create_topics(
            [
                NewTopic(name, num_partitions=partitions, replication_factor=replication)
                for name in names
            ]
        )

    return create


@pytest.fixture
def config(kafka_bootstrap: str) -> Config:
    """The default configuration on the test broker, with topic and group names of its own."""
    base = Config()
    return msgspec.structs.replace(
        base,
        kafka=KafkaConfig(bootstrap_servers=kafka_bootstrap),
        topics=TopicsConfig(
            raw=unique("raw"),
            unrouted=unique("unrouted"),
            dlq=unique("dlq"),
            dedup=unique("dedup"),
            partitions=3,
        ),
        routing=msgspec.structs.replace(
            base.routing, routes={"integration": unique("status") + ".{status}"}
        ),
        worker=msgspec.structs.replace(base.worker, group_id=unique("group")),
    )


@pytest.fixture
def unique_name() -> Callable[[str], str]:
    """`unique_name("raw")` -> `raw.1a2b3c4d5e`, for topics and groups a test makes itself."""
    return unique


@pytest.fixture
def spawn_worker(config: Config, tmp_path: Path) -> Iterator[SpawnWorker]:
    """`processor worker` processes on the test's config, each logging to workerN.log."""
    started: list[subprocess.Popen[bytes]] = []

    def spawn(**env: str) -> subprocess.Popen[bytes]:
        with (tmp_path / f"worker{len(started)}.log").open("wb") as log:
            process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "processor.cli",
                    "--config",
                    str(REPO / "config.yaml"),
                    "worker",
                ],
                env=worker_env(config) | env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        started.append(process)
        return process

    yield spawn
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.fixture
async def topics(config: Config) -> None:
    """Every topic of `config`, as `processor topics create` makes them."""
    await create_pipeline_topics(config)
