"""The worker's HTTP port: `GET /healthz` for a liveness probe, `GET /readyz` (503 while the
worker cannot route: Kafka away, its writes or commits failing, partitions held by the
DLQ breaker), `GET /metrics` for Prometheus.

Only served when `worker.metrics_port` is set: a worker needs no HTTP to do its job,
and workers sharing a laptop would fight over one port.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from aiohttp import web

from processor.http_probes import CLOSE_TIMEOUT_S, hide_versions, probe_routes, serve_probes
from processor.metrics import WorkerMetrics

__all__ = ["CLOSE_TIMEOUT_S", "Unready", "create_app", "serve_health_and_metrics"]


@dataclass(frozen=True)
class Unready:
    """Why the worker cannot do its job now: the body of /readyz's 503."""

    error: str
    detail: str
    partitions: tuple[str, ...] = ()  # the partitions concerned, when not all


def _ready() -> Unready | None:
    return None


def create_app(
    metrics: WorkerMetrics, not_ready: Callable[[], Unready | None] = _ready
) -> web.Application:
    """The routes as an aiohttp app, so tests can serve it in-process.

    /readyz is 503 with `not_ready()`'s reason while there is one, so the worker shows
    as not ready, while /healthz stays 200: neither an outage nor a data problem must
    turn into a restart loop.
    """

    async def readyz(request: web.Request) -> web.Response:
        unready = not_ready()
        if unready is None:
            return web.json_response({"status": "ready"})
        body: dict[str, object] = {"error": unready.error, "detail": unready.detail}
        if unready.partitions:
            body["partitions"] = list(unready.partitions)
        return web.json_response(body, status=503)

    app = web.Application()
    hide_versions(app)
    app.add_routes([*probe_routes(metrics.registry), web.get("/readyz", readyz)])
    return app


@contextlib.asynccontextmanager
async def serve_health_and_metrics(
    *,
    host: str,
    port: int,
    metrics: WorkerMetrics,
    not_ready: Callable[[], Unready | None] = _ready,
) -> AsyncIterator[None]:
    """Serve `create_app(metrics, not_ready)` on host:port while the block runs.

    Raises ConfigError when the port cannot be bound. Closing takes at most
    CLOSE_TIMEOUT_S, so the port never holds up the worker's exit.
    """
    app = create_app(metrics, not_ready)
    async with serve_probes(
        app, host=host, port=port, setting="worker.metrics_port", event="worker.metrics_listening"
    ):
        yield
