"""config.yaml and environment overrides: typed, strict, and errors that name the key."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from processor.config import Config, Route, load_config
from processor.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_repository_config_yaml_equals_the_defaults() -> None:
    # config.yaml documents the defaults; the two must not drift apart.
    assert load_config(REPO / "config.yaml", env={}) == Config()


def test_default_statuses_cover_both_provider_documents() -> None:
    assert set(Config().routing.statuses) == {
        "queued", "ongoing", "completed", "failed",
        "active", "inactive", "error", "partially_synced",
    }  # fmt: skip


def test_unknown_key_is_an_error_naming_the_key(tmp_path: Path) -> None:
    path = write(tmp_path, "worker:\n  group_idd: x\n")
    with pytest.raises(ConfigError, match=r"unknown key worker\.group_idd") as raised:
        load_config(path, env={})
    # The keys it could have meant, the likeliest first, as the environment's error says.
    assert "did you mean group_id? keys of worker are group_id, guarantee," in str(raised.value)


def test_an_unknown_key_from_the_environment_lists_the_keys_too() -> None:
    with pytest.raises(ConfigError, match=r"did you mean metrics_port\? keys of worker are"):
        load_config(None, env={"PROCESSOR_WORKER__METRICS_PROT": "9100"})


def test_unknown_section_is_an_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown key workers"):
        load_config(write(tmp_path, "workers: {}\n"), env={})


def test_wrong_type_names_the_key_and_the_expected_type(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"ingress\.port: Expected `int`"):
        load_config(write(tmp_path, "ingress:\n  port: eighty\n"), env={})


def test_missing_file_says_how_to_point_at_one(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--config"):
        load_config(tmp_path / "absent.yaml", env={})


def test_invalid_yaml_is_reported(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "kafka: [\n"), env={})


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "worker:\n  group_id: from-file\n")
    config = load_config(
        path,
        env={
            "PROCESSOR_WORKER__GROUP_ID": "from-env",
            "PROCESSOR_INGRESS__PORT": "8081",
            "PROCESSOR_ROUTING__STATUSES": "[active, paused]",
            "KAFKA_BOOTSTRAP_SERVERS": "kafka-1:9092,kafka-2:9092",
            "WEBHOOK_SECRET": "old-signing-secret-1, new-signing-secret-2",
        },
    )
    assert config.worker.group_id == "from-env"
    assert config.ingress.port == 8081
    assert config.routing.statuses == ("active", "paused")
    assert config.kafka.bootstrap_servers == "kafka-1:9092,kafka-2:9092"
    assert config.ingress.secrets == ("old-signing-secret-1", "new-signing-secret-2")


def test_unknown_environment_key_is_an_error_naming_it() -> None:
    with pytest.raises(
        ConfigError, match=r"PROCESSOR_WORKER__GROUPID: unknown key worker\.groupid"
    ):
        load_config(None, env={"PROCESSOR_WORKER__GROUPID": "x"})


def test_unknown_environment_section_is_an_error() -> None:
    with pytest.raises(ConfigError, match="unknown section 'wrker'"):
        load_config(None, env={"PROCESSOR_WRKER__GROUP_ID": "x"})


def test_unrelated_environment_is_ignored() -> None:
    assert load_config(None, env={"PROCESSOR_HOME": "/x", "PATH": "/bin"}) == Config()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("worker:\n  max_batch_records: 0\n", r"worker\.max_batch_records: Expected `int` >= 1"),
        ("ingress:\n  port: 70000\n", r"ingress\.port: Expected `int` <= 65535"),
        ("worker:\n  metrics_port: 0\n", r"worker\.metrics_port: Expected `int` >= 1"),
        ("worker:\n  metrics_port: 65536\n", r"worker\.metrics_port: Expected `int` <= 65535"),
        ("ingress:\n  path: webhooks\n", "ingress.path must start with '/'"),
        ("kafka:\n  security_protocol: SASL_SSL\n", "needs kafka.sasl_mechanism"),
        ("kafka:\n  security_protocol: TLS\n", "kafka.security_protocol"),
        ("routing:\n  routes: {integration: 'x.{state}'}\n", "only use the placeholder"),
        ("routing:\n  routes: {Integration: 'x.{status}'}\n", "would never match"),
        ("ingress:\n  max_body_bytes: 4194304\n", "topics.max_message_bytes"),
        ("ingress:\n  body_timeout_s: 0\n", r"ingress\.body_timeout_s: Expected `float` > 0"),
        ("ingress:\n  max_headers: -1\n", r"ingress\.max_headers: Expected `int` >= 1"),
        ("kafka:\n  connect_timeout_s: -1\n", r"kafka\.connect_timeout_s: Expected `float` > 0"),
        (
            "worker:\n  transaction_timeout_ms: 30000\n",
            r"worker\.transaction_timeout_ms \(30000\) must exceed worker\.produce_timeout_s",
        ),
    ],
)
def test_values_out_of_bounds_are_refused_naming_the_key(
    tmp_path: Path, text: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, text), env={})


def test_config_is_frozen() -> None:
    config = Config()
    with pytest.raises(AttributeError, match="immutable type: 'Config'"):
        config.worker = config.worker  # type: ignore[misc]


def test_string_settings_from_the_environment_are_taken_verbatim() -> None:
    config = load_config(
        None,
        env={
            "PROCESSOR_KAFKA__SASL_PASSWORD": "s3cr3t #not-a-comment",
            "PROCESSOR_KAFKA__SASL_USERNAME": "123456",
            "PROCESSOR_WORKER__GROUP_ID": "*anchor-like",
        },
    )
    assert config.kafka.sasl_password == "s3cr3t #not-a-comment"
    assert config.kafka.sasl_username == "123456"
    assert config.worker.group_id == "*anchor-like"


def test_a_bad_environment_value_names_the_variable_not_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "ingress:\n  port: 8080\n")
    with pytest.raises(
        ConfigError, match=r"^PROCESSOR_INGRESS__PORT \(environment\): ingress\.port"
    ):
        load_config(path, env={"PROCESSOR_INGRESS__PORT": "eighty"})


def test_unparsable_environment_value_is_an_error_without_the_value() -> None:
    with pytest.raises(ConfigError, match="PROCESSOR_KAFKA__SASL_MECHANISM") as caught:
        load_config(None, env={"PROCESSOR_KAFKA__SASL_MECHANISM": "*hunter2"})
    assert "hunter2" not in str(caught.value)


def test_worker_metrics_port_is_off_by_default_and_set_from_the_environment() -> None:
    assert Config().worker.metrics_port is None
    config = load_config(
        None,
        env={"PROCESSOR_WORKER__METRICS_PORT": "9100", "PROCESSOR_WORKER__METRICS_HOST": "::1"},
    )
    assert config.worker.metrics_port == 9100
    assert config.worker.metrics_host == "::1"


def test_a_non_numeric_metrics_port_names_the_variable() -> None:
    with pytest.raises(
        ConfigError, match=r"^PROCESSOR_WORKER__METRICS_PORT \(environment\): worker\.metrics_port"
    ):
        load_config(None, env={"PROCESSOR_WORKER__METRICS_PORT": "http"})


def test_group_instance_id_takes_the_host_name(tmp_path: Path) -> None:
    from processor.kafka.clients import group_instance_id

    config = load_config(None, env={"PROCESSOR_WORKER__GROUP_INSTANCE_ID": "worker-{hostname}"})

    assert group_instance_id(config) == f"worker-{socket.gethostname()}"
    assert group_instance_id(Config()) is None


@pytest.mark.parametrize("template", ["worker-{pod}", "{}", "", "   ", "worker-{hostname"])
def test_group_instance_id_with_another_placeholder_or_none_is_refused(template: str) -> None:
    with pytest.raises(
        ConfigError, match=r"worker\.group_instance_id .* placeholder .*\{hostname\}"
    ):
        load_config(None, env={"PROCESSOR_WORKER__GROUP_INSTANCE_ID": template})


@pytest.mark.parametrize(
    "value", [" , ", ",", "new-signing-secret-2,", "a-signing-secret-1,,b-secret"]
)
def test_webhook_secret_with_an_empty_entry_is_an_error_naming_it(value: str) -> None:
    with pytest.raises(ConfigError, match=r"^WEBHOOK_SECRET holds an empty secret") as caught:
        load_config(None, env={"WEBHOOK_SECRET": value})
    assert "signing-secret" not in str(caught.value)


def test_a_route_by_status_may_have_its_own_statuses_in_yaml_or_the_environment(
    tmp_path: Path,
) -> None:
    text = (
        "routing:\n"
        "  routes:\n"
        "    integration: 'integration.status.{status}'\n"
        "    wallet:\n"
        "      topic: 'wallet.status.{status}'\n"
        "      statuses: [open, closed]\n"
        "      other_status: misc\n"
    )
    from_file = load_config(write(tmp_path, text), env={})
    from_env = load_config(
        None,
        env={
            "PROCESSOR_ROUTING__ROUTES": "{integration: 'integration.status.{status}', "
            "wallet: {topic: 'wallet.status.{status}', statuses: [open, closed], "
            "other_status: misc}}"
        },
    )

    assert from_file == from_env
    routes = from_file.routing.resolved()
    assert routes["wallet"] == Route(
        topic="wallet.status.{status}", statuses=("open", "closed"), other_status="misc"
    )
    assert routes["integration"].statuses == Config().routing.statuses
    assert routes["integration"].other_status == "other"


@pytest.mark.parametrize(
    ("text", "refusal"),
    [
        (
            "routing:\n  other_status: Other Status\n",
            r"routing\.other_status: 'Other Status' makes the topic "
            r"'integration\.status\.Other Status', which Kafka refuses: a topic name may only",
        ),
        (
            "routing:\n  routes: {wallet: {topic: 'w.{status}', other_status: 'a/b'}}\n",
            r"routing\.routes\.wallet\.other_status: 'a/b' makes the topic 'w\.a/b'",
        ),
        (
            "routing:\n  routes: {wallet: {topic: 'w.{status}', statuses: ['"
            + "x" * 250
            + "']}}\n",
            r"routing\.routes\.wallet\.statuses: 'x+' makes the topic 'w\.x+', which Kafka "
            r"refuses: a topic name has at most 249 characters",
        ),
        (
            "routing:\n  routes: {wallet: 'wallet events'}\n",
            r"routing\.routes\.wallet: 'wallet events' Kafka refuses",
        ),
        ("topics:\n  dlq: '..'\n", r"topics\.dlq: '\.\.' Kafka refuses"),
        (
            "routing:\n  routes: {wallet: {topic: 'wallet.events', statuses: [a]}}\n",
            r"routing\.routes\.wallet: statuses and other_status only apply to a topic template "
            r"with \{status\}",
        ),
        (
            "routing:\n  routes: {wallet: {topic: 'w.{status}', statuses: ['!!']}}\n",
            r"routing\.routes\.wallet\.statuses: '!!' has no letter or digit",
        ),
    ],
)
def test_a_route_that_could_name_an_illegal_topic_is_refused_naming_the_key(
    tmp_path: Path, text: str, refusal: str
) -> None:
    with pytest.raises(ConfigError, match=refusal):
        load_config(write(tmp_path, text), env={})
