"""What the ingress answers and logs for HTTP that aiohttp handles before our handler does:
malformed requests, wrong paths and methods, clients that leave or stall.

Raw sockets send what no HTTP client library would. Every answer must be the README's
JSON, and no byte of a body may reach a log line.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import socket
import time

import pytest

from processor.kafka.batching import RawRecord
from tests.ingress_harness import RecordingPublisher, Serve, Served, captured_logs, signed

MARKER = b"BODY-MARKER-5b1e0c"


class RawResponse:
    """One HTTP response read off a raw connection."""

    def __init__(self, status_line: str, headers: dict[str, str], body: bytes) -> None:
        self.status_line = status_line
        self.status = int(status_line.split()[1])
        self.headers = headers
        self.body = body

    def json(self) -> dict[str, str]:
        payload: dict[str, str] = json.loads(self.body)
        return payload


class RawAnswer:
    """Every response that came back on a raw connection, and whether the server closed it."""

    def __init__(self, data: bytes, *, closed: bool) -> None:
        self.closed = closed
        self.responses: list[RawResponse] = []
        while data:
            head, _, data = data.partition(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            headers = {
                name.strip().lower(): value.strip()
                for name, _, value in (line.partition(":") for line in lines[1:])
            }
            length = int(headers.get("content-length", "0"))
            body, data = data[:length], data[length:]
            self.responses.append(RawResponse(lines[0], headers, body))

    @property
    def last(self) -> RawResponse:
        return self.responses[-1]


async def exchange(client: Served, data: bytes, *, wait: float = 2.0) -> RawAnswer:
    """Send `data`, then read until the server closes or `wait` passes."""
    reader, writer = await client.open_raw()
    received = b""
    closed = False
    try:
        writer.write(data)
        await writer.drain()
        async with asyncio.timeout(wait):
            while chunk := await reader.read(65536):
                received += chunk
            closed = True
    except TimeoutError:
        pass
    except ConnectionResetError:
        closed = True
    finally:
        writer.close()
    return RawAnswer(received, closed=closed)


def post(body: bytes, *, headers: bytes = b"", length: int | None = None) -> bytes:
    """A signed POST /webhooks whose Content-Length may lie."""
    signature = signed(body)["X-Webhook-Signature"].encode()
    return (
        b"POST /webhooks HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        b"X-Webhook-Signature: " + signature + b"\r\n"
        b"Content-Length: " + str(len(body) if length is None else length).encode() + b"\r\n"
        + headers
        + b"\r\n"
        + body
    )  # fmt: skip


BODY = b'{"id": "whd_1", "event": "integration.updated", "data": {"uid": "u"}}'


def log_lines(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines()]


def assert_clean(text: str) -> None:
    """No body byte, no traceback, nothing at ERROR: a client's mistake is not ours."""
    assert MARKER.decode() not in text
    assert "Traceback" not in text
    assert not [line for line in log_lines(text) if line["level"] in ("error", "critical")]


# --- malformed HTTP: a JSON 400 and a short log line, never the bytes ------------------


@pytest.mark.parametrize(
    "data",
    [
        post(BODY, length=10) + MARKER,
        post(BODY, headers=b"Connection: close\r\n") + b"GET " + MARKER + b" HTTP/1.1\r\n\r\n",
        b"POST /webhooks HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\nzz" + MARKER + b"\r\n",
        MARKER + b" /webhooks HTTP/1.1\r\nHost: test\r\n\r\n",
        b"POST /webhooks HTTP/1.1\r\nHost: test\r\nX-" + MARKER + b"\x01: y\r\n\r\n",
    ],
    ids=[
        "content-length-shorter-than-body",
        "data-after-connection-close",
        "bad-chunk-size",
        "bad-request-line",
        "bad-header-name",
    ],
)
async def test_malformed_http_is_a_json_400_and_no_body_byte_is_logged(
    serve: Serve, data: bytes, capfd: pytest.CaptureFixture[str]
) -> None:
    buffer = io.StringIO()
    with captured_logs(buffer):
        client = await serve()
        answer = await exchange(client, data)
        await asyncio.sleep(0.05)  # let any late log line land
    text = buffer.getvalue()
    printed = capfd.readouterr()
    assert MARKER.decode() not in printed.out + printed.err

    # A request parsed before the malformed bytes may get its own answer first (401 here).
    assert answer.responses
    for response in answer.responses:
        assert response.headers["content-type"] == "application/json"
        assert set(response.json()) == {"error", "detail"}
        assert MARKER not in response.body
    assert (answer.last.status, answer.last.json()["error"]) == (400, "malformed_request")
    assert answer.closed
    assert_clean(text)
    assert any(
        line["event"] == "ingress.rejected" and line["error"] == "malformed_request"
        for line in log_lines(text)
    )


