"""What every process serves over HTTP for orchestrators, and how a port it cannot bind
is reported. Used by the ingress's port and the worker's metrics port alike.
"""

from __future__ import annotations

from typing import Final

from aiohttp import hdrs, web
from prometheus_client import CollectorRegistry

from processor.errors import ConfigError
from processor.metrics import render

__all__ = ["SERVER", "cannot_listen", "hide_versions", "probe_routes"]

# What a response says of its server: aiohttp's default names its and Python's exact
# versions to anyone who asks, which helps only someone looking for a known flaw.
SERVER: Final = "processor"


async def _name_server(request: web.Request, response: web.StreamResponse) -> None:
    response.headers[hdrs.SERVER] = SERVER


def hide_versions(app: web.Application) -> None:
    """Every response `app` routes says `Server: processor`, no versions."""
    app.on_response_prepare.append(_name_server)


def probe_routes(registry: CollectorRegistry) -> list[web.RouteDef]:
    """`GET /healthz` and `GET /metrics` (Prometheus text of `registry`)."""

    async def healthz(request: web.Request) -> web.Response:
        """200 while the process's event loop runs: this answer IS the liveness check.

        It is served from the loop that does the work, so a loop that is blocked or
        wedged cannot answer and the orchestrator restarts the process. Kafka is not
        asked on purpose: clients retry an outage themselves, and restarting every
        process at once would not bring the broker back (that is /readyz's news).
        """
        return web.json_response({"status": "ok"})

    async def metrics(request: web.Request) -> web.Response:
        body, content_type = render(registry)
        return web.Response(body=body, headers={hdrs.CONTENT_TYPE: content_type})

    return [web.get("/healthz", healthz), web.get("/metrics", metrics)]


def cannot_listen(host: str, port: int, exc: OSError, *, setting: str) -> ConfigError:
    """The error for a port that cannot be bound, naming the setting that chose it."""
    variable = "PROCESSOR_" + setting.upper().replace(".", "__")
    return ConfigError(
        f"cannot listen on {host}:{port} ({exc.strerror}): free the port or choose "
        f"another with {setting} / {variable}"
    )
