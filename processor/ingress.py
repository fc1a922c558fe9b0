"""The HTTP door: verify a delivery, persist its exact bytes, and only then say 202.

`POST <ingress.path>` checks, in order: size (413), Content-Type (415), signature
(401), the envelope's `id`, `event` and `data.uid` (400); then produces the body
unchanged to the raw topic with acks=all and answers `202 {"id": ...}` once Kafka
has acknowledged, or `503` + `Retry-After` so the provider retries. Full validation
is the worker's job; the ingress stays thin so it is never the bottleneck.

Throughput comes from concurrency, not from cutting corners: requests in flight hand
their records to one publisher, which submits everything that arrived while Kafka was
busy as one group (a "group commit"), so one acks=all round trip serves them all.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Annotated, Final

import msgspec
import structlog
from aiohttp import hdrs, web
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from processor.config import Config, ConfigError, IngressConfig
from processor.events import MAX_IDENTIFIER_LENGTH, format_received_at
from processor.kafka_clients import BrokerUnavailable, client_options
from processor.metrics import IngressMetrics, render
from processor.publisher import KafkaPublisher, NotReady, Publisher, RawRecord
from processor.shutdown import stop_on_signals
from processor.signing import NoVerification, SignatureError, Verifier, build_verifier

__all__ = ["READY_TIMEOUT_S", "create_app", "new_producer", "run_ingress"]

log = structlog.get_logger(__name__)

# A readiness probe must answer before the orchestrator gives up on it, broker down or not.
READY_TIMEOUT_S: Final = 2.0
# Start-up gives the cluster this long to answer before failing with a clear message.
CONNECT_TIMEOUT_S: Final = 30.0

# The same bounds as the contract (processor.events): these become the record key and
# headers, and an unbounded one could push a record past the topic's size limit.
_NonEmpty = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_IDENTIFIER_LENGTH)]


class _Data(msgspec.Struct):
    uid: _NonEmpty


class _Envelope(msgspec.Struct):
    """Only what the ingress needs: the id to answer with, the event header, the key."""

    id: _NonEmpty
    event: _NonEmpty
    data: _Data


_decode_envelope = msgspec.json.Decoder(_Envelope).decode
_encode_json = msgspec.json.encode


class _Refusal(Exception):
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
        body = _encode_json({"error": self.error, "detail": self.detail})
        return web.Response(
            status=self.status, body=body, content_type="application/json", headers=self.headers
        )


class _Ingress:
    """The request handlers and what they share: publisher, verifier, metrics."""

    def __init__(
        self,
        *,
        config: Config,
        publisher: Publisher,
        verifier: Verifier,
        metrics: IngressMetrics,
    ) -> None:
        self._settings = config.ingress
        self._topic = config.topics.raw
        self._publisher = publisher
        self._verifier = verifier
        self._metrics = metrics
        self._retry_after = {"Retry-After": str(config.ingress.retry_after_s)}

    async def webhook(self, request: web.Request) -> web.Response:
        started = time.perf_counter()
        received_at = format_received_at(datetime.now(UTC))
        try:
            envelope = await self._accept(request, received_at)
        except _Refusal as refusal:
            response = refusal.response()
            self._metrics.count_response(refusal.status)
            (log.warning if refusal.status >= 500 else log.info)(
                "ingress.rejected",
                delivery_id=refusal.delivery_id,
                status=refusal.status,
                error=refusal.error,
                detail=refusal.detail,
                latency_ms=_ms_since(started),
            )
            return response
        self._metrics.count_response(202)
        log.info(
            "ingress.accepted",
            delivery_id=envelope.id,
            webhook_event=envelope.event,
            status=202,
            latency_ms=_ms_since(started),
        )
        return web.Response(
            status=202, body=_encode_json({"id": envelope.id}), content_type="application/json"
        )

    async def _accept(self, request: web.Request, received_at: str) -> _Envelope:
        """Run every check, then publish; raises _Refusal at the first that fails."""
        limit = self._settings.max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            raise _too_large(limit)
        content_type = request.headers.get(hdrs.CONTENT_TYPE)
        if not content_type:
            raise _Refusal(415, "unsupported_media_type", "missing Content-Type: send JSON")
        mime = content_type.partition(";")[0].strip().lower()
        if not _is_json(mime):
            raise _Refusal(
                415,
                "unsupported_media_type",
                f"Content-Type {mime} is not JSON: send application/json",
            )
        body = await _read_bounded(request, limit)
        try:
            self._verifier.verify(body, request.headers)
        except SignatureError as exc:
            raise _Refusal(401, "invalid_signature", exc.reason) from None
        envelope = _decode(body)
        await self._publish(body, envelope, content_type=content_type, received_at=received_at)
        return envelope

    async def _publish(
        self, body: bytes, envelope: _Envelope, *, content_type: str, received_at: str
    ) -> None:
        headers = [
            ("delivery-id", envelope.id.encode()),
            ("event", envelope.event.encode()),
            ("received-at", received_at.encode()),
            ("content-type", content_type.encode("utf-8", "surrogateescape")),
        ]
        record = RawRecord(self._topic, envelope.data.uid.encode(), body, headers)
        timeout = self._settings.publish_timeout_s
        in_flight = self._metrics.publishes_in_flight
        in_flight.inc()
        started = time.perf_counter()
        try:
            # On timeout the record may still reach Kafka later (giving up the wait does
            # not withdraw it). The provider retries after our 503, so the topic may then
            # hold the delivery twice: harmless, the delivery id is the idempotency key.
            async with asyncio.timeout(timeout):
                error = await self._publisher.publish(record)
        except TimeoutError:
            raise _Refusal(
                503,
                "kafka_timeout",
                f"Kafka did not acknowledge the delivery within {timeout} s; retry later",
                headers=self._retry_after,
                delivery_id=envelope.id,
            ) from None
        finally:
            in_flight.dec()
        if error is not None:
            raise _Refusal(
                503,
                "kafka_unavailable",
                f"Kafka refused the write ({type(error).__name__}); retry later",
                headers=self._retry_after,
                delivery_id=envelope.id,
            )
        self._metrics.publish_seconds.observe(time.perf_counter() - started)

    async def healthz(self, request: web.Request) -> web.Response:
        """The process is up and serving; says nothing about Kafka (that is /readyz)."""
        return web.json_response({"status": "ok"})

    async def readyz(self, request: web.Request) -> web.Response:
        """Can a delivery be persisted now? Kafka answers and the raw topic exists."""
        try:
            async with asyncio.timeout(READY_TIMEOUT_S):
                await self._publisher.check_ready(self._topic)
        except TimeoutError:
            return _not_ready(
                "kafka_unreachable",
                f"Kafka did not answer a metadata request within {READY_TIMEOUT_S} s",
            )
        except NotReady as exc:
            return _not_ready(exc.error, exc.detail)
        return web.json_response({"status": "ready"})

    async def metrics(self, request: web.Request) -> web.Response:
        body, content_type = render(self._metrics.registry)
        return web.Response(body=body, headers={hdrs.CONTENT_TYPE: content_type})


def create_app(*, config: Config, publisher: Publisher) -> web.Application:
    """The ingress as an aiohttp app, so tests and benchmarks can serve it in-process.

    `publisher` persists accepted deliveries: `KafkaPublisher` over a producer the
    caller starts and stops (acks="all", idempotent), or a fake in tests.
    Raises ConfigError when the signature scheme cannot work.
    """
    verifier = build_verifier(config.ingress)
    if isinstance(verifier, NoVerification):
        log.warning(
            "ingress.unverified",
            detail="ingress.signature_scheme is none: anyone can post deliveries; "
            "never expose this ingress to the internet",
        )
    ingress = _Ingress(
        config=config, publisher=publisher, verifier=verifier, metrics=IngressMetrics()
    )
    app = web.Application()
    app.cleanup_ctx.append(lambda _: publisher.running())
    app.add_routes(
        [
            web.post(config.ingress.path, ingress.webhook),
            web.get("/healthz", ingress.healthz),
            web.get("/readyz", ingress.readyz),
            web.get("/metrics", ingress.metrics),
        ]
    )
    return app


async def run_ingress(config: Config) -> None:
    """Serve until SIGTERM or SIGINT, then drain and return within ingress.shutdown_timeout_s.

    Raises ConfigError (no signing secret, port taken) or BrokerUnavailable before serving.
    """
    settings = config.ingress
    producer = new_producer(config)
    runner: web.AppRunner | None = None
    try:
        app = create_app(config=config, publisher=KafkaPublisher(producer))
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                await producer.start()
        except (TimeoutError, KafkaError) as exc:
            raise BrokerUnavailable(
                f"cannot reach Kafka at {config.kafka.bootstrap_servers} "
                f"({type(exc).__name__}): start it (`processor broker start`), or fix "
                "kafka.bootstrap_servers / KAFKA_BOOTSTRAP_SERVERS and the TLS/SASL settings"
            ) from None
        runner = await _listen(app, settings)
        log.info(
            "ingress.started",
            host=settings.host,
            port=settings.port,
            path=settings.path,
            topic=config.topics.raw,
            signature_scheme=settings.signature_scheme,
            secrets=len(settings.secrets),
        )
        await _wait_for_stop_signal()
        log.info("ingress.stopping")
    finally:
        try:
            async with asyncio.timeout(settings.shutdown_timeout_s):
                await _drain(runner, producer)
        except TimeoutError:
            log.warning(
                "ingress.drain_timeout",
                detail=f"shutdown took over {settings.shutdown_timeout_s} s "
                "(ingress.shutdown_timeout_s); unanswered deliveries will be retried",
            )
    log.info("ingress.stopped")


def new_producer(config: Config) -> AIOKafkaProducer:
    """The producer the ingress needs: nothing is 2xx until every in-sync replica has it.

    Its batch and request limits are the topic's, which config checks leaves room for
    the largest body the ingress accepts, so Kafka never refuses a delivery the HTTP
    side took, and a busy group fills one batch per partition instead of several that
    would each wait for the previous one's round trip.
    """
    return AIOKafkaProducer(
        acks="all",
        enable_idempotence=True,
        max_batch_size=config.topics.max_message_bytes,
        max_request_size=config.topics.max_message_bytes,
        **client_options(config.kafka),
    )


async def _listen(app: web.Application, settings: IngressConfig) -> web.AppRunner:
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
    return runner


async def _drain(runner: web.AppRunner | None, producer: AIOKafkaProducer) -> None:
    """Stop accepting, let in-flight requests end, then flush and close the producer."""
    if runner is not None:
        await runner.cleanup()
    # A record still queued now was never answered 2xx, so the provider will retry it:
    # the flush is a courtesy, and the caller bounds it so that shutdown always ends.
    await producer.stop()


async def _wait_for_stop_signal() -> None:
    stop = asyncio.Event()
    with stop_on_signals(stop):
        await stop.wait()


async def _read_bounded(request: web.Request, limit: int) -> bytes:
    """The body, refusing with 413 as soon as it exceeds `limit` (chunked uploads).

    What the client still sends after a 413 is discarded by aiohttp, not buffered.
    """
    chunks: list[bytes] = []
    size = 0
    while chunk := await request.content.readany():
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def _decode(body: bytes) -> _Envelope:
    try:
        return _decode_envelope(body)
    except msgspec.ValidationError as exc:
        raise _Refusal(400, "invalid_envelope", str(exc)) from None
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise _Refusal(400, "malformed_json", f"body is not valid JSON: {exc}") from None


def _is_json(mime: str) -> bool:
    return mime == "application/json" or (
        mime.startswith("application/") and mime.endswith("+json")
    )


def _too_large(limit: int) -> _Refusal:
    return _Refusal(413, "body_too_large", f"body exceeds {limit} bytes (ingress.max_body_bytes)")


def _not_ready(error: str, detail: str) -> web.Response:
    log.warning("ingress.not_ready", error=error, detail=detail)
    return web.json_response({"error": error, "detail": detail}, status=503)


def _ms_since(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)
