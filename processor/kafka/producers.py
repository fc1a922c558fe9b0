"""Producers that stop within a deadline, and are replaced when Kafka leaves them unable
to write.

`BoundedProducer` is aiokafka's producer with a `stop()` that ends in time and leaves
nothing behind, whatever the broker does (aiokafka's own waits without bound while
the broker is away, aiokafka#1101).

aiokafka's idempotent producer numbers each partition's batches. A batch that expires
in an outage longer than `request_timeout_ms` leaves a gap in those numbers, and from
then on the broker refuses every batch of that partition with
`OutOfOrderSequenceNumber`, for as long as the producer lives (aiokafka#1017); the
Java client recovers by bumping its epoch (KIP-360), aiokafka does not. A fenced or
failed sender is as final. `RenewingProducer` watches every write: after an error that
leaves the producer unusable, or writes that keep failing while the cluster answers,
it closes the producer at once (its writes in flight fail: their senders retry) and
starts a new one, with a new producer id, retrying until Kafka takes it. Meanwhile a
write raises `ProducerRenewing` at once, and `problem` says why the process cannot
write, for its readiness probe.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Callable, Mapping
from typing import Any, Final, Protocol

import structlog
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.errors import (
    IllegalStateError,
    InvalidProducerEpoch,
    InvalidProducerIdMapping,
    InvalidTxnState,
    KafkaError,
    OutOfOrderSequenceNumber,
    ProducerClosed,
    ProducerFenced,
    UnknownProducerId,
)

from processor.errors import ConfigError
from processor.kafka.aiokafka_internals import (
    GroupMember,
    abandon,
    broker_versions,
    commit_offsets_as_member,
    kip447_missing,
    sender_failure,
)
from processor.kafka.batching import BatchBuilder, BatchProducer

__all__ = [
    "BoundedProducer",
    "MemberProducer",
    "ProducerRenewing",
    "RenewingProducer",
    "leaves_producer_unusable",
]

log = structlog.get_logger(__name__)

# Errors after which a producer never writes to that partition (or at all) again.
_UNUSABLE: Final = (
    OutOfOrderSequenceNumber,
    UnknownProducerId,
    InvalidProducerEpoch,
    InvalidProducerIdMapping,
    InvalidTxnState,
    ProducerFenced,
    IllegalStateError,
    ProducerClosed,
)
# How often a producer's health is checked: a stuck producer is noticed within it.
WATCH_INTERVAL_S: Final = 0.5
# First and longest pause between attempts to start a replacement while Kafka refuses.
RESTART_BACKOFF_S: Final = 0.5
MAX_RESTART_BACKOFF_S: Final = 5.0
# A producer stuck again after a replacement is replaced after 2, 4, 8, then 16 times
# renew_after_s: the cause lies elsewhere, and a replacement each time would be noise.
MAX_STUCK_DOUBLINGS: Final = 4


class ProducerRenewing(KafkaError):  # type: ignore[misc]
    """The write was not attempted: the producer is being replaced. Retry shortly."""

    retriable = True


class ProducerReplaced(KafkaError):  # type: ignore[misc]
    """This write was in flight on a producer that was replaced: it may or may not have
    reached Kafka. Retry it (the delivery id makes a second copy harmless)."""

    retriable = True


class BoundedProducer(AIOKafkaProducer):  # type: ignore[misc]
    """aiokafka's producer whose `stop()` delivers what it holds within `flush_timeout_s`,
    then closes at once: no task, future or connection of it outlives the call."""

    def __init__(self, *, flush_timeout_s: float, **options: Any) -> None:
        super().__init__(**options)
        self._flush_timeout_s = flush_timeout_s
        self._closing: asyncio.Future[None] | None = None

    async def stop(self, *, flush_timeout_s: float | None = None) -> None:
        """Flush within `flush_timeout_s` (the one given at construction by default), then
        close; what did not make it fails with ProducerClosed."""
        if self._closing is None:
            limit = self._flush_timeout_s if flush_timeout_s is None else flush_timeout_s
            try:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(limit):
                        await self.flush()
            finally:  # also when the caller's own deadline cuts the flush short
                await self.abandon(ProducerClosed())
        else:
            await self.abandon(ProducerClosed())

    async def abandon(self, reason: BaseException) -> None:
        """Close now, without flushing; whatever is queued or in flight fails with `reason`.

        The close runs to its end even if the caller is cancelled meanwhile (it takes
        milliseconds); a second call waits for the first.
        """
        if self._closing is None:
            self._closing = asyncio.ensure_future(abandon(self, reason))
        await asyncio.shield(self._closing)

    @property
    def failure(self) -> BaseException | None:
        """What stopped this producer's sender for good (it delivers nothing more), if anything."""
        return sender_failure(self)

    async def cluster_metadata(self) -> Any:
        """The cluster's metadata, asked of it now."""
        return await self.client.fetch_all_metadata()


