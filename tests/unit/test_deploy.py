"""deploy/ agrees with the code: names, ports, topics and limits come from config.yaml.

No Docker engine or cluster here: these read the files as YAML and text, and compare
them with what `processor` itself would do with the same settings.
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import Any

import pytest
import yaml

from processor.config import Config, load_config
from processor.devtools.jars import KAFKA_VERSION
from processor.errors import ConfigError
from processor.ingress.app import create_apps
from processor.ingress.signing import build_verifier
from processor.kafka.topics import all_topics, topic_configs
from processor.metrics import WorkerMetrics
from processor.worker import http as worker_http
from tests.ingress_harness import RecordingPublisher

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
CONFIG_PATH = "/etc/processor/config.yaml"
APP_SERVICES = ("topics", "ingress", "worker")
# Containers must listen beyond loopback for ports and probes to reach them.
ALL_INTERFACES = "0.0.0.0"  # noqa: S104


@pytest.fixture(scope="module")
def config() -> Config:
    return load_config(ROOT / "config.yaml", env={})


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    services: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.yaml").read_text())["services"]
    return services


@pytest.fixture(scope="module")
def manifests() -> list[dict[str, Any]]:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    return [
        doc
        for name in kustomization["resources"]
        for doc in yaml.safe_load_all((K8S / name).read_text())
        if doc is not None
    ]


def of_kind(manifests: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [m for m in manifests if m["kind"] == kind]


def workload(manifests: list[dict[str, Any]], component: str) -> dict[str, Any]:
    (found,) = [
        m
        for m in manifests
        if m["kind"] in ("Deployment", "StatefulSet")
        and m["metadata"]["labels"]["app.kubernetes.io/component"] == component
    ]
    return found


def container(manifests: list[dict[str, Any]], component: str) -> dict[str, Any]:
    (found,) = workload(manifests, component)["spec"]["template"]["spec"]["containers"]
    container: dict[str, Any] = found
    return container


def plain_env(spec: dict[str, Any]) -> dict[str, str]:
    """The container's env with literal values (not those from secrets or fields)."""
    return {e["name"]: e["value"] for e in spec["env"] if "value" in e}


def test_every_deploy_yaml_file_parses() -> None:
    files = [DEPLOY / "compose.yaml", *sorted(K8S.glob("*.yaml"))]
    for path in files:
        assert list(yaml.safe_load_all(path.read_text())), path


def test_kustomization_applies_every_manifest_in_the_folder_but_the_examples() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    examples = {p.name for p in K8S.glob("*.example.yaml")}
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"} - examples
    assert examples == {"secret.example.yaml"}
    assert sorted(kustomization["resources"]) == sorted(on_disk)


def test_kustomization_makes_no_secret(manifests: list[dict[str, Any]]) -> None:
    # A Secret in the build would ship a published placeholder to a default apply and
    # overwrite, at every apply, the Secret that a secret manager made.
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert of_kind(manifests, "Secret") == []
    assert "secretGenerator" not in kustomization


def test_compose_kafka_is_the_local_broker_version(compose: dict[str, Any]) -> None:
    assert compose["kafka"]["image"] == f"apache/kafka:{KAFKA_VERSION}"


