"""The routing job side by side: the worker against Quix Streams, FastStream, and bare
aiokafka and confluent-kafka loops, on one broker, every output checked.

Each program (`apps/`) reads the same raw topic and routes it by the same rule
(`apps/job.py`, the worker's contract for what these deliveries exercise) into topics
of its own, as a subprocess with the python of its own virtualenv (`make bench-peers`
makes them from `requirements/*.txt`, under `.venvs/`; the worker runs from the
project's .venv):

- `aiokafka`:   bare aiokafka, `getmany` -> route -> one `send_batch` per destination
                partition -> acks -> commit; the baseline of the `x aiokafka` columns;
- `confluent`:  bare confluent-kafka, `consume` -> route -> `produce` -> `flush` -> commit;
- `quix`, `quix-eos`: a Quix Streams Application (StreamingDataFrame, `to_topic` with
                a callable topic), at least once and exactly once;
- `faststream`: a FastStream batch subscriber publishing each record with its key;
- `faststream-batch`: the same, publishing with `publish_batch` per topic as the
                docs advise (which ignores the keys' partitions: see its row);
- `worker`, `worker-eos`: `processor worker` with the default config.yaml (dedup on),
                at least once and exactly once.

All produce with acks=all and idempotence and read up to 2,000 records per fetch (the
worker's `max_batch_records`); each app's docstring says what else it sets and why.

The deliveries are bench_route's (about 480 bytes, keyed by one of 1000 user ids, 88 %
integration events across the statuses and their spellings, 5 % unknown statuses, 6 %
other categories, 1 % malformed), without provider retries: the peers do not dedup,
so every program must write every delivery exactly once. The worker's dedup still
does all of its work (remembers every id, writes its changelog); it suppresses none.

A run: the topics are made (11 outputs x 6 partitions, as `processor topics create`)
and written to a little first (the broker stalls on a new partition's first writes),
the program is started and says `ready` once its imports are done; the clock and its
CPU count start when it is told to go (clients start, join: all counted). The run ends
when its consumer group's committed offsets reach the raw topic's end offsets, polled
every 20 ms (every program commits to Kafka; exactly once commits inside its
transactions, visible once they commit); the program is then sent SIGTERM and must
exit within 30 s. `join s` is until the group is Stable; `rec/s` counts over the time
after the join; `CPU us/rec` is the program's own CPU time (all its threads, so
librdkafka's too; from /proc/<pid>/stat) per record until the end: steadier than
rec/s on a shared machine. `busy %` is the whole machine's CPU use during the run
(the broker, the program, and whatever else runs), of all cores.

Every output record is read back (read_committed) and checked against the deliveries,
whose destinations come from the worker's own router (`processor.routing`): `count`
(records written), `ids` (every valid delivery id exactly once, read from the value),
`topic` (the expected status, unrouted or DLQ topic), `bytes` (the value as loaded),
`key` (`data.uid`; the raw key for the DLQ), `partition` (murmur2 of the key, as the
Java client), `headers` (`delivery-id` on routed records, `error.class` on DLQ ones).
A row's `verified` names every check that failed; the lines after the table say how.

Rounds run every program once, in turn, the order reversed every other round; one
run of `aiokafka` (and of one exactly-once program) goes first and is not counted (a
fresh broker JVM is still compiling its hot paths; the first transaction creates the
transaction log). The summary takes medians over rounds.

Rerun (from the repository root; `make bench-peers` makes the virtualenvs first):

    make bench-peers                                                  # 200,000, 3 rounds
    make bench-peers PEERS_ARGS='--records 20000 --rounds 1'
    .venv/bin/python benchmarks/peers/run.py --programs aiokafka,quix,worker
    .venv/bin/python benchmarks/peers/run.py --bootstrap 127.0.0.1:9092

Topics the benchmark made are deleted at the end; each run's program output goes to
a log file under `--log-dir`, whose path is printed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Final

import msgspec
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.partitioner import murmur2

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench_route, beside us

from bench_route import (
    POLL_S,
    RUN_TIMEOUT_S,
    Bench,
    Deliveries,
    Rates,
    load,
    make_deliveries,
    unique,
)

from processor.config import Config, KafkaConfig, LoggingConfig, TopicsConfig
from processor.devtools.broker import LocalBroker
from processor.kafka.clients import client_options, read_to_end
from processor.kafka.topics import all_topics, create_topics
from processor.logging import configure_logging
from processor.routing import Router

HERE: Final = Path(__file__).resolve().parent
ROOT: Final = HERE.parents[1]
VENVS: Final = HERE / ".venvs"
BASELINE: Final = "aiokafka"
RAW_PARTITIONS: Final = 6
BATCH: Final = 2000  # records per fetch, as the worker's max_batch_records
READY_TIMEOUT_S: Final = 120.0  # a program's imports; Quix's take a few seconds
EXIT_TIMEOUT_S: Final = 30.0  # SIGTERM to exit: a batch, a commit, closing clients
READ_FETCH_BYTES: Final = 8 * 1024 * 1024
CLOCK_TICKS: Final = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True, slots=True)
class Program:
    """A program under test: its virtualenv (None: the project's), script, arguments."""

    venv: str | None
    script: str
    args: tuple[str, ...] = ()
    guarantee: str = "at_least_once"
    client: str = ""  # what it talks to Kafka with, for the table

    @property
    def python(self) -> Path:
        if self.venv is None:
            return ROOT / ".venv" / "bin" / "python"
        return VENVS / self.venv / "bin" / "python"


PROGRAMS: Final[dict[str, Program]] = {
    "aiokafka": Program("aiokafka", "aiokafka_pipe.py", client="aiokafka"),
    "confluent": Program("confluent", "confluent_loop.py", client="librdkafka"),
    "quix": Program("quix", "quix_app.py", client="librdkafka"),
    "quix-eos": Program("quix", "quix_app.py", guarantee="exactly_once", client="librdkafka"),
    "faststream": Program("faststream", "faststream_app.py", client="aiokafka"),
    "faststream-batch": Program(
        "faststream", "faststream_app.py", ("--publish", "batch"), client="aiokafka"
    ),
    "worker": Program(None, "processor_worker.py", client="aiokafka"),
    "worker-eos": Program(None, "processor_worker.py", guarantee="exactly_once", client="aiokafka"),
}
CHECKS: Final = ("count", "ids", "topic", "bytes", "key", "partition", "headers")


# --- what the outputs must hold ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Expected:
    """Where each delivery must end up, by the worker's own router."""

    by_id: dict[str, tuple[str, bytes | None, bytes]]  # valid id -> (kind, key, value)
    dlq: Counter[tuple[bytes | None, bytes | None]]  # (key, value) of the invalid ones
    total: int


class _Raw(msgspec.Struct):
    """The one field the check reads from a delivery: its id."""

    id: str


_ID_DECODER: Final = msgspec.json.Decoder(_Raw)


def delivery_id(value: bytes | None) -> str | None:
    if not value:
        return None
    try:
        return _ID_DECODER.decode(value).id
    except (msgspec.DecodeError, UnicodeDecodeError):
        return None


@dataclass(frozen=True, slots=True)
class _Source:
    """A raw record as processor.routing.Router reads it."""

    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]
    topic: str = "raw"
    partition: int = 0
    offset: int = 0
    timestamp: int = 0


