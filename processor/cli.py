"""The `processor` command: one entry point for every process of the pipeline.

Each subcommand loads the configuration once (`--config PATH`, default
`config.yaml`), sets up logging and hands the frozen `Config` down. What users read
(--help's descriptions and examples) is in _ABOUT, _EXAMPLES and _COMMANDS. The development
commands (`broker`, `dev`) import `processor.devtools` only when they run: the
production image ships without it, and the runtime commands never need it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import json
import sys
import textwrap
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

from processor.config import Config, load_config
from processor.errors import ContractError, DevToolsMissing, ProcessorError
from processor.ingress.app import run_ingress
from processor.kafka.topics import create_topics
from processor.logging import configure_logging
from processor.worker.loop import run_worker

if TYPE_CHECKING:
    from processor.devtools.broker import LocalBroker

__all__ = ["main"]

# `processor broker` keeps its data here by default, so a restart keeps the topics.
DEFAULT_BROKER_DIR = Path(".kafka") / "broker"
# `processor dev` keeps its own broker, so it never disturbs one started by hand.
DEFAULT_DEV_DIR = Path(".kafka") / "dev"
# Where `processor dev`'s workers answer when worker.metrics_port is not set.
DEFAULT_DEV_METRICS_PORT = 9100
# Read when it is here and no --config says otherwise.
DEFAULT_CONFIG = Path("config.yaml")

log = structlog.get_logger(__name__)

Command = Callable[[argparse.Namespace, Config], int]


@contextlib.contextmanager
def _development_command() -> Iterator[None]:
    """Around an import of `processor.devtools`: where it is absent (the production
    image), say that this is a development command instead of a traceback."""
    try:
        yield
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[:2] != ["processor", "devtools"]:
            raise
        raise DevToolsMissing(
            "`processor broker` and `processor dev` are development commands: run them "
            "from a source checkout of the repository (`make setup`, then "
            "`.venv/bin/processor ...`). This installation has only the runtime "
            "commands: worker, ingress, topics create, replay, schema, tail, find."
        ) from None


def _broker(args: argparse.Namespace) -> LocalBroker:
    with _development_command():
        from processor.devtools.broker import LocalBroker
    return LocalBroker(directory=args.dir, port=args.port)


def broker_start(args: argparse.Namespace, config: Config) -> int:
    with _development_command():
        from processor.devtools.jars import KAFKA_VERSION
    broker = _broker(args)
    if (status := broker.status()).running:
        print(f"broker already running from {args.dir}: {status}")
        return 0
    bootstrap = broker.start()
    print(f"Kafka {KAFKA_VERSION} running on {bootstrap} (data in {args.dir})")
    print(f"  export KAFKA_BOOTSTRAP_SERVERS={bootstrap}")
    return 0


def broker_stop(args: argparse.Namespace, config: Config) -> int:
    broker = _broker(args)
    if not broker.status().running:
        print(f"no broker running from {args.dir}")
        return 0
    broker.stop()
    print(f"broker from {args.dir} stopped")
    return 0


def broker_status(args: argparse.Namespace, config: Config) -> int:
    status = _broker(args).status()
    print(f"broker from {args.dir}: {status}")
    return 0 if status.running else 3


def worker(args: argparse.Namespace, config: Config) -> int:
    asyncio.run(run_worker(config))
    return 0


def ingress(args: argparse.Namespace, config: Config) -> int:
    asyncio.run(run_ingress(config))
    return 0


def topics_create(args: argparse.Namespace, config: Config) -> int:
    report = asyncio.run(create_topics(config))
    for name in report.created:
        print(f"created  {name}")
    for name in report.existing:
        print(f"exists   {name}")
    for name, (actual, wanted) in report.mismatched.items():
        print(
            f"warning: {name} has {actual} partitions, the config says {wanted}; "
            "Kafka can only add partitions, and adding moves keys: decide, then "
            "use kafka-topics.sh --alter",
            file=sys.stderr,
        )
    return 0


def replay(args: argparse.Namespace, config: Config) -> int:
    from processor.ops.replay import ReplayFilters, run_replay

    filters = ReplayFilters(
        source=args.source,
        target=args.target or config.topics.raw,
        delivery_ids=tuple(sorted(args.delivery_id or ())),
        error_class=args.error_class,
        since=args.since,
        until=args.until,
    )
    return run_replay(config, filters, limit=args.limit, dry_run=args.dry_run)


def schema(args: argparse.Namespace, config: Config) -> int:
    if args.asyncapi:
        from processor.contract.asyncapi import asyncapi_yaml

        sys.stdout.write(asyncapi_yaml(config))
        return 0
    from processor.contract.schema import contract_document, contract_json

    if args.check is None:
        sys.stdout.write(contract_json(config))
        return 0
    from processor.contract.compat import contract_breaks

    try:
        promised = json.loads(args.check.read_text(encoding="utf-8"))
        breaks = contract_breaks(promised, contract_document(config))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ContractError(
            f"cannot compare with {args.check} ({type(exc).__name__}: {exc}); "
            "pass a file `processor schema` wrote"
        ) from None
    for line in breaks:
        print(line)
    if breaks:
        print(
            f"processor: {len(breaks)} change(s) above break subscribers of {args.check}; "
            "keep the field, or publish the change on a new topic",
            file=sys.stderr,
        )
        return 1
    print(f"compatible with {args.check}: nothing a subscriber relies on changed")
    return 0


def tail(args: argparse.Namespace, config: Config) -> int:
    from processor.ops.tail import TailOptions, run_tail

    options = TailOptions(
        topic=args.topic,
        from_beginning=args.from_beginning,
        last=args.last,
        uid=args.uid,
        event=args.event,
        follow=args.follow,
    )
    return run_tail(config, options, as_json=args.json)


def find(args: argparse.Namespace, config: Config) -> int:
    from processor.ops.find import FindOptions, run_find

    options = FindOptions(delivery_id=args.delivery_id, uid=args.uid, since=args.since)
    return run_find(config, options, as_json=args.json)


def _moment(text: str) -> datetime:
    """An ISO 8601 time for --since/--until; a naive one is taken as UTC."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an ISO 8601 time, e.g. 2026-11-30T12:00:00Z"
        ) from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _count(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number, 0 or more")
    return int(text)


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number")
    return int(text)


def dev(args: argparse.Namespace, config: Config) -> int:
    with _development_command():
        from processor.devtools.dev import DevOptions, run_dev
    options = DevOptions(
        config_path=args.config,
        workers=args.workers,
        ingress_port=args.port or config.ingress.port,
        management_port=args.management_port or config.ingress.management_port,
        metrics_port=args.metrics_port or config.worker.metrics_port or DEFAULT_DEV_METRICS_PORT,
        kafka_port=args.kafka_port,
        broker_dir=args.dir,
    )
    return run_dev(config, options)


_ABOUT = """\
Webhook deliveries in, Kafka topics out: the ingress verifies each delivery and writes
its exact bytes to webhooks.raw; workers route each one to exactly one topic.

Every command reads config.yaml (--config PATH), and the environment over it:
KAFKA_BOOTSTRAP_SERVERS, WEBHOOK_SECRET, PROCESSOR_<SECTION>__<KEY>."""

_EXAMPLES = """\
examples:
  processor dev                                   # the whole pipeline on this machine
  processor tail integration.status.completed     # the last 10 records, decoded
  processor find whd_01HZX3 --uid user_123        # where a delivery went, and why
  processor replay --from webhooks.dlq --dry-run  # what a replay would move back
  processor worker --help                         # more on one command"""

# Per command: what it does (its --help description) and an example (its epilog).
_COMMANDS: dict[str, tuple[str, str]] = {
    "worker": (
        "A member of the routing consumer group: reads topics.raw, writes each delivery "
        "to its status topic, webhooks.unrouted or webhooks.dlq, then commits "
        "(worker.guarantee: at_least_once or exactly_once). Runs until SIGTERM or "
        "Ctrl-C, finishing the batch in flight; SIGUSR1 also takes a static member "
        "(worker.group_instance_id) out of the group, for a scale-down. Start as many "
        "as topics.partitions; "
        "worker.metrics_port serves /healthz, /readyz and /metrics.",
        "PROCESSOR_WORKER__METRICS_PORT=9100 processor worker",
    ),
    "ingress": (
        "The HTTP door: POST ingress.path (/webhooks) verifies the provider's signature "
        "and answers 202 once Kafka has the delivery (ingress.port, 8080); /healthz, "
        "/readyz and /metrics on ingress.management_port (8081). Needs WEBHOOK_SECRET. "
        "Runs until SIGTERM or Ctrl-C, answering the requests in flight.",
        "WEBHOOK_SECRET=$(cat secret) processor ingress",
    ),
    "topics": ("The pipeline's topics.", "processor topics create"),
    "create": (
        "Create every topic the configuration names (raw, derived, unrouted, DLQ, the "
        "dedup changelog) with topics.partitions and topics.replication_factor; reports "
        "existing ones that differ, and never changes them.",
        "KAFKA_BOOTSTRAP_SERVERS=kafka:9092 processor topics create",
    ),
    "replay": (
        "Move DLQ or unrouted records back to the raw topic, each once: resumable with "
        "the same filters, a progress bar on a terminal, one JSON summary line at the end.",
        "processor replay --from webhooks.dlq --error-class ValidationError --dry-run",
    ),
    "schema": (
        "The subscriber's contract: every topic's value (JSON Schema), key and headers, "
        "or the same as AsyncAPI 3.0; --check says whether a change breaks subscribers.",
        "processor schema --check docs/contract.json",
    ),
    "tail": (
        "Show a topic's records decoded with the contract, a line each (or JSON), as "
        "tail(1) shows a file; joins no consumer group and commits nothing.",
        "processor tail webhooks.dlq --last 5 --json",
    ),
    "find": (
        "Where a delivery is and what happened to it: its copies in the raw topic (sent, "
        "replayed), where each was routed or why it went to the DLQ, and the retries dedup "
        "dropped; exits 1 when it is in none of the topics. Joins no group, commits nothing.",
        "processor find whd_01HZX3 --uid user_123 --since 2026-11-30T12:00:00Z",
    ),
    "dev": (
        "The whole pipeline in one terminal, for development: the local Kafka, the "
        "topics, the ingress and workers; prints the URL, the secret and commands to "
        "try. Ctrl-C stops everything.",
        "processor dev --workers 3 --port 8090",
    ),
    "broker": ("The local Apache Kafka for development and tests.", "processor broker status"),
}


def _command(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    summary: str,
    **options: object,
) -> argparse.ArgumentParser:
    """A subcommand whose --help says what it does and shows an example."""
    description, example = _COMMANDS[name]
    return commands.add_parser(
        name,
        help=summary,
        description=textwrap.fill(description, width=88),
        epilog=f"example:\n  {example}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        **options,  # type: ignore[arg-type]
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="processor",
        description=_ABOUT,
        epilog=_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"processor {_version()}")
    parser.add_argument(
        "--config",
        default=None,
        type=Path,
        help="configuration file (default: config.yaml here if there is one, else every "
        "setting's default)",
    )
    # `--config` is also taken after the command (`processor worker --config x.yaml`);
    # SUPPRESS keeps a subcommand from resetting a value given before it.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", type=Path, default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    _command(commands, "worker", "route webhooks.raw until SIGTERM", parents=[common]).set_defaults(
        handler=worker
    )
    _command(
        commands, "ingress", "serve POST /webhooks until SIGTERM", parents=[common]
    ).set_defaults(handler=ingress)
    topics = _command(commands, "topics", "the pipeline's topics")
    topics_commands = topics.add_subparsers(dest="action", required=True, metavar="ACTION")
    _command(
        topics_commands,
        "create",
        "create every topic as configured; report those that differ",
        parents=[common],
    ).set_defaults(handler=topics_create)

    replay_parser = _command(
        commands,
        "replay",
        "move DLQ or unrouted records back to the raw topic, each once (resumable)",
        parents=[common],
    )
    replay_parser.add_argument(
        "--from", dest="source", required=True, help="webhooks.dlq or webhooks.unrouted"
    )
    replay_parser.add_argument(
        "--to", dest="target", help="where to write (default: topics.raw, webhooks.raw)"
    )
    replay_parser.add_argument(
        "--delivery-id", action="append", help="only this delivery (repeatable)"
    )
    replay_parser.add_argument("--error-class", help="only DLQ records of this error.class")
    replay_parser.add_argument(
        "--since", type=_moment, help="only deliveries received at or after (ISO 8601)"
    )
    replay_parser.add_argument(
        "--until", type=_moment, help="only deliveries received before (ISO 8601)"
    )
    replay_parser.add_argument("--limit", type=_positive, help="at most this many records")
    replay_parser.add_argument(
        "--dry-run", action="store_true", help="say what would be replayed; write nothing"
    )
    replay_parser.set_defaults(handler=replay)

    schema_parser = _command(
        commands,
        "schema",
        "every topic's value, key and headers as JSON Schema (or AsyncAPI)",
        parents=[common],
    )
    schema_form = schema_parser.add_mutually_exclusive_group()
    schema_form.add_argument(
        "--asyncapi", action="store_true", help="an AsyncAPI 3.0 document (YAML) instead"
    )
    schema_form.add_argument(
        "--check",
        type=Path,
        metavar="FILE",
        help="exit 1 if the contract breaks subscribers of FILE (an earlier `processor schema`)",
    )
    schema_parser.set_defaults(handler=schema)

    tail_parser = _command(
        commands,
        "tail",
        "show a topic's records decoded: the last 10, or more (no consumer group)",
        parents=[common],
    )
    tail_parser.add_argument("topic", metavar="TOPIC")
    start = tail_parser.add_mutually_exclusive_group()
    start.add_argument("--from-beginning", action="store_true", help="every record the topic holds")
    start.add_argument(
        "--last",
        type=_count,
        metavar="N",
        help="the last N records that match (default: 10); with --follow, 0 shows new ones only",
    )
    tail_parser.add_argument("--uid", help="only this user's records (data.uid, else the key)")
    tail_parser.add_argument(
        "--event", help="only these events; a pattern: integration.updated, 'integration.*'"
    )
    tail_parser.add_argument(
        "--follow", "-f", action="store_true", help="then show new records until Ctrl-C"
    )
    tail_parser.add_argument(
        "--json", action="store_true", help="one JSON object per record, value included"
    )
    tail_parser.set_defaults(handler=tail)

    find_parser = _command(
        commands,
        "find",
        "where a delivery is and what happened to it, read from the topics",
        parents=[common],
    )
    find_parser.add_argument("delivery_id", metavar="DELIVERY_ID", help="its `id`, e.g. whd_...")
    find_parser.add_argument(
        "--uid", help="its data.uid: read only the partition that user's records go to (faster)"
    )
    find_parser.add_argument(
        "--since",
        type=_moment,
        metavar="TIME",
        help="read only records from this time on (ISO 8601, e.g. 2026-11-30T12:00:00Z)",
    )
    find_parser.add_argument("--json", action="store_true", help="one JSON object, for scripts")
    find_parser.set_defaults(handler=find)

    dev_parser = _command(
        commands,
        "dev",
        "broker + topics + ingress + workers in one terminal (development)",
        parents=[common],
    )
    dev_parser.add_argument(
        "--workers", type=_positive, default=2, help="worker processes (default: 2)"
    )
    dev_parser.add_argument("--port", type=int, help="ingress port (default: ingress.port, 8080)")
    dev_parser.add_argument(
        "--management-port",
        type=int,
        help="the ingress's /healthz /readyz /metrics port "
        "(default: ingress.management_port, 8081)",
    )
    dev_parser.add_argument(
        "--metrics-port",
        type=int,
        help="worker-1's /healthz /readyz /metrics port, worker-N's N - 1 above "
        f"(default: worker.metrics_port, else {DEFAULT_DEV_METRICS_PORT})",
    )
    dev_parser.add_argument(
        "--kafka-port", type=int, default=9092, help="local broker port (default: %(default)s)"
    )
    dev_parser.add_argument(
        "--dir", type=Path, default=DEFAULT_DEV_DIR, help="broker data dir (default: %(default)s)"
    )
    dev_parser.set_defaults(handler=dev)

    broker = _command(commands, "broker", "the local Apache Kafka for development and tests")
    broker_commands = broker.add_subparsers(dest="action", required=True, metavar="ACTION")
    for name, handler, help_text in (
        ("start", broker_start, "fetch the jars once, start a KRaft node in the background"),
        ("stop", broker_stop, "stop the broker gracefully, then hard after a timeout"),
        ("status", broker_status, "say whether the broker runs (exit 3 when stopped)"),
    ):
        sub = broker_commands.add_parser(name, parents=[common], help=help_text)
        sub.add_argument(
            "--port", type=int, help="client port (default: the dir's last port, else 9092)"
        )
        sub.add_argument(
            "--dir",
            type=Path,
            default=DEFAULT_BROKER_DIR,
            help="broker data dir (default: %(default)s)",
        )
        sub.set_defaults(handler=handler)
    return parser


def _version() -> str:
    try:
        return importlib.metadata.version("processor")
    except importlib.metadata.PackageNotFoundError:  # run from a checkout, not installed
        return "unknown"


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        # An explicit --config must exist; without one, config.yaml here is optional.
        path: Path | None = args.config
        if path is None and DEFAULT_CONFIG.exists():
            path = DEFAULT_CONFIG
        config = load_config(path)
        configure_logging(config.logging)
        if path is None:
            log.debug(
                "config.defaults",
                detail="no --config and no config.yaml here: every setting takes its "
                "default, and the environment's overrides",
            )
        handler: Command = args.handler
        return handler(args, config)
    except ProcessorError as exc:
        print(f"processor: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