async def test_too_many_headers_is_a_json_400_naming_the_limit(serve: Serve) -> None:
    client = await serve(max_headers=20)
    headers = b"".join(b"X-Extra-%d: v\r\n" % n for n in range(25))
    answer = await exchange(client, post(BODY, headers=headers))
    assert answer.last.status == 400
    assert answer.last.json() == {
        "error": "malformed_request",
        "detail": "more than 20 header lines (ingress.max_headers)",
    }


async def test_an_overlong_header_is_a_json_400_naming_the_limit(serve: Serve) -> None:
    client = await serve(max_header_line_bytes=1024)
    answer = await exchange(client, post(BODY, headers=b"X-Long: " + b"v" * 2000 + b"\r\n"))
    assert answer.last.status == 400
    assert answer.last.json() == {
        "error": "malformed_request",
        "detail": "a request line or header is longer than 1024 bytes "
        "(ingress.max_header_line_bytes)",
    }


# --- what aiohttp's router answers: JSON too ---------------------------------------------


async def test_get_on_the_webhook_path_is_a_json_405_with_allow(serve: Serve) -> None:
    client = await serve()
    response = await client.get("/webhooks")
    assert response.status == 405
    assert response.headers["Allow"] == "POST"
    assert response.headers["Content-Type"] == "application/json"
    payload = await response.json()
    assert payload["error"] == "method_not_allowed"
    assert "POST" in payload["detail"]


async def test_an_unknown_path_is_a_json_404_naming_the_webhook_path(serve: Serve) -> None:
    client = await serve()
    response = await client.post("/webhook", data=BODY, headers=signed(BODY))
    assert response.status == 404
    payload = await response.json()
    assert payload["error"] == "not_found"
    assert "/webhooks" in payload["detail"]


class Broken(Exception):
    """Stands for a bug in our code."""


class BrokenPublisher(RecordingPublisher):
    async def publish(self, record: RawRecord) -> BaseException | None:
        raise Broken


async def test_an_unexpected_exception_is_a_json_500_logged_at_error(serve: Serve) -> None:
    buffer = io.StringIO()
    with captured_logs(buffer):
        client = await serve(publisher=BrokenPublisher())
        response = await client.post("/webhooks", data=BODY, headers=signed(BODY))
    assert response.status == 500
    assert await response.json() == {
        "error": "internal_error",
        "detail": "the ingress failed unexpectedly; retry later",
    }
    [line] = [line for line in log_lines(buffer.getvalue()) if line["level"] == "error"]
    assert line["event"] == "ingress.internal_error"
    assert "Broken" in str(line["exception"])


# --- clients that go away --------------------------------------------------------------


async def test_a_client_that_leaves_half_way_is_an_info_line_without_traceback(
    serve: Serve, capfd: pytest.CaptureFixture[str]
) -> None:
    buffer = io.StringIO()
    with captured_logs(buffer):
        client = await serve()
        _, writer = await client.open_raw()
        writer.write(post(BODY + MARKER, length=1000))
        await writer.drain()
        await asyncio.sleep(0.1)
        writer.close()
        await asyncio.sleep(0.2)
    text = buffer.getvalue()
    printed = capfd.readouterr()

    assert "Traceback" not in printed.out + printed.err
    assert_clean(text)
    [gone] = [line for line in log_lines(text) if line["event"] == "ingress.client_gone"]
    assert gone["level"] == "info"
    assert client.publisher.records == []  # type: ignore[attr-defined]


# --- clients that stall: every phase has a bound -----------------------------------------