def expected_outputs(deliveries: Deliveries, base: Config) -> Expected:
    """Each delivery's kind of destination: a status, `unrouted` or `dlq`."""
    config = msgspec.structs.replace(
        base, routing=msgspec.structs.replace(base.routing, routes={"integration": "{status}"})
    )
    router = Router(routing=config.routing, topics=config.topics)
    kinds = {config.topics.unrouted: "unrouted", config.topics.dlq: "dlq"}
    by_id: dict[str, tuple[str, bytes | None, bytes]] = {}
    dlq: Counter[tuple[bytes | None, bytes | None]] = Counter()
    for record in deliveries.records:
        routed = router.route(_Source(record.key, record.value, record.headers))
        kind = kinds.get(routed.topic, routed.topic)
        if kind == "dlq" or routed.delivery_id is None:
            dlq[(record.key, record.value)] += 1
        else:
            by_id[routed.delivery_id] = (kind, record.key, record.value or b"")
    return Expected(by_id, dlq, len(deliveries.records))


@lru_cache(maxsize=65_536)
def java_partition(key: bytes, partitions: int) -> int:
    hashed: int = murmur2(key)
    return (hashed & 0x7FFFFFFF) % partitions


@dataclass(slots=True)
class Verdict:
    """How one run's outputs differ from what they must hold; zero everywhere is ok."""

    records: int = 0
    ids: Counter[str] = field(default_factory=Counter)
    wrong_topic: int = 0
    unknown: int = 0  # a non-DLQ record whose id is not a valid delivery's
    bytes_changed: int = 0
    key_changed: int = 0
    misplaced: int = 0  # not in its key's partition
    no_headers: int = 0
    dlq: Counter[tuple[bytes | None, bytes | None]] = field(default_factory=Counter)

    def failed(self, expected: Expected) -> list[str]:
        """The names of the checks that failed, each with what went wrong."""
        found: list[str] = []
        if self.records != expected.total:
            found.append(f"count: wrote {self.records:,} records, expected {expected.total:,}")
        missing = len(expected.by_id.keys() - self.ids.keys())
        repeated = sum(1 for n in self.ids.values() if n > 1)
        if missing or repeated:
            found.append(
                f"ids: {missing:,} valid deliveries missing, {repeated:,} written more than once"
            )
        dlq_missing, dlq_extra = expected.dlq - self.dlq, self.dlq - expected.dlq
        if self.wrong_topic or self.unknown or dlq_missing or dlq_extra:
            found.append(
                f"topic: {self.wrong_topic:,} valid deliveries in the wrong topic, "
                f"{self.unknown:,} records routed that are not valid deliveries, DLQ "
                f"{dlq_missing.total():,} missing and {dlq_extra.total():,} unexpected"
            )
        for name, count, what in (
            ("bytes", self.bytes_changed, "values differ from the bytes loaded"),
            ("key", self.key_changed, "keys are not data.uid"),
            ("partition", self.misplaced, "records are not in their key's murmur2 partition"),
            ("headers", self.no_headers, "records lack delivery-id (routed) or error.class (DLQ)"),
        ):
            if count:
                found.append(f"{name}: {count:,} {what}")
        return found


