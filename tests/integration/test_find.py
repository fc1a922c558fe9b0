"""`processor find` against a real broker: a delivery that went to the DLQ, was replayed
and routed, then sent again by the provider, found with every copy and what became of
it."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import msgspec
import pytest

from processor.config import Config
from processor.kafka.topics import create_topics
from processor.ops.find import Copy, FindOptions, find, summary
from processor.ops.replay import ReplayFilters, replay
from tests.deliveries import Delivery, integration_event
from tests.harness import REPO, produce_raw, read_outputs, until_drained, worker_env, worker_running

pytestmark = pytest.mark.integration

ID = "whd_found00001"
WALLET = msgspec.json.encode(
    {
        "id": ID,
        "event": "wallet.updated",
        "timestamp": "2025-02-19T12:00:00Z",
        "data": {"uid": "user_7", "balance": 10},
    }
)


def with_wallet_route(config: Config, template: str) -> Config:
    routes = {**config.routing.routes, "wallet": template}
    return msgspec.structs.replace(
        config, routing=msgspec.structs.replace(config.routing, routes=routes)
    )


@pytest.fixture
async def history(config: Config) -> Config:
    """The delivery's life: routed by a status it does not have (the DLQ, a
    ValidationError); the route fixed, replayed and routed; then sent again by the
    provider (dedup drops it). Returns the config of the fixed route."""
    by_status = with_wallet_route(config, config.topics.raw + ".wallet.{status}")
    fixed = with_wallet_route(config, config.topics.raw + ".wallet")
    await create_topics(by_status)
    await create_topics(fixed)
    others = [
        Delivery(
            f"user_{n}".encode(), integration_event(index=n, uid=f"user_{n}", status="x"), "routed"
        )
        for n in range(50)
    ]
    await produce_raw(by_status, [*others, Delivery(b"user_7", WALLET, "dlq")])
    async with worker_running(by_status):
        await read_outputs(by_status, 51)
    await replay(fixed, ReplayFilters(source=config.topics.dlq, target=config.topics.raw))
    await produce_raw(fixed, [Delivery(b"user_7", WALLET, "other")])  # a provider retry
    async with worker_running(fixed):
        await until_drained(fixed)
    return fixed


async def test_a_delivery_dead_lettered_replayed_and_routed_is_found_with_each_copy(
    history: Config,
) -> None:
    report = await find(history, FindOptions(delivery_id=ID))

    assert report.found
    roles = [(c.role, c.record.topic) for c in report.copies]
    raw, wallet, dlq = history.topics.raw, history.topics.raw + ".wallet", history.topics.dlq
    assert sorted(roles) == sorted(
        [("received", raw)] * 3 + [("dead-lettered", dlq), ("routed", wallet)]
    )
    assert (report.sent, report.replayed) == (2, 1)
    assert report.dropped_as_retries == 1, "dedup dropped the provider's retry"
    assert report.not_routed_yet == 0
    (dead,) = [c.record for c in report.copies if c.role == "dead-lettered"]
    assert dead.error_class == "ValidationError"
    line = summary(report)
    assert line.startswith(f"{ID}: sent by the provider 2 times; replayed 1 time;")
    assert f"routed to {wallet} p" in line
    assert "dead-lettered (ValidationError: " in line
    assert "1 copy dropped as retries" in line

    # --uid: one partition per topic, the same copies; --since: nothing before it.
    one = await find(history, FindOptions(delivery_id=ID, uid="user_7"))
    assert where(one.copies) == where(report.copies)
    assert one.scanned < report.scanned
    later = datetime.now(UTC) + timedelta(hours=1)
    assert not (await find(history, FindOptions(delivery_id=ID, since=later))).found


def where(copies: list[Copy]) -> list[tuple[str, str, int, int]]:
    return sorted((c.role, c.record.topic, c.record.partition, c.record.offset) for c in copies)


async def test_a_delivery_in_none_of_the_topics_exits_1_saying_where_it_looked(
    config: Config,
) -> None:
    await create_topics(config)
    await produce_raw(config, [Delivery(b"user_7", WALLET, "unrouted")])
    assert not (await find(config, FindOptions(delivery_id="whd_nobody"))).found

    command = [sys.executable, "-m", "processor.cli", "--config", str(REPO / "config.yaml")]
    absent = await asyncio.to_thread(
        subprocess.run,
        [*command, "find", "whd_nobody", "--uid", "user_7"],
        env=worker_env(config), capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert absent.returncode == 1, absent.stderr
    assert "whd_nobody is in none of" in absent.stderr
    assert "check the id, widen --since, or drop --uid" in absent.stderr
