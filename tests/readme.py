"""The README's marked examples, for the tests that run them."""

from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def readme_commands(name: str) -> list[str]:
    """The command lines of the shell block marked `<!-- readme-test: name -->`, with
    `processor` run as this checkout's."""
    match = re.search(rf"<!-- readme-test: {name} -->\n```sh\n(.*?)```", README, re.DOTALL)
    assert match, f"README has no sh block marked readme-test: {name}"
    processor = f"{shlex.quote(sys.executable)} -m processor.cli"
    return [re.sub(r"^processor ", f"{processor} ", line) for line in match.group(1).splitlines()]
