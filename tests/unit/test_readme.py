"""The README and docs/ say what the code does: the header tables come from
processor.headers, the layout table names every module there is and no other."""

from __future__ import annotations

import ast
import functools
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest

from processor.config import Config
from processor.headers import DERIVED_HEADERS, DLQ_HEADERS, RAW_HEADERS, Header
from tests.readme import readme_block, readme_commands, table_after

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("marker", "headers"),
    [
        ("headers: derived", DERIVED_HEADERS),
        ("headers: dlq", DLQ_HEADERS),
        ("headers: raw", RAW_HEADERS),
    ],
)
def test_readme_header_tables_match_processor_headers(
    marker: str, headers: tuple[Header, ...]
) -> None:
    assert table_after(marker) == [f"| `{h.name}` | {h.value} |" for h in headers]


def test_the_layout_table_names_every_module_of_processor_and_no_other() -> None:
    named = "\n".join(table_after("layout"))
    listed = set(re.findall(r"`(processor/[\w/]+\.py)`", named))
    for path in sorted((ROOT / "processor").rglob("*.py")):
        relative = path.relative_to(ROOT)
        if path.name == "__init__.py":
            continue
        if relative.parts[1] in ("config", "devtools"):  # one row per package
            assert f"`{path.name}`" in named, f"the layout table omits {relative}"
        else:
            assert str(relative) in listed, f"the layout table omits {relative}"
    missing = [name for name in listed if not (ROOT / name).exists()]
    assert missing == [], f"the layout table names modules that do not exist: {missing}"


@pytest.mark.slow  # a Python process of its own
def test_readme_puts_processor_on_the_path_as_printed(tmp_path: Path) -> None:
    """In a fresh shell (no virtualenv active, `processor` on no PATH) beside a `.venv`."""
    (tmp_path / ".venv").symlink_to(Path(sys.executable).parents[1])
    env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
    env["PATH"] = os.pathsep.join(
        part for part in env["PATH"].split(os.pathsep) if not (Path(part) / "processor").exists()
    )

    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", readme_block("path")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip

    assert (result.returncode, result.stderr) == (0, "")
    assert re.fullmatch(r"processor \d+\.\d+\.\d+\n", result.stdout)


@pytest.mark.slow  # a Python process of its own
def test_readme_schema_commands_work_on_the_default_config(tmp_path: Path) -> None:
    shutil.copy(ROOT / "config.yaml", tmp_path)
    (tmp_path / "docs").mkdir()
    shutil.copy(ROOT / "docs" / "contract.json", tmp_path / "docs")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("PROCESSOR_") and k != "KAFKA_BOOTSTRAP_SERVERS"}  # fmt: skip

    for command in readme_commands("schema"):
        result = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", command],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert result.returncode == 0, f"{command}\n{result.stderr}"

    assert (tmp_path / "contract.json").read_text() == (ROOT / "docs/contract.json").read_text()
    assert (tmp_path / "asyncapi.yaml").read_text() == (ROOT / "docs/asyncapi.yaml").read_text()


@functools.cache
def code_templates() -> list[str]:
    """Every string in processor/, each f-string's values as `…`."""
    found = []
    for path in sorted((ROOT / "processor").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.JoinedStr):
                found.append(
                    "".join(
                        str(part.value) if isinstance(part, ast.Constant) else "…"
                        for part in node.values
                    )
                )
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                found.append(node.value)
    return found


@pytest.mark.parametrize("table", ["troubleshooting: starting", "troubleshooting: running"])
def test_what_the_troubleshooting_page_quotes_is_what_the_code_says(table: str) -> None:
    templates = code_templates()
    quoted = [
        text
        for row in table_after(table)
        for text in re.findall(r"`([^`]+)`", row.split("|")[1])
        if text != "processor: command not found"  # the shell's, not ours
    ]
    assert quoted
    for text in quoted:
        pattern = ".*".join(re.escape(segment) for segment in text.split("…"))
        assert any(re.search(pattern, template) for template in templates), text


@pytest.mark.parametrize("page", ["docs/production.md", "CHANGELOG.md"])
def test_every_setting_a_page_names_is_one_there_is(page: str) -> None:
    known = {
        f"{section}.{key}"
        for section, keys in msgspec.to_builtins(Config()).items()
        for key in keys
    }
    sections = {name.partition(".")[0] for name in known}
    text = (ROOT / page).read_text()
    events = set(code_templates())  # log events look alike: `worker.summary`
    named = {
        name
        for name in re.findall(r"`([a-z_]+\.[a-z_]+)`", text)
        if name.partition(".")[0] in sections and name not in events
    }
    assert named, f"{page} names no setting"
    assert named <= known | retired(text), sorted(named - known)


def retired(text: str) -> set[str]:
    """Settings a changelog says were renamed or removed: `old` in 'renamed from `old`'."""
    return set(re.findall(r"(?:renamed from|removed:?) `([a-z_]+\.[a-z_]+)`", text))
