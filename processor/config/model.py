"""The configuration's shape: frozen, typed sections with their defaults and why.

Built once at start-up by `processor.config.load_config` and passed down; nothing
reads the environment or the file anywhere else.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Final, Literal

import msgspec

from processor.naming import uses_status

__all__ = [
    "HEADROOM_BYTES",
    "SECTIONS",
    "Config",
    "DedupConfig",
    "IngressConfig",
    "KafkaConfig",
    "LoggingConfig",
    "ReplayConfig",
    "Route",
    "RoutingConfig",
    "TopicsConfig",
    "WorkerConfig",
]

# Bounds a type states, so that msgspec names the key of a value out of them.
PositiveInt = Annotated[int, msgspec.Meta(gt=0)]
PositiveFloat = Annotated[float, msgspec.Meta(gt=0)]
NonNegativeInt = Annotated[int, msgspec.Meta(ge=0)]
Port = Annotated[int, msgspec.Meta(ge=1, le=65535)]
# Room for headers and record framing around a delivery's bytes, one budget for every
# step: the raw topic takes this much more than the largest body the ingress accepts,
# and every derived topic this much more than the raw topic (routing adds at most
# ~2.5 KiB of headers: identifiers are capped at 256 characters, DLQ messages at
# 1,000), so whatever one step accepted, the next can always write.
HEADROOM_BYTES = 64 * 1024


class _Section(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Base for every section: immutable, keyword-built, strict about keys."""


