"""What a webhook request must pass before it is published; each check raises Refusal.

The checks run in the order of what they cost: headers first (size, type), then the
body is read within its bounds, its signature checked, and only then decoded. Full
validation is the worker's job: the ingress decodes only the id, event and key.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Annotated

import msgspec
from aiohttp import hdrs, web

from processor.events import MAX_IDENTIFIER_LENGTH
from processor.ingress_errors import Refusal

__all__ = ["Envelope", "check_content_type", "check_declared_length", "decode", "read_body"]

# The same bounds as the contract (processor.events): these become the record key and
# headers, and an unbounded one could push a record past the topic's size limit.
_NonEmpty = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_IDENTIFIER_LENGTH)]


class _Data(msgspec.Struct):
    uid: _NonEmpty


class Envelope(msgspec.Struct):
    """Only what the ingress needs: the id to answer with, the event header, the key."""

    id: _NonEmpty
    event: _NonEmpty
    data: _Data


_decode_envelope = msgspec.json.Decoder(Envelope).decode


def check_declared_length(request: web.Request, limit: int) -> None:
    """413 before reading a body whose Content-Length already says it is too large."""
    if request.content_length is not None and request.content_length > limit:
        raise too_large(limit)


def check_content_type(headers: Mapping[str, str]) -> str:
    """The Content-Type as sent, if it is JSON; 415 otherwise."""
    content_type = headers.get(hdrs.CONTENT_TYPE)
    if not content_type:
        raise Refusal(415, "unsupported_media_type", "missing Content-Type: send JSON")
    mime = content_type.partition(";")[0].strip().lower()
    if not _is_json(mime):
        raise Refusal(
            415,
            "unsupported_media_type",
            f"Content-Type {mime} is not JSON: send application/json",
        )
    return content_type


async def read_body(request: web.Request, *, limit: int, within_s: float) -> bytes:
    """The body, refusing with 413 as soon as it exceeds `limit` (chunked uploads), and
    with 408 when it has not all arrived within `within_s`: a deadline, not an idle timer,
    so a sender trickling a byte at a time cannot hold the connection longer.

    What the client still sends after a 413 is discarded by aiohttp, not buffered.
    """
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(within_s):
            while chunk := await request.content.readany():
                size += len(chunk)
                if size > limit:
                    raise too_large(limit)
                chunks.append(chunk)
    except TimeoutError:
        raise Refusal(
            408,
            "request_timeout",
            f"the body did not arrive within {within_s} s (ingress.body_timeout_s): send it "
            "at once, with a Content-Length that matches it",
            close=True,
        ) from None
    return b"".join(chunks)


def decode(body: bytes) -> Envelope:
    """The envelope's id, event and key; 400 for anything that is not such a JSON object."""
    # msgspec checks UTF-8 only in the strings it decodes, not in those it skips, and the
    # worker would dead-letter what passed here; bytes.decode is the fast C check.
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Refusal(
            400,
            "malformed_json",
            f"body is not valid JSON: invalid utf-8 at byte {exc.start} ({exc.reason})",
        ) from None
    try:
        return _decode_envelope(body)
    except msgspec.ValidationError as exc:
        raise Refusal(400, "invalid_envelope", str(exc)) from None
    except msgspec.DecodeError as exc:
        raise Refusal(400, "malformed_json", f"body is not valid JSON: {exc}") from None
    except RecursionError:
        # msgspec recurses per nesting level, so ~1,000 levels reach Python's limit.
        raise Refusal(400, "malformed_json", "body is not valid JSON: nested too deeply") from None


def too_large(limit: int) -> Refusal:
    return Refusal(413, "body_too_large", f"body exceeds {limit} bytes (ingress.max_body_bytes)")


def _is_json(mime: str) -> bool:
    return mime == "application/json" or (
        mime.startswith("application/") and mime.endswith("+json")
    )
