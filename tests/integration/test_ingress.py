"""The ingress against a real broker: what it answers, and what the raw topic then holds.

Assertions are on the topic's records (bytes, key, headers), read back to the end
offsets, so "exactly the accepted deliveries" means no more and no fewer.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest
from aiokafka import ConsumerRecord
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from processor.config import Config, IngressConfig, KafkaConfig
from processor.devtools.broker import LocalBroker
from processor.devtools.ports import free_port
from processor.errors import BrokerUnavailable
from processor.ingress.app import READY_TIMEOUT_S, run_ingress
from processor.ingress.publisher import KafkaPublisher
from processor.kafka.producers import RenewingProducer
from tests.harness import read_topic
from tests.ingress_harness import (
    SECRET,
    Serve,
    Served,
    delivery,
    ingress_producer,
    serving,
    signed,
)

pytestmark = pytest.mark.integration

PARTITIONS = 3


def ids_of(records: list[ConsumerRecord[bytes, bytes]]) -> list[str]:
    return sorted(dict(r.headers)["delivery-id"].decode() for r in records)


@pytest.fixture
async def producer(
    config: Config, create_topics: Callable[..., Awaitable[None]]
) -> AsyncIterator[RenewingProducer]:
    await create_topics(config.topics.raw, partitions=PARTITIONS)
    async with ingress_producer(config) as producer:
        yield producer


@pytest.fixture
async def serve(config: Config, producer: RenewingProducer) -> AsyncIterator[Serve]:
    """`client = await serve(max_body_bytes=...)`: the ingress in-process on a free port."""
    async with contextlib.AsyncExitStack() as stack:

        async def start(**ingress: Any) -> Served:
            return await stack.enter_async_context(
                serving(config, KafkaPublisher(producer), **{"secrets": (SECRET,), **ingress})
            )

        yield start


# --- accepted deliveries --------------------------------------------------------------


async def test_signed_delivery_is_stored_byte_for_byte_with_key_and_headers(
    serve: Serve, config: Config, kafka_bootstrap: str
) -> None:
    client = await serve()
    # Unusual spacing, key order and non-ASCII: the topic must hold these exact bytes.
    body = (
        '{ "event" : "integration.created",\n "id": "whd_exact", "data": '
        '{"uid": "user_\u00e9", "alias": "Caf\u00e9 \u2615"}, "timestamp": "x" }\n'
    ).encode()
    before = datetime.now(UTC)
    headers = signed(body) | {"Content-Type": "application/json; charset=utf-8"}
    response = await client.post("/webhooks", data=body, headers=headers)

    assert response.status == 202
    assert await response.json() == {"id": "whd_exact"}
    [record] = await read_topic(kafka_bootstrap, config.topics.raw)
    assert record.value == body
    assert record.key == "user_\u00e9".encode()
    record_headers = dict(record.headers)
    assert record_headers.keys() == {"delivery-id", "event", "received-at", "content-type"}
    assert record_headers["delivery-id"] == b"whd_exact"
    assert record_headers["event"] == b"integration.created"
    assert record_headers["content-type"] == b"application/json; charset=utf-8"
    received_at = record_headers["received-at"].decode()
    assert received_at.endswith("Z")
    assert len(received_at) == len("2025-02-19T12:00:00.000Z")
    # received-at has milliseconds: compare with `before` cut to the millisecond too.
    before_ms = before.replace(microsecond=before.microsecond // 1000 * 1000)
    assert 0 <= (datetime.fromisoformat(received_at) - before_ms).total_seconds() < 5


async def test_a_gzip_delivery_is_stored_as_the_json_it_holds(
    serve: Serve, config: Config, kafka_bootstrap: str
) -> None:
    client = await serve()
    body = delivery("gzipped", alias="Caf\u00e9 " * 200)
    # The provider signs the JSON, then compresses it for the trip.
    headers = signed(body) | {"Content-Encoding": "gzip"}
    response = await client.post("/webhooks", data=gzip.compress(body), headers=headers)
    assert response.status == 202
    [record] = await read_topic(kafka_bootstrap, config.topics.raw)
    assert record.value == body


async def test_thousand_concurrent_deliveries_become_thousand_records(
    serve: Serve, config: Config, kafka_bootstrap: str
) -> None:
    client = await serve()
    url = client.url("/webhooks")
    bodies = [delivery(i, uid=f"user_{i % 37}") for i in range(1000)]
    # One connection per request, so the thousand really are in flight together.
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

        async def post(body: bytes) -> int:
            async with session.post(url, data=body, headers=signed(body)) as response:
                return response.status

        statuses = await asyncio.gather(*(post(body) for body in bodies))

    assert statuses == [202] * 1000
    records = await read_topic(kafka_bootstrap, config.topics.raw)
    assert ids_of(records) == sorted(f"whd_{i}" for i in range(1000))
    assert {r.value for r in records} == set(bodies)


# --- refused deliveries ---------------------------------------------------------------


async def test_topic_holds_exactly_the_accepted_deliveries(
    serve: Serve, config: Config, kafka_bootstrap: str
) -> None:
    client = await serve()
    accepted = [delivery("ok1"), delivery("ok2", uid="user_2")]
    refused = [
        (delivery("bad_secret"), signed(delivery("bad_secret"), "guess-another-secret"), 401),
        (delivery("no_signature"), {"Content-Type": "application/json"}, 401),
        (delivery("other_body"), signed(delivery("something_else")), 401),
        (
            delivery("not_json_type"),
            signed(delivery("not_json_type")) | {"Content-Type": "text/plain"},
            415,
        ),
        (
            b'{"id": "whd_no_data", "event": "x.y"}',
            signed(b'{"id": "whd_no_data", "event": "x.y"}'),
            400,
        ),
    ]
    for body in accepted:
        assert (await client.post("/webhooks", data=body, headers=signed(body))).status == 202
    for body, headers, status in refused:
        assert (await client.post("/webhooks", data=body, headers=headers)).status == status

    records = await read_topic(kafka_bootstrap, config.topics.raw)
    assert sorted(r.value for r in records) == sorted(accepted)


# --- health, readiness, metrics ---------------------------------------------------------


async def test_healthz_readyz_and_metrics_answer(serve: Serve) -> None:
    client = await serve()
    assert (await client.get("/healthz")).status == 200
    assert (await client.probe("/readyz")).status == 200
    await client.post("/webhooks", data=delivery(1), headers=signed(delivery(1)))
    await client.post("/webhooks", data=delivery(2), headers={"Content-Type": "application/json"})

    response = await client.probe("/metrics")
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    text = await response.text()
    assert 'processor_ingress_requests_total{code="202"} 1.0' in text
    assert 'processor_ingress_requests_total{code="401"} 1.0' in text
    assert "processor_ingress_publish_seconds_count 1.0" in text
    assert "processor_ingress_publishes_in_flight 0.0" in text


async def test_readyz_is_503_when_the_raw_topic_is_missing(
    config: Config, producer: RenewingProducer, unique_name: Callable[[str], str]
) -> None:
    missing = msgspec.structs.replace(config.topics, raw=unique_name("missing"))
    config = msgspec.structs.replace(config, topics=missing)
    async with serving(config, KafkaPublisher(producer), secrets=(SECRET,)) as client:
        response = await client.probe("/readyz")
        assert response.status == 503
        assert (await response.json())["error"] == "topic_missing"


# --- Kafka outage -----------------------------------------------------------------------


@pytest.fixture
def throwaway_broker() -> Iterator[LocalBroker]:
    """A broker of this test's own, which it may stop and restart."""
    with LocalBroker.temporary() as broker:
        yield broker


