"""The HTTP door: verify a delivery, persist its exact bytes, and only then say 202.

`POST <ingress.path>` checks, in order (processor.ingress.checks): declared size
(413), Content-Type and Content-Encoding (415), the body read within its size and
time bounds (413, 408; gzip and deflate inflated), signature (401), UTF-8 and the
envelope's `id`, `event` and `data.uid` (400); then produces the body to the raw
topic with acks=all and answers `202 {"id": ...}` once Kafka has acknowledged, or
`503` + `Retry-After` so the provider retries. Every other answer is JSON
(processor.ingress.responses). Full validation is the worker's job; the ingress stays
thin so it is never the bottleneck. The public port serves that and a `/healthz` for
load balancers only; `/readyz` and `/metrics` are on the management port.

Throughput comes from concurrency, not from cutting corners: requests in flight hand
their records to one publisher, which submits everything that arrived while Kafka was
busy as one group (a "group commit"), so one acks=all round trip serves them all.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Final, NamedTuple

import msgspec
import structlog
from aiohttp import web

from processor.config import Config
from processor.headers import (
    CONTENT_TYPE,
    DELIVERY_ID,
    EVENT,
    RECEIVED_AT,
    format_received_at,
)
from processor.http_probes import healthz, hide_versions, probe_routes, serve_probes
from processor.ingress.allocator import return_freed_memory
from processor.ingress.checks import (
    Envelope,
    check_content_encoding,
    check_content_type,
    check_declared_length,
    check_expectation,
    decode,
    read_body,
)
from processor.ingress.publisher import KafkaPublisher, NotReady, Publisher
from processor.ingress.responses import INGRESS_METRICS, Refusal, errors_as_json
from processor.ingress.server import Listener, listen
from processor.ingress.signing import (
    NoVerification,
    SignatureError,
    Verifier,
    build_verifier,
    short_secrets,
)
from processor.kafka.batching import RawRecord
from processor.kafka.clients import (
    connect,
    ingress_producer_options,
    renewing_producer,
    wait_until_reachable,
)
from processor.kafka.connectivity import Connectivity
from processor.kafka.producers import RenewingProducer
from processor.metrics import IngressMetrics
from processor.shutdown import stop_on_signals

__all__ = ["READY_TIMEOUT_S", "IngressApps", "create_apps", "run_ingress"]

log = structlog.get_logger(__name__)

# A readiness probe must answer before the orchestrator gives up on it, broker down or not.
READY_TIMEOUT_S: Final = 2.0
# While Kafka refuses, one line this often says how many deliveries were refused since.
REFUSING_SUMMARY_S: Final = 30.0
# The 503s of Kafka not taking writes: one state, said once (ingress.refusing).
_KAFKA_REFUSALS: Final = frozenset({"kafka_timeout", "kafka_unavailable"})
# Shedding has ended once a delivery is taken in after this long without shedding one
# (slots free up between sheds while it lasts).
SHED_QUIET_S: Final = 1.0

_encode_json = msgspec.json.encode


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
        self._log_accepted = config.ingress.log_accepted
        # The last /readyz answer's reason: a probe every few seconds during an outage
        # logs the change, not every probe.
        self._not_ready: str | None = None
        self._refusing = _Streak(
            began="ingress.refusing", still="ingress.still_refusing", ended="ingress.accepting"
        )
        self._shedding = _Streak(
            began="ingress.shedding", still="ingress.still_shedding", ended="ingress.shedding_ended"
        )
        self._in_flight = 0
        self._max_in_flight = config.ingress.max_in_flight

    async def webhook(self, request: web.Request) -> web.Response:
        started = time.perf_counter()
        received_at = format_received_at(datetime.now(UTC))
        try:
            envelope = await self._accept(request, received_at)
        except Refusal as refusal:
            return self._refused(refusal, started)
        self._metrics.count_response(202)
        if self._refusing.active:
            self._refusing.end()
        if self._log_accepted:
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

    async def expect(self, request: web.Request) -> web.Response | None:
        """Answers a request's `Expect:` before its body is read: `100 Continue` only for
        a body that may fit, else the refusal at once, so a body too large is never
        invited (aiohttp's default would invite any)."""
        started = time.perf_counter()
        try:
            check_expectation(request, self._settings.max_body_bytes)
        except Refusal as refusal:
            return self._refused(refusal, started)
        # As aiohttp's own default expect handler does (private to aiohttp, so written out).
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0  # the answer proper is still to come
        return None

    def _shed(self, delivery_id: str) -> Refusal:
        """503 at once, unpublished: the ingress holds max_in_flight deliveries for Kafka
        already, and one more would only wait behind them past the sender's timeout.
        Counted after the signature, so only genuine deliveries take a place."""
        self._metrics.shed.inc()
        self._shedding.refused(
            said={
                "max_in_flight": self._max_in_flight,
                "detail": "more deliveries arrive than Kafka and this process take: each one "
                "beyond ingress.max_in_flight is answered 503 + Retry-After at once (the "
                "provider retries); add ingress replicas if it lasts",
            }
        )
        return Refusal(
            503,
            "overloaded",
            f"the ingress is handling {self._max_in_flight} deliveries already; retry later",
            headers=self._retry_after,
            delivery_id=delivery_id,
        )

    def _refused(self, refusal: Refusal, started: float) -> web.Response:
        self._metrics.count_response(refusal.status)
        if refusal.error in _KAFKA_REFUSALS:
            self._refusing_to_write(refusal)
        (log.debug if refusal.status == 503 else log.info)(
            "ingress.rejected",
            delivery_id=refusal.delivery_id,
            status=refusal.status,
            error=refusal.error,
            detail=refusal.detail,
            latency_ms=_ms_since(started),
        )
        return refusal.response()

    def _refusing_to_write(self, refusal: Refusal) -> None:
        """Kafka not taking writes is a state: said when it begins, summarised while it
        lasts, and ended by the next 202 (`ingress.accepting`); each refused request is a
        DEBUG line and a count in /metrics, not a warning of its own."""
        self._refusing.refused(
            said={
                "delivery_id": refusal.delivery_id,
                "error": refusal.error,
                "detail": refusal.detail,
                "then": "every delivery is answered 503 + Retry-After until Kafka takes one again",
            },
            summarised={"error": refusal.error},
        )

    async def _accept(self, request: web.Request, received_at: str) -> Envelope:
        """Run every check, then publish; raises Refusal at the first that fails."""
        limit = self._settings.max_body_bytes
        check_declared_length(request, limit)
        content_type = check_content_type(request.headers)
        encoding = check_content_encoding(request.headers)
        body = await read_body(
            request, limit=limit, within_s=self._settings.body_timeout_s, encoding=encoding
        )
        try:
            self._verifier.verify(body, request.headers)
        except SignatureError as exc:
            raise Refusal(401, "invalid_signature", exc.reason) from None
        envelope = decode(body)
        if self._in_flight >= self._max_in_flight:
            raise self._shed(envelope.id)
        if self._shedding.active and self._shedding.quiet_for_s() >= SHED_QUIET_S:
            self._shedding.end()
        self._in_flight += 1
        self._metrics.deliveries_in_flight.inc()
        try:
            await self._publish(body, envelope, content_type=content_type, received_at=received_at)
        finally:
            self._in_flight -= 1
            self._metrics.deliveries_in_flight.dec()
        return envelope

    async def _publish(
        self, body: bytes, envelope: Envelope, *, content_type: str, received_at: str
    ) -> None:
        headers = [
            (DELIVERY_ID, envelope.id.encode()),
            (EVENT, envelope.event.encode()),
            (RECEIVED_AT, received_at.encode()),
            (CONTENT_TYPE, content_type.encode("utf-8", "surrogateescape")),
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
            raise Refusal(
                503,
                "kafka_timeout",
                f"Kafka did not acknowledge the delivery within {timeout} s; retry later",
                headers=self._retry_after,
                delivery_id=envelope.id,
            ) from None
        finally:
            in_flight.dec()
        if error is not None:
            raise Refusal(
                503,
                "kafka_unavailable",
                f"Kafka refused the write ({type(error).__name__}); retry later",
                headers=self._retry_after,
                delivery_id=envelope.id,
            )
        self._metrics.publish_seconds.observe(time.perf_counter() - started)

    async def readyz(self, request: web.Request) -> web.Response:
        """Can a delivery be persisted now? Kafka answers and the raw topic exists."""
        try:
            async with asyncio.timeout(READY_TIMEOUT_S):
                await self._publisher.check_ready(self._topic)
        except TimeoutError:
            return self._unready(
                "kafka_unreachable",
                f"Kafka did not answer a metadata request within {READY_TIMEOUT_S} s",
            )
        except NotReady as exc:
            return self._unready(exc.error, exc.detail)
        if self._not_ready is not None:
            log.info("ingress.ready", was=self._not_ready)
            self._not_ready = None
        return web.json_response({"status": "ready"})

    def _unready(self, error: str, detail: str) -> web.Response:
        if error != self._not_ready:
            log.warning("ingress.not_ready", error=error, detail=detail)
            self._not_ready = error
        return web.json_response({"error": error, "detail": detail}, status=503)


class IngressApps(NamedTuple):
    """The ingress's two ports, as aiohttp apps (tests and benchmarks serve them
    in-process)."""

    # POST <ingress.path> and GET /healthz (for load balancers): the port exposed to the
    # internet, which tells nobody anything about the process.
    public: web.Application
    # GET /readyz, /metrics and /healthz: probes and scrapers, on ingress.management_port.
    management: web.Application


def create_apps(
    *, config: Config, publisher: Publisher, metrics: IngressMetrics | None = None
) -> IngressApps:
    """The ingress's apps.

    `publisher` persists accepted deliveries: `KafkaPublisher` over a producer the
    caller starts and stops (acks="all", idempotent), or a fake in tests; the public
    app runs it. `metrics` is what /metrics serves (a fresh set by default).
    Raises ConfigError when the signature scheme cannot work.
    """
    verifier = build_verifier(config.ingress)
    for short in short_secrets(config.ingress):
        log.warning(
            "ingress.short_secret",
            secret=short,
            detail="a signing secret under 16 bytes (128 bits) could be found by trying "
            "keys against a few signed deliveries, and then anyone could sign: ask the "
            "provider for a longer secret if it offers one, and keep this ingress's "
            "deliveries (and its logs) away from anyone who need not see them",
        )
    if isinstance(verifier, NoVerification):
        log.warning(
            "ingress.unverified",
            detail="ingress.signature_scheme is none: anyone can post deliveries; "
            "never expose this ingress to the internet",
        )
    metrics = IngressMetrics() if metrics is None else metrics
    ingress = _Ingress(config=config, publisher=publisher, verifier=verifier, metrics=metrics)
    public = web.Application(middlewares=[errors_as_json(webhook_path=config.ingress.path)])
    hide_versions(public)
    public[INGRESS_METRICS] = metrics
    public.cleanup_ctx.append(lambda _: publisher.running())
    public.add_routes(
        [
            web.post(config.ingress.path, ingress.webhook, expect_handler=ingress.expect),
            web.get("/healthz", healthz),
        ]
    )
    management = web.Application()
    hide_versions(management)
    management.add_routes([web.get("/readyz", ingress.readyz), *probe_routes(metrics.registry)])
    return IngressApps(public, management)


async def run_ingress(config: Config) -> None:
    """Serve until SIGTERM or SIGINT, then drain and return within ingress.shutdown_timeout_s.

    The signal handlers come first, so a SIGTERM while Kafka is still being reached
    (the ingress may be PID 1 in a container) ends the start at once.
    Raises ConfigError (no signing secret, port taken) or BrokerUnavailable before serving.
    """
    settings = config.ingress
    return_freed_memory()
    stop = asyncio.Event()
    with stop_on_signals(stop):
        metrics = IngressMetrics()
        producer = renewing_producer(
            config,
            name="ingress",
            options=ingress_producer_options(config),
            connectivity=Connectivity(
                bootstrap=config.kafka.bootstrap_servers, registry=metrics.registry
            ),
        )
        listener: Listener | None = None
        try:
            apps = create_apps(config=config, publisher=KafkaPublisher(producer), metrics=metrics)

            async def start_producer() -> None:
                await wait_until_reachable(config.kafka)
                await producer.start()

            if not await connect(start_producer, config=config.kafka, stop=stop):
                return
            async with serve_probes(
                apps.management,
                host=settings.management_host,
                port=settings.management_port,
                setting="ingress.management_port",
                event="ingress.management_listening",
            ):
                listener = await listen(apps.public, settings)
                log.info(
                    "ingress.started",
                    host=settings.host,
                    port=settings.port,
                    path=settings.path,
                    management_port=settings.management_port,
                    topic=config.topics.raw,
                    signature_scheme=settings.signature_scheme,
                    secrets=len(settings.secrets),
                )
                await stop.wait()
                log.info("ingress.stopping")
                # Deliveries in flight end before the probes go: readiness answers meanwhile.
                await _drain(listener, producer, within_s=settings.shutdown_timeout_s)
                listener = None
        finally:
            # After a failure on the way; a second stop of the producer does nothing.
            await _drain(listener, producer, within_s=settings.shutdown_timeout_s)
            log.info("ingress.stopped")


async def _drain(listener: Listener | None, producer: RenewingProducer, *, within_s: float) -> None:
    """Stop accepting, let in-flight requests end, then flush and close the producer,
    all within `within_s` (ingress.shutdown_timeout_s)."""
    deadline = asyncio.get_running_loop().time() + within_s
    try:
        if listener is not None:
            async with asyncio.timeout_at(deadline):
                await listener.close()
    except TimeoutError:
        log.warning(
            "ingress.drain_timeout",
            detail=f"shutdown took over {within_s} s (ingress.shutdown_timeout_s); "
            "unanswered deliveries will be retried",
        )
    # A record still queued now was never answered 2xx, so the provider will retry it:
    # the flush is a courtesy, bounded so that shutdown always ends.
    await producer.stop(flush_timeout_s=max(0.0, deadline - asyncio.get_running_loop().time()))


class _Streak:
    """Deliveries refused in a row for one reason, said as a state rather than a line
    each: `began` (WARNING) at the first, `still` (WARNING) with the counts at most every
    REFUSING_SUMMARY_S while it lasts, `ended` (INFO) with the total."""

    def __init__(self, *, began: str, still: str, ended: str) -> None:
        self._began, self._still, self._ended = began, still, ended
        self.active = False
        self._since = self._summarised_at = self._last_at = 0.0
        self._refused = self._unsummarised = 0

    def refused(
        self, *, said: Mapping[str, object], summarised: Mapping[str, object] | None = None
    ) -> None:
        """Count one refusal; `said` goes with the streak's first line, `summarised` with
        each summary."""
        now = time.monotonic()
        if not self.active:
            self.active = True
            self._since = self._summarised_at = now
            self._refused = self._unsummarised = 0
            log.warning(self._began, **said)
        elif now - self._summarised_at >= REFUSING_SUMMARY_S:
            log.warning(
                self._still,
                **(summarised or {}),
                refused=self._unsummarised,
                refused_total=self._refused,
                for_s=round(now - self._since, 1),
            )
            self._summarised_at, self._unsummarised = now, 0
        self._refused += 1
        self._unsummarised += 1
        self._last_at = now

    def quiet_for_s(self) -> float:
        """Since the last refusal counted."""
        return time.monotonic() - self._last_at

    def end(self) -> None:
        self.active = False
        log.info(self._ended, refused=self._refused, for_s=round(time.monotonic() - self._since, 1))


def _ms_since(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)
