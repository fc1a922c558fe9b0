"""What the benchmarks share: a process's CPU and memory from /proc, the broker a run
uses, and results written as data.

Every benchmark prints its table, and with `--results DIR` also writes what it
measured to `DIR/<benchmark>.json`, with the commit and the machine it ran on, so that
runs can be compared by what they are, not by prose copied from a terminal.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

from processor.devtools.broker import LocalBroker

__all__ = ["TICKS", "broker", "cpu_seconds", "memory", "write_results"]

TICKS: Final = os.sysconf("SC_CLK_TCK")
REPO: Final = Path(__file__).resolve().parents[1]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def memory(pid: int) -> dict[str, int]:
    """A process's resident memory now (VmRSS), at its peak (VmHWM) and anonymous
    (RssAnon), in bytes (Linux /proc)."""
    found = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM", "RssAnon"):
            found[name] = int(value.split()[0]) * 1024
    return found


@contextlib.contextmanager
def broker(bootstrap: str | None) -> Iterator[str]:
    """The cluster at `bootstrap`, or a local broker of the run's own, stopped after."""
    if bootstrap is not None:
        yield bootstrap
        return
    with LocalBroker.temporary() as local:
        yield local.bootstrap


def write_results(directory: Path | None, benchmark: str, results: Any) -> Path | None:
    """`results` as `directory/<benchmark>.json`, with the commit and the machine."""
    if directory is None:
        return None
    directory.mkdir(parents=True, exist_ok=True)
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],
        cwd=REPO, capture_output=True, text=True, check=False,
    ).stdout.strip()  # fmt: skip
    document = {
        "benchmark": benchmark,
        "commit": commit or None,
        "machine": {
            "cpus": os.cpu_count(),
            "processor": platform.processor() or platform.machine(),
            "python": platform.python_version(),
            "system": platform.platform(),
        },
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "results": results,
    }
    path = directory / f"{benchmark}.json"
    path.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")
    return path