@pytest.mark.slow
async def test_kafka_outage_is_503_with_retry_after_then_recovers(
    config: Config, throwaway_broker: LocalBroker
) -> None:
    bootstrap = throwaway_broker.bootstrap
    config = msgspec.structs.replace(
        config,
        kafka=KafkaConfig(bootstrap_servers=bootstrap),
        ingress=IngressConfig(secrets=(SECRET,), publish_timeout_s=2.0, retry_after_s=7),
    )
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    await admin.create_topics([NewTopic(config.topics.raw, PARTITIONS, 1)])
    await admin.close()
    accepted: list[str] = []
    async with (
        ingress_producer(config) as producer,
        serving(config, KafkaPublisher(producer)) as client,
    ):

        async def post(n: str) -> aiohttp.ClientResponse:
            body = delivery(n)
            response: aiohttp.ClientResponse = await client.post(
                "/webhooks", data=body, headers=signed(body)
            )
            if response.status == 202:
                accepted.append(f"whd_{n}")
            return response

        assert (await post("before")).status == 202

        await asyncio.to_thread(throwaway_broker.stop)
        started = time.monotonic()
        during = await asyncio.gather(*(post(f"during{i}") for i in range(5)))
        assert [r.status for r in during] == [503] * 5
        assert time.monotonic() - started < config.ingress.publish_timeout_s + 2
        assert all(r.headers["Retry-After"] == "7" for r in during)
        assert (await during[0].json())["error"] in ("kafka_timeout", "kafka_unavailable")
        started = time.monotonic()
        assert (await client.probe("/readyz")).status == 503
        assert time.monotonic() - started < READY_TIMEOUT_S + 1

        await asyncio.to_thread(throwaway_broker.start)
        # The provider's retries of one delivery: 503 until Kafka takes it, never else.
        async with asyncio.timeout(60):
            while (status := (await post("after")).status) != 202:
                assert status == 503
                await asyncio.sleep(0.5)
        assert (await client.probe("/readyz")).status == 200

    stored = set(ids_of(await read_topic(bootstrap, config.topics.raw)))
    # Every 202 is in the topic; a 503'd record may also have landed (the provider's
    # retry then duplicates it, which the delivery id makes harmless).
    assert set(accepted) <= stored
    assert stored <= {"whd_before", "whd_after"} | {f"whd_during{i}" for i in range(5)}