def test_compose_kafka_sets_the_full_single_node_kraft_environment(
    compose: dict[str, Any], config: Config
) -> None:
    env = compose["kafka"]["environment"]
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == f"{env['KAFKA_NODE_ID']}@kafka:9093"
    assert env["KAFKA_ADVERTISED_LISTENERS"] == "PLAINTEXT://kafka:9092"
    for key in (
        "KAFKA_CONTROLLER_LISTENER_NAMES",
        "KAFKA_LISTENERS",
        "KAFKA_LISTENER_SECURITY_PROTOCOL_MAP",
    ):
        assert env[key], key
    for key in (
        "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR",
        "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR",
        "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR",
    ):
        assert int(env[key]) == 1, key
    assert int(env["KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS"]) == 0
    assert str(env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"]) == "false"
    assert int(env["KAFKA_MESSAGE_MAX_BYTES"]) == config.topics.max_message_bytes


def test_compose_app_services_reach_the_advertised_kafka_listener(
    compose: dict[str, Any],
) -> None:
    advertised = compose["kafka"]["environment"]["KAFKA_ADVERTISED_LISTENERS"]
    for name in APP_SERVICES:
        servers = compose[name]["environment"]["KAFKA_BOOTSTRAP_SERVERS"]
        assert f"PLAINTEXT://{servers}" == advertised, name


def test_compose_services_run_their_processor_command_from_the_one_image(
    compose: dict[str, Any],
) -> None:
    commands = {name: compose[name]["command"] for name in APP_SERVICES}
    assert commands == {
        "topics": ["topics", "create"],
        "ingress": ["ingress"],
        "worker": ["worker"],
    }
    for name in APP_SERVICES:
        assert compose[name]["build"] == {"context": "..", "dockerfile": "deploy/Dockerfile"}
        assert compose[name]["image"] == compose["topics"]["image"]


def test_compose_starts_topics_after_kafka_is_healthy_and_apps_after_topics(
    compose: dict[str, Any],
) -> None:
    assert "kafka-broker-api-versions.sh" in " ".join(compose["kafka"]["healthcheck"]["test"])
    assert compose["topics"]["depends_on"] == {"kafka": {"condition": "service_healthy"}}
    for name in ("ingress", "worker"):
        wanted = {"topics": {"condition": "service_completed_successfully"}}
        assert compose[name]["depends_on"] == wanted, name


def test_compose_ingress_env_gives_a_config_listening_on_all_interfaces(
    compose: dict[str, Any], config: Config
) -> None:
    ingress = compose["ingress"]
    env = dict(ingress["environment"])
    assert env["WEBHOOK_SECRET"] == "${WEBHOOK_SECRET:?set WEBHOOK_SECRET}"
    env["WEBHOOK_SECRET"] = "from-the-shell"  # what compose substitutes
    loaded = load_config(ROOT / "config.yaml", env=env)
    assert loaded.ingress.host == ALL_INTERFACES
    assert loaded.ingress.secrets == ("from-the-shell",)
    assert loaded.kafka.bootstrap_servers == "kafka:9092"
    port = config.ingress.port
    assert ingress["ports"] == [f"{port}:{port}"]
    assert f"127.0.0.1:{port}/healthz" in " ".join(ingress["healthcheck"]["test"])


def test_compose_runs_every_processor_service_under_an_init(compose: dict[str, Any]) -> None:
    # PID 1 gets no default signal handlers: an init forwards SIGTERM to the process.
    for name in APP_SERVICES:
        assert compose[name]["init"] is True, name


def test_compose_worker_can_scale_out(compose: dict[str, Any]) -> None:
    assert "container_name" not in compose["worker"]
    assert "ports" not in compose["worker"]


def worker_stop_bound(config: Config) -> float:
    """SIGTERM to exit at worst: the batch in flight, leaving the group, closing the port."""
    w = config.worker
    in_flight = w.produce_timeout_s + w.commit_timeout_s
    return in_flight + w.shutdown_timeout_s + worker_http.CLOSE_TIMEOUT_S


def test_compose_stop_grace_outlasts_the_shutdown_timeouts(
    compose: dict[str, Any], config: Config
) -> None:
    def seconds(duration: str) -> int:
        assert duration.endswith("s"), duration
        return int(duration[:-1])

    assert seconds(compose["ingress"]["stop_grace_period"]) > config.ingress.shutdown_timeout_s
    assert seconds(compose["worker"]["stop_grace_period"]) > worker_stop_bound(config)


def test_every_processor_env_variable_in_deploy_is_a_config_key() -> None:
    defaults = Config()
    sections = {name: type(getattr(defaults, name)) for name in Config.__struct_fields__}
    named = {
        match
        for path in DEPLOY.rglob("*")
        if path.is_file()
        for match in re.findall(r"\bPROCESSOR_([A-Z0-9_]+?)__([A-Z0-9_]+)", path.read_text())
    }
    assert named, "expected PROCESSOR_<SECTION>__<KEY> variables in deploy/"
    for section, key in named:
        assert section.lower() in sections, f"PROCESSOR_{section}__{key}: no such section"
        fields = sections[section.lower()].__struct_fields__
        assert key.lower() in fields, f"PROCESSOR_{section}__{key}: no such key"


def test_dockerfile_is_multi_stage_slim_non_root_and_enters_processor(config: Config) -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    lines = [line.strip() for line in text.splitlines() if line.strip() and line[0] != "#"]
    stages = [line.split()[1] for line in lines if line.startswith("FROM ")]
    assert len(stages) == 2
    assert stages[0] == stages[1], "builder and runtime share one base"
    assert re.fullmatch(r"python:3\.11-slim@sha256:[0-9a-f]{64}", stages[0]), stages[0]
    final = text[text.rindex("\nFROM ") :].splitlines()
    (user,) = [line.split()[1] for line in final if line.startswith("USER ")]
    assert user.split(":")[0] not in ("0", "root")
    assert 'ENTRYPOINT ["processor"]' in final
    assert "COPY --from=builder /opt/venv /opt/venv" in final
    assert "COPY config.yaml /app/config.yaml" in final
    assert "WORKDIR /app" in final
    assert f"EXPOSE {config.ingress.port}" in final
    assert "pip install --no-deps --no-build-isolation ." in text
    assert "PROCESSOR_INGRESS__HOST=0.0.0.0" in text
    assert "PYTHONUNBUFFERED=1" in text


def dockerfile_stages() -> tuple[list[str], list[str]]:
    """The builder's lines and the runtime's, split at the second FROM."""
    text = (DEPLOY / "Dockerfile").read_text()
    second = text.rindex("\nFROM ")
    return text[:second].splitlines(), text[second:].splitlines()


def test_dockerfile_installs_the_pinned_dependencies_before_copying_the_code() -> None:
    builder, _ = dockerfile_stages()

    def first(needle: str) -> int:
        return next(n for n, line in enumerate(builder) if needle in line)

    assert (
        first("COPY pyproject.toml constraints.txt ./")
        < first("pip install -c constraints.txt -r requirements.txt")
        < first("COPY processor ./processor")
        < first("pip install --no-deps --no-build-isolation .")
    )


def test_runtime_image_keeps_no_pip_setuptools_or_wheel() -> None:
    builder, runtime = dockerfile_stages()
    assert any("pip uninstall --yes pip setuptools" in line for line in builder)  # the venv's
    assert any("pip uninstall --yes --disable-pip-version-check pip setuptools wheel" in line
               for line in runtime)  # fmt: skip
    assert not any("pip install" in line for line in runtime)


def test_dockerignore_keeps_secrets_and_local_state_out_of_the_build_context() -> None:
    rules = (ROOT / ".dockerignore").read_text().splitlines()
    assert rules[rules.index("*") :].count("*") == 1, "allow-list: ignore all, then re-include"
    included = {rule[1:].rstrip("/") for rule in rules if rule.startswith("!")}
    assert {"pyproject.toml", "constraints.txt", "config.yaml", "processor"} <= included
    assert not included & {".env", ".git", ".venv", ".kafka"}


def dockerignore_rules() -> list[tuple[bool, re.Pattern[str]]]:
    """`.dockerignore` as Docker reads it: `!` re-includes; `*` and `?` stay within a
    path segment, `**` crosses segments, `[...]` is a class."""
    tokens = {"**/": "(.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}
    rules = []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        rule = line.strip()
        if not rule or rule.startswith("#"):
            continue
        pattern = rule.removeprefix("!").strip("/")
        regex = "".join(
            tokens.get(token) or (token if token.startswith("[") else re.escape(token))
            for token in re.findall(r"\*\*/|\*\*|\*|\?|\[[^]]*\]|[^*?[]+", pattern)
        )
        rules.append((rule.startswith("!"), re.compile(regex + r"\Z")))
    return rules


def sent_to_docker(path: str) -> bool:
    """Whether `docker build` gets `path` (relative to the root): the last rule that
    matches the path or one of its parent directories decides."""
    parts = path.split("/")
    prefixes = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    sent = True
    for negated, pattern in dockerignore_rules():
        if any(pattern.match(prefix) for prefix in prefixes):
            sent = negated
    return sent


def module_file(name: str) -> str:
    """`processor.worker.loop` -> `processor/worker/loop.py`; a package -> its `__init__.py`."""
    base = ROOT / name.replace(".", "/")
    path = base / "__init__.py" if base.is_dir() else base.with_suffix(".py")
    assert path.is_file(), name
    return path.relative_to(ROOT).as_posix()


@pytest.fixture(scope="module")
def runtime_modules() -> list[str]:
    """The `processor` modules of the runtime commands: what a fresh interpreter has
    loaded once it imported the CLI and every module the CLI imports, at its top or
    lazily inside a command (replay, tail, schema), the dev tooling's aside."""
    tree = ast.parse((ROOT / "processor/cli.py").read_text())
    lazy = sorted(
        {
            node.module
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom)
            and node.module
            and node.module.startswith("processor")
            and not node.module.startswith("processor.devtools")
        }
    )
    assert "processor.ops.replay" in lazy, "the CLI's lazy imports were not found"
    listing = f"import sys, processor.cli, {', '.join(lazy)}; print(*sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", listing], capture_output=True, text=True, check=True, timeout=60
    )
    return [name for name in result.stdout.split() if name.partition(".")[0] == "processor"]


