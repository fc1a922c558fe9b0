"""What every process serves over HTTP for orchestrators, on a port of its own (the
ingress's management port, the worker's metrics port), and how a port it cannot bind
is reported.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Final

import structlog
from aiohttp import hdrs, web
from prometheus_client import CollectorRegistry

from processor.errors import ConfigError
from processor.metrics import render

__all__ = [
    "CLOSE_TIMEOUT_S",
    "SERVER",
    "cannot_listen",
    "healthz",
    "hide_versions",
    "probe_routes",
    "serve_probes",
]

log = structlog.get_logger(__name__)

# Probes answer in milliseconds: a request still running at shutdown after this is a
# stuck client, not worth holding the exit for.
REQUEST_GRACE_S: Final = 1.0
# Closing the port, that grace included, never delays the process's exit longer than this.
CLOSE_TIMEOUT_S: Final = 2.0

# What a response says of its server: aiohttp's default names its and Python's exact
# versions to anyone who asks, which helps only someone looking for a known flaw.
SERVER: Final = "processor"


async def _name_server(request: web.Request, response: web.StreamResponse) -> None:
    response.headers[hdrs.SERVER] = SERVER


def hide_versions(app: web.Application) -> None:
    """Every response `app` routes says `Server: processor`, no versions."""
    app.on_response_prepare.append(_name_server)


async def healthz(request: web.Request) -> web.Response:
    """200 while the process's event loop runs: this answer IS the liveness check.

    It is served from the loop that does the work, so a loop that is blocked or wedged
    cannot answer and the orchestrator restarts the process. Kafka is not asked on
    purpose: clients retry an outage themselves, and restarting every process at once
    would not bring the broker back (that is /readyz's news).
    """
    return web.json_response({"status": "ok"})


def probe_routes(registry: CollectorRegistry) -> list[web.RouteDef]:
    """`GET /healthz` and `GET /metrics` (Prometheus text of `registry`)."""

    async def metrics(request: web.Request) -> web.Response:
        body, content_type = render(registry)
        return web.Response(body=body, headers={hdrs.CONTENT_TYPE: content_type})

    return [web.get("/healthz", healthz), web.get("/metrics", metrics)]


@contextlib.asynccontextmanager
async def serve_probes(
    app: web.Application, *, host: str, port: int, setting: str, event: str
) -> AsyncIterator[int]:
    """Serve `app` on host:port while the block runs; yields the bound port (the one the
    OS chose for port 0). Logs `event` once listening. Raises ConfigError naming
    `setting` when the port cannot be bound. Closing takes at most CLOSE_TIMEOUT_S, so
    the port never holds up the process's exit."""
    runner = web.AppRunner(
        app, access_log=None, handle_signals=False, shutdown_timeout=REQUEST_GRACE_S
    )
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise cannot_listen(host, port, exc, setting=setting) from None
    bound = site.port
    log.info(event, host=host, port=bound)
    try:
        yield bound
    finally:
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT_S):
                await runner.cleanup()
        except TimeoutError:
            log.warning("probes.close_timeout", port=bound, timeout_s=CLOSE_TIMEOUT_S)


def cannot_listen(host: str, port: int, exc: OSError, *, setting: str) -> ConfigError:
    """The error for a port that cannot be bound, naming the setting that chose it."""
    variable = "PROCESSOR_" + setting.upper().replace(".", "__")
    return ConfigError(
        f"cannot listen on {host}:{port} ({exc.strerror}): free the port or choose "
        f"another with {setting} / {variable}"
    )