# Small bounds so each test takes about a second; the defaults are in config.yaml.
QUICK = {"keepalive_timeout_s": 0.3, "body_timeout_s": 0.3, "linger_timeout_s": 0.2}


async def closed_after(client: Served, data: bytes, *, within: float) -> tuple[float, RawAnswer]:
    """Send `data`, keep the connection open, and time how long until the server closes it."""
    started = time.monotonic()
    answer = await exchange(client, data, wait=within)
    return time.monotonic() - started, answer


async def test_a_connection_that_sends_nothing_is_closed_at_the_keepalive_timeout(
    serve: Serve,
) -> None:
    client = await serve(**QUICK)
    elapsed, answer = await closed_after(client, b"", within=3)
    assert answer.closed
    assert answer.responses == []
    assert 0.25 < elapsed < 1.5


async def test_a_connection_idle_after_an_answer_is_closed_at_the_keepalive_timeout(
    serve: Serve,
) -> None:
    client = await serve(**QUICK)
    started = time.monotonic()
    answer = await exchange(client, post(BODY), wait=3)
    assert [response.status for response in answer.responses] == [202]
    assert answer.closed
    assert time.monotonic() - started < 1.5


async def trickle(client: Served, head: bytes, drip: bytes, *, every: float) -> RawAnswer:
    """Send `head`, then `drip` one byte per `every` seconds, until the server answers or
    closes; return what it sent. Reads and writes use the socket separately, so a write
    failing after the server closed cannot hide the answer that came before."""
    loop = asyncio.get_running_loop()
    sock = socket.create_connection((client.host, client.port))
    sock.setblocking(False)

    async def read_all() -> bytes:
        data = b""
        with contextlib.suppress(ConnectionError):
            while chunk := await loop.sock_recv(sock, 65536):
                data += chunk
        return data

    received = asyncio.create_task(read_all())
    try:
        await loop.sock_sendall(sock, head)
        for byte in drip:
            if received.done():
                break
            await loop.sock_sendall(sock, bytes([byte]))
            await asyncio.sleep(every)
        async with asyncio.timeout(3):
            return RawAnswer(await received, closed=True)
    except ConnectionError:
        async with asyncio.timeout(3):
            return RawAnswer(await received, closed=True)
    finally:
        received.cancel()
        sock.close()


async def test_headers_trickled_forever_are_cut_off_at_the_keepalive_timeout(
    serve: Serve,
) -> None:
    client = await serve(**QUICK)
    started = time.monotonic()
    # One header byte every 50 ms for up to 5 s, never the blank line that ends them.
    answer = await trickle(
        client, b"POST /webhooks HTTP/1.1\r\nHost: test\r\n", b"X" * 100, every=0.05
    )
    assert answer.responses == []  # closed without an answer: no request was made
    assert time.monotonic() - started < 1.5


async def test_a_body_that_stops_arriving_is_408_at_the_body_timeout(serve: Serve) -> None:
    buffer = io.StringIO()
    with captured_logs(buffer):
        client = await serve(**QUICK)
        elapsed, answer = await closed_after(client, post(BODY, length=1000), within=3)

    [response] = answer.responses
    assert response.status == 408
    assert response.headers["connection"] == "close"
    assert response.json() == {
        "error": "request_timeout",
        "detail": "the body did not arrive within 0.3 s (ingress.body_timeout_s): send it "
        "at once, with a Content-Length that matches it",
    }
    assert answer.closed
    assert elapsed < 0.3 + 0.2 + 0.5  # body timeout, linger, scheduling
    assert client.publisher.records == []  # type: ignore[attr-defined]
    assert_clean(buffer.getvalue())


async def test_a_body_trickled_byte_by_byte_is_408_at_the_deadline(serve: Serve) -> None:
    client = await serve(**QUICK)
    started = time.monotonic()
    # Each byte well within the timeout of the last, the whole far beyond it.
    answer = await trickle(client, post(BODY)[: -len(BODY)], BODY, every=0.05)
    assert [response.status for response in answer.responses] == [408]
    assert time.monotonic() - started < 1.5


# --- HTTP/1.1 only, and no body invited that cannot fit ----------------------------------


