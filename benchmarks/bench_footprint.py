"""A worker's footprint by the raw partitions it owns: broker connections, memory,
threads and the time from start to its first assignment, per guarantee.

Each run starts one `processor worker` process (config.yaml's defaults, the topics of
its own made by `processor topics create` with `--partitions` raw partitions), waits
for its `partitions.assigned` line, lets it settle 5 s, then counts its established
TCP connections (`ss -tnp`), its RSS (/proc) and threads, and stops it with SIGTERM.
Both guarantees run one producer per worker (exactly once, a transactional one; before
KIP-447 offsets, one per raw partition, each with its own connections).

Rerun (from the repository root; starts and stops its own broker unless given one):

    .venv/bin/python benchmarks/bench_footprint.py                       # 12 and 64 partitions
    .venv/bin/python benchmarks/bench_footprint.py --partitions 12,32,64
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Final

from harness import REPO, broker, memory, write_results

GUARANTEES: Final = ("at_least_once", "exactly_once")
SETTLE_S: Final = 5.0
ASSIGNED_WITHIN_S: Final = 120.0


def connections(pid: int) -> int:
    """The process's established TCP connections."""
    listing = subprocess.run(["ss", "-tnp"], capture_output=True, text=True, check=True).stdout
    return sum(1 for line in listing.splitlines() if "ESTAB" in line and f"pid={pid}," in line)


def assigned(log: Path) -> bool:
    for line in log.read_text().splitlines():
        if line.startswith("{"):
            entry = json.loads(line)
            if entry.get("event") == "partitions.assigned" and entry.get("partitions"):
                return True
    return False


def footprint(bootstrap: str, partitions: int, guarantee: str, logs: Path) -> dict[str, Any]:
    tag = f"bench.footprint.{uuid.uuid4().hex[:8]}"
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "PROCESSOR_TOPICS__RAW": f"{tag}.raw",
        "PROCESSOR_TOPICS__UNROUTED": f"{tag}.unrouted",
        "PROCESSOR_TOPICS__DLQ": f"{tag}.dlq",
        "PROCESSOR_TOPICS__DEDUP": f"{tag}.dedup",
        "PROCESSOR_TOPICS__PARTITIONS": str(partitions),
        "PROCESSOR_ROUTING__ROUTES": f"{{integration: '{tag}.status.{{status}}'}}",
        "PROCESSOR_WORKER__GROUP_ID": f"{tag}.group",
        "PROCESSOR_WORKER__GUARANTEE": guarantee,
        "PROCESSOR_LOGGING__FORMAT": "json",
    }
    cli = [sys.executable, "-m", "processor.cli", "--config", str(REPO / "config.yaml")]
    subprocess.run([*cli, "topics", "create"], env=env, check=True, capture_output=True)
    log = logs / f"{partitions}-{guarantee}.log"
    with log.open("wb") as out:
        started = time.monotonic()
        worker = subprocess.Popen([*cli, "worker"], env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        while not assigned(log):
            if time.monotonic() - started > ASSIGNED_WITHIN_S or worker.poll() is not None:
                raise SystemExit(f"the worker was not assigned partitions: see {log}")
            time.sleep(0.05)
        assigned_s = time.monotonic() - started
        time.sleep(SETTLE_S)
        return {
            "partitions": partitions,
            "guarantee": guarantee,
            "assigned_s": round(assigned_s, 2),
            "connections": connections(worker.pid),
            "rss_mb": round(memory(worker.pid)["VmRSS"] / 2**20, 1),
            "threads": len(os.listdir(f"/proc/{worker.pid}/task")),
        }
    finally:
        worker.terminate()
        worker.wait(60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--partitions", default="12,64", help="raw partitions, comma-separated")
    parser.add_argument("--bootstrap", help="an existing Kafka (default: a local broker)")
    parser.add_argument(
        "--log-dir",
        type=Path,
        default=Path(tempfile.gettempdir()) / "bench_footprint",
        help="where the workers' output goes",
    )
    parser.add_argument("--results", type=Path, help="also write the results here as JSON")
    args = parser.parse_args()
    args.log_dir.mkdir(parents=True, exist_ok=True)
    counts = [int(count) for count in args.partitions.split(",")]
    rows = []
    print(f"{'partitions':>10} {'guarantee':<14}{'assigned s':>11}{'connections':>12}"
          f"{'RSS MB':>8}{'threads':>8}")  # fmt: skip
    with broker(args.bootstrap) as bootstrap:
        for count in counts:
            for guarantee in GUARANTEES:
                row = footprint(bootstrap, count, guarantee, args.log_dir)
                rows.append(row)
                print(
                    f"{count:>10} {guarantee:<14}{row['assigned_s']:>11}{row['connections']:>12}"
                    f"{row['rss_mb']:>8}{row['threads']:>8}",
                    flush=True,
                )
    write_results(args.results, "bench_footprint", rows)


if __name__ == "__main__":
    main()