@pytest.mark.slow  # a Python process of its own
def test_runtime_commands_never_import_the_dev_tooling(runtime_modules: list[str]) -> None:
    assert {
        "processor.cli",
        "processor.worker.loop",
        "processor.ingress.app",
        "processor.kafka.topics",
    } <= set(runtime_modules)
    assert [name for name in runtime_modules if name.startswith("processor.devtools")] == []


@pytest.mark.slow  # a Python process of its own
def test_image_gets_every_runtime_module_and_no_dev_tooling(runtime_modules: list[str]) -> None:
    # The reading of .dockerignore agrees with Docker on paths whose fate is known.
    assert sent_to_docker("config.yaml")
    assert not sent_to_docker(".venv/bin/python")
    assert not sent_to_docker("processor/__pycache__/cli.cpython-311.pyc")
    for name in runtime_modules:
        assert sent_to_docker(module_file(name)), name
    dev_only = [
        path.relative_to(ROOT).as_posix() for path in (ROOT / "processor/devtools").rglob("*.py")
    ]
    assert "processor/devtools/broker.py" in dev_only
    for path in [*dev_only, "deploy/kafka/pom.xml"]:
        assert not sent_to_docker(path), f"{path} is dev tooling, yet the image gets it"
    # What the Dockerfile copies from the context: sent to it, and none of it dev tooling.
    copies = [
        line.split()[1:-1]
        for line in (DEPLOY / "Dockerfile").read_text().splitlines()
        if line.startswith("COPY ") and "--from=" not in line
    ]
    assert ["processor"] in copies
    for source in (source for sources in copies for source in sources):
        assert sent_to_docker(source), source
        assert not source.startswith(("processor/devtools", "deploy/")), source


