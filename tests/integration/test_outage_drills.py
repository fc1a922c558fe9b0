"""Outage drills: the broker stopped (gracefully, or SIGKILLed) under load for longer than
the clients' timeouts, with the ingress and a worker group of each guarantee running as
processes, then started again; the broker frozen (SIGSTOP) past the transaction
timeout, then let go on; and one broker of three away while the others lead.

Each drill counts what went in and what came out: every delivery answered 202 is in
the raw topic, every raw delivery is routed (exactly once by the exactly-once group),
every partition accepts deliveries again within 30 s of the broker's return, every
process says so on /readyz (and said 503 while Kafka was away), and no process logged
an error. The figures are printed (`pytest -s`) for the README's failure section.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from pathlib import Path

import aiohttp
import pytest
from aiokafka.admin import AIOKafkaAdminClient

from processor.devtools.broker import LocalBroker
from processor.worker.exactly_once import transactional_id
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
if SCALE.name == "real":
    pytestmark.append(pytest.mark.drill)  # make drills runs them at real lengths

# A drill per way of stopping the broker; at the fast scale each takes one outage class
# (make test), at the real scale every length the issue names (make drills).
if SCALE.name == "fast":
    CASES = [("graceful", "past_request_timeout"), ("sigkill", "past_every_timeout")]
else:
    CASES = [(how, length) for how in ("graceful", "sigkill") for length in SCALE.outages_s]
    # Frozen, it holds its connections open and answers nothing; let go, its clock has
    # moved past every session and transaction timeout at once.
    CASES.append(("sigstop", "100s"))
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
    """Stop (or freeze) the broker, keep it away `seconds` in all, start it again (or let
    it go on). Returns how long it was away, and every /readyz status the processes
    answered meanwhile."""
    started = time.monotonic()
    frozen = broker.status().pid if how == "sigstop" else None
    if frozen is not None:
        os.kill(frozen, signal.SIGSTOP)
    else:
        await asyncio.to_thread(broker.stop if how == "graceful" else broker.kill)
    seen: set[int] = set()
    try:
        while time.monotonic() - started < seconds:
            seen.update((await pipeline.readiness(session)).values())
            await asyncio.sleep(1)
    finally:
        if frozen is not None:
            os.kill(frozen, signal.SIGCONT)
    if frozen is None:
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


async def node_of(cluster: LocalCluster, pipeline: Pipeline, victim: str) -> int:
    """The node to take away: a fixed one, or the exactly-once group's coordinator, or
    the transaction coordinator of its workers' transactional ids."""
    if victim == "node 2":
        return 2
    admin = AIOKafkaAdminClient(bootstrap_servers=cluster.bootstrap)
    await admin.start()
    try:
        exactly_once = pipeline.groups[1].worker.group_id
        if victim == "group coordinator":
            node = await admin.find_coordinator(exactly_once, coordinator_type=0)
        else:
            # Any worker's id: every id maps to the one partition of the transaction log.
            some = transactional_id(exactly_once, None)
            node = await admin.find_coordinator(some, coordinator_type=1)
        return int(node)
    finally:
        await admin.close()


# make test takes a fixed node away; make drills each coordinator of the exactly-once
# group (with one partition each for offsets and transactions, one node holds all of
# a kind).
VICTIMS = [
    "node 2",
    pytest.param("group coordinator", marks=pytest.mark.drill),
    pytest.param("transaction coordinator", marks=pytest.mark.drill),
]


@pytest.mark.timeout(SCALE.node_away_s + 300)
@pytest.mark.parametrize("victim", VICTIMS)
async def test_one_broker_of_three_away_while_the_others_lead_loses_nothing(
    tmp_path: Path, kafka_jars: Path, victim: str
) -> None:
    with LocalCluster.temporary() as cluster:
        pipeline = Pipeline(bootstrap=cluster.bootstrap, directory=tmp_path, replication=3)
        with cleaned_up(pipeline):
            async with under_load(pipeline) as (provider, session):
                node = await node_of(cluster, pipeline, victim)
                refused_before = len(provider.refused_at)
                await asyncio.to_thread(cluster.kill, node)
                await asyncio.sleep(SCALE.node_away_s)
                await asyncio.to_thread(cluster.restart, node)
                recovery = await accepted_again(session, provider, within_s=30)
                await pipeline.until_ready(session, timeout=90)
                await asyncio.sleep(3)
            outcome = await settle(pipeline)

    print(
        json.dumps(
            {
                "drill": f"one broker of three away: {victim} (node {node})",
                "away_s": SCALE.node_away_s,
                "accepted_again_s": recovery,
                "refused_while_away": len(provider.refused_at) - refused_before,
                "accepted": len(provider.accepted),
                "raw_ids": len(outcome.raw),
                "alo_outputs": sum(outcome.at_least_once.values()),
                "eos_outputs": sum(outcome.exactly_once.values()),
            }
        )
    )
    assert_conserved(provider, outcome)
    assert max(recovery.values()) <= 30
