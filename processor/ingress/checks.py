"""What a webhook request must pass before it is published; each check raises Refusal.

The checks run in the order of what they cost: headers first (size, type, encoding),
then the body is read within its bounds, its signature checked, and only then decoded.
Full validation is the worker's job: the ingress decodes only the id, event and key.
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import Mapping
from typing import Final

from aiohttp import hdrs, web
from multidict import CIMultiDictProxy

from processor.events import Envelope, InvalidDelivery, decode_envelope
from processor.ingress.responses import Refusal

__all__ = [
    "Envelope",
    "check_content_encoding",
    "check_content_type",
    "check_declared_length",
    "check_expectation",
    "decode",
    "read_body",
]


# Content-Encoding values undone here -> the zlib format they name (x-gzip: RFC 9110).
_CODINGS: Final = {"gzip": "gzip", "x-gzip": "gzip", "deflate": "deflate"}
# An unknown encoding is echoed back to say what was refused, at most this much of it.
_ENCODING_SHOWN: Final = 60


def check_declared_length(request: web.Request, limit: int) -> None:
    """413 before reading a body whose Content-Length already says it is too large."""
    if request.content_length is not None and request.content_length > limit:
        raise _too_large(limit)


def check_expectation(request: web.Request, limit: int) -> None:
    """Whether to invite the body of a request that says `Expect:`: 417 for anything but
    `100-continue`, 413 for a declared size over `limit`. Either closes the connection,
    since a client that stops waiting for `100 Continue` sends its body regardless."""
    if request.headers.get(hdrs.EXPECT, "").lower() != "100-continue":
        raise Refusal(
            417, "expectation_failed", "only `Expect: 100-continue` is understood", close=True
        )
    if request.content_length is not None and request.content_length > limit:
        raise _too_large(limit, close=True)


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


def check_content_encoding(headers: CIMultiDictProxy[str]) -> str | None:
    """The coding to undo, `gzip` or `deflate`; None for none (or `identity`); 415 otherwise.

    The provider signs the JSON it sends; compression is transport. So a compressed
    body is inflated here, and the signature is checked over, and Kafka gets, the JSON.
    """
    sent = headers.getall(hdrs.CONTENT_ENCODING, [])
    codings = [coding.strip().lower() for value in sent for coding in value.split(",")]
    applied = [coding for coding in codings if coding and coding != "identity"]
    if not applied:
        return None
    if len(applied) == 1 and applied[0] in _CODINGS:
        return _CODINGS[applied[0]]
    shown = ", ".join(value.strip() for value in sent)[:_ENCODING_SHOWN]
    raise Refusal(
        415,
        "unsupported_content_encoding",
        f"Content-Encoding {shown} is not accepted: send the JSON as is (identity), "
        "or compressed with gzip or deflate",
    )


async def read_body(
    request: web.Request, *, limit: int, within_s: float, encoding: str | None = None
) -> bytes:
    """The body (inflated when `encoding` is gzip or deflate), refusing with 413 as soon as
    it exceeds `limit`, as sent or once inflated, and with 408 when it has not all arrived
    within `within_s`: a deadline, not an idle timer, so a sender trickling a byte at a
    time cannot hold the connection longer.

    What the client still sends after a 413 is discarded by aiohttp, not buffered.
    """
    body = _Body(limit, encoding)
    content = request.content
    if content.is_eof():
        # The usual delivery arrives with its headers: all of it is here, no timer needed.
        body.add(content.read_nowait())
        return body.finish()
    try:
        async with asyncio.timeout(within_s):
            while chunk := await content.readany():
                body.add(chunk)
    except TimeoutError:
        raise Refusal(
            408,
            "request_timeout",
            f"the body did not arrive within {within_s} s (ingress.body_timeout_s): send it "
            "at once, with a Content-Length that matches it",
            close=True,
        ) from None
    return body.finish()


class _Body:
    """The body as it arrives: its size as sent checked, inflated when it is encoded."""

    def __init__(self, limit: int, encoding: str | None) -> None:
        self._limit = limit
        self._size = 0
        self._chunks: list[bytes] = []
        self._inflater = _Inflater(encoding, limit) if encoding else None

    def add(self, chunk: bytes) -> None:
        self._size += len(chunk)
        if self._size > self._limit:
            raise _too_large(self._limit)
        self._chunks.append(self._inflater.feed(chunk) if self._inflater else chunk)

    def finish(self) -> bytes:
        if self._inflater:
            self._inflater.finish()
        return b"".join(self._chunks)


class _Inflater:
    """Undoes gzip or deflate as the body arrives, never producing more than `limit`
    bytes: a small body that inflates to gigabytes is refused after `limit` + 1."""

    def __init__(self, encoding: str, limit: int) -> None:
        self._encoding = encoding
        self._room = limit  # output still allowed
        self._limit = limit
        self._zlib: zlib._Decompress | None = None

    def feed(self, data: bytes) -> bytes:
        if self._zlib is None:
            self._zlib = zlib.decompressobj(self._wbits(data))
        try:
            # One byte more than allowed tells "too large" from "exactly at the limit".
            out = self._zlib.decompress(data, self._room + 1)
        except zlib.error:
            raise self._malformed("it does not decompress") from None
        if len(out) > self._room:
            raise _too_large(self._limit, decompressed=True)
        self._room -= len(out)
        if self._zlib.unused_data:
            raise self._malformed("bytes follow the end of the compressed data")
        return out

    def finish(self) -> None:
        if self._zlib is None or not self._zlib.eof:
            raise self._malformed("it ends before the compressed data does")

    def _wbits(self, first: bytes) -> int:
        if self._encoding == "gzip":
            return 16 + zlib.MAX_WBITS
        # RFC 9110's deflate is zlib-wrapped (its first byte names method 8); some senders
        # send the raw stream, as aiohttp's own client also accepts.
        return zlib.MAX_WBITS if first[0] & 0x0F == 8 else -zlib.MAX_WBITS

    def _malformed(self, why: str) -> Refusal:
        return Refusal(
            400,
            "malformed_body",
            f"the body is not Content-Encoding {self._encoding} data ({why}): compress "
            "the whole JSON once, or send it uncompressed",
        )


def decode(body: bytes) -> Envelope:
    """The envelope's id, event and key; 400 for anything that is not such a JSON object.

    UTF-8 is checked over the whole body, as the worker does, so that nothing passes
    here that the worker would dead-letter as undecodable.
    """
    try:
        return decode_envelope(body)
    except InvalidDelivery as exc:
        if exc.error_class == "ValidationError":
            raise Refusal(400, "invalid_envelope", exc.message) from None
        raise Refusal(400, "malformed_json", f"body is not valid JSON: {exc.message}") from None


def _too_large(limit: int, *, decompressed: bool = False, close: bool = False) -> Refusal:
    once = " once decompressed" if decompressed else ""
    return Refusal(
        413,
        "body_too_large",
        f"body exceeds {limit} bytes{once} (ingress.max_body_bytes)",
        close=close,
    )


def _is_json(mime: str) -> bool:
    return mime == "application/json" or (
        mime.startswith("application/") and mime.endswith("+json")
    )
