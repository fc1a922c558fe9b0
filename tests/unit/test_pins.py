"""What installs the project installs pinned versions: nothing floats between two
machines, pip and the build's setuptools included."""

from __future__ import annotations

import re
import subprocess
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def pins() -> dict[str, str]:
    found = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        name, sep, version = line.partition("==")
        if sep:
            found[name.strip().lower()] = version.strip()
    return found


def test_the_build_backend_is_the_pinned_setuptools() -> None:
    build = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]
    assert build["requires"] == [f"setuptools=={pins()['setuptools']}"]


def test_make_installs_pip_itself_from_the_constraints() -> None:
    makefile = (ROOT / "Makefile").read_text()
    installs = re.findall(r"pip install[^\n]*", makefile)
    assert installs, "the Makefile installs nothing with pip"
    assert "pip" in pins()
    for line in installs:
        assert "--upgrade" not in line, line
        assert "-c constraints.txt" in line or "-r " in line, line


@pytest.mark.slow  # a make process of its own
def test_make_run_installs_the_runtime_only_and_make_test_the_development_tools(
    tmp_path: Path,
) -> None:
    def planned(target: str) -> str:
        return subprocess.run(
            ["make", "-n", target, f"VENV={tmp_path / 'venv'}"],
            cwd=ROOT, capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip

    run = planned("run")
    assert "-e ." in run
    assert "[dev]" not in run
    assert "npm" not in run
    assert "processor dev" in run
    assert "-e '.[dev]'" in planned("test")
