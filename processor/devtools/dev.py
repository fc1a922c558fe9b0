"""`processor dev`: the whole pipeline on one machine, in one terminal.

Starts (or reuses) the local Kafka broker, creates the topics, then runs the
ingress and N workers as child processes, exactly the commands production runs,
with their output prefixed by process name. Ctrl-C (or SIGTERM) stops the
children gracefully, then the broker it started; a child that dies on its own is
reported and brings the rest down, so a broken pipeline never looks healthy.

One `processor dev` per broker directory: a second is refused before it starts
anything (its workers, of the same static group members, would take over the first
one's), as is one whose ingress or worker ports are taken. "pipeline is up" is said
once every child has said it listens on its own port and answers /readyz there.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import secrets
import shlex
import shutil
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import msgspec

from processor.config import Config
from processor.devtools.broker import LocalBroker
from processor.devtools.ports import port_in_use
from processor.errors import DevConflict
from processor.kafka.topics import all_topics, create_topics
from processor.shutdown import stop_on_signals

__all__ = ["DevOptions", "run_dev", "stop_processes"]

# Every child needs a moment to import, connect and bind; a slower start is a failure.
READY_TIMEOUT_S = 60.0
# Children get this long after SIGTERM (their own bounded shutdowns fit in it).
CHILD_STOP_TIMEOUT_S = 45.0
EXAMPLE_BODY = (
    b'{"id":"whd_dev000001","event":"integration.updated",'
    b'"timestamp":"2025-02-19T12:00:00.000Z","data":{"uid":"user_123",'
    b'"provider":"binance","status":"COMPLETED"}}'
)


@dataclass(frozen=True, kw_only=True)
class DevOptions:
    config_path: Path | None  # None: the defaults, as this `processor dev` runs with
    workers: int
    ingress_port: int
    management_port: int  # the ingress's /healthz /readyz /metrics
    metrics_port: int  # worker-1's /healthz /readyz /metrics; worker-N's is N - 1 above
    kafka_port: int
    broker_dir: Path


@dataclass
class _Child:
    name: str
    process: asyncio.subprocess.Process
    url: str  # where it answers /readyz (the ingress: its management port)
    listening: asyncio.Event = field(default_factory=asyncio.Event)  # it said so itself
    pump: asyncio.Task[None] | None = None


def run_dev(config: Config, options: DevOptions) -> int:
    """Run until Ctrl-C or a child's death; returns the exit code for the shell.

    Raises DevConflict, before starting anything, when another `processor dev` runs
    from the same directory or a port this one needs is taken. The broker is started
    here, on the main thread, before the event loop: its JVM is tied to this process
    (it gets SIGTERM if we die), and a Ctrl-C during its start-up still stops it.
    """
    with _the_only_dev(options.broker_dir):
        _check_ports(config, options)
        # Only an explicit KAFKA_BOOTSTRAP_SERVERS means "use that cluster, start none":
        # config.yaml's default address would otherwise stop dev from starting its broker.
        if bootstrap := os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
            _say(f"using the Kafka at {bootstrap} (KAFKA_BOOTSTRAP_SERVERS)")
            return asyncio.run(_run_pipeline(config, options, bootstrap))
        broker = LocalBroker(
            directory=options.broker_dir,
            port=options.kafka_port,
            tie_to_parent=True,
            port_option="--kafka-port",
        )
        if (status := broker.status()).bootstrap is not None:
            _say(f"using the broker already running from {options.broker_dir}: {status}")
            return asyncio.run(_run_pipeline(config, options, status.bootstrap))
        _say(f"starting Kafka on 127.0.0.1:{options.kafka_port} (data in {options.broker_dir})")
        try:
            bootstrap = broker.start()
            return asyncio.run(_run_pipeline(config, options, bootstrap))
        finally:
            _say("stopping Kafka")
            broker.stop()


@contextlib.contextmanager
def _the_only_dev(directory: Path) -> Iterator[None]:
    """Hold `directory`'s dev.lock for as long as this `processor dev` runs; the kernel
    lets go of it when the process ends, however it ends."""
    directory.mkdir(parents=True, exist_ok=True)
    with (directory / "dev.lock").open("a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            pid = lock.read().strip() or "?"
            raise DevConflict(
                f"another processor dev (pid {pid}) is running from {directory}: use that "
                "one, or stop it (Ctrl-C in its terminal) first; two at once need their own "
                "--dir, --port, --management-port, --metrics-port and --kafka-port"
            ) from None
        lock.truncate(0)
        lock.write(f"{os.getpid()}\n")
        lock.flush()
        yield


def _check_ports(config: Config, options: DevOptions) -> None:
    wanted = [
        (config.ingress.host, options.ingress_port, "the ingress", "--port"),
        (
            config.ingress.management_host,
            options.management_port,
            "the ingress's probes",
            "--management-port",
        ),
    ]
    wanted += [
        (config.worker.metrics_host, port, f"worker-{index}'s metrics", "--metrics-port")
        for index, port in _worker_ports(options)
    ]
    users: dict[int, str] = {}
    for _, port, user, option in wanted:
        if (first := users.setdefault(port, user)) != user:
            raise DevConflict(
                f"port {port} is asked for twice, for {first} and for {user}: pick another "
                f"with {option}"
            )
    for host, port, user, option in wanted:
        if port_in_use(port, host):
            raise DevConflict(
                f"{host}:{port}, for {user}, is already taken (by another processor dev, or "
                f"another server): stop what listens there, or pick another with {option}"
            )


def _worker_ports(options: DevOptions) -> list[tuple[int, int]]:
    return [(index, options.metrics_port + index - 1) for index in range(1, options.workers + 1)]


async def _run_pipeline(config: Config, options: DevOptions, bootstrap: str) -> int:
    stop = asyncio.Event()
    with stop_on_signals(stop):
        return await _run_children(config, options, bootstrap, stop)


async def _run_children(
    config: Config, options: DevOptions, bootstrap: str, stop: asyncio.Event
) -> int:
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "PROCESSOR_INGRESS__PORT": str(options.ingress_port),
        "PROCESSOR_INGRESS__MANAGEMENT_PORT": str(options.management_port),
        "PROCESSOR_LOGGING__FORMAT": "console",
    }
    generated: str | None = None
    if not config.ingress.secrets:
        generated = env["WEBHOOK_SECRET"] = secrets.token_hex(24)
        _say("WEBHOOK_SECRET is not set: generated one for this run (development only)")
    config = msgspec.structs.replace(
        config,
        kafka=msgspec.structs.replace(config.kafka, bootstrap_servers=bootstrap),
        ingress=msgspec.structs.replace(
            config.ingress, port=options.ingress_port, management_port=options.management_port
        ),
    )
    await create_topics(config)

    command = [sys.executable, "-m", "processor.cli"]
    if options.config_path is not None:
        command += ["--config", str(options.config_path)]
    probes = f"http://{config.ingress.management_host}:{config.ingress.management_port}"
    children = [await _spawn("ingress", [*command, "ingress"], env, url=probes)]
    try:
        for index, port in _worker_ports(options):
            worker_env = env | _member(config, index)
            worker_env["PROCESSOR_WORKER__METRICS_PORT"] = str(port)
            worker_url = f"http://{config.worker.metrics_host}:{port}"
            children.append(
                await _spawn(f"worker-{index}", [*command, "worker"], worker_env, url=worker_url)
            )
        try:
            await _wait_ready(children, stop)
        except TimeoutError:
            _say(f"the pipeline was not ready within {READY_TIMEOUT_S:.0f} s; see the output above")
            return 1
        if not stop.is_set() and all(c.process.returncode is None for c in children):
            _say(_banner(config, options, children=children, generated=generated))
        return await _supervise(children, stop)
    finally:
        await _stop_children(children)


def _member(config: Config, index: int) -> dict[str, str]:
    """A static group member per worker, so a restarted `processor dev` (or a worker it
    restarts) takes its partitions back at once instead of after session_timeout_ms."""
    base = config.worker.group_instance_id or "dev-worker"
    return {"PROCESSOR_WORKER__GROUP_INSTANCE_ID": f"{base}-{index}"}


def _say(message: str) -> None:
    print(f"{'dev':>9} | {message}", flush=True)


async def _spawn(name: str, argv: list[str], env: dict[str, str], *, url: str) -> _Child:
    process = await asyncio.create_subprocess_exec(
        *argv,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        # A log line longer than the reader's buffer would stop the prefixing (and then
        # the child, blocked on a full pipe); no line of ours comes near 1 MiB.
        limit=1 << 20,
        # Own process group: Ctrl-C reaches only us, and we stop children in order.
        start_new_session=True,
    )
    child = _Child(name, process, url)
    child.pump = asyncio.create_task(_prefix(child))
    return child


# What a child logs once it holds its port: an answer there is then its own.
_LISTENING = ("ingress.started", "worker.metrics_listening")


async def _prefix(child: _Child) -> None:
    assert child.process.stdout is not None
    async for line in child.process.stdout:
        text = line.decode(errors="replace")
        if any(event in text for event in _LISTENING):
            child.listening.set()
        sys.stdout.write(f"{child.name:>9} | {text}")
        sys.stdout.flush()


async def _wait_ready(children: list[_Child], stop: asyncio.Event) -> None:
    """Until every child has said it listens and answers /readyz there with 200 (the
    ingress: Kafka reachable, raw topic there; a worker: in the group, writes going)."""
    async with aiohttp.ClientSession() as session, asyncio.timeout(READY_TIMEOUT_S):
        for child in children:
            while not stop.is_set() and all(c.process.returncode is None for c in children):
                if child.listening.is_set():
                    with contextlib.suppress(aiohttp.ClientError):
                        async with session.get(f"{child.url}/readyz") as response:
                            if response.status == 200:
                                break
                await asyncio.sleep(0.2)


async def _supervise(children: list[_Child], stop: asyncio.Event) -> int:
    waits = {asyncio.create_task(c.process.wait()): c for c in children}
    stopping = asyncio.create_task(stop.wait())
    try:
        done, _ = await asyncio.wait([stopping, *waits], return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in [stopping, *waits]:
            task.cancel()
    if stopping in done:
        _say("stopping: interrupted (Ctrl-C or SIGTERM)")
        return 0
    dead = next(waits[t] for t in done if t in waits)
    _say(f"{dead.name} exited with code {dead.process.returncode}; stopping the rest")
    return 1


async def _stop_children(children: list[_Child]) -> None:
    await stop_processes([(child.name, child.process) for child in children])
    for child in children:
        if child.pump is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await child.pump


async def stop_processes(
    processes: Sequence[tuple[str, asyncio.subprocess.Process]],
    *,
    say: Callable[[str], None] = _say,
) -> None:
    """SIGTERM to every named process still running, all at once so that they stop
    together; then each gets CHILD_STOP_TIMEOUT_S to exit before it is killed."""
    for _, process in processes:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
    for name, process in processes:
        try:
            async with asyncio.timeout(CHILD_STOP_TIMEOUT_S):
                await process.wait()
        except TimeoutError:
            say(f"{name} ignored SIGTERM for {CHILD_STOP_TIMEOUT_S:.0f} s; killing it")
            process.kill()
            await process.wait()


def _banner(
    config: Config, options: DevOptions, *, children: list[_Child], generated: str | None
) -> str:
    route = config.routing.resolved().get("integration")
    watched = route.topic.format(status="completed") if route else config.topics.unrouted
    bootstrap = config.kafka.bootstrap_servers
    ingress, *workers = children
    body = EXAMPLE_BODY.decode()
    export = f"\n      export WEBHOOK_SECRET={generated}" if generated else ""
    topics = "\n".join(f"      {topic}" for topic in all_topics(config))
    worker_urls = "\n".join(f"      {w.name}: {w.url}   /healthz /readyz /metrics" for w in workers)
    public = f"http://{config.ingress.host}:{config.ingress.port}"
    return f"""pipeline is up
    ingress:  POST {public}{config.ingress.path}
              {ingress.url}   /healthz /readyz /metrics
    workers:
{worker_urls}
    kafka:    {bootstrap}
    secret:   {"WEBHOOK_SECRET=" + generated if generated else "yours, from WEBHOOK_SECRET"}
    topics:
{topics}

    send a signed delivery:{export}
      BODY='{body}'
      SIG=$(printf '%s' "$BODY" | openssl dgst -sha256 -hmac "$WEBHOOK_SECRET" | sed 's/^.* //')
      curl -i {public}{config.ingress.path} -H 'Content-Type: application/json' \\
           -H "X-Webhook-Signature: $SIG" --data-binary "$BODY"

    watch where it lands:
      {_processor_command(options, bootstrap)} tail {watched} --follow

    Ctrl-C stops everything."""


def _processor_command(options: DevOptions, bootstrap: str) -> str:
    """`processor` as a shell where this dev was started runs it: by name when it is
    on PATH, else by its path (.venv/bin/processor), with this pipeline's Kafka."""
    script = Path(sys.executable).with_name("processor")
    on_path = shutil.which("processor")
    if on_path is not None and Path(on_path).resolve() == script.resolve():
        command = "processor"
    elif script.exists():
        command = os.path.relpath(script) if script.is_relative_to(Path.cwd()) else str(script)
    else:
        command = f"{sys.executable} -m processor.cli"
    if options.config_path is not None:
        command += f" --config {shlex.quote(str(options.config_path))}"
    return f"KAFKA_BOOTSTRAP_SERVERS={bootstrap} {command}"
