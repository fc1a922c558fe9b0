"""How the ingress app is served: the listening socket and its shutdown."""

from __future__ import annotations

from aiohttp import web

from processor.config import ConfigError, IngressConfig

__all__ = ["Listener", "listen"]


class Listener:
    """The ingress serving on a port; `close` stops accepting and drains in-flight requests."""

    def __init__(self, runner: web.AppRunner) -> None:
        self._runner = runner

    @property
    def port(self) -> int:
        """The bound port (the one the OS chose when ingress.port is 0, as in tests)."""
        port: int = self._runner.addresses[0][1]
        return port

    async def close(self) -> None:
        await self._runner.cleanup()


async def listen(app: web.Application, settings: IngressConfig) -> Listener:
    """Serve `app` on ingress.host:ingress.port. Raises ConfigError when it cannot bind."""
    # In-flight publishes end by themselves within publish_timeout_s (202 or 503); on
    # shutdown aiohttp cancels what still runs after that (a client still uploading).
    runner = web.AppRunner(
        app, access_log=None, handle_signals=False, shutdown_timeout=settings.publish_timeout_s
    )
    await runner.setup()
    try:
        await web.TCPSite(runner, settings.host, settings.port).start()
    except OSError as exc:
        await runner.cleanup()
        raise ConfigError(
            f"cannot listen on {settings.host}:{settings.port} ({exc.strerror}): free the "
            "port or choose another with ingress.port / PROCESSOR_INGRESS__PORT"
        ) from None
    return Listener(runner)
