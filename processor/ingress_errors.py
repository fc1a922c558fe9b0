"""The ingress's answers other than 202: always JSON `{"error": ..., "detail": ...}`.

`error` is a stable snake_case code a sender can branch on; `detail` says what went
wrong and what to do, and never quotes the body.
"""

from __future__ import annotations

import msgspec
from aiohttp import web

__all__ = ["Refusal", "error_response"]

_encode_json = msgspec.json.encode


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
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.error = error
        self.detail = detail
        self.headers = headers
        self.delivery_id = delivery_id  # known once the envelope decoded

    def response(self) -> web.Response:
        return error_response(self.status, self.error, self.detail, headers=self.headers)


def error_response(
    status: int, error: str, detail: str, *, headers: dict[str, str] | None = None
) -> web.Response:
    body = _encode_json({"error": error, "detail": detail})
    return web.Response(status=status, body=body, content_type="application/json", headers=headers)
