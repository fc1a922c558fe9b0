"""The ingress's answers other than 202: always JSON `{"error": ..., "detail": ...}`.

`error` is a stable snake_case code a sender can branch on; `detail` says what went
wrong and what to do, and never quotes the body. Our checks raise `Refusal`; what
aiohttp's router raises (404, 405), a client that leaves and our own bugs go through
`errors_as_json`; what aiohttp's HTTP parser refuses, through the connection class in
processor.ingress.server.
"""

from __future__ import annotations

import asyncio
from typing import Final

import msgspec
import structlog
from aiohttp import hdrs, web
from aiohttp.typedefs import Handler, Middleware

from processor.http_probes import SERVER
from processor.metrics import IngressMetrics

__all__ = ["INGRESS_METRICS", "Refusal", "error_response", "errors_as_json"]

log = structlog.get_logger(__name__)

# Where create_app keeps the metrics, so the middleware and the server count what they answer.
INGRESS_METRICS: Final = web.AppKey("ingress_metrics", IngressMetrics)

_encode_json = msgspec.json.encode
# A path is the client's text: enough of it to recognise, not a log line's worth.
_PATH_SHOWN: Final = 120


class Refusal(Exception):
    """Ends a request early with a JSON error body; raised by each check in turn."""

    def __init__(
        self,
        status: int,
        error: str,
        detail: str,
        *,
        headers: dict[str, str] | None = None,
        delivery_id: str | None = None,
        close: bool = False,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.error = error
        self.detail = detail
        self.headers = headers
        self.delivery_id = delivery_id  # known once the envelope decoded
        self.close = close  # the connection is not worth keeping (a stalled sender)

    def response(self) -> web.Response:
        response = error_response(self.status, self.error, self.detail, headers=self.headers)
        if self.close:
            response.force_close()
        return response


def error_response(
    status: int, error: str, detail: str, *, headers: dict[str, str] | None = None
) -> web.Response:
    body = _encode_json({"error": error, "detail": detail})
    # Also answers requests refused before routing, which the app's signals never see.
    headers = {hdrs.SERVER: SERVER, **(headers or {})}
    return web.Response(status=status, body=body, content_type="application/json", headers=headers)


def errors_as_json(*, webhook_path: str) -> Middleware:
    """Middleware: what escapes a handler becomes a JSON answer and one log line.

    aiohttp's own answers (404, 405, its 500 for an exception) are text; a client that
    closes its connection mid-request would be logged with a traceback at ERROR.
    """

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            response = _from_http_exception(request, exc, webhook_path)
        except ConnectionError as exc:
            # The answer can no longer be delivered; aiohttp drops it quietly.
            _client_gone(request, type(exc).__name__)
            return error_response(400, "client_gone", "the connection closed mid-request")
        except asyncio.CancelledError:
            _client_gone(request, "CancelledError")
            raise
        except Exception:
            log.exception("ingress.internal_error", method=request.method, path=_path(request))
            response = error_response(
                500, "internal_error", "the ingress failed unexpectedly; retry later"
            )
        if request.path == webhook_path:
            request.app[INGRESS_METRICS].count_response(response.status)
        return response

    return middleware


def _from_http_exception(
    request: web.Request, exc: web.HTTPException, webhook_path: str
) -> web.Response:
    error = exc.reason.lower().replace(" ", "_")
    if exc.status == 404:
        detail = f"nothing at {_path(request)}: POST deliveries to {webhook_path}"
    elif exc.status == 405:
        allowed = exc.headers.get(hdrs.ALLOW, "")
        detail = f"{request.method} is not allowed on {_path(request)}: use {allowed}"
    else:
        detail = exc.reason
    log.info("ingress.rejected", status=exc.status, error=error, detail=detail)
    headers = {"Allow": exc.headers[hdrs.ALLOW]} if hdrs.ALLOW in exc.headers else None
    return error_response(exc.status, error, detail, headers=headers)


def _client_gone(request: web.Request, reason: str) -> None:
    log.info(
        "ingress.client_gone",
        method=request.method,
        path=_path(request),
        reason=reason,
        detail="the client closed the connection, or the ingress is stopping, mid-request",
    )


def _path(request: web.Request) -> str:
    return request.path[:_PATH_SHOWN]
