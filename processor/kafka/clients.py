"""How every process reaches Kafka: client settings, start-up within a deadline, topics,
and reading partitions to their end.

The ingress producer, the worker's consumer and producer, and the admin client all
reach the same cluster the same way; building their keyword arguments in one place
keeps TLS and SASL handling from drifting between them, and starting them in one
place gives every process the same bounded start and the same error message.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Iterable, Mapping
from typing import Any

import structlog
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.client import AIOKafkaClient
from aiokafka.errors import KafkaConnectionError, KafkaError, UnknownMemberIdError, for_code
from aiokafka.helpers import create_ssl_context

from processor.config import HEADROOM_BYTES, Config, KafkaConfig
from processor.errors import BrokerUnavailable, ConfigError, TopicsMissing
from processor.kafka.aiokafka_internals import client_of, read_stable_offsets, remove_static_member
from processor.kafka.connectivity import Connectivity
from processor.kafka.producers import BoundedProducer, RenewingProducer
from processor.shutdown import unless_stopped

__all__ = [
    "StableOffsetsConsumer",
    "client_options",
    "connect",
    "group_instance_id",
    "ingress_producer_options",
    "partitions_of",
    "read_to_end",
    "reader_options",
    "renewing_producer",
    "require_topics",
    "wait_until_reachable",
    "worker_consumer_options",
    "worker_producer_options",
]

log = structlog.get_logger(__name__)


def client_options(config: KafkaConfig) -> dict[str, Any]:
    """Keyword arguments for AIOKafkaProducer, AIOKafkaConsumer and AIOKafkaAdminClient.

    Reads the TLS files once, here, so a wrong path fails at start-up with the key
    to fix rather than on the first connection.
    """
    options: dict[str, Any] = {
        "bootstrap_servers": config.bootstrap_servers,
        "client_id": config.client_id,
        "security_protocol": config.security_protocol,
        "request_timeout_ms": config.request_timeout_ms,
    }
    if config.security_protocol in ("SSL", "SASL_SSL"):
        options["ssl_context"] = _ssl_context(config)
    if config.security_protocol.startswith("SASL"):
        # aiokafka takes the SCRAM credentials through the PLAIN-named arguments too.
        options["sasl_mechanism"] = config.sasl_mechanism
        options["sasl_plain_username"] = config.sasl_username
        options["sasl_plain_password"] = config.sasl_password
    return options


def ingress_producer_options(config: Config) -> dict[str, Any]:
    """The ingress's producer: nothing is 2xx until every in-sync replica has it.

    Its batch and request limits are the topic's, which leave room for the largest
    body the ingress accepts (HEADROOM_BYTES), so Kafka never refuses a delivery the
    HTTP side took; and a busy group fills one batch per partition instead of several
    that would each wait for the previous one's round trip.
    """
    return {
        **client_options(config.kafka),
        "acks": "all",
        "enable_idempotence": True,
        "max_batch_size": config.topics.max_message_bytes,
        "max_request_size": config.topics.max_message_bytes,
    }


def worker_consumer_options(config: Config) -> dict[str, Any]:
    """The worker's consumer: manual commits, a new group reads from the beginning."""
    return {
        **client_options(config.kafka),
        "group_id": config.worker.group_id,
        "group_instance_id": group_instance_id(config),
        "enable_auto_commit": False,
        # Nothing written before the first worker ever ran is skipped.
        "auto_offset_reset": "earliest",
        # A raw record some transactional producer aborted (a replay, say) is not routed.
        "isolation_level": "read_committed",
        "max_poll_interval_ms": config.worker.max_poll_interval_ms,
        "session_timeout_ms": config.worker.session_timeout_ms,
        "heartbeat_interval_ms": config.worker.heartbeat_interval_ms,
    }


def reader_options(config: Config, *, group_id: str | None = None) -> dict[str, Any]:
    """A consumer that reads what is committed and commits nothing by itself: `tail` (no
    group: a guest nobody notices), `replay` (a group of its own, committed in its
    transactions) and dedup's changelog restore."""
    return {
        **client_options(config.kafka),
        "group_id": group_id,
        "enable_auto_commit": False,
        # Never a record some transactional producer aborted (a worker's, a replay's).
        "isolation_level": "read_committed",
    }


class StableOffsetsConsumer(AIOKafkaConsumer):  # type: ignore[misc]
    """The exactly-once worker's consumer: it reads the offsets a transaction commits
    only once the transaction has ended (require_stable, KIP-447), so that it never
    starts a partition before a transaction of its previous owner that commits later."""

    async def start(self) -> None:
        await super().start()
        read_stable_offsets(self)


def group_instance_id(config: Config) -> str | None:
    """worker.group_instance_id with `{hostname}` filled in; None for a dynamic member."""
    template = config.worker.group_instance_id
    return None if template is None else template.format(hostname=socket.gethostname())


async def leave_group(config: Config, member: str) -> None:
    """Remove the static member `member` (a group_instance_id) from worker.group_id now,
    so the group rebalances at once rather than after its session timeout. Raises
    KafkaError when the coordinator refuses or cannot be reached; a member already gone
    is no error."""
    client = AIOKafkaClient(**client_options(config.kafka))
    try:
        await client.bootstrap()
        code = await remove_static_member(
            client, group_id=config.worker.group_id, group_instance_id=member
        )
    finally:
        await client.close()
    if code and code != UnknownMemberIdError.errno:
        raise for_code(code)(f"{member} could not leave {config.worker.group_id}")


