"""The routing job on bare aiokafka: the baseline every row of the table is compared with.

The loop the worker runs, without its contract, dedup, metrics or breaker: `getmany`,
route each record (`job.Router`, the standard library's json), append the records to
one `BatchBuilder` per destination partition (murmur2 as the Java client, the
partitioner aiokafka uses for `send`), `send_batch` each, wait for every ack, commit
the batch's offsets. acks=all and idempotence, as the worker. Runs until SIGTERM.
"""

from __future__ import annotations

import asyncio
import signal
from functools import lru_cache
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.partitioner import murmur2
from job import Job, Router, parse_job, wait_for_start

FETCH_TIMEOUT_MS = 500  # the worker's fetch_timeout_ms: an idle wait that bounds shutdown
MAX_BATCH_BYTES = 1024 * 1024  # a batch's records to one partition fit one Kafka batch


@lru_cache(maxsize=65_536)
def partition_for(key: bytes, partitions: int) -> int:
    # murmur2 is pure Python in aiokafka; users repeat, so the cache saves most calls.
    hashed: int = murmur2(key)
    return (hashed & 0x7FFFFFFF) % partitions


Grouped = dict[tuple[str, int], list[tuple[Any, ...]]]  # (topic, partition) -> records


async def send(producer: AIOKafkaProducer, grouped: Grouped) -> list[asyncio.Future[Any]]:
    """Each partition's records in one `BatchBuilder` (another when one fills), submitted;
    the futures complete when Kafka has acknowledged them."""
    futures = []
    for (topic, partition), records in grouped.items():
        builder = producer.create_batch()
        for key, value, headers in records:
            if builder.append(key=key, value=value, timestamp=None, headers=headers) is None:
                futures.append(await producer.send_batch(builder, topic, partition=partition))
                builder = producer.create_batch()
                builder.append(key=key, value=value, timestamp=None, headers=headers)
        futures.append(await producer.send_batch(builder, topic, partition=partition))
    return futures


async def run(job: Job) -> None:
    router = Router(job)
    consumer = AIOKafkaConsumer(
        job.raw,
        bootstrap_servers=job.bootstrap,
        group_id=job.group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
    )
    producer = AIOKafkaProducer(
        bootstrap_servers=job.bootstrap,
        acks="all",
        enable_idempotence=True,
        linger_ms=0,  # whole batches are handed over; lingering would only delay them
        max_batch_size=MAX_BATCH_BYTES,
        max_request_size=2 * MAX_BATCH_BYTES,
    )
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await producer.start()
    await consumer.start()
    partitions = {t: len(await producer.partitions_for(t)) for t in job.outputs()}
    try:
        while not stop.is_set():
            batch = await consumer.getmany(timeout_ms=FETCH_TIMEOUT_MS, max_records=job.batch)
            if not batch:
                continue
            grouped: Grouped = {}
            for records in batch.values():
                for record in records:
                    routed = router.route(record.value, record.key)
                    key = routed.key
                    partition = partition_for(key, partitions[routed.topic]) if key else 0
                    grouped.setdefault((routed.topic, partition), []).append(
                        (routed.key, record.value, routed.headers)
                    )
            futures = await send(producer, grouped)
            await asyncio.gather(*futures)
            await consumer.commit({tp: records[-1].offset + 1 for tp, records in batch.items()})
    finally:
        await consumer.stop()
        await producer.stop()


def main() -> None:
    job, _ = parse_job(__doc__.split("\n\n")[0])
    wait_for_start()
    asyncio.run(run(job))


if __name__ == "__main__":
    main()
