"""Ingress throughput and latency, next to bare aiohttp handlers on the same stack.

    .venv/bin/python benchmarks/bench_ingress.py [--bootstrap 127.0.0.1:9092] \\
        [--duration 10 --concurrency 64 --rounds 3 --partitions 6 --client auto|wrk|python]

Without --bootstrap it starts a local broker (processor.devtools) for the run.

Each server runs in a process of its own and the load comes from another: `wrk` (one
thread) when it is on PATH, else an aiohttp client pool. Every server gets the same
signed deliveries (~0.5 KiB, the spec's example payload) at the same concurrency:

- `bare`: an aiohttp handler that reads the body and answers 202, nothing else;
- `bare+log`: the same, plus aiohttp's access log through `configure_logging` (JSON),
  i.e. the bare stack with the one log line per request that any deployment keeps;
- `ingress`: `run_ingress` itself, as configured by default: verify, decode, produce
  with acks=all and the idempotent producer, 202 after the acknowledgement; refusals
  logged, accepted deliveries counted in its metrics, not logged;
- `ingress+log`: the same with `ingress.log_accepted`: one JSON line per accepted delivery.

Logs go to /dev/null. Rounds interleave the servers and the median round is shown.
Besides req/s and latency it prints the server process's CPU time per request, read
from /proc: on a small or shared machine the load generator, the broker and whatever
else runs compete for the cores, and CPU per request is the figure that noise moves
least. The target is ingress >= 0.6x bare's req/s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from aiohttp import web
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from harness import cpu_seconds

from processor.config import Config, IngressConfig, KafkaConfig, LoggingConfig, TopicsConfig
from processor.devtools.broker import LocalBroker
from processor.devtools.ports import free_port
from processor.ingress.app import run_ingress
from processor.ingress.signing import sign_hmac_sha256
from processor.logging import configure_logging

SECRET = "benchmark-signing-secret"  # noqa: S105 (signs synthetic deliveries only)
SERVERS = ("bare", "bare+log", "ingress", "ingress+log")
# Distinct deliveries cycled through by the load generator.
POOL = 5_000
# Connections opened, producer metadata fetched, caches warm before measuring.
WARMUP_S = 2

# Each request takes the next of a pool of signed deliveries (a file of
# "signature<TAB>body" lines); bench_soak's script builds on this part.
WRK_POOL = """
local requests, next = {}, 0
local function load_pool(path)
  for line in io.lines(path) do
    local signature, body = line:match("^(%x+)\\t(.*)$")
    requests[#requests + 1] = wrk.format("POST", nil,
      {["Content-Type"] = "application/json", ["X-Webhook-Signature"] = signature}, body)
  end
end
function request()
  next = next % #requests + 1
  return requests[next]
end
"""

WRK_SCRIPT = (
    WRK_POOL
    + """
function init(args)
  load_pool(args[1])
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("RESULT %d %d %d %d %d\\n", summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(99),
    e.connect + e.read + e.write + e.status + e.timeout))
end
"""
)


@dataclass(frozen=True)
class Result:
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    failures: int
    cpu_us_per_request: float = float("nan")

    @property
    def per_second(self) -> float:
        return self.requests / self.seconds


def delivery(n: int) -> bytes:
    """The spec's example integration event, with a unique id."""
    return json.dumps(
        {
            "id": f"whd_{n:08d}",
            "event": "integration.updated",
            "timestamp": "2025-02-19T12:00:00.000Z",
            "data": {
                "uid": f"user_{n % 997}",
                "provider": "binance",
                "providerPublicName": "Binance",
                "publicAddress": None,
                "walletId": f"wallet_{n}",
                "logoUrl": "https://storage.googleapis.com/kryptos-public/logos/binance.png",
                "isContract": False,
                "alias": "Main Trading Account",
                "status": "active",
                "addedOn": 1640995200000,
                "lastSyncedAt": 1672531200000,
                "category": "exchange",
                "type": "api",
                "totalTransactions": n,
            },
        },
        separators=(",", ":"),
    ).encode()


# --- servers (each in a child process: `--serve NAME`) ----------------------------------


def quiet_json_logs() -> None:
    """Render every log line as production would, into /dev/null."""
    devnull = open(os.devnull, "w")  # noqa: SIM115 (lives as long as the process)
    configure_logging(LoggingConfig(level="INFO", format="json"), stream=devnull)