@pytest.mark.slow  # a Python process of its own
def test_the_images_files_run_the_runtime_cli_and_refuse_the_dev_commands(
    tmp_path: Path,
) -> None:
    """The build context's files alone on the path, as pip installs them in the image:
    the CLI imports from them, and `processor broker` says it is for a checkout."""
    image = tmp_path / "image"
    for path in [*ROOT.glob("*"), *(ROOT / "processor").rglob("*")]:
        relative = path.relative_to(ROOT).as_posix()
        if path.is_file() and sent_to_docker(relative):
            (image / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, image / relative)
    # -S skips site: the checkout's editable install cannot lend the image what it lacks,
    # while the venv's site-packages still provide the dependencies, as pip's do there.
    libraries = dict.fromkeys(sysconfig.get_path(kind) for kind in ("purelib", "platlib"))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(image), *libraries])}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-S", *args],
            cwd=image, env=env, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip

    loaded = run("-c", "import processor.cli; print(processor.cli.__file__)")
    assert loaded.returncode == 0, loaded.stderr
    assert Path(loaded.stdout.strip()).is_relative_to(image)
    refused = run("-m", "processor.cli", "--config", "config.yaml", "broker", "status")
    assert refused.returncode == 2
    assert "development commands" in refused.stderr
    assert "source checkout" in refused.stderr
    assert "Traceback" not in refused.stderr