class KafkaConfig(_Section, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How every client (producer, consumer, admin) reaches the cluster."""

    bootstrap_servers: str = "127.0.0.1:9092"
    client_id: str = "processor"
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: str | None = None
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    # Upper bound on one broker request; a metadata or produce call never hangs longer.
    # A producer whose writes keep failing this long while Kafka answers is replaced.
    request_timeout_ms: PositiveInt = 30_000
    # Start-up gives the cluster this long to answer, then fails with what to check.
    connect_timeout_s: PositiveFloat = 30.0


class TopicsConfig(_Section, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Topic names and the shape `processor topics create` gives them."""

    raw: str = "webhooks.raw"
    unrouted: str = "webhooks.unrouted"
    dlq: str = "webhooks.dlq"
    # The dedup changelog: remembered delivery ids, per raw partition.
    dedup: str = "webhooks.dedup"
    # Partitions bound the number of useful workers: one partition feeds one worker.
    partitions: PositiveInt = 6
    replication_factor: PositiveInt = 1
    # Largest record batch a topic takes (its max.message.bytes; producers' max request).
    # Above Kafka's 1 MiB default, so a delivery at ingress.max_body_bytes plus headers fits.
    max_message_bytes: PositiveInt = 2_097_152
    # Topic-level configs (retention.ms, min.insync.replicas, ...) for every topic created.
    configs: dict[str, str] = msgspec.field(default_factory=dict)


class Route(_Section, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One category's route. `topic` is a template; with `{status}` in it the category
    is routed by status, and `statuses`/`other_status` (routing's, unless given here)
    say which statuses get a topic of their own and where the others go."""

    topic: str
    statuses: tuple[str, ...] | None = None
    other_status: str | None = None

    @property
    def by_status(self) -> bool:
        return uses_status(self.topic)


class RoutingConfig(_Section, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Which categories have a route, and the statuses of routes that name none."""

    # category -> topic template, or a Route; `{status}` is the normalised `data.status`.
    routes: dict[str, str | Route] = msgspec.field(
        default_factory=lambda: {"integration": "integration.status.{status}"}
    )
    # The statuses a route by status has a topic for unless it lists its own: every
    # status the provider documents for integrations (event spec and Integrations API).
    statuses: tuple[str, ...] = (
        "queued",
        "ongoing",
        "completed",
        "failed",
        "active",
        "inactive",
        "error",
        "partially_synced",
    )
    # Where a status outside those goes; the original value stays in the header.
    other_status: str = "other"

    def resolved(self) -> dict[str, Route]:
        """Every route as a Route, a route by status with its statuses filled in."""
        resolved: dict[str, Route] = {}
        for category, route in self.routes.items():
            if isinstance(route, str):
                route = Route(topic=route)
            if route.by_status:
                route = Route(
                    topic=route.topic,
                    statuses=self.statuses if route.statuses is None else route.statuses,
                    other_status=(
                        self.other_status if route.other_status is None else route.other_status
                    ),
                )
            resolved[category] = route
        return resolved


class DedupConfig(_Section, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Provider retries recognised by delivery id and not routed again."""

    enabled: bool = True
    # How long an id is remembered: 4 days. The provider does not document its retry
    # schedule; senders retry for up to ~28 h (Svix) and the Standard Webhooks example
    # schedule runs ~76 h, and a shorter window lets the late retries through.
    window_s: PositiveInt = 345_600


class ReplayConfig(_Section, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """`processor replay`: DLQ or unrouted records back to the raw topic."""

    # A delivery replayed this often that failed again is skipped (and said so): a
    # record that can never be routed must not loop between the DLQ and the raw topic.
    max_attempts: PositiveInt = 3


# worker.commit_interval_ms by guarantee, when not set. Measured at 300 deliveries/s
# against a checkpoint per batch (docs/benchmarks.md, "Checkpoints"): at least once
# with one per second, 0.77x the workers' CPU and 0.75x the broker's per delivery, p99
# lower (outputs still go out at once); exactly once with one per 100 ms (Kafka
# Streams' default), 0.83x the workers' CPU and 0.60x the broker's, p99 no higher,
# p50 about 15 ms later (what read_committed subscribers wait for the commit).
DEFAULT_COMMIT_INTERVAL_MS: Final[Mapping[str, int]] = {"at_least_once": 1_000, "exactly_once": 100}


class WorkerConfig(_Section, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The consumer group that routes `webhooks.raw`."""

    group_id: str = "processor-workers"
    # at_least_once: outputs, dedup changelog, then offsets, each after the last is
    # acknowledged (a crash may write a batch twice). exactly_once: all three in one
    # Kafka transaction per checkpoint (subscribers read with read_committed).
    guarantee: Literal["at_least_once", "exactly_once"] = "at_least_once"
    # Static membership (Kubernetes: the pod name): a restarted pod gets its partitions
    # back without a rebalance if it returns within session_timeout_ms. `{hostname}` is
    # replaced by the host name, stable across restarts of one container. Exactly once,
    # it also names the worker's transactional id, so a restart aborts at once what the
    # process before it left open (a dynamic member's waits for transaction_timeout_ms).
    group_instance_id: str | None = None
    # Records per getmany(): large enough to amortise a produce round trip.
    max_batch_records: PositiveInt = 2_000
    # How long getmany() waits for the first record; bounds shutdown latency when idle.
    fetch_timeout_ms: PositiveInt = 500
    # A batch whose records are not all acknowledged in this time is retried, not committed.
    produce_timeout_s: PositiveFloat = 30.0
    # Offsets commit is one round trip to the group coordinator.
    commit_timeout_s: PositiveFloat = 10.0
    # A checkpoint (outputs acknowledged, dedup changelog written, offsets committed;
    # exactly once: one transaction) covers the batches of this long,
    # or this many records, whichever comes first; and is taken at every rebalance and
    # stop. 0: every batch; None: the guarantee's default (DEFAULT_COMMIT_INTERVAL_MS).
    # At least once, outputs are produced as records are fetched and a crash re-routes
    # at most one checkpoint's records; exactly once, read_committed subscribers see
    # outputs up to one checkpoint late.
    commit_interval_ms: NonNegativeInt | None = None
    commit_every_records: PositiveInt = 10_000
    # Pause before retrying a batch whose produce failed, doubling up to the maximum, so
    # a broken cluster (or a missing ACL) is not hammered while someone fixes it.
    retry_backoff_s: PositiveFloat = 1.0
    max_retry_backoff_s: PositiveFloat = 30.0
    # SIGTERM to exit: finish the batch in flight, commit, stop (a static member stays in
    # the group for session_timeout_ms; SIGUSR1 also takes it out: a scale-down).
    shutdown_timeout_s: PositiveFloat = 30.0
    # Broker declares the worker dead after this long without heartbeats.
    session_timeout_ms: PositiveInt = 45_000
    heartbeat_interval_ms: PositiveInt = 3_000
    # A batch must finish well inside this, or the group evicts the worker.
    max_poll_interval_ms: PositiveInt = 300_000
    # exactly_once: Kafka aborts a transaction left open this long (its worker died), and
    # read_committed subscribers of its partitions wait for it at most this long. Longer
    # than produce_timeout_s, so a live worker gives a transaction up before Kafka does.
    transaction_timeout_ms: PositiveInt = 60_000

    # The DLQ circuit breaker (processor.worker.breaker): a partition is paused when more than
    # this share of its last dlq_window_records went to the DLQ (1.0 turns it off)...
    dlq_max_ratio: Annotated[float, msgspec.Meta(gt=0, le=1)] = 0.5
    dlq_window_records: PositiveInt = 1_000
    # ... or more than this many in a row: a stream that turned bad, not a stray record.
    dlq_max_consecutive: PositiveInt = 100
    # How long a tripped partition rests before the worker tries it again.
    dlq_pause_s: PositiveFloat = 60.0
    # One worker.summary line this often (records by outcome, batches, lag); each batch's
    # line is DEBUG, and anything unusual (DLQ, conflict, retry, breaker) is said at once.
    log_interval_s: PositiveFloat = 30.0
    # A liveness and metrics port for orchestrators (GET /healthz, GET /metrics). None
    # serves no HTTP, so any number of workers can share a laptop without port clashes.
    metrics_port: Port | None = None
    # Loopback by default; 0.0.0.0 in containers, so probes and scrapers can reach it.
    metrics_host: str = "127.0.0.1"

    @property
    def checkpoint_interval_s(self) -> float:
        """The checkpoint interval in force: commit_interval_ms, else the guarantee's."""
        ms = self.commit_interval_ms
        return (DEFAULT_COMMIT_INTERVAL_MS[self.guarantee] if ms is None else ms) / 1000


class IngressConfig(_Section, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The HTTP door: where it listens and how it decides a delivery is genuine."""

    host: str = "127.0.0.1"
    port: Port = 8080
    path: str = "/webhooks"
    # /readyz, /metrics and /healthz for probes and scrapers, on a port of their own: the
    # public port answers deliveries and a /healthz for load balancers, nothing else.
    # Loopback by default; 0.0.0.0 in containers, so probes and scrapers can reach it.
    management_port: Port = 8081
    management_host: str = "127.0.0.1"
    # Larger bodies are refused with 413 before being read; provider events are a few KiB.
    max_body_bytes: PositiveInt = 1_048_576
    # 503 + Retry-After when Kafka has not acknowledged within this; the provider retries.
    publish_timeout_s: PositiveFloat = 10.0
    # Verified deliveries waiting for Kafka at once; beyond, 503 + Retry-After at once,
    # unpublished: an overload is answered, never queued. Counted after the signature, so
    # senders of anything else cannot take the places. 1024 kept the most 202s of the
    # bounds measured under a flood (docs/benchmarks.md#overload).
    max_in_flight: PositiveInt = 1024
    retry_after_s: PositiveInt = 5
    # "hmac-sha256" (the provider's X-Webhook-Signature), "standard-webhooks", or "none"
    # (no verification: only for local experiments, and logged as a warning).
    signature_scheme: Literal["hmac-sha256", "standard-webhooks", "none"] = "hmac-sha256"
    # Any one matching is enough, so a secret can be rotated without downtime.
    secrets: tuple[str, ...] = ()
    # Standard Webhooks: reject timestamps further than this from now (replay window).
    timestamp_tolerance_s: PositiveInt = 300
    # SIGTERM to exit: in-flight publishes finish, the producer flushes.
    shutdown_timeout_s: PositiveFloat = 15.0
    # A connection without a complete request this long after it opened or after its last
    # answer is closed: it bounds idle keep-alive and slow headers alike. Above the 60 s
    # idle timeout of common load balancers, so that they, not we, close a pooled one.
    keepalive_timeout_s: PositiveFloat = 75.0
    # 408 when the body has not fully arrived this long after its headers: a delivery takes
    # milliseconds; 1 MiB in 30 s is under 300 kbit/s.
    body_timeout_s: PositiveFloat = 30.0
    # After an early answer (413, 408) the unread body is drained this long, so the sender
    # reads the answer rather than a connection reset; then the connection closes.
    linger_timeout_s: PositiveFloat = 5.0
    # 400 past this many header lines: a delivery carries about ten, proxies add a few.
    max_headers: PositiveInt = 64
    # 400 for a longer request line or header: 8 KiB, as aiohttp's and nginx's default.
    max_header_line_bytes: PositiveInt = 8190
    # A line per accepted delivery at INFO costs about a fifth of a request's CPU
    # (README, Benchmarks); the record in the raw topic and the metrics count each one
    # anyway. Refusals are always logged (503s while Kafka refuses: one line per streak).
    log_accepted: bool = False


class LoggingConfig(_Section, frozen=True, kw_only=True, forbid_unknown_fields=True):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # "auto": key=value on a terminal, JSON otherwise (production).
    format: Literal["auto", "json", "console"] = "auto"


class Config(_Section, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The whole of `config.yaml`."""

    kafka: KafkaConfig = msgspec.field(default_factory=KafkaConfig)
    topics: TopicsConfig = msgspec.field(default_factory=TopicsConfig)
    routing: RoutingConfig = msgspec.field(default_factory=RoutingConfig)
    dedup: DedupConfig = msgspec.field(default_factory=DedupConfig)
    replay: ReplayConfig = msgspec.field(default_factory=ReplayConfig)
    worker: WorkerConfig = msgspec.field(default_factory=WorkerConfig)
    ingress: IngressConfig = msgspec.field(default_factory=IngressConfig)
    logging: LoggingConfig = msgspec.field(default_factory=LoggingConfig)


SECTIONS: dict[str, type[_Section]] = {
    "kafka": KafkaConfig,
    "topics": TopicsConfig,
    "routing": RoutingConfig,
    "dedup": DedupConfig,
    "replay": ReplayConfig,
    "worker": WorkerConfig,
    "ingress": IngressConfig,
    "logging": LoggingConfig,
}