async def serve_ingress(args: argparse.Namespace, *, log_accepted: bool) -> None:
    quiet_json_logs()
    await run_ingress(
        Config(
            kafka=KafkaConfig(bootstrap_servers=args.bootstrap),
            topics=TopicsConfig(raw=args.topic),
            ingress=IngressConfig(port=args.port, secrets=(SECRET,), log_accepted=log_accepted),
        )
    )


async def serve_bare(args: argparse.Namespace, *, access_log: bool) -> None:
    async def accept(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(status=202, body=b'{"id":"x"}', content_type="application/json")

    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.add_routes([web.post("/webhooks", accept), web.get("/healthz", healthz)])
    if access_log:
        quiet_json_logs()
        runner = web.AppRunner(app, handle_signals=False)  # aiohttp's default access log
    else:
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", args.port).start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await runner.cleanup()


# --- load generators ----------------------------------------------------------------------


async def load_with_wrk(url: str, pool: Path, seconds: float, concurrency: int) -> Result:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(WRK_SCRIPT)
    try:
        process = await asyncio.create_subprocess_exec(
            "wrk", "-t1", f"-c{concurrency}", f"-d{seconds:.0f}s", "--timeout", "30s",
            "-s", script.name, url, "--", str(pool),
            stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        output, _ = await process.communicate()
    finally:
        os.unlink(script.name)
    line = next(ln for ln in output.decode().splitlines() if ln.startswith("RESULT"))
    done, duration_us, p50_us, p99_us, failures = map(int, line.split()[1:])
    return Result(done, duration_us / 1e6, p50_us / 1e3, p99_us / 1e3, failures)


async def load_with_python(
    url: str, bodies: list[tuple[bytes, str]], seconds: float, concurrency: int
) -> Result:
    latencies: list[float] = []
    failures = 0
    issued = 0
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        deadline = time.perf_counter() + seconds

        async def worker() -> None:
            nonlocal failures, issued
            while time.perf_counter() < deadline:
                body, signature = bodies[issued % len(bodies)]
                issued += 1
                headers = {"Content-Type": "application/json", "X-Webhook-Signature": signature}
                started = time.perf_counter()
                async with session.post(url, data=body, headers=headers) as response:
                    await response.read()
                    failures += response.status != 202
                latencies.append(time.perf_counter() - started)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        seconds = time.perf_counter() - started
    cuts = statistics.quantiles(latencies, n=100)
    return Result(len(latencies), seconds, cuts[49] * 1e3, cuts[98] * 1e3, failures)


# --- the run ------------------------------------------------------------------------------


async def measure(
    name: str, args: argparse.Namespace, bodies: list[tuple[bytes, str]]
) -> tuple[Result, int]:
    """One measured run, and how many 202s the server gave in all (warm-up included)."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server_args = ["--serve", name, "--port", str(port)]
    server_args += ["--bootstrap", args.bootstrap, "--topic", args.topic]
    server = await asyncio.create_subprocess_exec(sys.executable, __file__, *server_args)
    try:
        await wait_until_up(base, server)
        warmup = await load(args, f"{base}/webhooks", bodies, WARMUP_S)
        cpu_before = cpu_seconds(server.pid)
        result = await load(args, f"{base}/webhooks", bodies, args.duration)
        cpu_us = (cpu_seconds(server.pid) - cpu_before) / max(result.requests, 1) * 1e6
    finally:
        server.send_signal(signal.SIGTERM)
        if await asyncio.wait_for(server.wait(), 30) != 0:
            print(f"warning: the {name} server exited with {server.returncode}", file=sys.stderr)
    accepted = warmup.requests - warmup.failures + result.requests - result.failures
    return Result(**{**result.__dict__, "cpu_us_per_request": cpu_us}), accepted


async def load(
    args: argparse.Namespace, url: str, bodies: list[tuple[bytes, str]], seconds: float
) -> Result:
    if args.client == "wrk":
        return await load_with_wrk(url, args.pool_file, seconds, args.concurrency)
    return await load_with_python(url, bodies, seconds, args.concurrency)


async def wait_until_up(base: str, server: asyncio.subprocess.Process) -> None:
    async with aiohttp.ClientSession() as session, asyncio.timeout(60):
        while server.returncode is None:
            try:
                async with session.get(f"{base}/healthz") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(0.1)
    raise SystemExit(f"the server on {base} exited with {server.returncode} before serving")


async def records_in(bootstrap: str, topic: str, partitions: int) -> int:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        ends = await consumer.end_offsets([TopicPartition(topic, p) for p in range(partitions)])
    finally:
        await consumer.stop()
    return sum(ends.values())


async def benchmark(args: argparse.Namespace) -> None:
    args.topic = f"bench.raw.{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=args.bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(args.topic, args.partitions, 1)])
    finally:
        await admin.close()

    raw = [delivery(n) for n in range(POOL)]
    bodies = [(body, sign_hmac_sha256(body, SECRET)) for body in raw]
    with tempfile.NamedTemporaryFile("w", suffix=".tsv", delete=False) as pool_file:
        pool_file.writelines(f"{sig}\t{body.decode()}\n" for body, sig in bodies)
    args.pool_file = Path(pool_file.name)
    rounds: dict[str, list[Result]] = {name: [] for name in SERVERS}
    accepted = 0
    try:
        for _ in range(args.rounds):
            for name in SERVERS:
                result, answered = await measure(name, args, bodies)
                rounds[name].append(result)
                accepted += answered if name.startswith("ingress") else 0
    finally:
        args.pool_file.unlink()
    stored = await records_in(args.bootstrap, args.topic, args.partitions)

    size = statistics.mean(len(body) for body in raw)
    print(
        f"signed deliveries of ~{size:.0f} B, {args.duration:.0f} s per server and round, "
        f"median of {args.rounds} round(s), concurrency {args.concurrency}, load from "
        f"{args.client}, {args.partitions} partitions, acks=all"
    )
    print(f"{'':11} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'non-202':>8} {'CPU us/req':>11}")
    median: dict[str, Result] = {}
    for name, results in rounds.items():
        median[name] = r = sorted(results, key=lambda r: r.per_second)[len(results) // 2]
        print(
            f"{name:11} {r.per_second:8.0f} {r.p50_ms:7.2f} {r.p99_ms:7.2f} {r.failures:8d} "
            f"{r.cpu_us_per_request:11.0f}"
        )
    for name, base in (("ingress", "bare"), ("ingress+log", "bare+log")):
        print(
            f"{name} / {base}: req/s {median[name].per_second / median[base].per_second:.2f}, "
            f"CPU/req {median[name].cpu_us_per_request / median[base].cpu_us_per_request:.2f}"
        )
    print(
        "ingress / bare req/s, the target: "
        f"{median['ingress'].per_second / median['bare'].per_second:.2f} (>= 0.60)"
    )
    # The load stops with requests in flight: those may be stored without being counted.
    print(
        f"records in {args.topic}: {stored}; answered 202 by the ingress: {accepted} "
        f"(+ up to {args.concurrency} in flight whenever a load stopped)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--bootstrap", help="Kafka bootstrap servers (default: start a local broker for the run)"
    )
    parser.add_argument("--duration", type=float, default=10, help="seconds per server, round")
    parser.add_argument("--concurrency", type=int, default=64, help="requests in flight")
    parser.add_argument("--rounds", type=int, default=1, help="interleaved runs of each server")
    parser.add_argument("--partitions", type=int, default=6, help="of the benchmark topic")
    parser.add_argument(
        "--client",
        choices=["auto", "wrk", "python"],
        default="auto",
        help="load generator; auto = wrk when installed",
    )
    parser.add_argument("--serve", choices=SERVERS, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--topic", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve in ("ingress", "ingress+log"):
        asyncio.run(serve_ingress(args, log_accepted=args.serve == "ingress+log"))
    elif args.serve is not None:
        asyncio.run(serve_bare(args, access_log=args.serve == "bare+log"))
    else:
        if args.client == "auto":
            args.client = "wrk" if shutil.which("wrk") else "python"
        if args.bootstrap is not None:
            asyncio.run(benchmark(args))
            return
        with LocalBroker.temporary() as broker:
            args.bootstrap = broker.bootstrap
            asyncio.run(benchmark(args))


if __name__ == "__main__":
    main()
