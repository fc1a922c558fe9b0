"""Compressed requests: the provider signs the JSON it sends and compresses it for the trip.

gzip and deflate are inflated within ingress.max_body_bytes; the signature is checked
over, and the publisher gets, the JSON; anything else is refused before it is read.
"""

from __future__ import annotations

import gzip
import io
import zlib
from collections.abc import Callable

import pytest

from tests.ingress_harness import Serve, captured_logs, delivery, published, signed


def gzip_of(data: bytes) -> bytes:
    return gzip.compress(data)


def zlib_deflate_of(data: bytes) -> bytes:
    return zlib.compress(data)


def raw_deflate_of(data: bytes) -> bytes:
    compressor = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush()


def sent_as(body: bytes, encoding: str, *, signed_over: bytes | None = None) -> dict[str, str]:
    """Headers for `body` sent with Content-Encoding `encoding`, signed over `signed_over`
    (the JSON the provider signed before compressing) or `body` itself."""
    return signed(body if signed_over is None else signed_over) | {"Content-Encoding": encoding}


@pytest.mark.parametrize(
    ("encoding", "compress"),
    [
        ("gzip", gzip_of),
        ("x-gzip", gzip_of),
        ("GZip", gzip_of),
        ("deflate", zlib_deflate_of),
        ("deflate", raw_deflate_of),  # what some senders call deflate
        ("identity", lambda data: data),
    ],
    ids=["gzip", "x-gzip", "case", "deflate-zlib", "deflate-raw", "identity"],
)
async def test_a_compressed_delivery_is_verified_and_published_as_the_json_it_holds(
    serve: Serve, encoding: str, compress: Callable[[bytes], bytes]
) -> None:
    client = await serve()
    json_body = delivery("zipped", alias="x" * 2000)
    response = await client.post(
        "/webhooks",
        data=compress(json_body),
        headers=sent_as(compress(json_body), encoding, signed_over=json_body),
    )
    assert response.status == 202
    assert await response.json() == {"id": "whd_zipped"}
    assert published(client) == [json_body]


async def test_a_signature_over_the_compressed_bytes_is_401(serve: Serve) -> None:
    client = await serve()
    body = gzip_of(delivery(1))
    response = await client.post("/webhooks", data=body, headers=sent_as(body, "gzip"))
    assert response.status == 401
    assert (await response.json())["error"] == "invalid_signature"


@pytest.mark.parametrize(
    ("encoding", "body"),
    [
        ("gzip", delivery(1)),
        ("deflate", delivery(1)),
        ("gzip", gzip_of(delivery(1))[:-12]),
        ("gzip", gzip_of(delivery(1)) + b"trailing"),
        ("deflate", zlib_deflate_of(delivery(1))[:20]),
    ],
    ids=[
        "gzip-not-compressed",
        "deflate-not-compressed",
        "gzip-truncated",
        "gzip-trailing",
        "deflate-truncated",
    ],
)
async def test_a_body_that_does_not_decompress_is_400_malformed_body(
    serve: Serve, encoding: str, body: bytes
) -> None:
    buffer = io.StringIO()
    with captured_logs(buffer):
        client = await serve()
        response = await client.post(
            "/webhooks", data=body, headers=sent_as(body, encoding, signed_over=delivery(1))
        )
    assert response.status == 400
    payload = await response.json()
    assert payload["error"] == "malformed_body"
    assert f"Content-Encoding {encoding}" in payload["detail"]
    assert published(client) == []
    assert "Traceback" not in buffer.getvalue()


async def test_a_compression_bomb_is_413_without_inflating_it(serve: Serve) -> None:
    compressor = zlib.compressobj(wbits=31)  # gzip
    zeros = bytes(1 << 20)
    bomb = b"".join(compressor.compress(zeros) for _ in range(50)) + compressor.flush()
    assert len(bomb) < 65_536  # within the limit as sent; 50 MiB once inflated
    client = await serve(max_body_bytes=65_536)
    response = await client.post("/webhooks", data=bomb, headers=sent_as(bomb, "gzip"))
    assert response.status == 413
    payload = await response.json()
    assert payload["error"] == "body_too_large"
    assert "65536 bytes once decompressed" in payload["detail"]
    assert published(client) == []


@pytest.mark.parametrize("encoding", ["br", "zstd", "compress", "gzip, gzip", "x-custom"])
async def test_any_other_content_encoding_is_415_naming_the_accepted_ones(
    serve: Serve, encoding: str
) -> None:
    client = await serve()
    response = await client.post(
        "/webhooks", data=delivery(1), headers=sent_as(delivery(1), encoding)
    )
    assert response.status == 415
    assert await response.json() == {
        "error": "unsupported_content_encoding",
        "detail": f"Content-Encoding {encoding} is not accepted: send the JSON as is "
        "(identity), or compressed with gzip or deflate",
    }
    assert published(client) == []
