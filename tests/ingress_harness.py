"""The ingress served in-process for tests, the way `run_ingress` serves it.

`serving(config, publisher)` listens on a free port with `processor.ingress.server.listen`
(the production server set-up: timeouts, header limits, JSON for aiohttp's own errors),
so tests see what a provider would, down to raw sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import aiohttp
import msgspec
from prometheus_client import CollectorRegistry

from processor.config import Config, LoggingConfig
from processor.http_probes import serve_probes
from processor.ingress.app import create_apps
from processor.ingress.publisher import Publisher
from processor.ingress.server import listen
from processor.ingress.signing import sign_hmac_sha256
from processor.kafka.batching import RawRecord
from processor.kafka.clients import ingress_producer_options, renewing_producer
from processor.kafka.connectivity import Connectivity
from processor.kafka.producers import RenewingProducer
from processor.logging import configure_logging

SECRET = "current-signing-secret-4f1c"
OLD_SECRET = "previous-signing-secret-9a2e"


@contextlib.asynccontextmanager
async def ingress_producer(config: Config) -> AsyncIterator[RenewingProducer]:
    """The ingress's producer as `run_ingress` makes it, started, stopped at the end."""
    producer = renewing_producer(
        config,
        name="ingress",
        options=ingress_producer_options(config),
        connectivity=Connectivity(
            bootstrap=config.kafka.bootstrap_servers, registry=CollectorRegistry()
        ),
    )
    await producer.start()
    try:
        yield producer
    finally:
        await producer.stop()


def delivery(n: int | str, *, uid: str = "user_1", **extra: Any) -> bytes:
    envelope = {
        "id": f"whd_{n}",
        "event": "integration.updated",
        "timestamp": "2025-02-19T12:00:00.000Z",
        "data": {"uid": uid, "status": "active", **extra},
    }
    return json.dumps(envelope).encode()


def signed(body: bytes, secret: str = SECRET) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "X-Webhook-Signature": sign_hmac_sha256(body, secret),
    }


class RecordingPublisher:
    """A Publisher that keeps what it is given and answers as told.

    `outcome` is what every publish resolves to (None: acknowledged); with `hang`, no
    publish ever resolves, as when Kafka does not answer.
    """

    def __init__(self, *, outcome: BaseException | None = None, hang: bool = False) -> None:
        self.records: list[RawRecord] = []
        self.outcome = outcome
        self.hang = hang

    async def publish(self, record: RawRecord) -> BaseException | None:
        self.records.append(record)
        if self.hang:
            await asyncio.Event().wait()
        return self.outcome

    async def check_ready(self, topic: str) -> None:
        """Always ready: readiness against Kafka is an integration test."""

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        yield


class Served:
    """A client of the served ingress: `post`/`get` take paths on its public port, as
    aiohttp's TestClient; `probe` gets a path on its management port."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        host: str,
        port: int,
        management_port: int,
        publisher: Publisher,
    ) -> None:
        self.session = session
        self.host = host
        self.port = port
        self.management_port = management_port
        self.publisher = publisher

    def url(self, path: str) -> str:
        return f"http://{self.host}:{self.port}{path}"

    def post(self, path: str, **kwargs: Any) -> Any:
        return self.session.post(self.url(path), **kwargs)

    def get(self, path: str, **kwargs: Any) -> Any:
        return self.session.get(self.url(path), **kwargs)

    def probe(self, path: str) -> Any:
        """GET `path` (/readyz, /metrics, /healthz) on the management port."""
        return self.session.get(f"http://{self.host}:{self.management_port}{path}")

    async def open_raw(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A bare TCP connection, for what an HTTP client library would never send."""
        return await asyncio.open_connection(self.host, self.port)


Serve = Callable[..., Awaitable[Served]]


def published(client: Served) -> list[bytes]:
    """The values handed to the publisher: what Kafka would have been asked to store."""
    assert isinstance(client.publisher, RecordingPublisher)
    return [record.value for record in client.publisher.records]


@contextlib.asynccontextmanager
async def serving(config: Config, publisher: Publisher, **ingress: Any) -> AsyncIterator[Served]:
    """The ingress on 127.0.0.1 and free ports; `ingress` overrides IngressConfig keys."""
    settings = msgspec.structs.replace(config.ingress, host="127.0.0.1", port=0, **ingress)
    apps = create_apps(
        config=msgspec.structs.replace(config, ingress=settings), publisher=publisher
    )
    async with serve_probes(
        apps.management, host="127.0.0.1", port=0, setting="test", event="test.probes"
    ) as management_port:
        listener = await listen(apps.public, settings)
        try:
            async with aiohttp.ClientSession() as session:
                yield Served(
                    session,
                    host="127.0.0.1",
                    port=listener.port,
                    management_port=management_port,
                    publisher=publisher,
                )
        finally:
            await listener.close()


@contextlib.contextmanager
def captured_logs(stream: io.StringIO) -> Iterator[None]:
    """Route every log line (structlog and stdlib) to `stream` as JSON, then restore."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    configure_logging(LoggingConfig(level="DEBUG", format="json"), stream=stream)
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
