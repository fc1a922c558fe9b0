"""How the ingress app is served: the listening socket, bounds per connection, and JSON
answers for the requests aiohttp refuses before any handler runs.

aiohttp answers an unparsable request (a bad request line, too many headers, broken
chunked framing, bytes after `Connection: close`) from its protocol class, in text
that quotes the offending bytes, and logs them at ERROR with a traceback; no
middleware sees it (aio-libs/aiohttp#3287). So the ingress serves its app with a
subclass of aiohttp's `web.RequestHandler` that answers those in the README's JSON
and logs one short line, built here by the listening socket's protocol factory.

aiohttp also serves any HTTP version its parser reads (`HTTP/2.0` over HTTP/1.1
framing, an `HTTP/0.9` request line without one) and answers in that version. The
ingress speaks HTTP/1.1 only: every other version is answered here, in HTTP/1.1,
before any routing or body, and the connection closed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Final

import structlog
from aiohttp import HttpVersion, HttpVersion11, web
from aiohttp.http_exceptions import (
    BadStatusLine,
    ContentLengthError,
    HttpProcessingError,
    InvalidHeader,
    LineTooLong,
    TransferEncodingError,
)
from aiohttp.http_parser import RawRequestMessage

from processor.config import IngressConfig
from processor.http_probes import cannot_listen
from processor.ingress.responses import INGRESS_METRICS, error_response
from processor.metrics import IngressMetrics

_RequestFactory = Callable[..., web.BaseRequest]
_RequestHandler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]

__all__ = ["Listener", "listen"]

log = structlog.get_logger(__name__)

# Where a request built as HTTP/1.1 keeps the version its client sent.
_SENT_VERSION: Final = web.RequestKey("sent_version", HttpVersion)

# What aiohttp's parser says (the start of its message, before it quotes the bytes)
# -> what we tell the client. Our words only: the parser's message quotes the request.
_PARSER_MESSAGES: Final = (
    ("Data after `Connection: close`", "bytes follow a request sent with Connection: close"),
    ("Invalid character in chunk size", "the chunked body's framing is malformed"),
    ("Invalid header", "a header name or value holds characters HTTP does not allow"),
    ("Duplicate ", "a header that may appear once appears twice"),
    ("Missing 'Host' header", "the Host header is missing"),
    (
        "Transfer-Encoding can't be present with Content-Length",
        "Content-Length and Transfer-Encoding are both set",
    ),
)


class Listener:
    """The ingress serving on a port; `close` stops accepting and drains in-flight requests."""

    def __init__(self, runner: web.AppRunner, server: asyncio.Server) -> None:
        self._runner = runner
        self._server = server

    @property
    def port(self) -> int:
        """The bound port (the one the OS chose when ingress.port is 0, as in tests)."""
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def close(self) -> None:
        self._server.close()
        # Idle connections close now, requests in flight get the runner's shutdown_timeout,
        # then the app's cleanup stops the publisher.
        await self._runner.cleanup()


async def listen(app: web.Application, settings: IngressConfig) -> Listener:
    """Serve `app` on ingress.host:ingress.port. Raises ConfigError when it cannot bind."""
    # The runner runs the app's start-up and cleanup and drains connections at shutdown;
    # in-flight publishes end by themselves within publish_timeout_s (202 or 503), and
    # aiohttp cancels what still runs after that (a client still uploading).
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=settings.publish_timeout_s)
    await runner.setup()
    server = runner.server
    assert server is not None  # set by setup()
    metrics = app.get(INGRESS_METRICS)
    server.request_factory = _as_http11(server.request_factory)
    server.request_handler = _http11_only(server.request_handler, metrics)
    options: dict[str, Any] = {
        "loop": asyncio.get_running_loop(),
        # One line of ours per request (ingress.accepted / ingress.rejected) instead.
        "access_log": None,
        # Also bounds the time to send a request's headers: aiohttp's timer runs from the
        # connection (or the last answer) until a request is complete.
        "keepalive_timeout": settings.keepalive_timeout_s,
        "lingering_time": settings.linger_timeout_s,
        # Bodies arrive as sent: processor.ingress.checks inflates gzip and deflate within
        # ingress.max_body_bytes, and answers 415 for any other encoding.
        "auto_decompress": False,
        "max_headers": settings.max_headers,
        "max_line_size": settings.max_header_line_bytes,
        "max_field_size": settings.max_header_line_bytes,
    }
    try:
        listening = await asyncio.get_running_loop().create_server(
            lambda: _Connection(server, settings=settings, metrics=metrics, **options),
            settings.host,
            settings.port,
            backlog=128,  # aiohttp's TCPSite default: connections waiting to be accepted
        )
    except OSError as exc:
        await runner.cleanup()
        raise cannot_listen(settings.host, settings.port, exc, setting="ingress.port") from None
    return Listener(runner, listening)


def _as_http11(factory: _RequestFactory) -> _RequestFactory:
    """Builds every request as HTTP/1.1, which is how its answer is written, and keeps
    the version the client sent when it was another."""

    def make(message: RawRequestMessage, *args: Any) -> web.BaseRequest:
        if message.version == HttpVersion11:
            return factory(message, *args)
        request = factory(message._replace(version=HttpVersion11), *args)
        request[_SENT_VERSION] = message.version
        return request

    return make


def _http11_only(handler: _RequestHandler, metrics: IngressMetrics | None) -> _RequestHandler:
    """Answers a request of another HTTP version before routing, its body unread."""

    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        sent: HttpVersion | None = request.get(_SENT_VERSION)
        if sent is None:
            return await handler(request)
        if sent == HttpVersion(0, 9):
            status, error = 400, "malformed_request"
            detail = "the request line is not `METHOD /path HTTP/1.1` (HTTP/0.9 is not served)"
        else:
            status, error = 505, "http_version_not_supported"
            detail = f"HTTP/{sent.major}.{sent.minor} is not served here: send HTTP/1.1"
        log.info("ingress.rejected", status=status, error=error, detail=detail)
        if metrics is not None:
            metrics.count_response(status)
        response = error_response(status, error, detail)
        response.force_close()
        return response

    return handle


class _Connection(web.RequestHandler):
    """aiohttp's HTTP/1.1 protocol, answering what its parser refuses in the ingress's JSON."""

    def __init__(
        self,
        manager: web.Server,
        *,
        settings: IngressConfig,
        metrics: IngressMetrics | None,
        **options: Any,
    ) -> None:
        super().__init__(manager, **options)
        self._settings = settings
        self._metrics = metrics

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """aiohttp's hook for a request it cannot parse (400), and for an exception that
        escaped the app (500; errors_as_json leaves none). `message` quotes the request."""
        if status >= 500:
            error, detail = "internal_error", "the ingress failed unexpectedly; retry later"
            log.error("ingress.internal_error", status=status, error_class=type(exc).__name__)
        else:
            error, detail = "malformed_request", self._describe(exc)
            log.info("ingress.rejected", status=status, error=error, detail=detail)
        if self._metrics is not None:
            self._metrics.count_response(status)
        if request.writer.output_size > 0:
            # Part of an answer is out already: nothing more can be said (as aiohttp does).
            raise ConnectionError("an answer was already started on this connection")
        response = error_response(status, error, detail)
        response.force_close()
        return response

    def log_exception(self, *args: Any, **kwargs: Any) -> None:
        """aiohttp's other error logs (an answer it could not write) carry exception text
        that may quote the request: one line naming the exception's class instead."""
        exc = kwargs.get("exc_info")
        log.warning(
            "ingress.connection_failed",
            error_class=type(exc).__name__ if isinstance(exc, BaseException) else None,
        )

    def _describe(self, exc: BaseException | None) -> str:
        settings = self._settings
        if isinstance(exc, LineTooLong):
            return (
                f"a request line or header is longer than {settings.max_header_line_bytes} "
                "bytes (ingress.max_header_line_bytes)"
            )
        message = exc.message if isinstance(exc, HttpProcessingError) else ""
        if message.startswith("Too many headers"):
            return f"more than {settings.max_headers} header lines (ingress.max_headers)"
        if isinstance(exc, BadStatusLine):
            return "the request line is not `METHOD /path HTTP/1.1`"
        if isinstance(exc, InvalidHeader):
            return "a header name or value holds characters HTTP does not allow"
        if isinstance(exc, TransferEncodingError):
            return "the chunked body's framing is malformed"
        if isinstance(exc, ContentLengthError):
            return "the body is shorter than its Content-Length"
        for start, detail in _PARSER_MESSAGES:
            if message.startswith(start):
                return detail
        return "the request is not valid HTTP/1.1"
