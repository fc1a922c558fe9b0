"""The routing job on bare confluent-kafka (librdkafka): the C client's loop.

`consume` up to a batch of records, route each (`job.Router`, the standard library's
json), `produce` it (librdkafka batches per partition in its own thread), `flush`
until every delivery is acknowledged, commit synchronously. acks=all and idempotence
as the worker; the `murmur2_random` partitioner puts a key where the Java client
would (librdkafka's default, `consistent_random`, hashes with CRC32 and would not).
Only failed deliveries are reported, so the loop pays no Python callback per record.
Runs until SIGTERM.
"""

from __future__ import annotations

import signal
from types import FrameType

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer
from job import Job, Router, parse_job, wait_for_start

POLL_TIMEOUT_S = 0.5  # the worker's fetch_timeout_ms: an idle wait that bounds shutdown


class Loop:
    """Clients are made in `run`: librdkafka connects as soon as a client exists."""

    def __init__(self, job: Job) -> None:
        self.job = job
        self.router = Router(job)
        self.failed: list[KafkaError] = []
        self.stopping = False

    def delivered(self, error: KafkaError | None, _message: object) -> None:
        if error is not None:
            self.failed.append(error)

    def stop(self, _signum: int, _frame: FrameType | None) -> None:
        self.stopping = True

    def run(self) -> None:
        signal.signal(signal.SIGTERM, self.stop)
        consumer = Consumer(
            {
                "bootstrap.servers": self.job.bootstrap,
                "group.id": self.job.group,
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "isolation.level": "read_committed",
            }
        )
        producer = Producer(
            {
                "bootstrap.servers": self.job.bootstrap,
                "acks": "all",
                "enable.idempotence": True,
                "partitioner": "murmur2_random",
                "on_delivery": self.delivered,
                "delivery.report.only.error": True,
            }
        )
        consumer.subscribe([self.job.raw])
        try:
            while not self.stopping:
                messages = consumer.consume(self.job.batch, POLL_TIMEOUT_S)
                if not messages:
                    continue
                for message in messages:
                    if message.error():
                        raise KafkaException(message.error())
                    value = message.value()
                    routed = self.router.route(value, message.key())
                    while True:
                        try:
                            producer.produce(
                                routed.topic, value, routed.key, headers=routed.headers
                            )
                        except BufferError:  # librdkafka's queue is full: serve it, retry
                            producer.poll(0.1)
                        else:
                            break
                producer.flush()
                if self.failed:
                    raise KafkaException(self.failed[0])
                consumer.commit(asynchronous=False)
        finally:
            consumer.close()


def main() -> None:
    job, _ = parse_job(__doc__.split("\n\n")[0])
    loop = Loop(job)
    wait_for_start()
    loop.run()


if __name__ == "__main__":
    main()