def worker_producer_options(config: Config) -> dict[str, Any]:
    """The worker's producer: durable (acks=all, idempotent) and fed whole batches."""
    return {
        **client_options(config.kafka),
        "acks": "all",
        "enable_idempotence": True,
        # produce_batch hands over complete batches; lingering would only delay them.
        "linger_ms": 0,
        # One Kafka batch per destination partition per worker batch, up to the topic limit.
        "max_batch_size": config.topics.max_message_bytes // 2,
        # Derived topics take HEADROOM_BYTES more than the raw topic (processor.kafka.topics).
        "max_request_size": config.topics.max_message_bytes + HEADROOM_BYTES,
    }


def renewing_producer(
    config: Config, *, name: str, options: dict[str, Any], connectivity: Connectivity
) -> RenewingProducer:
    """A producer made with `options`, its client watched by `connectivity`, replaced
    whenever Kafka leaves it unable to write (processor.kafka.producers).

    Writes failing for kafka.request_timeout_ms while the cluster answers count as stuck:
    by then aiokafka has given up on them itself.
    """

    timeout_s = config.kafka.request_timeout_ms / 1000

    def make() -> BoundedProducer:
        producer = BoundedProducer(**options, flush_timeout_s=timeout_s)
        connectivity.watch(producer.client)
        return producer

    return RenewingProducer(
        make,
        name=name,
        reachable=lambda: connectivity.reachable,
        renew_after_s=timeout_s,
        start_timeout_s=timeout_s,
        on_renewed=connectivity.producer_renewed,
    )


def _ssl_context(config: KafkaConfig) -> ssl.SSLContext:
    """Verifies the broker (system CAs unless kafka.ssl_cafile); client cert if given."""
    if config.ssl_keyfile and not config.ssl_certfile:
        raise ConfigError("kafka.ssl_keyfile is set without kafka.ssl_certfile: set both")
    try:
        context: ssl.SSLContext = create_ssl_context(
            cafile=config.ssl_cafile,
            certfile=config.ssl_certfile,
            keyfile=config.ssl_keyfile,
        )
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"kafka.ssl_cafile/ssl_certfile/ssl_keyfile cannot be loaded: {exc}; "
            "check the paths and that the files are PEM"
        ) from None
    return context


async def connect(
    start: Callable[[], Awaitable[object]], *, config: KafkaConfig, stop: asyncio.Event
) -> bool:
    """Run `start` (waiting for the cluster, starting clients, their first requests)
    within kafka.connect_timeout_s.

    Returns False when `stop` came first: a SIGTERM during start-up ends it at once,
    which matters for a process that is PID 1 in a container. Raises BrokerUnavailable
    naming the address and what to check; TopicsMissing passes through.
    """
    try:
        async with asyncio.timeout(config.connect_timeout_s):
            return await unless_stopped(start(), stop)
    except (TimeoutError, KafkaError) as exc:
        raise unreachable(config, exc) from None


def unreachable(config: KafkaConfig, exc: BaseException) -> BrokerUnavailable:
    """What to say when no broker took a start within kafka.connect_timeout_s."""
    return BrokerUnavailable(
        f"cannot reach Kafka at {config.bootstrap_servers} within "
        f"{config.connect_timeout_s:g} s ({type(exc).__name__}): start it "
        "(`processor broker start`), or fix kafka.bootstrap_servers / "
        "KAFKA_BOOTSTRAP_SERVERS and the TLS/SASL settings"
    )


async def wait_until_reachable(config: KafkaConfig) -> None:
    """Until a bootstrap server answers a metadata request; logged once if not at once.

    aiokafka's clients fail their start at once when no broker answers; starting them
    after this waits for a broker that is still coming up instead.
    """
    pause = 0.25
    while True:
        probe = AIOKafkaClient(**client_options(config))
        try:
            await probe.bootstrap()
        except KafkaConnectionError as exc:
            if pause == 0.25:
                log.warning(
                    "kafka.waiting",
                    bootstrap=config.bootstrap_servers,
                    error=str(exc),
                    detail="no broker answers yet; retrying until kafka.connect_timeout_s "
                    f"({config.connect_timeout_s:g} s)",
                )
            await asyncio.sleep(pause)
            pause = min(pause * 2, 2.0)
        else:
            return
        finally:
            await probe.close()


def require_topics(known: Collection[str], wanted: Iterable[str], *, bootstrap: str) -> None:
    """Raise TopicsMissing unless every one of `wanted` is among the `known` topics."""
    missing = [topic for topic in wanted if topic not in known]
    if missing:
        raise TopicsMissing(
            f"topics missing on {bootstrap}: {', '.join(missing)}; "
            "create them with `processor topics create`"
        )


async def partitions_of(consumer: AIOKafkaConsumer, topic: str) -> list[TopicPartition]:
    """The partitions `topic` has now, asked of the cluster (a consumer that subscribed
    to nothing has no metadata for it); none when it does not exist."""
    cluster = await client_of(consumer).fetch_all_metadata()
    return [TopicPartition(topic, p) for p in sorted(cluster.partitions_for_topic(topic) or ())]


async def read_to_end(
    consumer: AIOKafkaConsumer,
    partitions: Collection[TopicPartition],
    *,
    ends: Mapping[TopicPartition, int] | None = None,
) -> AsyncIterator[tuple[TopicPartition, list[ConsumerRecord[bytes, bytes]]]]:
    """The records of `partitions` (assigned to `consumer`) from its positions up to
    `ends`, by default their end offsets as they are when called: a snapshot, however
    much is written meanwhile. With read_committed, the end is the last stable offset."""
    if ends is None:
        ends = await consumer.end_offsets(list(partitions))
    pending = {tp for tp, end in ends.items() if await consumer.position(tp) < end}
    while pending:
        fetched = await consumer.getmany(*pending, timeout_ms=200)
        for tp, records in fetched.items():
            within = [record for record in records if record.offset < ends[tp]]
            if within:
                yield tp, within
        pending = {tp for tp in pending if await consumer.position(tp) < ends[tp]}