def check(
    verdict: Verdict, kind: str, partitions: int, records: list[object], expected: Expected
) -> None:
    """Fold one batch of output records of a `kind` of topic into `verdict`."""
    verdict.records += len(records)
    for record in records:
        key, value = record.key, record.value  # type: ignore[attr-defined]
        headers = dict(record.headers)  # type: ignore[attr-defined]
        if key is None or java_partition(key, partitions) != record.partition:  # type: ignore[attr-defined]
            verdict.misplaced += 1
        if kind == "dlq":
            verdict.dlq[(key, value)] += 1
            verdict.no_headers += "error.class" not in headers
            continue
        identifier = delivery_id(value)
        wanted = expected.by_id.get(identifier) if identifier is not None else None
        if identifier is None or wanted is None:
            verdict.unknown += 1
            continue
        verdict.ids[identifier] += 1
        want_kind, want_key, want_value = wanted
        verdict.wrong_topic += want_kind != kind
        verdict.bytes_changed += want_value != value
        verdict.key_changed += want_key != key
        verdict.no_headers += headers.get("delivery-id") != identifier.encode()


# --- one run -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Timing:
    join_s: float
    total_s: float
    cpu_s: float  # the program's, from `go` to the end
    busy: float  # the machine's CPU use during the run, 0 to 1 of all cores
    exit: str  # how the program ended after SIGTERM: 0, another exit code, or killed


@dataclass(frozen=True, slots=True)
class Result(Rates):
    program: str
    round: int
    records: int
    failed: list[str]
    join_s: float
    total_s: float
    cpu_s: float
    busy: float
    exit: str


def cpu_seconds(pid: int) -> float:
    """User + system time of a process, all its threads (/proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def machine_ticks() -> tuple[int, int]:
    """(busy, total) CPU ticks of the whole machine since boot (/proc/stat)."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    total = sum(values[:8])  # guest time is already counted in user
    return total - idle, total


