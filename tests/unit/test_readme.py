"""The README says what the code does: its header tables come from processor.contract.headers."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from processor.contract.headers import DERIVED_HEADERS, DLQ_HEADERS, RAW_HEADERS, Header
from tests.readme import README, readme_commands

ROOT = Path(__file__).resolve().parents[2]


def table_after(marker: str) -> list[str]:
    """The rows of the Markdown table right after `<!-- marker -->`, header rows excluded."""
    _, found, rest = README.partition(f"<!-- {marker} -->\n")
    assert found, f"README has no <!-- {marker} --> table"
    rows = []
    for line in rest.splitlines()[2:]:
        if not line.startswith("|"):
            break
        rows.append(line)
    return rows


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


def test_readme_layout_names_every_module_of_processor() -> None:
    root = Path(__file__).resolve().parents[2]
    named = "\n".join(table_after("layout"))
    for path in sorted((root / "processor").rglob("*.py")):
        if path.name == "__init__.py":
            continue
        relative = path.relative_to(root)
        if relative.parts[1] in ("config", "devtools"):  # one row per package
            assert f"`{path.name}`" in named, f"README's layout omits {relative}"
        else:
            assert f"`{relative}`" in named, f"README's layout omits {relative}"


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
