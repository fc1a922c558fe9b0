"""Whatever any client writes to the raw topic, the worker routes or parks, and goes on.

The records are written byte for byte (tests/kafka_wire.py) the way other clients
could: header names that are not UTF-8, every compression codec, tombstones, any
bytes. The evidence is what the output topics hold afterwards: one record out per
record in, and a delivery written after them all still routed.
"""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
import pytest
from aiokafka import AIOKafkaProducer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from processor.config import Config
from tests import kafka_wire as wire
from tests.deliveries import integration_event, status_topic
from tests.harness import Output, count_outputs, read_all_outputs, worker_running

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("topics")]

BAD_NAME = (b"\xff\xfe\x80", b"v")


def delivery(index: int, status: str = "active") -> bytes:
    return integration_event(index=index, uid=f"user_{index % 3}", status=status)


async def outputs_when(config: Config, count: int, task: asyncio.Task[None]) -> list[Output]:
    """Every output record once `count` have been written; fails if the worker died."""
    async with asyncio.timeout(60):
        while await count_outputs(config) < count:
            assert not task.done(), f"the worker stopped: {task.exception()!r}"
            await asyncio.sleep(0.2)
    await asyncio.sleep(1)  # a record too many would show up now
    return await read_all_outputs(config)


def by_topic(outputs: list[Output], topic: str) -> list[Output]:
    return sorted((o for o in outputs if o.topic == topic), key=lambda o: o.value or b"")


async def test_a_header_name_that_is_not_utf8_is_parked_and_the_partition_moves_on(
    config: Config,
) -> None:
    raw = config.topics.raw
    bootstrap = config.kafka.bootstrap_servers
    await wire.produce_raw(bootstrap, raw, 0, wire.batch([wire.record(0, value=delivery(1))]))
    poisoned = [
        wire.record(0, key=b"user_2", value=delivery(2)),
        wire.record(1, key=b"user_3", value=delivery(3), headers=[BAD_NAME]),
        wire.record(2, key=b"user_4", value=delivery(4)),
    ]
    await wire.produce_raw(bootstrap, raw, 0, wire.batch(poisoned))
    await wire.produce_raw(bootstrap, raw, 0, wire.batch([wire.record(0, value=delivery(5))]))

    async with worker_running(config) as task:
        outputs = await outputs_when(config, 5, task)

    assert len(outputs) == 5
    (parked,) = by_topic(outputs, config.topics.dlq)
    assert (parked.key, parked.value) == (b"user_3", delivery(3))
    assert parked.headers["error.class"] == b"RecordError"
    assert parked.headers["error.message"] == b"the name of header 0 is not UTF-8"
    assert parked.headers["source.offset"] == b"2"
    active = status_topic(config, "active")
    routed = by_topic(outputs, active)
    assert [o.value for o in routed] == sorted(delivery(i) for i in (1, 2, 4, 5))


@pytest.mark.parametrize("codec", ["gzip", "snappy", "lz4", "zstd"])
async def test_records_compressed_with_any_codec_are_routed(config: Config, codec: str) -> None:
    values = [delivery(i, status="COMPLETED") for i in range(20)]
    async with AIOKafkaProducer(
        bootstrap_servers=config.kafka.bootstrap_servers, compression_type=codec, linger_ms=50
    ) as producer:
        sent = [await producer.send(config.topics.raw, value, key=b"user_1") for value in values]
        await asyncio.gather(*sent)

    async with worker_running(config) as task:
        outputs = await outputs_when(config, len(values), task)

    completed = status_topic(config, "completed")
    assert sorted(o.value for o in by_topic(outputs, completed)) == sorted(values)
    assert len(outputs) == len(values)


async def test_a_codec_this_process_lacks_parks_its_batch_instead_of_stopping(
    config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    raw, bootstrap = config.topics.raw, config.kafka.bootstrap_servers
    records = [wire.record(i, key=b"user_1", value=delivery(i)) for i in range(3)]
    zstd_batch = wire.batch(records, codec_id=wire.CODECS["zstd"])
    await wire.produce_raw(bootstrap, raw, 1, zstd_batch)
    await wire.produce_raw(bootstrap, raw, 1, wire.batch([wire.record(0, value=delivery(9))]))
    # As if the zstd library were not installed, as on a worker built without it.
    monkeypatch.setattr("aiokafka.codec.has_zstd", lambda: False)

    async with worker_running(config) as task:
        outputs = await outputs_when(config, 2, task)

    (parked,) = by_topic(outputs, config.topics.dlq)
    assert parked.value == zstd_batch  # the whole batch, as Kafka stores it
    assert parked.headers["error.class"] == b"RecordError"
    assert parked.headers["error.message"].startswith(
        b"record batch at offsets 0..2: zstd data cannot be decompressed"
    )
    assert parked.headers["source.offset"] == b"2"
    active = status_topic(config, "active")
    assert [o.value for o in by_topic(outputs, active)] == [delivery(9)]


# --- fuzz ---------------------------------------------------------------------------------

_names = st.one_of(st.binary(max_size=12), st.sampled_from([b"received-at", b"event", b""]))
_header_values = st.one_of(st.none(), st.binary(max_size=40), st.just(b"2025-02-19T12:00:00.000Z"))
_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)
_values = st.one_of(
    st.none(),
    st.binary(max_size=300),
    st.builds(delivery, st.integers(0, 10**6), st.sampled_from(["active", "PAUSED", "", " "])),
    st.builds(msgspec.json.encode, _json),
)
_records = st.lists(
    st.tuples(
        st.one_of(st.none(), st.binary(max_size=24)),
        _values,
        st.lists(st.tuples(_names, _header_values), max_size=3),
    ),
    min_size=1,
    max_size=6,
)
_batches = st.tuples(st.integers(0, 2), st.sampled_from(sorted(wire.CODECS.values())), _records)


def generated_batches() -> list[tuple[int, int, list[Any]]]:
    """Batches as hypothesis generates them: partition, codec and records for each."""
    drawn: list[tuple[int, int, list[Any]]] = []

    @settings(
        max_examples=60,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(_batches)
    def collect(batch: tuple[int, int, list[Any]]) -> None:
        drawn.append(batch)

    collect()
    return drawn


@pytest.mark.slow
async def test_fuzzed_records_are_each_routed_or_parked_and_the_worker_goes_on(
    config: Config,
) -> None:
    # Fuzzed values repeat: with dedup on, a repeated delivery would be counted, not
    # written, and records in would no longer equal records out.
    config = msgspec.structs.replace(
        config, dedup=msgspec.structs.replace(config.dedup, enabled=False)
    )
    raw, bootstrap = config.topics.raw, config.kafka.bootstrap_servers
    written = 0
    for partition, codec_id, records in generated_batches():
        encoded = [
            wire.record(index, key=key, value=value, headers=headers)
            for index, (key, value, headers) in enumerate(records)
        ]
        await wire.produce_raw(bootstrap, raw, partition, wire.batch(encoded, codec_id=codec_id))
        written += len(records)
    sentinel = delivery(10**9, status="COMPLETED")
    await wire.produce_raw(bootstrap, raw, 2, wire.batch([wire.record(0, value=sentinel)]))

    async with worker_running(config) as task:
        outputs = await outputs_when(config, written + 1, task)

    assert len(outputs) == written + 1, "every record in is exactly one record out"
    parked = by_topic(outputs, config.topics.dlq)
    sources = {(o.headers["source.partition"], o.headers["source.offset"]) for o in parked}
    assert len(sources) == len(parked), "a record was parked twice"
    completed = status_topic(config, "completed")
    assert sentinel in {o.value for o in by_topic(outputs, completed)}
