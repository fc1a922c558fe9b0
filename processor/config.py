"""The one typed, frozen configuration object, built once at start-up.

`config.yaml` is decoded into these structs with msgspec, so a typo in a key or a
wrong type fails at start with the key's path instead of surfacing hours later.
Environment variables override the file:

- `KAFKA_BOOTSTRAP_SERVERS` sets `kafka.bootstrap_servers`;
- `WEBHOOK_SECRET` sets `ingress.secrets` (comma-separated, for rotation);
- `PROCESSOR_<SECTION>__<KEY>` sets any other key, e.g. `PROCESSOR_WORKER__GROUP_ID`.
  The value is read as a YAML scalar or flow list, so `8081`, `true` and `[a, b]`
  arrive typed.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
import msgspec.inspect
import yaml

from processor.errors import ConfigError
from processor.naming import illegal_topic, normalise_status, uses_status

__all__ = [
    "HEADROOM_BYTES",
    "Config",
    "IngressConfig",
    "KafkaConfig",
    "LoggingConfig",
    "Route",
    "RoutingConfig",
    "TopicsConfig",
    "WorkerConfig",
    "load_config",
]

ENV_PREFIX = "PROCESSOR_"
# Bounds a type states, so that msgspec names the key of a value out of them.
PositiveInt = Annotated[int, msgspec.Meta(gt=0)]
PositiveFloat = Annotated[float, msgspec.Meta(gt=0)]
Port = Annotated[int, msgspec.Meta(ge=1, le=65535)]
# Room for headers and record framing around a delivery's bytes, one budget for every
# step: the raw topic takes this much more than the largest body the ingress accepts,
# and every derived topic this much more than the raw topic (routing adds at most
# ~2.5 KiB of headers: identifiers are capped at 256 characters, DLQ messages at
# 1,000), so whatever one step accepted, the next can always write.
HEADROOM_BYTES = 64 * 1024
_CATEGORY = re.compile(r"[a-z0-9_]+")
_UNKNOWN_FIELD = re.compile(r"Object contains unknown field `(?P<key>[^`]*)`")


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
    request_timeout_ms: PositiveInt = 30_000
    # Start-up gives the cluster this long to answer, then fails with what to check.
    connect_timeout_s: PositiveFloat = 30.0


class TopicsConfig(_Section, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Topic names and the shape `processor topics create` gives them."""

    raw: str = "webhooks.raw"
    unrouted: str = "webhooks.unrouted"
    dlq: str = "webhooks.dlq"
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


