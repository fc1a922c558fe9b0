"""What every process serves over HTTP for orchestrators, and how a port it cannot bind
is reported. Used by the ingress's port and the worker's metrics port alike.
"""

from __future__ import annotations

from aiohttp import hdrs, web
from prometheus_client import CollectorRegistry

from processor.errors import ConfigError
from processor.metrics import render

__all__ = ["cannot_listen", "probe_routes"]


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