def test_configmap_embeds_config_yaml_byte_for_byte(manifests: list[dict[str, Any]]) -> None:
    (configmap,) = of_kind(manifests, "ConfigMap")
    embedded = configmap["data"]["config.yaml"]
    assert embedded == (ROOT / "config.yaml").read_text(), (
        "deploy/k8s/configmap.yaml differs from config.yaml: copy config.yaml into it, "
        "indented four spaces under `config.yaml: |`"
    )


def test_configmap_config_decodes_with_the_pods_environment(
    manifests: list[dict[str, Any]], tmp_path: Path
) -> None:
    (configmap,) = of_kind(manifests, "ConfigMap")
    path = tmp_path / "config.yaml"
    path.write_text(configmap["data"]["config.yaml"])
    for component in ("ingress", "worker"):
        env = plain_env(container(manifests, component))
        env |= {
            "WEBHOOK_SECRET": "pod-test-signing-secret",
            "PROCESSOR_WORKER__GROUP_INSTANCE_ID": "worker-0",
        }
        loaded = load_config(path, env=env)
        assert loaded.kafka.bootstrap_servers == env["KAFKA_BOOTSTRAP_SERVERS"]
        if component == "ingress":
            assert loaded.ingress.host == ALL_INTERFACES


def test_kafka_topics_are_exactly_the_configured_topics(
    manifests: list[dict[str, Any]], config: Config
) -> None:
    topics = {
        t["spec"].get("topicName", t["metadata"]["name"]): t["spec"]
        for t in of_kind(manifests, "KafkaTopic")
    }
    assert sorted(topics) == sorted(all_topics(config))
    for name, spec in topics.items():
        assert spec["partitions"] == config.topics.partitions, name
        assert spec["replicas"] == 3, name
        settings = {key: str(value) for key, value in spec["config"].items()}
        wanted = topic_configs(config, name)["max.message.bytes"]
        assert settings["max.message.bytes"] == wanted, name
        assert settings["min.insync.replicas"] == "2", name
        assert config.topics.configs.items() <= settings.items(), name
        if name == config.topics.dedup:
            assert topic_configs(config, name).items() <= settings.items(), name


def test_kafka_topics_are_strimzi_resources_with_valid_names(
    manifests: list[dict[str, Any]],
) -> None:
    for topic in of_kind(manifests, "KafkaTopic"):
        # Strimzi 1.0 serves v1 only: v1beta2 fails `kubectl apply` on a current operator.
        assert topic["apiVersion"] == "kafka.strimzi.io/v1"
        assert "strimzi.io/cluster" in topic["metadata"]["labels"]
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?", topic["metadata"]["name"])


