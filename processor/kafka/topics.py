"""`processor topics create`: every topic of the pipeline, shaped as configured.

Idempotent: topics that exist are left alone, and any whose partition count
differs from the config is reported, since partitions can only grow and growing
them moves keys (and so per-user order) to other partitions: an operator decides.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import (
    InvalidReplicationFactorError,
    KafkaError,
    TopicAlreadyExistsError,
    for_code,
)

from processor.config import HEADROOM_BYTES, Config
from processor.errors import BrokerUnavailable, ConfigError
from processor.kafka.clients import client_options, unreachable, wait_until_reachable
from processor.routing import Router

__all__ = [
    "TopicsReport",
    "all_topics",
    "changelog_configs",
    "create_topics",
    "output_topics",
    "topic_configs",
]

# Creating a dozen topics is one request; this bounds a cluster that does not answer.
ADMIN_TIMEOUT_S = 30.0
# The changelog keeps an hour beyond the dedup window: a restore then still finds the
# ids of a window's first moments, and segments whose newest id is older go.
CHANGELOG_MARGIN_MS = 3_600_000
DAY_MS = 86_400_000


@dataclass
class TopicsReport:
    created: list[str] = field(default_factory=list)
    existing: list[str] = field(default_factory=list)
    # topic -> (partitions it has, partitions the config asks for)
    mismatched: dict[str, tuple[int, int]] = field(default_factory=dict)


def output_topics(config: Config) -> list[str]:
    """Every topic the router can produce to: derived topics, unrouted, DLQ."""
    return Router(routing=config.routing, topics=config.topics).destination_topics()


def all_topics(config: Config) -> list[str]:
    """Every topic of the pipeline: raw, the outputs, and the dedup changelog if on."""
    changelog = [config.topics.dedup] if config.dedup.enabled else []
    return [config.topics.raw, *output_topics(config), *changelog]


def topic_configs(config: Config, topic: str) -> dict[str, str]:
    """The topic-level configs `topics create` gives `topic`."""
    if topic == config.topics.dedup:
        return changelog_configs(config)
    limit = config.topics.max_message_bytes
    if topic != config.topics.raw:
        limit += HEADROOM_BYTES
    return {"max.message.bytes": str(limit), **config.topics.configs}


def changelog_configs(config: Config) -> dict[str, str]:
    """The dedup changelog drops whole segments once the window has passed (delete); a
    segment rolls daily so that little more than the window is kept. Its records each
    hold a checkpoint's ids under a key of their own: compaction has nothing to merge
    (a changelog created compacted by an earlier version works all the same)."""
    window_ms = config.dedup.window_s * 1000
    return {
        "max.message.bytes": str(config.topics.max_message_bytes),
        **config.topics.configs,
        "cleanup.policy": "delete",
        "retention.ms": str(window_ms + CHANGELOG_MARGIN_MS),
        "segment.ms": str(min(window_ms, DAY_MS)),
    }


async def create_topics(config: Config) -> TopicsReport:
    """Create the missing topics; waits up to kafka.connect_timeout_s for a broker.

    Raises BrokerUnavailable when none answers, or the cluster fails a request;
    ConfigError when it has fewer brokers than topics.replication_factor.
    """
    try:
        async with asyncio.timeout(config.kafka.connect_timeout_s):
            await wait_until_reachable(config.kafka)
    except TimeoutError as exc:
        raise unreachable(config.kafka, exc) from None
    wanted = all_topics(config)
    admin = AIOKafkaAdminClient(**client_options(config.kafka))
    report = TopicsReport()
    try:
        async with asyncio.timeout(ADMIN_TIMEOUT_S):
            await admin.start()
            present = set(await admin.list_topics())
            report.existing = [name for name in wanted if name in present]
            missing = [
                NewTopic(
                    name,
                    num_partitions=config.topics.partitions,
                    replication_factor=config.topics.replication_factor,
                    topic_configs=topic_configs(config, name),
                )
                for name in wanted
                if name not in present
            ]
            if missing:
                response = await admin.create_topics(missing)
                for name, code, message in response.topic_errors:
                    if code == TopicAlreadyExistsError.errno:  # created by another meanwhile
                        report.existing.append(name)
                    elif code:
                        raise for_code(code)(f"{name}: {message}")
                    else:
                        report.created.append(name)
            if report.existing:
                for description in await admin.describe_topics(report.existing):
                    count = len(description["partitions"])
                    if count != config.topics.partitions:
                        report.mismatched[description["topic"]] = (count, config.topics.partitions)
    except InvalidReplicationFactorError as exc:
        raise ConfigError(
            f"{config.kafka.bootstrap_servers} refused a topic ({exc}): it has fewer brokers "
            f"than topics.replication_factor ({config.topics.replication_factor}); lower it"
        ) from None
    except TimeoutError:
        raise BrokerUnavailable(
            f"{config.kafka.bootstrap_servers} did not answer the topic requests within "
            f"{ADMIN_TIMEOUT_S:g} s; see the broker's log"
        ) from None
    except KafkaError as exc:
        raise BrokerUnavailable(
            f"{config.kafka.bootstrap_servers} refused to create the topics ({exc}); see "
            "the broker's log, and whether this client may create topics (ACLs)"
        ) from None
    finally:
        await admin.close()
    return report
