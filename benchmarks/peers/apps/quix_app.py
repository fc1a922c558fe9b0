"""The routing job as a Quix Streams application (an `Application` and a StreamingDataFrame).

Shaped as Quix's docs show it: topics declared up front with `app.topic`, one
dataframe, `to_topic` with a callable that picks the destination `Topic` per message
and a `key` callable, `set_headers` for the routing headers. Three choices keep the
job's contract that the value is the bytes as received, which Quix's default JSON
serializers would not (they decode, then re-encode): the raw topic is read with the
`bytes` deserializer, the step after `apply` carries the original bytes beside the
decision, and the output topics' serializer (a custom `Serializer`, Quix's documented
extension point) writes those bytes back. JSON is decoded with what Quix's own JSON
deserializer uses (`quixstreams.utils.json.loads`, orjson).

Settings: `processing_guarantee` from `--guarantee`; acks=all and idempotence on the
producer (librdkafka's `acks` default is already all; idempotence is off unless
Quix runs exactly once); Quix's own `murmur2` partitioner, the Java client's; offsets
from the earliest. A checkpoint (flush the producer, commit; a transaction when
exactly once) every `--batch` records or second, whichever comes first: as often as
the worker commits, and the last records of a run wait at most a second for their
commit. Quix's defaults (every 5 s, `--commit-every 0 --commit-interval 5`) took as
much CPU per record but 25 % fewer records per second on 100,000 deliveries, most of
it the last commit's wait.
"""

from __future__ import annotations

import argparse
from typing import Any, NamedTuple

from job import Job, Routed, Router, parse_job, wait_for_start
from quixstreams import Application
from quixstreams.models.serializers import SerializationContext, Serializer
from quixstreams.utils.json import loads

COMMIT_INTERVAL_S = 1.0  # the tail of a run waits at most this long for its commit


class Decided(NamedTuple):
    value: bytes | None  # as received
    routed: Routed


class OriginalBytes(Serializer):  # type: ignore[misc]  # quixstreams has no types
    """Writes the value as it was read, whatever routing decided."""

    def __call__(self, value: Decided, ctx: SerializationContext) -> bytes | None:
        return value.value


def commit_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--commit-every", type=int, help="default: --batch")
    parser.add_argument("--commit-interval", type=float, default=COMMIT_INTERVAL_S)


def build(job: Job, commit_every: int, commit_interval: float) -> Application:
    app = Application(
        broker_address=job.bootstrap,
        consumer_group=job.group,
        auto_offset_reset="earliest",
        processing_guarantee="exactly-once" if job.guarantee == "exactly_once" else "at-least-once",
        commit_every=commit_every,
        commit_interval=commit_interval,
        producer_extra_config={"acks": "all", "enable.idempotence": True},
        auto_create_topics=False,  # the benchmark made them, as `processor topics create`
        state_dir="state",  # in the run's own working directory; the job keeps no state
        loglevel="WARNING",
    )
    router = Router(job, loads=loads)
    raw = app.topic(job.raw, key_deserializer="bytes", value_deserializer="bytes")
    outputs = {
        name: app.topic(name, key_serializer="bytes", value_serializer=OriginalBytes())
        for name in job.outputs()
    }

    def decide(value: bytes | None, key: bytes | None, _timestamp: int, _headers: Any) -> Decided:
        return Decided(value, router.route(value, key))

    sdf = app.dataframe(raw)
    sdf = sdf.apply(decide, metadata=True)
    sdf = sdf.set_headers(lambda value, _key, _timestamp, _headers: value.routed.headers)
    sdf.to_topic(
        topic=lambda value, _key, _timestamp, _headers: outputs[value.routed.topic],
        key=lambda value: value.routed.key,
    )
    return app


def main() -> None:
    job, extra = parse_job(__doc__.split("\n\n")[0], extra=commit_arguments)
    commit_every = job.batch if extra.commit_every is None else extra.commit_every
    wait_for_start()
    # SIGTERM: Quix finishes the message, commits its checkpoint and exits.
    build(job, commit_every, extra.commit_interval).run()


if __name__ == "__main__":
    main()
