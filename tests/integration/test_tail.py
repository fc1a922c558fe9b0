"""`processor tail` on a real broker: deliveries routed by a worker, then looked at the
way a subscriber would: --last, --uid, --event, --json, DLQ lines, --follow seeing a
record written after it started, Ctrl-C, and the README's own commands. It never
joins a consumer group and never shows an aborted transaction."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

from processor.config import Config, KafkaConfig, TopicsConfig
from processor.kafka.topics import create_topics
from processor.ops import tail as tail_module
from processor.ops.tail import Shown, TailOptions, tail
from tests.deliveries import SPEC_EXAMPLE, Delivery, integration_event
from tests.harness import REPO, produce_raw, read_outputs, worker_env, worker_running
from tests.readme import readme_commands

pytestmark = pytest.mark.integration

USERS = ("user_0", "user_1", "user_2", "user_123")
EVENTS = ("integration.created", "integration.updated", "integration.deleted")


def stream() -> list[Delivery]:
    """60 integration events over four users (two thirds COMPLETED), 2 unrouted, 3 for
    the DLQ (two invalid, one not JSON)."""
    deliveries = []
    for i in range(60):
        uid, event = USERS[i % 4], EVENTS[i % 3].encode()
        value = integration_event(index=i, uid=uid, status="COMPLETED" if i % 3 else "active")
        deliveries.append(Delivery(uid.encode(), value.replace(b"integration.updated", event), ""))
    mistyped = integration_event(index=90, uid="user_1", status="x").replace(b'"x"', b"7")
    no_time = b'{"id": "whd_notime", "event": "integration.updated", "data": {}}'
    return [
        *deliveries,
        Delivery(b"user_1", SPEC_EXAMPLE.replace(b"integration.created", b"wallet.created"), ""),
        Delivery(b"user_2", SPEC_EXAMPLE.replace(b"integration.created", b"wallet.deleted"), ""),
        Delivery(b"user_1", mistyped, "dlq"),
        Delivery(b"user_9", no_time, "dlq"),
        Delivery(b"user_9", b"\x1b[31mnot json", "dlq"),
    ]


@pytest.fixture(scope="module")
async def routed(kafka_bootstrap: str) -> Config:
    """A pipeline's topics, with `stream()` routed by a worker, shared by the module."""
    name = uuid.uuid4().hex[:10]
    base = Config()
    raw, unrouted, dlq, dedup = (f"{key}.{name}" for key in ("raw", "unrouted", "dlq", "dedup"))
    routes = {"integration": f"status.{name}.{{status}}"}
    config = msgspec.structs.replace(
        base,
        kafka=KafkaConfig(bootstrap_servers=kafka_bootstrap),
        topics=TopicsConfig(raw=raw, unrouted=unrouted, dlq=dlq, dedup=dedup, partitions=3),
        routing=msgspec.structs.replace(base.routing, routes=routes),
        worker=msgspec.structs.replace(base.worker, group_id=f"group.{name}"),
    )
    await create_topics(config)
    deliveries = stream()
    await produce_raw(config, deliveries)
    async with worker_running(config):
        await read_outputs(config, len(deliveries))
    return config


def completed(config: Config) -> str:
    return config.routing.resolved()["integration"].topic.format(status="completed")


async def shown(config: Config, **options: Any) -> list[Shown]:
    found: list[Shown] = []
    await tail(config, TailOptions(**options), found.extend, stop=asyncio.Event())
    return found


def command(config: Config, *argv: str) -> list[str]:
    return [sys.executable, "-m", "processor.cli", "--config", str(REPO / "config.yaml"),
            "tail", *argv]  # fmt: skip


