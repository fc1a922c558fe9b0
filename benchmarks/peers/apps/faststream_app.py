"""The routing job as a FastStream application (a `KafkaBroker` and a batch subscriber).

Shaped as FastStream's docs show it for throughput: `@broker.subscriber(batch=True)`
with `max_records` and `batch_timeout_ms` (one call per `getmany`), a group, offsets
from the earliest, and `AckPolicy.NACK_ON_ERROR`, the docs' at-least-once policy
(commit after the handler; on an error, seek back and read the batch again). The
producer is the broker's: acks=all, idempotence, batches up to 1 MiB.

Two ways to publish, `--publish`:

- `record` (default): `broker.publish(..., key=..., headers=..., no_confirm=True)` per
  record, then wait for every confirmation; aiokafka picks the partition from the key.
- `batch`: `broker.publish_batch` per destination topic with a `KafkaPublishMessage`
  (key, headers) per record, as the batch-publishing page advises. FastStream 0.7.8
  sends the whole call as one aiokafka batch to one partition (`send_batch` with
  `partition=None`: a random one) and writes only the call's headers, so records do
  not land where their key says and lose their own headers; the table says so.

The subscriber takes a custom decoder (FastStream's documented hook) that hands the
handler the `ConsumerRecord`s as they are. Without it, FastStream decodes every body
whose `content-type` header is `application/json` (every raw record has one) before
the handler runs, and one malformed delivery fails the whole batch: with
NACK_ON_ERROR the batch is read again forever, with ACK it is committed unrouted.
Routing decodes JSON with the standard library, FastStream's own default.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from faststream import AckPolicy, FastStream
from faststream.kafka import KafkaBroker, KafkaPublishMessage
from job import Job, Router, parse_job, wait_for_start

FETCH_TIMEOUT_MS = 500  # the worker's fetch_timeout_ms: an idle wait per empty fetch
MAX_BATCH_BYTES = 1024 * 1024  # one publish_batch call must fit one aiokafka batch


async def as_received(message: Any) -> Any:
    """The decoder: the batch's ConsumerRecords, bodies undecoded."""
    return message.raw_message


def build(job: Job, publish: str) -> FastStream:
    router = Router(job)
    broker = KafkaBroker(
        job.bootstrap,
        acks="all",
        enable_idempotence=True,
        max_batch_size=MAX_BATCH_BYTES,
        max_request_size=2 * MAX_BATCH_BYTES,
    )

    async def per_record(records: Any) -> None:
        futures = []
        for record in records:
            routed = router.route(record.value, record.key)
            futures.append(
                await broker.publish(
                    record.value,
                    routed.topic,
                    key=routed.key,
                    headers={name: value.decode() for name, value in routed.headers},
                    no_confirm=True,
                )
            )
        await asyncio.gather(*futures)

    async def per_topic(records: Any) -> None:
        by_topic: dict[str, list[KafkaPublishMessage]] = {}
        for record in records:
            routed = router.route(record.value, record.key)
            by_topic.setdefault(routed.topic, []).append(
                KafkaPublishMessage(
                    record.value,
                    key=routed.key,
                    headers={name: value.decode() for name, value in routed.headers},
                )
            )
        await asyncio.gather(
            *(broker.publish_batch(*messages, topic=t) for t, messages in by_topic.items())
        )

    broker.subscriber(
        job.raw,
        group_id=job.group,
        batch=True,
        max_records=job.batch,
        batch_timeout_ms=FETCH_TIMEOUT_MS,
        auto_offset_reset="earliest",
        ack_policy=AckPolicy.NACK_ON_ERROR,
        decoder=as_received,
    )(per_record if publish == "record" else per_topic)
    return FastStream(broker)


def publish_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--publish", choices=("record", "batch"), default="record")


def main() -> None:
    job, extra = parse_job(__doc__.split("\n\n")[0], extra=publish_argument)
    app = build(job, extra.publish)
    wait_for_start()
    asyncio.run(app.run())  # SIGTERM: FastStream stops the subscriber, closes the broker


if __name__ == "__main__":
    main()
