"""`deploy/check.py` (what `make deploy-check` runs) fails on a broken deploy/.

Each test copies deploy/ to a temporary folder, breaks one thing in one artefact, and
runs the repository's check script on the copy as `make deploy-check` runs it: the
check must fail, name the problem and where it is, and report nothing else. A pristine
copy passes, so each failure is the seeded one.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
CHECK = REPO / "deploy" / "check.py"
# The first run builds kustomize with `go install` (about 80 s without a module cache).
CHECK_TIMEOUT_S = 600


def run_check(deploy: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(CHECK), "--deploy", str(deploy)],
        capture_output=True, text=True, check=False, timeout=CHECK_TIMEOUT_S, env=env,
    )  # fmt: skip


@pytest.fixture
def deploy_copy(tmp_path: Path) -> Path:
    copy = tmp_path / "deploy"
    shutil.copytree(REPO / "deploy", copy, ignore=shutil.ignore_patterns("schemas", "*.py"))
    return copy


def break_file(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert text.count(old) == 1, f"{old!r} must occur once in {path}"
    path.write_text(text.replace(old, new))


def test_the_shipped_deploy_folder_passes(deploy_copy: Path) -> None:
    result = run_check(deploy_copy)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "Kubernetes 1.34 and 1.36, Strimzi 1.2.0 and KEDA 2.21.0" in result.stdout
    assert "checked against the Compose Specification" in result.stdout
    assert "passes hadolint" in result.stdout


BROKEN = {
    "kafkatopic-field-of-the-wrong-type": (
        "k8s/topics.yaml",
        "  topicName: webhooks.dlq\n  partitions: 6\n",
        '  topicName: webhooks.dlq\n  partitions: "6"\n',
        ["topics.yaml: KafkaTopic webhooks.dlq: spec.partitions: '6' is not of type 'integer'"],
    ),
    "kafkatopic-on-an-api-strimzi-no-longer-serves": (
        "k8s/topics.yaml",
        "apiVersion: kafka.strimzi.io/v1\nkind: KafkaTopic\nmetadata:\n  name: webhooks.raw\n",
        "apiVersion: kafka.strimzi.io/v1beta2\nkind: KafkaTopic\nmetadata:\n  name: webhooks.raw\n",
        [
            "KafkaTopic webhooks.raw: kafka.strimzi.io/v1beta2 is not served by Strimzi 1.2.0 "
            "(its KafkaTopic CRD serves v1): set apiVersion to kafka.strimzi.io/v1"
        ],
    ),
    "deployment-with-a-misspelled-field": (
        "k8s/ingress.yaml",
        "          readinessProbe:\n",
        "          readinesProbe:\n",
        [
            f"ingress.yaml: Deployment processor-ingress (Kubernetes {version}): "
            "spec.template.spec.containers[0]: Additional properties are not allowed "
            "('readinesProbe' was unexpected)"
            for version in ("1.34", "1.36")
        ],
    ),
    "scaledobject-with-an-unknown-field": (
        "k8s/keda.yaml",
        "  pollingInterval: 15\n",
        "  pollingIntervalSeconds: 15\n",
        [
            "keda.yaml: ScaledObject processor-worker: spec: Additional properties are not "
            "allowed ('pollingIntervalSeconds' was unexpected) (KEDA 2.21.0 CRD)"
        ],
    ),
    "kustomization-naming-a-missing-file": (
        "k8s/kustomization.yaml",
        "  - keda.yaml\n",
        "  - keda.yaml\n  - secret.yaml\n",
        [
            "k8s: kustomize build failed: Error: accumulating resources: "
            "accumulation err='accumulating resources from 'secret.yaml'"
        ],
    ),
    "compose-service-with-an-unknown-key": (
        "compose.yaml",
        "    stop_grace_period: 20s\n",
        "    stop_grace_periods: 20s\n",
        [
            "compose.yaml: services.ingress: Unevaluated properties are not allowed "
            "('stop_grace_periods' was unexpected)"
        ],
    ),
    "dockerfile-pip-install-without-pins": (
        "Dockerfile",
        "WORKDIR /app\n",
        "WORKDIR /app\nRUN pip install --no-cache-dir requests\n",
        ["Dockerfile:39 DL3013 warning: Pin versions in pip"],
    ),
    "dockerfile-apt-get-install-pulling-recommends": (
        "Dockerfile",
        "WORKDIR /app\n",
        "WORKDIR /app\nRUN apt-get update && apt-get install -y curl=8.14.1-2"
        " && rm -rf /var/lib/apt/lists/*\n",
        [
            "Dockerfile:39 DL3015 info: Avoid additional packages by specifying "
            "`--no-install-recommends`"
        ],
    ),
}


@pytest.mark.parametrize(("path", "old", "new", "expected"), BROKEN.values(), ids=BROKEN.keys())
def test_a_broken_artefact_fails_the_check_naming_the_problem(
    deploy_copy: Path, path: str, old: str, new: str, expected: list[str]
) -> None:
    break_file(deploy_copy / path, old, new)

    result = run_check(deploy_copy)

    assert result.returncode == 1, result.stdout + result.stderr
    summaries = ("k8s: ", "compose: ", "Dockerfile: ")
    problems = [line for line in result.stdout.splitlines() if not line.startswith(summaries)]
    # The seeded problem, once per line expected, and nothing else.
    assert len(problems) == len(expected), result.stdout
    for text, line in zip(expected, problems, strict=True):
        assert text in line, f"{text!r} not in {line!r}"
    assert f"problem(s) in {deploy_copy}" in result.stderr


def test_without_go_or_a_built_kustomize_the_check_says_how_to_get_one(
    deploy_copy: Path, tmp_path: Path
) -> None:
    env = {**os.environ, "PROCESSOR_CACHE_DIR": str(tmp_path / "cache"), "PATH": "/nonexistent"}

    result = run_check(deploy_copy, env=env)

    assert result.returncode == 2, result.stdout + result.stderr
    assert "kustomize v5.8.2 is built with Go 1.26 or newer" in result.stderr
    assert "install Go" in result.stderr