class Peers:
    """Topics, the programs' subprocesses, end detection and read-back for each run."""

    def __init__(self, bench: Bench, expected: Expected, log_dir: Path) -> None:
        self.bench = bench
        self.expected = expected
        self.log_dir = log_dir
        self.reader = AIOKafkaConsumer(
            **client_options(bench.base.kafka),
            enable_auto_commit=False,
            isolation_level="read_committed",
            max_partition_fetch_bytes=READ_FETCH_BYTES,
            fetch_max_bytes=READ_FETCH_BYTES,
        )

    def run_config(self, name: str) -> Config:
        """Output topics, changelog and group of the run's own."""
        base = self.bench.base
        prefix = f"bench.peers.{name}"
        return msgspec.structs.replace(
            base,
            topics=msgspec.structs.replace(
                base.topics,
                unrouted=unique(f"{prefix}.unrouted"),
                dlq=unique(f"{prefix}.dlq"),
                dedup=unique(f"{prefix}.dedup"),
            ),
            routing=msgspec.structs.replace(
                base.routing, routes={"integration": unique(prefix) + ".{status}"}
            ),
            dedup=msgspec.structs.replace(base.dedup, enabled=PROGRAMS[name].venv is None),
            worker=msgspec.structs.replace(base.worker, group_id=unique(prefix)),
        )

    def command(self, name: str, config: Config) -> list[str]:
        program = PROGRAMS[name]
        routes = config.routing.routes["integration"]
        assert isinstance(routes, str)
        command = [
            str(program.python),
            str(HERE / "apps" / program.script),
            *("--bootstrap", config.kafka.bootstrap_servers),
            *("--raw", config.topics.raw),
            *("--group", config.worker.group_id),
            *("--routes", routes),
            *("--unrouted", config.topics.unrouted),
            *("--dlq", config.topics.dlq),
            *("--guarantee", program.guarantee),
            *("--batch", str(BATCH)),
            *program.args,
        ]
        if program.venv is None:
            command += ["--dedup-topic", config.topics.dedup]
        return command

    async def measure(self, name: str, round_: int, ends: dict[TopicPartition, int]) -> Result:
        config = self.run_config(name)
        topics = [t for t in all_topics(config) if t != config.topics.raw]
        await create_topics(config)
        self.bench.created += topics
        before = await self.bench.warm_up(topics)
        # The worker's dedup changelog is its own business: only the outputs are read back.
        outputs = {tp: offset for tp, offset in before.items() if tp.topic != config.topics.dedup}
        timing = await self.run_program(name, round_, config, ends)
        verdict = await self.read_back(config, outputs)
        return Result(
            program=name,
            round=round_,
            records=sum(ends.values()),
            failed=verdict.failed(self.expected),
            **vars(timing),
        )

    async def run_program(
        self, name: str, round_: int, config: Config, ends: dict[TopicPartition, int]
    ) -> Timing:
        """Start the program, tell it to go, time it until its group has committed `ends`,
        stop it."""
        group = config.worker.group_id
        log_path = self.log_dir / f"{name}.round{round_}.log"
        drain: asyncio.Task[None] | None = None
        with log_path.open("wb") as log:
            process = await asyncio.create_subprocess_exec(
                *self.command(name, config),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=log,
                cwd=tempfile.mkdtemp(prefix=f"{name}-", dir=self.log_dir),
                env={k: v for k, v in os.environ.items() if not k.startswith("PROCESSOR_")},
            )
            assert process.stdin is not None
            assert process.stdout is not None
            try:
                async with asyncio.timeout(READY_TIMEOUT_S):
                    line = await process.stdout.readline()
                if line.strip() != b"ready":
                    raise RuntimeError(f"{name} did not start; see {log_path}")
                drain = asyncio.create_task(_copy(process.stdout, log))
                busy0, ticks0 = machine_ticks()
                cpu0 = cpu_seconds(process.pid)
                started = time.perf_counter()
                process.stdin.write(b"go\n")
                await process.stdin.drain()
                alive = _alive(process, log_path)
                joined = await _poll_until(alive, lambda: self.bench.stable(group)) - started
                done = (
                    await _poll_until(alive, lambda: self.bench.committed_all(group, ends))
                    - started
                )
                cpu = cpu_seconds(process.pid) - cpu0
                busy1, ticks1 = machine_ticks()
            finally:
                exit_ = await _stop(process)
                if drain is not None:
                    await drain
        busy = (busy1 - busy0) / max(1, ticks1 - ticks0)
        return Timing(join_s=joined, total_s=done, cpu_s=cpu, busy=busy, exit=exit_)

    async def read_back(self, config: Config, since: dict[TopicPartition, int]) -> Verdict:
        kinds = {config.topics.unrouted: "unrouted", config.topics.dlq: "dlq"}
        template = config.routing.routes["integration"]
        assert isinstance(template, str)
        for status in (*config.routing.statuses, config.routing.other_status):
            kinds[template.format(status=status)] = status
        verdict = Verdict()
        self.reader.assign(list(since))
        for tp, offset in since.items():
            self.reader.seek(tp, offset)
        async for tp, records in read_to_end(self.reader, list(since)):
            check(verdict, kinds[tp.topic], config.topics.partitions, records, self.expected)
        return verdict


