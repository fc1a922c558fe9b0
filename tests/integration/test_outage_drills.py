"""Outage drills: the broker stopped (gracefully, or SIGKILLed) under load for longer than
the clients' timeouts, with the ingress and a worker group of each guarantee running as
processes, then started again.

Each drill counts what went in and what came out: every delivery answered 202 is in
the raw topic, every raw delivery is routed (exactly once by the exactly-once group),
every partition accepts deliveries again within 30 s of the broker's return, every
process says so on /readyz (and said 503 while Kafka was away), and no process logged
an error. The figures are printed (`pytest -s`) for the README's failure section.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import aiohttp
import pytest

from processor.devtools.broker import LocalBroker
from tests.cluster import LocalCluster
from tests.drills import (
    SCALE,
    Pipeline,
    Provider,
    accepted_again,
    cleaned_up,
    providing,
    raw_ids,
    routed_ids,
    until_drained,
    users_per_partition,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# A drill per way of stopping the broker; at the fast scale each takes one outage class
# (make test), at the real scale every length the issue names (make drills).
if SCALE.name == "fast":
    DRILLS = [("graceful", "past_request_timeout"), ("sigkill", "past_every_timeout")]
else:
    DRILLS = [(how, length) for how in ("graceful", "sigkill") for length in SCALE.outages_s]


async def outage(
    pipeline: Pipeline, session: aiohttp.ClientSession, stop: str, seconds: float, broker: object
) -> tuple[float, set[int]]:
    """Stop the broker, keep it away `seconds` in all, start it again. Returns how long it
    was away, and every /readyz status the processes answered meanwhile."""
    down = broker.stop if stop == "graceful" else broker.kill  # type: ignore[attr-defined]
    started = time.monotonic()
    await asyncio.to_thread(down)
    seen: set[int] = set()
    while time.monotonic() - started < seconds:
        seen.update((await pipeline.readiness(session)).values())
        await asyncio.sleep(1)
    await asyncio.to_thread(broker.start)  # type: ignore[attr-defined]
    return time.monotonic() - started, seen


@pytest.mark.parametrize(("stop", "length"), DRILLS)
async def test_a_broker_outage_under_load_loses_nothing_and_heals_by_itself(
    tmp_path: Path, kafka_jars: Path, stop: str, length: str
) -> None:
    with LocalBroker.temporary() as broker:
        pipeline = Pipeline(bootstrap=broker.bootstrap, directory=tmp_path)
        with cleaned_up(pipeline):
            await pipeline.start()
            assert pipeline.ingress is not None
            provider = Provider(f"{pipeline.ingress.http}/webhooks", users_per_partition())
            async with aiohttp.ClientSession() as session, providing(provider):
                await asyncio.sleep(3)
                away_s, readiness = await outage(
                    pipeline, session, stop, SCALE.outages_s[length], broker
                )
                back = time.monotonic()
                recovery = await accepted_again(session, provider, within_s=30)
                ready_s = await pipeline.until_ready(session, timeout=90)
                await asyncio.sleep(3)
            for group in pipeline.groups:
                await until_drained(broker.bootstrap, group, timeout=120)
            drained_s = time.monotonic() - back
            raw = await raw_ids(broker.bootstrap, pipeline.raw)
            routed = [await routed_ids(group) for group in pipeline.groups]
            await pipeline.stop()
            errors = pipeline.errors()
            events = {
                p.name: [e["event"] for e in pipeline.events(p.name)] for p in pipeline.processes
            }

    at_least_once, exactly_once = routed
    report = {
        "drill": f"{stop} {length}",
        "away_s": round(away_s, 1),
        "accepted_again_s": recovery,
        "ready_again_s": round(ready_s, 1),
        "all_routed_s": round(drained_s, 1),
        "accepted": len(provider.accepted),
        "answers": dict(provider.statuses),
        "raw_records": sum(raw.values()),
        "raw_ids": len(raw),
        "alo_outputs": sum(at_least_once.values()),
        "eos_outputs": sum(exactly_once.values()),
        "producer_renewals": {n: e.count("kafka.producer_replaced") for n, e in events.items()},
        "errors": sum(len(lines) for lines in errors.values()),
    }
    print(json.dumps(report))

    assert set(provider.accepted) <= set(raw), "a delivery answered 202 is not in Kafka"
    assert set(at_least_once) == set(raw), "the at-least-once group lost or invented one"
    assert set(exactly_once) == set(raw), "the exactly-once group lost or invented one"
    assert set(exactly_once.values()) == {1}, "exactly once wrote a delivery twice"
    assert max(recovery.values()) <= 30
    assert 503 in readiness or 0 in readiness, "/readyz never said the outage"
    assert not errors, errors


async def test_one_broker_of_three_away_while_the_others_lead_loses_nothing(
    tmp_path: Path, kafka_jars: Path
) -> None:
    with LocalCluster.temporary() as cluster:
        pipeline = Pipeline(bootstrap=cluster.bootstrap, directory=tmp_path, replication=3)
        with cleaned_up(pipeline):
            await pipeline.start()
            assert pipeline.ingress is not None
            provider = Provider(f"{pipeline.ingress.http}/webhooks", users_per_partition())
            async with aiohttp.ClientSession() as session, providing(provider):
                await asyncio.sleep(3)
                refused_before = len(provider.refused_at)
                await asyncio.to_thread(cluster.kill, 2)
                await asyncio.sleep(SCALE.node_away_s)
                await asyncio.to_thread(cluster.restart, 2)
                recovery = await accepted_again(session, provider, within_s=30)
                await pipeline.until_ready(session, timeout=90)
                await asyncio.sleep(3)
            for group in pipeline.groups:
                await until_drained(cluster.bootstrap, group, timeout=120)
            raw = await raw_ids(cluster.bootstrap, pipeline.raw)
            routed = [await routed_ids(group) for group in pipeline.groups]
            await pipeline.stop()
            errors = pipeline.errors()

    at_least_once, exactly_once = routed
    print(
        json.dumps(
            {
                "drill": "one broker of three away",
                "accepted_again_s": recovery,
                "refused_while_away": len(provider.refused_at) - refused_before,
                "accepted": len(provider.accepted),
                "raw_ids": len(raw),
            }
        )
    )
    assert set(provider.accepted) <= set(raw)
    assert set(at_least_once) == set(raw)
    assert set(exactly_once) == set(raw)
    assert set(exactly_once.values()) == {1}
    assert max(recovery.values()) <= 30
    assert not errors, errors