class WorkerConfig(_Section, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The consumer group that routes `webhooks.raw`."""

    group_id: str = "processor-workers"
    # Static membership (Kubernetes: the pod name): a restarted pod gets its partitions
    # back without a rebalance if it returns within session_timeout_ms. `{hostname}` is
    # replaced by the host name, stable across restarts of one container.
    group_instance_id: str | None = None
    # Records per getmany(): large enough to amortise a produce round trip.
    max_batch_records: PositiveInt = 2_000
    # How long getmany() waits for the first record; bounds shutdown latency when idle.
    fetch_timeout_ms: PositiveInt = 500
    # A batch whose records are not all acknowledged in this time is retried, not committed.
    produce_timeout_s: PositiveFloat = 30.0
    # Offsets commit is one round trip to the group coordinator.
    commit_timeout_s: PositiveFloat = 10.0
    # Pause before retrying a batch whose produce failed, doubling up to the maximum, so
    # a broken cluster (or a missing ACL) is not hammered while someone fixes it.
    retry_backoff_s: PositiveFloat = 1.0
    max_retry_backoff_s: PositiveFloat = 30.0
    # SIGTERM to exit: finish the batch in flight, commit, leave the group.
    shutdown_timeout_s: PositiveFloat = 30.0
    # Broker declares the worker dead after this long without heartbeats.
    session_timeout_ms: PositiveInt = 45_000
    heartbeat_interval_ms: PositiveInt = 3_000
    # A batch must finish well inside this, or the group evicts the worker.
    max_poll_interval_ms: PositiveInt = 300_000
    # A liveness and metrics port for orchestrators (GET /healthz, GET /metrics). None
    # serves no HTTP, so any number of workers can share a laptop without port clashes.
    metrics_port: Port | None = None
    # Loopback by default; 0.0.0.0 in containers, so probes and scrapers can reach it.
    metrics_host: str = "127.0.0.1"


class IngressConfig(_Section, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The HTTP door: where it listens and how it decides a delivery is genuine."""

    host: str = "127.0.0.1"
    port: Port = 8080
    path: str = "/webhooks"
    # Larger bodies are refused with 413 before being read; provider events are a few KiB.
    max_body_bytes: PositiveInt = 1_048_576
    # 503 + Retry-After when Kafka has not acknowledged within this; the provider retries.
    publish_timeout_s: PositiveFloat = 10.0
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


class LoggingConfig(_Section, frozen=True, kw_only=True, forbid_unknown_fields=True):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # "auto": key=value on a terminal, JSON otherwise (production).
    format: Literal["auto", "json", "console"] = "auto"


class Config(_Section, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The whole of `config.yaml`."""

    kafka: KafkaConfig = msgspec.field(default_factory=KafkaConfig)
    topics: TopicsConfig = msgspec.field(default_factory=TopicsConfig)
    routing: RoutingConfig = msgspec.field(default_factory=RoutingConfig)
    worker: WorkerConfig = msgspec.field(default_factory=WorkerConfig)
    ingress: IngressConfig = msgspec.field(default_factory=IngressConfig)
    logging: LoggingConfig = msgspec.field(default_factory=LoggingConfig)


_SECTIONS: dict[str, type[_Section]] = {
    "kafka": KafkaConfig,
    "topics": TopicsConfig,
    "routing": RoutingConfig,
    "worker": WorkerConfig,
    "ingress": IngressConfig,
    "logging": LoggingConfig,
}


def load_config(
    path: str | Path | None = "config.yaml", *, env: Mapping[str, str] | None = None
) -> Config:
    """Read `path` (skipped when None), apply environment overrides, validate.

    Raises ConfigError naming the file, key and expected type on any problem.
    """
    environ = os.environ if env is None else env
    raw: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        source = str(path)
        raw = _read_yaml(Path(path))
    from_env = _apply_env(raw, environ)
    try:
        config = msgspec.convert(raw, Config, strict=False)
    except msgspec.ValidationError as exc:
        message, key = _describe(exc)
        where = f"{from_env[key]} (environment)" if key in from_env else source
        raise ConfigError(f"{where}: {message}") from None
    _check(config, source)
    return config


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"config file {path} not found: pass --config PATH, or run from the repository root"
        ) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    return data


def _apply_env(raw: dict[str, Any], environ: Mapping[str, str]) -> dict[str, str]:
    """Merge the overrides into `raw`; returns key path -> the variable that set it."""
    sources: dict[str, str] = {}
    if servers := environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        raw.setdefault("kafka", {})["bootstrap_servers"] = servers
        sources["kafka.bootstrap_servers"] = "KAFKA_BOOTSTRAP_SERVERS"
    if secrets := environ.get("WEBHOOK_SECRET"):
        parts = [s.strip() for s in secrets.split(",")]
        if not all(parts):
            raise ConfigError(
                "WEBHOOK_SECRET holds an empty secret (only spaces, or nothing before or after "
                "a comma): give the provider's signing secret, or several separated by commas "
                "while rotating"
            )
        raw.setdefault("ingress", {})["secrets"] = parts
        sources["ingress.secrets"] = "WEBHOOK_SECRET"
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue
        section, _, key = name[len(ENV_PREFIX) :].lower().partition("__")
        if section not in _SECTIONS:
            known = ", ".join(sorted(_SECTIONS))
            raise ConfigError(f"{name}: unknown section {section!r}; sections are {known}")
        if key not in _SECTIONS[section].__struct_fields__:
            known = ", ".join(_SECTIONS[section].__struct_fields__)
            raise ConfigError(f"{name}: unknown key {section}.{key}; keys are {known}")
        target = raw.setdefault(section, {})
        if not isinstance(target, dict):
            raise ConfigError(f"section {section!r} must be a mapping")
        target[key] = _env_value(name, value, _SECTIONS[section], key)
        sources[f"{section}.{key}"] = name
    return sources


def _env_value(name: str, value: str, section: type[msgspec.Struct], key: str) -> Any:
    """A string setting takes the value as is (a password may hold `#` or `*`);
    others read it as YAML, so `8081`, `true` and `[a, b]` arrive typed."""
    if _takes_string(section, key):
        return value
    try:
        return yaml.safe_load(value)
    except yaml.YAMLError:
        raise ConfigError(
            f"{name}: not a valid value for {key}: write it as in config.yaml"
        ) from None


def _takes_string(section: type[msgspec.Struct], key: str) -> bool:
    field = next(f for f in msgspec.inspect.type_info(section).fields if f.name == key)  # type: ignore[attr-defined]
    kinds = field.type.types if isinstance(field.type, msgspec.inspect.UnionType) else (field.type,)
    return any(isinstance(kind, msgspec.inspect.StrType) for kind in kinds)


def _describe(exc: msgspec.ValidationError) -> tuple[str, str]:
    """msgspec's "... - at `$.worker.port`" as a key path users know, and that path."""
    message, _, where = str(exc).partition(" - at `$")
    path = where.rstrip("`").lstrip(".")
    if unknown := _UNKNOWN_FIELD.fullmatch(message):
        key = f"{path}.{unknown['key']}" if path else unknown["key"]
        return f"unknown key {key}: remove it or check its spelling", key
    return (f"{path}: {message}" if path else message), path


def _check(config: Config, source: str) -> None:
    """Rules a type cannot express."""
    headroom = HEADROOM_BYTES
    if config.topics.max_message_bytes < config.ingress.max_body_bytes + headroom:
        raise ConfigError(
            f"{source}: topics.max_message_bytes ({config.topics.max_message_bytes}) must exceed "
            f"ingress.max_body_bytes ({config.ingress.max_body_bytes}) by at least {headroom}, "
            "or an accepted delivery could not be written to Kafka"
        )
    if not config.ingress.path.startswith("/"):
        raise ConfigError(
            f"{source}: ingress.path must start with '/', got {config.ingress.path!r}"
        )
    if not config.kafka.bootstrap_servers.strip():
        raise ConfigError(
            f"{source}: kafka.bootstrap_servers is empty; set it or KAFKA_BOOTSTRAP_SERVERS"
        )
    if config.kafka.security_protocol.startswith("SASL") and not (
        config.kafka.sasl_mechanism and config.kafka.sasl_username and config.kafka.sasl_password
    ):
        raise ConfigError(
            f"{source}: kafka.security_protocol {config.kafka.security_protocol} needs "
            "kafka.sasl_mechanism, kafka.sasl_username and kafka.sasl_password"
        )
    instance = config.worker.group_instance_id
    if instance is not None:
        try:
            named = instance.format(hostname="host")
        except (KeyError, IndexError, ValueError):
            named = ""
        if not named.strip():
            raise ConfigError(
                f"{source}: worker.group_instance_id {instance!r} must be a non-empty name; "
                "the only placeholder it may use is {hostname}"
            )
    for key in ("raw", "unrouted", "dlq"):
        name = getattr(config.topics, key)
        _refuse_illegal(source, f"topics.{key}", name, name)
    _check_routes(config.routing, source)


def _check_routes(routing: RoutingConfig, source: str) -> None:
    """Every route matches a category and can only name topics Kafka takes."""
    for category, given in routing.routes.items():
        key = f"routing.routes.{category}"
        if not _CATEGORY.fullmatch(category):
            raise ConfigError(
                f"{source}: {key}: categories are lower case a-z, 0-9 and _ as in the "
                "provider's event names (integration.created), so this route would never match"
            )
        template = given if isinstance(given, str) else given.topic
        try:
            template.format(status="x")
        except (KeyError, IndexError, ValueError):
            raise ConfigError(
                f"{source}: {key}: template {template!r} may only use the placeholder {{status}}"
            ) from None
        if (
            isinstance(given, Route)
            and not uses_status(template)
            and (given.statuses is not None or given.other_status is not None)
        ):
            raise ConfigError(
                f"{source}: {key}: statuses and other_status only apply to a topic "
                "template with {status}"
            )
    for category, route in routing.resolved().items():
        key = f"routing.routes.{category}"
        given = routing.routes[category]
        if route.statuses is None or route.other_status is None:
            _refuse_illegal(source, key, route.topic, route.topic)
            continue
        own = given if isinstance(given, Route) else Route(topic=route.topic)
        statuses_key = "routing.statuses" if own.statuses is None else f"{key}.statuses"
        for status in route.statuses:
            normal = normalise_status(status)
            if not normal:
                raise ConfigError(
                    f"{source}: {statuses_key}: {status!r} has no letter or digit to name a topic"
                )
            _refuse_illegal(source, statuses_key, status, route.topic.format(status=normal))
        other_key = "routing.other_status" if own.other_status is None else f"{key}.other_status"
        other = route.other_status
        _refuse_illegal(source, other_key, other, route.topic.format(status=other))


def _refuse_illegal(source: str, key: str, value: str, topic: str) -> None:
    """ConfigError naming `key` when `value` makes `topic` a name Kafka refuses."""
    if (why := illegal_topic(topic)) is None:
        return
    made = "" if value == topic else f" makes the topic {topic!r}, which"
    raise ConfigError(f"{source}: {key}: {value!r}{made} Kafka refuses: {why}")