@contextlib.asynccontextmanager
async def following(config: Config, *argv: str) -> AsyncIterator[asyncio.subprocess.Process]:
    """`processor tail ARGV` running, its output piped; killed at the end if still running."""
    process = await asyncio.create_subprocess_exec(
        *command(config, *argv),
        env=worker_env(config),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        yield process
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def run(config: Config, *argv: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run, command(config, *argv), env=worker_env(config),
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


async def test_last_shows_the_newest_records_across_partitions(
    routed: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    everything = await shown(routed, topic=completed(routed), from_beginning=True)
    # Windows of 2 offsets, doubling: the backwards read takes several steps.
    monkeypatch.setattr(tail_module, "FIRST_WINDOW", 2)

    last = await shown(routed, topic=completed(routed), last=7)

    newest = sorted(everything, key=lambda s: (s.timestamp or "", s.partition, s.offset))[-7:]
    assert len(everything) >= 40
    assert [(s.partition, s.offset) for s in last] == [(s.partition, s.offset) for s in newest]
    assert {s.status for s in last} == {"COMPLETED"}


async def test_last_counts_only_what_uid_and_event_let_through(routed: Config) -> None:
    mine = [i for i in range(60) if i % 4 == 1 and i % 3 and EVENTS[i % 3] == "integration.deleted"]

    last = await shown(routed, topic=completed(routed), last=3, uid="user_1",
                       event="integration.del*")  # fmt: skip

    assert [s.delivery_id for s in last] == [f"whd_{i:08d}" for i in mine[-3:]]
    assert {(s.uid, s.event) for s in last} == {("user_1", "integration.deleted")}


async def test_the_command_prints_a_readable_line_per_record(routed: Config) -> None:
    result = await run(routed, completed(routed), "--uid", "user_2", "--last", "2")

    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 2
    for line in lines:
        assert re.fullmatch(
            r"\S+Z  p\d@\d+  whd_\d{8}  integration\.\w+  uid=user_2  status=COMPLETED", line
        ), line


async def test_json_lines_of_the_dlq_carry_error_class_message_and_value(routed: Config) -> None:
    result = await run(routed, routed.topics.dlq, "--from-beginning", "--json")

    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    by_id = {r["delivery_id"]: r for r in records}
    assert len(records) == 3
    assert by_id["whd_00000090"]["error_class"] == "ValidationError"
    assert by_id["whd_00000090"]["error_message"].endswith("at `$.data.status`")
    assert by_id["whd_00000090"]["value"]["data"]["status"] == 7
    assert by_id["whd_notime"]["headers"]["source.topic"] == routed.topics.raw
    assert by_id[None]["error_class"] == "DecodeError"
    assert by_id[None]["value_text"] == "\x1b[31mnot json"


async def test_dlq_lines_say_the_error_class_and_message(routed: Config) -> None:
    result = await run(routed, routed.topics.dlq, "--from-beginning", "--uid", "user_9")

    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 2
    assert "whd_notime  integration.updated  uid=-  ValidationError: Object missing" in lines[0]
    assert lines[1].endswith("DecodeError: JSON is malformed: invalid character (byte 0)")


async def test_an_unknown_topic_is_exit_2_naming_the_topics_there_are(routed: Config) -> None:
    result = await run(routed, "no.such.topic")

    assert result.returncode == 2
    assert "topic no.such.topic does not exist" in result.stderr
    assert routed.topics.dlq in result.stderr
    assert "Traceback" not in result.stderr


async def test_follow_shows_a_record_written_after_it_started_and_ctrl_c_ends_it(
    routed: Config, kafka_bootstrap: str
) -> None:
    topic = completed(routed)
    async with following(routed, topic, "--follow", "--json", "--uid", "user_0") as process:
        assert process.stdout is not None
        assert process.stderr is not None
        async with asyncio.timeout(60):
            first = [json.loads(await process.stdout.readline()) for _ in range(10)]
        assert {record["uid"] for record in first} == {"user_0"}
        async with AIOKafkaProducer(bootstrap_servers=kafka_bootstrap) as producer:
            late = integration_event(index=777, uid="user_0", status="COMPLETED")
            await producer.send_and_wait(topic, late, key=b"user_0")
        async with asyncio.timeout(30):
            seen = json.loads(await process.stdout.readline())
        assert seen["delivery_id"] == "whd_00000777"

        process.send_signal(signal.SIGINT)
        async with asyncio.timeout(30):
            code = await process.wait()
        errors = (await process.stderr.read()).decode()
        assert code == 0, errors
        assert "Traceback" not in errors


async def test_it_joins_no_group_and_hides_aborted_transactions(
    routed: Config, kafka_bootstrap: str
) -> None:
    topic = completed(routed)
    async with AIOKafkaProducer(
        bootstrap_servers=kafka_bootstrap, transactional_id=f"tx.{uuid.uuid4().hex[:8]}"
    ) as producer:
        await producer.begin_transaction()
        aborted = integration_event(index=666, uid="user_0", status="COMPLETED")
        await producer.send_and_wait(topic, aborted, key=b"user_0")
        await producer.abort_transaction()
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        groups_before = await admin.list_consumer_groups()
        result = await run(routed, topic, "--from-beginning", "--json")
        groups_after = await admin.list_consumer_groups()
    finally:
        await admin.close()

    assert result.returncode == 0, result.stderr
    ids = [json.loads(line)["delivery_id"] for line in result.stdout.splitlines()]
    assert "whd_00000666" not in ids
    assert len(ids) >= 40
    assert sorted(groups_after) == sorted(groups_before)


async def test_the_readme_tail_commands_work(routed: Config) -> None:
    status_prefix = completed(routed).removesuffix("completed")
    for line in readme_commands("tail"):
        localised = line.replace("integration.status.", status_prefix).replace(
            "webhooks.dlq", routed.topics.dlq
        )
        result = await asyncio.to_thread(
            subprocess.run, ["bash", "-euo", "pipefail", "-c", localised], cwd=REPO,
            env=worker_env(routed), capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert result.returncode == 0, f"{line}\n{result.stderr}"
        assert result.stdout.strip(), f"{line} printed nothing"


async def test_last_0_with_follow_shows_only_what_is_written_after_it_started(
    routed: Config, kafka_bootstrap: str
) -> None:
    topic = completed(routed)
    async with following(routed, topic, "--last", "0", "--follow", "--json") as process:
        assert process.stdout is not None
        assert process.stderr is not None
        async with AIOKafkaProducer(bootstrap_servers=kafka_bootstrap) as producer:
            late = integration_event(index=778, uid="user_0", status="COMPLETED")
            async with asyncio.timeout(30):
                while True:  # until it reads: what was there before is never shown
                    await producer.send_and_wait(topic, late, key=b"user_0")
                    try:
                        async with asyncio.timeout(1):
                            line = await process.stdout.readline()
                    except TimeoutError:
                        continue
                    break
        assert json.loads(line)["delivery_id"] == "whd_00000778"
        process.send_signal(signal.SIGINT)
        async with asyncio.timeout(30):
            assert await process.wait() == 0