# --- process life -----------------------------------------------------------------------


async def test_refuses_to_start_when_kafka_is_unreachable(config: Config) -> None:
    nobody = KafkaConfig(bootstrap_servers=f"127.0.0.1:{free_port()}", connect_timeout_s=1.5)
    unreachable = msgspec.structs.replace(
        config, kafka=nobody, ingress=IngressConfig(secrets=(SECRET,))
    )
    started = time.monotonic()
    with pytest.raises(BrokerUnavailable, match=r"within 1\.5 s .*processor broker start"):
        await run_ingress(unreachable)
    # A broker that is not up yet is waited for, up to kafka.connect_timeout_s.
    assert 1.5 <= time.monotonic() - started < 5


@pytest.mark.slow
async def test_sigterm_finishes_in_flight_deliveries_and_exits_zero(
    config: Config,
    kafka_bootstrap: str,
    create_topics: Callable[..., Awaitable[None]],
    tmp_path: Path,
) -> None:
    await create_topics(config.topics.raw, partitions=PARTITIONS)
    port = free_port()
    env = os.environ | {
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "WEBHOOK_SECRET": SECRET,
        "PROCESSOR_TOPICS__RAW": config.topics.raw,
        "PROCESSOR_INGRESS__PORT": str(port),
        "PROCESSOR_INGRESS__MANAGEMENT_PORT": str(free_port()),
        "PROCESSOR_LOGGING__FORMAT": "json",
    }
    script = (
        "import asyncio\n"
        "from processor.config import load_config\n"
        "from processor.ingress.app import run_ingress\n"
        "from processor.logging import configure_logging\n"
        "config = load_config(None)\n"
        "configure_logging(config.logging)\n"
        "asyncio.run(run_ingress(config))\n"
    )
    log_path = tmp_path / "ingress.log"
    with log_path.open("w") as log_file:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-c", script, env=env, stderr=log_file
        )
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as session:
            async with asyncio.timeout(30):
                while True:
                    with contextlib.suppress(aiohttp.ClientConnectionError):
                        async with session.get(f"{base}/healthz") as response:
                            if response.status == 200:
                                break
                    await asyncio.sleep(0.1)

            async def post(n: int) -> int | None:
                body = delivery(n)
                try:
                    async with session.post(
                        f"{base}/webhooks", data=body, headers=signed(body)
                    ) as response:
                        return response.status
                except aiohttp.ClientConnectionError:
                    return None  # arrived after the listener closed: never answered

            posts = [asyncio.create_task(post(n)) for n in range(200)]
            # SIGTERM once the first answer is in, with the rest still in flight.
            await asyncio.wait(posts, return_when=asyncio.FIRST_COMPLETED)
            stopped_at = time.monotonic()
            process.send_signal(signal.SIGTERM)
            statuses = await asyncio.gather(*posts)
        code = await asyncio.wait_for(process.wait(), 30)
        elapsed = time.monotonic() - stopped_at
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    stderr = log_path.read_text()

    assert code == 0, stderr
    assert elapsed < IngressConfig().shutdown_timeout_s
    assert set(statuses) <= {202, None}, statuses
    assert statuses.count(202) > 0
    assert '"ingress.stopped"' in stderr
    accepted = {f"whd_{n}" for n, status in enumerate(statuses) if status == 202}
    assert accepted <= set(ids_of(await read_topic(kafka_bootstrap, config.topics.raw)))


# --- logs -------------------------------------------------------------------------------