def _alive(process: asyncio.subprocess.Process, log_path: Path) -> asyncio.Task[int]:
    task = asyncio.create_task(process.wait())
    task.set_name(str(log_path))
    return task


async def _poll_until(alive: asyncio.Task[int], check: object) -> float:
    """The perf_counter time at which `check()` first held while the program ran."""
    async with asyncio.timeout(RUN_TIMEOUT_S):
        while True:
            if alive.done():
                raise RuntimeError(
                    f"the program exited ({alive.result()}) before it had committed "
                    f"everything; see {alive.get_name()}"
                )
            if await check():  # type: ignore[operator]
                return time.perf_counter()
            await asyncio.sleep(POLL_S)


async def _stop(process: asyncio.subprocess.Process) -> str:
    """SIGTERM, and how the program ended: `0`, another exit code, or `killed`."""
    if process.returncode is None:
        process.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(EXIT_TIMEOUT_S):
                await process.wait()
        except TimeoutError:
            process.kill()
            await process.wait()
            return "killed"
    return str(process.returncode)


async def _copy(source: asyncio.StreamReader, sink: object) -> None:
    while chunk := await source.read(65536):
        sink.write(chunk)  # type: ignore[attr-defined]


# --- reporting -----------------------------------------------------------------------------


def print_results(results: list[Result]) -> None:
    header = (
        f"{'program':<18}{'round':>6}{'join s':>8}{'total s':>9}{'rec/s':>10}"
        f"{'rec/s incl. join':>18}{'CPU us/rec':>12}{'busy %':>8}{'exit':>7}  verified"
    )
    print(f"{header}\n{'-' * (len(header) + 10)}")
    for r in results:
        print(
            f"{r.program:<18}{r.round:>6}{r.join_s:>8.2f}{r.total_s:>9.2f}{r.rate:>10,.0f}"
            f"{r.rate_with_join:>18,.0f}{r.cpu_us_per_record:>12.1f}{r.busy * 100:>8.0f}"
            f"{r.exit:>7}  {_verified(r)}"
        )
    names = list(dict.fromkeys(r.program for r in results))

    def median(name: str, metric: str) -> float:
        return float(statistics.median(getattr(r, metric) for r in results if r.program == name))

    rates = {name: median(name, "rate") for name in names}
    cpus = {name: median(name, "cpu_us_per_record") for name in names}
    header = (
        f"{'median over rounds':<18}{'client':>12}{'rec/s':>10}{'rec/s incl. join':>18}"
        f"{'CPU us/rec':>12}{'rec/s x ' + BASELINE:>18}{'CPU x ' + BASELINE:>16}  verified"
    )
    print(f"\n{header}\n{'-' * (len(header) + 10)}")
    for name in names:
        failed = sorted({c for r in results if r.program == name for c in _failed_checks(r)})
        print(
            f"{name:<18}{PROGRAMS[name].client:>12}{rates[name]:>10,.0f}"
            f"{median(name, 'rate_with_join'):>18,.0f}{cpus[name]:>12.1f}"
            f"{_ratio(rates, name):>18}{_ratio(cpus, name):>16}"
            f"  {'ok' if not failed else 'FAILED ' + ', '.join(failed)}"
        )
    for r in results:
        for problem in r.failed:
            print(f"! {r.program} round {r.round}: {problem}")
        if r.exit != "0":
            print(f"! {r.program} round {r.round}: exited {r.exit} after SIGTERM")


def _ratio(values: dict[str, float], name: str) -> str:
    base = values.get(BASELINE)
    return f"{values[name] / base:.2f}" if base else "-"