class MemberProducer(BoundedProducer):
    """A transactional BoundedProducer that commits a transaction's offsets as a member
    of the consumer group, at its generation (KIP-447): the group refuses a member that
    lost its partitions, and its transaction fails with GroupFenced."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._members: dict[str, GroupMember] = {}
        commit_offsets_as_member(self, self._members.__getitem__)

    async def require_kip447(self) -> None:
        """Raise ConfigError, saying what to do, unless the cluster speaks the request
        versions that commit offsets as a member (Kafka 2.5 and later); without them every
        transaction would fail, again and again, for a reason no retry fixes."""
        if missing := kip447_missing(await broker_versions(self.client)):
            raise ConfigError(
                "worker.guarantee exactly_once needs Kafka 2.5 or later, and the cluster's "
                f"brokers lack {', '.join(missing)}: upgrade them, or run "
                "worker.guarantee: at_least_once"
            )

    async def send_offsets_as(
        self, offsets: Mapping[TopicPartition, int], member: GroupMember
    ) -> None:
        """Add `offsets` (the next offset per partition) to the transaction, as `member`."""
        self._members[member.group_id] = member
        await self.send_offsets_to_transaction(offsets, member.group_id)


class OwnedProducer(BatchProducer, Protocol):
    """What RenewingProducer needs of each producer it makes: a BoundedProducer, or a fake."""

    async def start(self) -> None: ...
    async def stop(self, *, flush_timeout_s: float | None = None) -> None: ...
    async def abandon(self, reason: BaseException) -> None: ...
    @property
    def failure(self) -> BaseException | None: ...
    async def cluster_metadata(self) -> Any: ...


def leaves_producer_unusable(error: BaseException) -> bool:
    """Whether a producer that raised `error` will never write again, in part or at all."""
    return isinstance(error, _UNUSABLE)


class RenewingProducer:
    """An idempotent producer, replaced when it can no longer write; a `BatchProducer`.

    `make` builds an unstarted producer (with whatever watches its client). `reachable`
    says whether the cluster answers now: writes failing for `renew_after_s` while it
    does mean the producer is stuck. Every start is bounded by `start_timeout_s`.
    """

    def __init__(
        self,
        make: Callable[[], OwnedProducer],
        *,
        name: str,
        reachable: Callable[[], bool],
        renew_after_s: float,
        start_timeout_s: float,
        on_renewed: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.monotonic,
        watch_interval_s: float = WATCH_INTERVAL_S,
        restart_backoff_s: float = RESTART_BACKOFF_S,
    ) -> None:
        self._make = make
        self._name = name
        self._reachable = reachable
        self._renew_after_s = renew_after_s
        self._start_timeout_s = start_timeout_s
        self._on_renewed = on_renewed
        self._clock = clock
        self._watch_interval_s = watch_interval_s
        self._restart_backoff_s = restart_backoff_s
        self._producer: OwnedProducer | None = None
        self._generation = 0  # acks of an older producer no longer count
        self._unacked = 0
        self._progress_at = 0.0  # the last ack, or the first write since all were acked
        self._failing_since: float | None = None
        self._failure: BaseException | None = None
        self._renewal: asyncio.Task[None] | None = None
        self._watch: asyncio.Task[None] | None = None
        self._closing: asyncio.Future[None] | None = None  # a replaced producer's close
        self._stopping = False
        # Replacements for being stuck since the last ack: each waits twice as long
        # (a partition without a leader is not fixed by a new producer every 30 s).
        self._stuck_renewals = 0

    @property
    def problem(self) -> str | None:
        """Why writes cannot succeed now (replacing the producer, writes failing), or None."""
        if self._producer is None:
            return "the Kafka producer is being replaced"
        if self._failure is not None:
            return f"writes to Kafka are failing ({type(self._failure).__name__})"
        return None

    async def start(self) -> None:
        """Start the first producer (the caller bounds the wait) and watch it."""
        producer = self._make()
        try:
            await producer.start()
        except BaseException:
            await producer.abandon(ProducerClosed())
            raise
        self._producer = producer
        self._watch = asyncio.create_task(self._watch_health(), name=f"{self._name}-watch")

    async def stop(self, *, flush_timeout_s: float = 0.0) -> None:
        """Deliver what is queued within `flush_timeout_s`, then close; nothing outlives it."""
        # What fails from here on (the writes the close cuts short) is not news to act on.
        self._stopping = True
        self._generation += 1
        for task in (self._watch, self._renewal):
            if task is not None:
                task.cancel()
                await asyncio.wait([task])  # a cancellation of stop() itself still raises
        if self._closing is not None:
            await self._closing  # a renewal cut short still closes what it replaced
        producer, self._producer = self._producer, None
        if producer is None:
            return
        await producer.stop(flush_timeout_s=flush_timeout_s)

    async def partitions_for(self, topic: str) -> set[int]:
        partitions: set[int] = await self._current().partitions_for(topic)
        return partitions

    def create_batch(self) -> BatchBuilder:
        builder: BatchBuilder = self._current().create_batch()
        return builder

    async def send_batch(
        self, batch: BatchBuilder, topic: str, *, partition: int
    ) -> asyncio.Future[Any]:
        producer = self._current()
        generation = self._generation
        try:
            ack: asyncio.Future[Any] = await producer.send_batch(batch, topic, partition=partition)
        except KafkaError as exc:
            if generation == self._generation:
                self._failed(exc)
            raise
        if generation == self._generation:
            if not self._unacked:
                self._progress_at = self._clock()
            self._unacked += 1
            ack.add_done_callback(functools.partial(self._acked, generation))
        return ack

    async def cluster_metadata(self) -> Any:
        """The cluster's metadata, asked through the current producer."""
        return await self._current().cluster_metadata()

    def _current(self) -> OwnedProducer:
        if self._producer is None:
            raise ProducerRenewing(f"{self._name}: the Kafka producer is being replaced")
        return self._producer

    def _acked(self, generation: int, ack: asyncio.Future[Any]) -> None:
        if generation != self._generation:
            return
        self._unacked -= 1
        if ack.cancelled():
            error: BaseException | None = KafkaError("the write was cancelled before its ack")
        else:
            error = ack.exception()
        if error is not None:
            self._failed(error)
            return
        self._progress_at = self._clock()
        self._stuck_renewals = 0
        if self._failure is not None:
            log.info(
                "kafka.writes_recovered",
                producer=self._name,
                failing_for_s=round(self._clock() - (self._failing_since or 0.0), 1),
            )
            self._failure = self._failing_since = None

    def _failed(self, error: BaseException) -> None:
        if self._failure is None:
            self._failing_since = self._clock()
            log.warning(
                "kafka.writes_failing",
                producer=self._name,
                error=repr(error),
                detail="Kafka did not take a write; the process reports not ready until "
                f"one succeeds. The producer is replaced if the writes keep failing "
                f"{self._renew_after_s:g} s while Kafka answers, or at once after an "
                "error that leaves it unusable.",
            )
        self._failure = error
        if leaves_producer_unusable(error):
            self._renew(error)

    def _renew(self, cause: BaseException) -> None:
        if self._stopping or (self._renewal is not None and not self._renewal.done()):
            return
        self._renewal = asyncio.create_task(self._replace(cause), name=f"{self._name}-renewal")

    async def _watch_health(self) -> None:
        while True:
            await asyncio.sleep(self._watch_interval_s)
            producer = self._producer
            if producer is None:
                continue
            if (died := producer.failure) is not None:
                self._renew(died)
            elif self._reachable() and self._stuck_for() >= self._renew_after_s * (
                2 ** min(self._stuck_renewals, MAX_STUCK_DOUBLINGS)
            ):
                self._stuck_renewals += 1
                self._renew(self._failure or KafkaError("writes are not acknowledged"))

    def _stuck_for(self) -> float:
        """How long writes have failed, or waited for an ack, without progress."""
        now = self._clock()
        stuck = 0.0
        if self._failing_since is not None:
            stuck = now - self._failing_since
        if self._unacked:
            stuck = max(stuck, now - self._progress_at)
        return stuck

    async def _replace(self, cause: BaseException) -> None:
        old, self._producer = self._producer, None
        self._generation += 1
        self._unacked = 0
        log.warning(
            "kafka.producer_replacing",
            producer=self._name,
            error=repr(cause),
            detail="this producer can no longer write (aiokafka cannot recover from this "
            "by itself); its writes in flight fail and are retried by their senders, and a "
            "new producer with a new producer id takes over as soon as Kafka accepts it",
        )
        if old is not None:
            # Shielded: a stop() meanwhile waits for it rather than leave it half-closed.
            self._closing = asyncio.ensure_future(old.abandon(ProducerReplaced(repr(cause))))
            await asyncio.shield(self._closing)
        pause = self._restart_backoff_s
        attempts = 0
        while True:
            attempts += 1
            producer: OwnedProducer | None = None
            try:
                producer = self._make()
                async with asyncio.timeout(self._start_timeout_s):
                    await producer.start()
            except Exception as exc:
                # Kafka not taking it yet, or anything else: the process cannot write
                # without a producer, so it keeps trying rather than give up for good.
                if producer is not None:
                    await producer.abandon(ProducerClosed())
                if not isinstance(exc, KafkaError | OSError | TimeoutError):
                    log.warning("kafka.producer_start_failed", producer=self._name, error=repr(exc))
                await asyncio.sleep(pause)
                pause = min(pause * 2, MAX_RESTART_BACKOFF_S)
                continue
            except BaseException:
                if producer is not None:
                    await producer.abandon(ProducerClosed())
                raise
            break
        self._producer = producer
        self._failure = self._failing_since = None
        self._on_renewed()
        log.info("kafka.producer_replaced", producer=self._name, attempts=attempts)