def test_keda_scales_the_worker_group_up_to_the_partition_count(
    manifests: list[dict[str, Any]], config: Config
) -> None:
    (scaled,) = of_kind(manifests, "ScaledObject")
    worker = workload(manifests, "worker")
    target = scaled["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == (worker["kind"], worker["metadata"]["name"])
    assert scaled["spec"]["maxReplicaCount"] == config.topics.partitions
    assert "replicas" not in worker["spec"], "KEDA owns the worker count"
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "kafka"
    meta = trigger["metadata"]
    assert meta["consumerGroup"] == config.worker.group_id
    assert meta["topic"] == config.topics.raw
    assert int(meta["lagThreshold"]) > 0
    assert meta["offsetResetPolicy"] == "earliest"
    bootstrap = plain_env(container(manifests, "worker"))["KAFKA_BOOTSTRAP_SERVERS"]
    assert meta["bootstrapServers"] == bootstrap


def test_kafka_bootstrap_is_fully_qualified_so_kedas_scaler_resolves_it(
    manifests: list[dict[str, Any]],
) -> None:
    # KEDA's scaler runs in the keda-operator pod, in another namespace.
    (scaled,) = of_kind(manifests, "ScaledObject")
    (trigger,) = scaled["spec"]["triggers"]
    addresses = [trigger["metadata"]["bootstrapServers"]] + [
        plain_env(container(manifests, component))["KAFKA_BOOTSTRAP_SERVERS"]
        for component in ("ingress", "worker")
    ]
    for address in addresses:
        for server in address.split(","):
            host, _, port = server.rpartition(":")
            assert re.fullmatch(r"[a-z0-9-]+\.[a-z0-9-]+\.svc\.cluster\.local", host), server
            assert port.isdigit(), server


def test_worker_joins_the_group_statically_as_its_pod_name(
    manifests: list[dict[str, Any]],
) -> None:
    (instance_id,) = [
        e
        for e in container(manifests, "worker")["env"]
        if e["name"] == "PROCESSOR_WORKER__GROUP_INSTANCE_ID"
    ]
    assert instance_id["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    pdbs = {p["metadata"]["name"] for p in of_kind(manifests, "PodDisruptionBudget")}
    assert workload(manifests, "worker")["metadata"]["name"] in pdbs


def test_ingress_probes_and_scrape_hit_its_management_port_and_the_service_its_public_one(
    manifests: list[dict[str, Any]], config: Config
) -> None:
    ingress = container(manifests, "ingress")
    loaded = load_config(
        ROOT / "config.yaml",
        env=plain_env(ingress) | {"WEBHOOK_SECRET": "probe-test-signing-secret"},
    )
    apps = create_apps(config=loaded, publisher=RecordingPublisher())  # routes only
    assert loaded.ingress.management_host == ALL_INTERFACES
    ports = {port["name"]: port["containerPort"] for port in ingress["ports"]}
    assert ports == {"http": loaded.ingress.port, "management": loaded.ingress.management_port}
    served = {
        r.resource.canonical
        for r in apps.management.router.routes()
        if r.method == "GET" and r.resource
    }
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        assert ingress[probe]["httpGet"] == {"path": path, "port": "management"}
        assert path in served
    annotations = workload(manifests, "ingress")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == loaded.ingress.management_port
    assert annotations["prometheus.io/path"] == "/metrics"
    assert "/metrics" in served
    # The Service (what the internet reaches) exposes the public port only.
    (service,) = [s for s in of_kind(manifests, "Service") if s["spec"].get("ports")]
    assert [p["targetPort"] for p in service["spec"]["ports"]] == ["http"]


def test_ingress_startup_probe_outlasts_the_kafka_connect_timeout(
    manifests: list[dict[str, Any]], config: Config
) -> None:
    # The ingress listens only once Kafka answers: until then liveness must not run.
    probe = container(manifests, "ingress")["startupProbe"]
    assert probe["httpGet"] == {"path": "/healthz", "port": "management"}
    budget = probe["periodSeconds"] * probe["failureThreshold"]
    assert budget > config.kafka.connect_timeout_s + probe["timeoutSeconds"]


def test_worker_liveness_probe_and_scrape_hit_the_port_its_config_serves(
    manifests: list[dict[str, Any]],
) -> None:
    worker = container(manifests, "worker")
    # The pod's own environment decides: metrics_port is off in config.yaml.
    loaded = load_config(ROOT / "config.yaml", env=plain_env(worker))
    assert loaded.worker.metrics_host == ALL_INTERFACES
    (port,) = worker["ports"]
    assert port["containerPort"] == loaded.worker.metrics_port
    app = worker_http.create_app(WorkerMetrics())
    routes = {r.resource.canonical for r in app.router.routes() if r.method == "GET" and r.resource}
    probe = worker["livenessProbe"]
    assert probe["httpGet"] == {"path": "/healthz", "port": port["name"]}
    assert "/healthz" in routes
    annotations = workload(manifests, "worker")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == port["containerPort"]
    assert annotations["prometheus.io/path"] == "/metrics"
    assert "/metrics" in routes


@pytest.fixture(scope="module")
def example_secret() -> dict[str, Any]:
    secret: dict[str, Any] = yaml.safe_load((K8S / "secret.example.yaml").read_text())
    assert secret["kind"] == "Secret"
    return secret


def test_ingress_reads_its_signing_secret_from_the_example_secrets_name_and_key(
    manifests: list[dict[str, Any]], example_secret: dict[str, Any]
) -> None:
    (secret_env,) = [e for e in container(manifests, "ingress")["env"] if "valueFrom" in e]
    assert secret_env["name"] == "WEBHOOK_SECRET"
    ref = secret_env["valueFrom"]["secretKeyRef"]
    assert ref["name"] == example_secret["metadata"]["name"]
    assert ref["key"] in example_secret["stringData"]
    assert "optional" not in ref, "no Secret must stop the pod, not run it unverified"


def test_the_example_secrets_placeholder_cannot_run_an_ingress(
    example_secret: dict[str, Any],
) -> None:
    # Applied as shipped, the ingress must refuse to start rather than accept deliveries
    # signed with a key published in this repository.
    placeholder = example_secret["stringData"]["WEBHOOK_SECRET"]
    with pytest.raises(ConfigError, match="placeholder"):
        build_verifier(load_config(None, env={"WEBHOOK_SECRET": placeholder}).ingress)


@pytest.mark.parametrize("component", ["ingress", "worker"])
def test_pods_run_non_root_with_the_mounted_config_limits_and_grace(
    manifests: list[dict[str, Any]], config: Config, component: str
) -> None:
    pod = workload(manifests, component)["spec"]["template"]["spec"]
    main = container(manifests, component)
    assert main["args"] == ["--config", CONFIG_PATH, component]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert main["securityContext"]["allowPrivilegeEscalation"] is False
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= main["resources"][kind].keys(), kind
    (mount,) = [m for m in main["volumeMounts"] if CONFIG_PATH.startswith(m["mountPath"] + "/")]
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    (configmap,) = of_kind(manifests, "ConfigMap")
    assert volume["configMap"]["name"] == configmap["metadata"]["name"]
    shutdown = {
        "ingress": config.ingress.shutdown_timeout_s,
        "worker": worker_stop_bound(config),
    }
    pre_stop = main.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
    pre_stop_s = int(pre_stop[1]) if pre_stop[:1] == ["sleep"] else 0
    assert pod["terminationGracePeriodSeconds"] > shutdown[component] + pre_stop_s


def test_compose_workers_are_static_members_named_after_their_container(
    compose: dict[str, Any],
) -> None:
    worker = compose["worker"]
    env = {key: str(value) for key, value in worker["environment"].items()}

    loaded = load_config(ROOT / "config.yaml", env=env)

    assert loaded.worker.group_instance_id == "worker-{hostname}"
    assert worker["restart"] == "unless-stopped"


def test_dev_workers_are_distinct_static_members() -> None:
    from processor.devtools.dev import _member

    ids = {_member(Config(), index)["PROCESSOR_WORKER__GROUP_INSTANCE_ID"] for index in (1, 2, 3)}

    assert ids == {"dev-worker-1", "dev-worker-2", "dev-worker-3"}