@pytest.mark.parametrize(
    ("request_head", "status", "error"),
    [
        (b"POST /webhooks HTTP/2.0\r\nHost: test\r\n", 505, "http_version_not_supported"),
        (b"POST /webhooks HTTP/1.0\r\nHost: test\r\n", 505, "http_version_not_supported"),
        (b"GET /metrics HTTP/1.0\r\n", 505, "http_version_not_supported"),
        (b"GET /metrics\r\n", 400, "malformed_request"),  # HTTP/0.9: no version at all
    ],
    ids=["http2-framed-as-1.1", "http1.0-post", "http1.0-metrics", "http0.9-metrics"],
)
async def test_any_version_but_http_1_1_is_refused_in_http_1_1_before_routing(
    serve: Serve, request_head: bytes, status: int, error: str
) -> None:
    client = await serve()
    signature = signed(BODY)["X-Webhook-Signature"].encode()
    data = request_head + b"\r\n"
    if request_head.startswith(b"POST"):
        data = (
            request_head + b"Content-Type: application/json\r\nX-Webhook-Signature: "
            + signature + b"\r\nContent-Length: " + str(len(BODY)).encode() + b"\r\n\r\n"
            + BODY
        )  # fmt: skip
    answer = await exchange(client, data)

    [response] = answer.responses
    assert response.status_line.startswith(f"HTTP/1.1 {status} ")
    assert response.json()["error"] == error
    assert answer.closed
    assert client.publisher.records == []  # type: ignore[attr-defined]


async def test_expect_continue_for_a_body_over_the_limit_is_413_at_once_never_100(
    serve: Serve,
) -> None:
    client = await serve()
    reader, writer = await client.open_raw()
    try:
        writer.write(post(b"", headers=b"Expect: 100-continue\r\n", length=1_000_000_000))
        await writer.drain()
        async with asyncio.timeout(1):
            head = await reader.readuntil(b"\r\n\r\n")
            answer = RawAnswer(head + await reader.readexactly(_length(head)), closed=False)
    finally:
        writer.close()

    [response] = answer.responses
    assert (response.status, response.json()["error"]) == (413, "body_too_large")
    assert response.headers["connection"] == "close"


async def test_expect_continue_for_a_body_that_fits_is_invited_then_accepted(
    serve: Serve,
) -> None:
    client = await serve()
    reader, writer = await client.open_raw()
    try:
        writer.write(post(BODY, headers=b"Expect: 100-continue\r\n")[: -len(BODY)])
        await writer.drain()
        async with asyncio.timeout(2):
            interim = await reader.readuntil(b"\r\n\r\n")
        writer.write(BODY)
        await writer.drain()
        async with asyncio.timeout(2):
            final = await reader.readuntil(b"\r\n\r\n")
    finally:
        writer.close()

    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
    assert final.startswith(b"HTTP/1.1 202 ")


async def test_an_expectation_other_than_continue_is_417(serve: Serve) -> None:
    client = await serve()
    answer = await exchange(client, post(BODY, headers=b"Expect: 200-ok\r\n"))

    assert (answer.last.status, answer.last.json()["error"]) == (417, "expectation_failed")
    assert client.publisher.records == []  # type: ignore[attr-defined]


def _length(head: bytes) -> int:
    for line in head.decode("latin-1").split("\r\n"):
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            return int(value)
    return 0


@pytest.mark.parametrize(
    "data",
    [
        # Connection: close, so that the read ends with the answer.
        post(BODY, headers=b"Connection: close\r\n"),  # the webhook, answered by its handler
        b"GET /healthz HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n",
        b"GET /nowhere HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n",
        b"GET /metrics HTTP/2.0\r\nHost: test\r\n\r\n",  # refused before routing
        MARKER + b" /webhooks HTTP/1.1\r\nHost: test\r\n\r\n",  # refused by the parser
    ],
    ids=["webhook", "probe", "not-found", "another-version", "malformed"],
)
async def test_no_answer_names_the_server_software_or_its_version(
    serve: Serve, data: bytes
) -> None:
    client = await serve()
    answer = await exchange(client, data, wait=0.5)

    assert answer.responses
    for response in answer.responses:
        assert response.headers.get("server") == "processor", response.headers
