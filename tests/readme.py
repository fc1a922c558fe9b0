"""The README's and docs/' marked examples and tables, for the tests that hold them to
the code: a block or table is found by its marker, whichever page it is on."""

from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGES = {
    path.relative_to(ROOT).as_posix(): path.read_text()
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
}


def marked(marker: str) -> str:
    """The text after `<!-- marker -->` on the one page that has it."""
    found = [text.partition(f"<!-- {marker} -->\n")[2] for text in PAGES.values()]
    found = [rest for rest in found if rest]
    assert len(found) == 1, f"{len(found)} pages have <!-- {marker} --> (README.md, docs/*.md)"
    return found[0]


def readme_block(name: str) -> str:
    """The fenced block marked `<!-- readme-test: name -->`."""
    match = re.match(r"```\w+\n(.*?)```", marked(f"readme-test: {name}"), re.DOTALL)
    assert match, f"the block marked readme-test: {name} is not a fenced block"
    return match.group(1)


def readme_commands(name: str) -> list[str]:
    """The command lines of the shell block marked `<!-- readme-test: name -->`, with
    `processor` run as this checkout's."""
    processor = f"{shlex.quote(sys.executable)} -m processor.cli"
    return [
        re.sub(r"^processor ", f"{processor} ", line) for line in readme_block(name).splitlines()
    ]


def table_after(marker: str) -> list[str]:
    """The rows of the Markdown table right after `<!-- marker -->`, header rows excluded."""
    rows = []
    for line in marked(marker).splitlines()[2:]:
        if not line.startswith("|"):
            break
        rows.append(line)
    return rows