def _failed_checks(result: Result) -> list[str]:
    return [problem.split(":", 1)[0] for problem in result.failed]


def _verified(result: Result) -> str:
    failed = _failed_checks(result)
    return "ok" if not failed else "FAILED " + ", ".join(failed)


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f} on {os.cpu_count()} CPUs"


# --- main ----------------------------------------------------------------------------------


async def bench(args: argparse.Namespace, bootstrap: str) -> None:
    base = msgspec.structs.replace(
        Config(),
        kafka=KafkaConfig(bootstrap_servers=bootstrap),
        topics=TopicsConfig(raw=unique("bench.peers.raw"), partitions=RAW_PARTITIONS),
    )
    bench_ = Bench(base)
    try:
        await bench_.start()
        deliveries = make_deliveries(base.topics.raw, args.records, args.seed, retries=0.0)
        await load(base, deliveries)
        ends = await bench_.end_offsets([base.topics.raw])
        peers = Peers(bench_, expected_outputs(deliveries, base), args.log_dir)
        await peers.reader.start()
        try:
            warm_ups = [BASELINE] if BASELINE in args.programs else args.programs[:1]
            warm_ups += [p for p in args.programs if PROGRAMS[p].guarantee == "exactly_once"][:1]
            for name in warm_ups:
                result = await peers.measure(name, 0, ends)
                print(f"  warm-up run, not counted: {name} {result.rate:,.0f} rec/s", flush=True)
            results: list[Result] = []
            for round_ in range(1, args.rounds + 1):
                print(f"round {round_}: {load_average()}", flush=True)
                order = args.programs if round_ % 2 else args.programs[::-1]
                for name in order:
                    r = await peers.measure(name, round_, ends)
                    results.append(r)
                    print(
                        f"  {name}: {r.rate:,.0f} rec/s, {r.cpu_us_per_record:.1f} CPU us/rec, "
                        f"machine {r.busy * 100:.0f} % busy, {_verified(r)}",
                        flush=True,
                    )
            print(f"after the rounds: {load_average()}\n")
            if results:
                print_results(results)
        finally:
            await peers.reader.stop()
    finally:
        await bench_.close()


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=200_000, help="deliveries to load")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each program")
    parser.add_argument(
        "--programs",
        default=",".join(PROGRAMS),
        help=f"comma-separated subset of: {', '.join(PROGRAMS)}",
    )
    parser.add_argument("--bootstrap", help="HOST:PORT of a Kafka to use instead of starting one")
    parser.add_argument("--seed", type=int, default=1, help="seed of the generated deliveries")
    parser.add_argument("--log-dir", type=Path, help="where each run's program output goes")
    args = parser.parse_args()
    if args.records <= 0 or args.rounds < 0:
        parser.error("--records must be positive and --rounds not negative")
    args.programs = list(dict.fromkeys(p.strip() for p in args.programs.split(",") if p.strip()))
    unknown = [p for p in args.programs if p not in PROGRAMS]
    if unknown or not args.programs:
        parser.error(f"--programs takes names from: {', '.join(PROGRAMS)}; not {unknown}")
    missing = sorted({str(PROGRAMS[p].python) for p in args.programs} - _existing())
    if missing:
        parser.error(f"no python at {', '.join(missing)}: run `make bench-peers` first")
    if args.log_dir is None:
        args.log_dir = Path(tempfile.mkdtemp(prefix="bench-peers-"))
    args.log_dir.mkdir(parents=True, exist_ok=True)
    return args


def _existing() -> set[str]:
    return {str(PROGRAMS[p].python) for p in PROGRAMS if PROGRAMS[p].python.exists()}


def main() -> None:
    args = parse_args()
    print(f"{load_average()}; logs in {args.log_dir}", flush=True)
    with (args.log_dir / "run.log").open("w") as log, contextlib.ExitStack() as stack:
        # The clients' own warnings (a topic not in the metadata yet, just after it was
        # made) go to a file, so that the terminal shows only the results.
        configure_logging(LoggingConfig(level="WARNING", format="json"), stream=log)
        bootstrap = args.bootstrap or stack.enter_context(LocalBroker.temporary()).bootstrap
        asyncio.run(bench(args, bootstrap))


if __name__ == "__main__":
    main()
