"""Loading the configuration: `config.yaml`, environment overrides, rules a type cannot state.

`config.yaml` is decoded into the structs of processor.config.model with msgspec, so a
typo in a key or a wrong type fails at start with the key's path instead of surfacing
hours later. Environment variables override the file:

- `KAFKA_BOOTSTRAP_SERVERS` sets `kafka.bootstrap_servers`;
- `WEBHOOK_SECRET` sets `ingress.secrets` (comma-separated, for rotation);
- `PROCESSOR_<SECTION>__<KEY>` sets any other key, e.g. `PROCESSOR_WORKER__GROUP_ID`.
  The value is read as a YAML scalar or flow collection, so `8081`, `true`, `[a, b]`
  and `{topic: t}` arrive typed.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgspec
import msgspec.inspect
import yaml

from processor.config.model import HEADROOM_BYTES, SECTIONS, Config, Route, RoutingConfig
from processor.errors import ConfigError
from processor.events import error_path
from processor.naming import illegal_topic, normalise_status, uses_status

__all__ = ["ENV_PREFIX", "load_config"]

ENV_PREFIX = "PROCESSOR_"
_CATEGORY = re.compile(r"[a-z0-9_]+")
_UNKNOWN_FIELD = re.compile(r"Object contains unknown field `(?P<key>[^`]*)`")


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
            f"config file {path} not found: check the path, or leave --config out to use "
            "config.yaml in this directory, or every setting's default where there is none"
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
        if section not in SECTIONS:
            raise ConfigError(f"{name}: unknown section {section!r}; {_known('', section)}")
        if key not in SECTIONS[section].__struct_fields__:
            raise ConfigError(f"{name}: unknown key {section}.{key}; {_known(section, key)}")
        target = raw.setdefault(section, {})
        if not isinstance(target, dict):
            raise ConfigError(f"section {section!r} must be a mapping")
        target[key] = _env_value(name, value, SECTIONS[section], key)
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
    message, where = error_path(str(exc))
    path = where.lstrip(".")
    if unknown := _UNKNOWN_FIELD.fullmatch(message):
        key = f"{path}.{unknown['key']}" if path else unknown["key"]
        hint = _known(path, unknown["key"])
        return f"unknown key {key}: remove it or check its spelling; {hint}", key
    return (f"{path}: {message}" if path else message), path


def _known(section: str, unknown: str) -> str:
    """The keys `section` has (the sections, for the top level), the likeliest first."""
    names = list(SECTIONS[section].__struct_fields__) if section in SECTIONS else sorted(SECTIONS)
    what = f"keys of {section} are" if section in SECTIONS else "sections are"
    likely = difflib.get_close_matches(unknown, names, n=1)
    guess = f"did you mean {likely[0]}? " if likely else ""
    return f"{guess}{what} {', '.join(names)}"


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
    worker = config.worker
    if worker.transaction_timeout_ms <= worker.produce_timeout_s * 1000:
        raise ConfigError(
            f"{source}: worker.transaction_timeout_ms ({worker.transaction_timeout_ms}) must "
            f"exceed worker.produce_timeout_s ({worker.produce_timeout_s:g} s), so that a "
            "worker gives a transaction up before Kafka aborts it under it"
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
    for key in ("raw", "unrouted", "dlq", "dedup"):
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
