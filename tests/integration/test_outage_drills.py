"""Outage drills: the broker stopped (gracefully, or SIGKILLed) under load for longer than
the clients' timeouts, with the ingress and a worker group of each guarantee running as
processes, then started again; and one broker of three away while the others lead.

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
    accepted_again,
    assert_conserved,
    cleaned_up,
    settle,
    under_load,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# A drill per way of stopping the broker; at the fast scale each takes one outage class
# (make test), at the real scale every length the issue names (make drills).
if SCALE.name == "fast":
    CASES = [("graceful", "past_request_timeout"), ("sigkill", "past_every_timeout")]
else:
    CASES = [(how, length) for how in ("graceful", "sigkill") for length in SCALE.outages_s]
# Each drill may take its outage plus the test's own bound on the rest.
DRILLS = [
    pytest.param(how, length, marks=pytest.mark.timeout(SCALE.outages_s[length] + 300))
    for how, length in CASES
]


async def outage(
    pipeline: Pipeline,
    session: aiohttp.ClientSession,
    broker: LocalBroker,
    *,
    how: str,
    seconds: float,
) -> tuple[float, set[int]]:
    """Stop the broker, keep it away `seconds` in all, start it again. Returns how long it
    was away, and every /readyz status the processes answered meanwhile."""
    started = time.monotonic()
    await asyncio.to_thread(broker.stop if how == "graceful" else broker.kill)
    seen: set[int] = set()
    while time.monotonic() - started < seconds:
        seen.update((await pipeline.readiness(session)).values())
        await asyncio.sleep(1)
    await asyncio.to_thread(broker.start)
    return time.monotonic() - started, seen


@pytest.mark.parametrize(("how", "length"), DRILLS)
async def test_a_broker_outage_under_load_loses_nothing_and_heals_by_itself(
    tmp_path: Path, kafka_jars: Path, how: str, length: str
) -> None:
    with LocalBroker.temporary() as broker:
        pipeline = Pipeline(bootstrap=broker.bootstrap, directory=tmp_path)
        with cleaned_up(pipeline):
            async with under_load(pipeline) as (provider, session):
                away_s, readiness = await outage(
                    pipeline, session, broker, how=how, seconds=SCALE.outages_s[length]
                )
                back = time.monotonic()
                recovery = await accepted_again(session, provider, within_s=30)
                ready_s = await pipeline.until_ready(session, timeout=90)
                await asyncio.sleep(3)
            outcome = await settle(pipeline)
            routed_s = time.monotonic() - back
            renewals = {
                p.name: [e["event"] for e in pipeline.events(p.name)].count(
                    "kafka.producer_replaced"
                )
                for p in pipeline.processes
            }

    print(
        json.dumps(
            {
                "drill": f"{how} {length}",
                "away_s": round(away_s, 1),
                "accepted_again_s": recovery,
                "ready_again_s": round(ready_s, 1),
                "all_routed_s": round(routed_s, 1),
                "accepted": len(provider.accepted),
                "answers": dict(provider.statuses),
                "raw_records": sum(outcome.raw.values()),
                "raw_ids": len(outcome.raw),
                "alo_outputs": sum(outcome.at_least_once.values()),
                "eos_outputs": sum(outcome.exactly_once.values()),
                "producer_renewals": renewals,
            }
        )
    )
    assert_conserved(provider, outcome)
    assert max(recovery.values()) <= 30
    assert 503 in readiness, "/readyz never said the outage"
    assert 0 not in readiness, "a process did not answer /readyz during the outage"


@pytest.mark.timeout(SCALE.node_away_s + 300)
async def test_one_broker_of_three_away_while_the_others_lead_loses_nothing(
    tmp_path: Path, kafka_jars: Path
) -> None:
    with LocalCluster.temporary() as cluster:
        pipeline = Pipeline(bootstrap=cluster.bootstrap, directory=tmp_path, replication=3)
        with cleaned_up(pipeline):
            async with under_load(pipeline) as (provider, session):
                refused_before = len(provider.refused_at)
                await asyncio.to_thread(cluster.kill, 2)
                await asyncio.sleep(SCALE.node_away_s)
                await asyncio.to_thread(cluster.restart, 2)
                recovery = await accepted_again(session, provider, within_s=30)
                await pipeline.until_ready(session, timeout=90)
                await asyncio.sleep(3)
            outcome = await settle(pipeline)

    print(
        json.dumps(
            {
                "drill": "one broker of three away",
                "away_s": SCALE.node_away_s,
                "accepted_again_s": recovery,
                "refused_while_away": len(provider.refused_at) - refused_before,
                "accepted": len(provider.accepted),
                "raw_ids": len(outcome.raw),
            }
        )
    )
    assert_conserved(provider, outcome)
    assert max(recovery.values()) <= 30
