"""`processor worker` with the repository's config.yaml, started the way the peers are.

Runs from the project's .venv. The job's arguments become the environment overrides
a deployment would set (`PROCESSOR_<SECTION>__<KEY>`); everything else is the default
config: dedup on unless `--no-dedup`, the guarantee from `--guarantee`.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from job import parse_job, wait_for_start

import processor.worker.loop  # noqa: F401 - imported before `ready`, as the peers import theirs
from processor.cli import main as processor_main

CONFIG = Path(__file__).resolve().parents[3] / "config.yaml"


def worker_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dedup-topic", required=True, help="the dedup changelog topic")
    parser.add_argument("--no-dedup", action="store_true")


def main() -> int:
    job, extra = parse_job(__doc__.split("\n\n")[0], extra=worker_arguments)
    os.environ.update(
        {
            "KAFKA_BOOTSTRAP_SERVERS": job.bootstrap,
            "PROCESSOR_TOPICS__RAW": job.raw,
            "PROCESSOR_TOPICS__UNROUTED": job.unrouted,
            "PROCESSOR_TOPICS__DLQ": job.dlq,
            "PROCESSOR_TOPICS__DEDUP": extra.dedup_topic,
            "PROCESSOR_ROUTING__ROUTES": f"{{integration: '{job.routes}'}}",
            "PROCESSOR_WORKER__GROUP_ID": job.group,
            "PROCESSOR_WORKER__GUARANTEE": job.guarantee,
            "PROCESSOR_WORKER__MAX_BATCH_RECORDS": str(job.batch),  # config.yaml's: 2000
            "PROCESSOR_DEDUP__ENABLED": "false" if extra.no_dedup else "true",
            # The worker logs every dead-lettered delivery as a warning; INFO adds little.
            "PROCESSOR_LOGGING__LEVEL": "WARNING",
            "PROCESSOR_LOGGING__FORMAT": "json",
        }
    )
    wait_for_start()
    return processor_main(["worker", "--config", str(CONFIG)])


if __name__ == "__main__":
    sys.exit(main())
