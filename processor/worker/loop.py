"""The worker: consume `webhooks.raw`, route each delivery, produce, then commit.

One loop, batch in and batch out:

1. `getmany` a batch from the partitions this member owns;
2. route every record (pure, never raises) to exactly one destination;
3. screen out provider retries (processor.dedup.screen), when dedup is on;
4. hand the outputs, the dedup changelog and the batch's next offsets to a
   Checkpoint of the guarantee, which makes them durable together or fails:
   at least once (processor.worker.checkpoint) or exactly once (processor.worker.exactly_once).

A failed produce seeks back to the failed partitions' first offsets and retries
them, pausing longer while the failures last. A rebalance waits for the batch in
flight, never for a pause; a partition assigned is set up (its transactional
producer fences the previous owner, its remembered ids are restored) before any of
its records is routed.

The consumer, guarantee and dedup can be given (tests pass fakes); by default they
are built from the config, with aiokafka (processor.worker.parts).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import structlog
from aiokafka import TopicPartition
from aiokafka.errors import KafkaError

from processor.config import Config
from processor.contract.headers import ERROR_CLASS
from processor.dedup.changelog import KafkaChangelog
from processor.dedup.screen import Dedup, Screened
from processor.kafka import unreadable
from processor.kafka.clients import (
    connect,
    group_instance_id,
    require_topics,
    wait_until_reachable,
)
from processor.kafka.topics import all_topics
from processor.metrics import WorkerMetrics
from processor.routing import Routed, Router
from processor.shutdown import stop_on_signals
from processor.worker.breaker import Breakers
from processor.worker.checkpoint import CommitFailed, Guarantee, ProduceFailed
from processor.worker.http import Unready, serve_health_and_metrics
from processor.worker.parts import Batch, Consumer, kafka_parts
from processor.worker.rebalance import Rebalance, partition_names

__all__ = ["Worker", "run_worker"]

log = structlog.get_logger(__name__)


class Worker:
    """One member of the routing consumer group; `run` until `stop` is set.

    It counts into `metrics`: pass the WorkerMetrics whose registry is served; the
    default, a fresh one nobody reads, suits tests and benchmarks.
    """

    def __init__(
        self,
        *,
        config: Config,
        metrics: WorkerMetrics | None = None,
        consumer: Consumer | None = None,
        guarantee: Guarantee | None = None,
        dedup: Dedup | None = None,
    ) -> None:
        """Without `consumer` and `guarantee`, the worker makes its Kafka clients from
        `config` (processor.worker.parts), dedup's included; given parts are used as
        they are, and dedup is then on only when given."""
        self._config = config
        self._metrics = WorkerMetrics() if metrics is None else metrics
        self._router = Router(routing=config.routing, topics=config.topics)
        # A record aiokafka cannot read reaches the router marked, to be parked.
        unreadable.install()
        # Clients made here wait for the cluster at start; given ones are the caller's.
        self._reach: Callable[[], Awaitable[None]] = _nothing
        self._reachable: Callable[[], bool] = lambda: True
        self._changelog: KafkaChangelog | None = None
        if consumer is None or guarantee is None:
            parts = kafka_parts(config, self._metrics)
            consumer, guarantee = parts.consumer, parts.guarantee
            dedup, self._changelog = parts.dedup, parts.changelog
            self._reach = functools.partial(wait_until_reachable, config.kafka)
            connectivity = parts.connectivity
            self._reachable = lambda: connectivity.reachable
        self._consumer: Consumer = consumer
        self._guarantee: Guarantee = guarantee
        self._dedup = dedup
        # Held while a batch is between fetch and commit; a rebalance waits for it.
        self._in_flight = asyncio.Lock()
        settings = config.worker
        self._breakers = Breakers(
            max_ratio=settings.dlq_max_ratio,
            window=settings.dlq_window_records,
            max_consecutive=settings.dlq_max_consecutive,
            pause_s=settings.dlq_pause_s,
        )
        self._backoff = config.worker.retry_backoff_s
        self._failed_attempts = 0  # consecutive failed produces of the batch being retried
        self._produce_failure: ProduceFailed | None = None  # the last of them
        self._commit_failure: CommitFailed | None = None  # the last commit, if it failed

    async def run(self, stop: asyncio.Event) -> None:
        """Route until `stop` is set, then finish the batch in flight and leave the group.

        From `stop` to return takes at most the batch in flight (produce_timeout_s +
        commit_timeout_s, milliseconds when Kafka is healthy) plus shutdown_timeout_s.
        """
        try:
            if not await self._start(stop):
                return
            while (batch := await self._fetch(stop)) is not None:
                self._resume_rested()
                if not batch:
                    continue
                fetched_at = time.perf_counter()
                async with self._in_flight:
                    done = await self._process(batch, fetched_at)
                if not done:
                    await self._back_off(stop)
        finally:
            await self._close()

    async def _back_off(self, stop: asyncio.Event) -> None:
        """Pause before retrying a failed batch, without the revoke lock: a rebalance
        can take the partitions meanwhile (the batch was rewound, nothing committed),
        and `stop` ends the pause at once."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._backoff):
                await stop.wait()
        self._backoff = min(self._backoff * 2, self._config.worker.max_retry_backoff_s)

    async def _fetch(self, stop: asyncio.Event) -> Batch | None:
        """The next batch (maybe empty), or None once `stop` is set.

        A fetch waits without bound while the group rebalances; racing it against
        `stop` keeps SIGTERM prompt then too. Giving up a fetch loses nothing: its
        offsets are never committed, so the group reads those records again.
        """
        if stop.is_set():
            return None
        fetch = asyncio.ensure_future(
            self._consumer.getmany(
                timeout_ms=self._config.worker.fetch_timeout_ms,
                max_records=self._config.worker.max_batch_records,
            )
        )
        stopping = asyncio.ensure_future(stop.wait())
        try:
            done, _ = await asyncio.wait((fetch, stopping), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (fetch, stopping):
                task.cancel()
        if fetch in done:
            batch: Batch = fetch.result()  # re-raises what getmany raised
            return batch
        return None

    async def _start(self, stop: asyncio.Event) -> bool:
        """Connect within kafka.connect_timeout_s, then join the group; False if stopped.

        Only connecting is bounded: waiting for partitions is normal (a member that
        died without leaving holds its partitions until its session expires) and
        happens in the first fetches, which `stop` can interrupt.
        """

        async def start_clients() -> None:
            await self._reach()
            await self._guarantee.start()
            await self._consumer.start()
            if self._changelog is not None:
                await self._changelog.start()
            # Every destination must exist, or the first batch for it would stall.
            require_topics(
                await self._consumer.topics(),
                all_topics(self._config),
                bootstrap=kafka.bootstrap_servers,
            )

        kafka = self._config.kafka
        if not await connect(start_clients, config=kafka, stop=stop):
            return False
        # Subscribing after start: start() would otherwise also wait for the assignment.
        self._consumer.subscribe(
            [self._config.topics.raw],
            listener=Rebalance(
                in_flight=self._in_flight,
                guarantee=self._guarantee,
                dedup=self._dedup,
                breakers=self._breakers,
                on_moved=self._partitions_moved,
            ),
        )
        worker = self._config.worker
        log.info(
            "worker.started",
            topic=self._config.topics.raw,
            group_id=worker.group_id,
            group_instance_id=group_instance_id(self._config),
            bootstrap=kafka.bootstrap_servers,
            detail="waiting for the group to assign partitions: at once, unless a member "
            "that stopped without leaving the group (a crash, kill -9) still holds them; "
            f"those come after its session expires, {worker.session_timeout_ms / 1000:g} s "
            "at most (worker.session_timeout_ms). A static member (worker.group_instance_id) "
            "that restarts takes its own back at once.",
        )
        return True

    async def _close(self) -> None:
        # Leaving the group hands the partitions over at once. A static member
        # (worker.group_instance_id) does not leave: it keeps its partitions for
        # session_timeout_ms, so that a restart within it needs no rebalance.
        try:
            async with asyncio.timeout(self._config.worker.shutdown_timeout_s):
                await self._consumer.stop()
                await self._guarantee.stop()
                if self._changelog is not None:
                    await self._changelog.stop()
        except (TimeoutError, KafkaError) as exc:
            log.warning("worker.close_failed", error=repr(exc))
        log.info("worker.stopped", group_id=self._config.worker.group_id)

    async def _process(self, batch: Batch, fetched_at: float) -> bool:
        """Route `batch` and commit it; False when some of it was rewound to be retried."""
        route = self._router.route
        dedup = self._dedup
        breakers = self._breakers
        checkpoint = self._guarantee.begin()
        routed: dict[TopicPartition, list[Routed]] = {}
        screened: dict[TopicPartition, Screened] = {}
        kept_records: dict[TopicPartition, Sequence[Any]] = {}
        unrestored: dict[TopicPartition, Sequence[Any]] = {}
        # Per partition, which records went to the DLQ: what its breaker counts.
        dead_letters: dict[TopicPartition, list[bool]] = {}
        for partition, records in batch.items():
            results = [route(record) for record in records]
            if breakers.enabled:
                dead = [result.outcome == "dlq" for result in results]
                if (trip := breakers.would_trip(partition, dead)) is not None:
                    self._hold(partition, records[trip.at :], results[trip.at :], trip.reason)
                    records, results = records[: trip.at], results[: trip.at]
                    if not records:
                        continue
                    dead = dead[: trip.at]
                dead_letters[partition] = dead
            if dedup is not None and not dedup.owns(partition):
                await dedup.assigned([partition])  # its restore failed at assignment
                if not dedup.owns(partition):
                    unrestored[partition] = records
                    continue
            kept_records[partition] = records
            routed[partition] = results
            if dedup is None:
                checkpoint.produce(partition, results)
                continue
            screened[partition] = kept = dedup.screen(partition, results)
            checkpoint.produce(partition, kept.outputs)
            checkpoint.add_state(partition, kept.changelog)
        batch = kept_records  # less what a DLQ breaker held back or dedup cannot screen yet
        self._rewind(unrestored)
        if not batch:
            return not unrestored
        offsets = {partition: records[-1].offset + 1 for partition, records in batch.items()}
        try:
            await checkpoint.commit(offsets)
        except ProduceFailed as failure:
            await checkpoint.abort()
            failed = failure.failed_partitions(batch)
            # A fenced partition is another worker's now: not retried (it logged why).
            retried = {tp for tp in failed if not failure.fenced(tp)}
            if retried:
                self._produce_failed(failure, records=sum(len(batch[tp]) for tp in retried))
            self._rewind({tp: batch[tp] for tp in retried})
            written = {tp: batch[tp] for tp in batch if tp not in failed}
            self._done(written, routed, screened, dead_letters)
            return not retried and not unrestored
        except CommitFailed as failure:
            # The outputs are written; the next owner re-routes the batch (duplicates).
            self._metrics.commit_failures.inc()
            if self._commit_failure is None:
                count = sum(len(records) for records in batch.values())
                log.warning("batch.commit_failed", error=repr(failure.cause), records=count)
            self._commit_failure = failure
            self._produce_recovered()
        else:
            if self._commit_failure is not None:
                log.info("batch.commit_recovered")
                self._commit_failure = None
            self._produce_recovered()
        self._done(batch, routed, screened, dead_letters, fetched_at=fetched_at)
        return not unrestored

    def _done(
        self,
        batch: Batch,
        routed: Mapping[TopicPartition, list[Routed]],
        screened: Mapping[TopicPartition, Screened],
        dead_letters: Mapping[TopicPartition, list[bool]],
        *,
        fetched_at: float | None = None,
    ) -> None:
        """What of `batch` is in Kafka now: remember its ids, feed its breakers, count
        it, log it."""
        if not batch:
            return
        outcomes: Counter[str] = Counter()
        conflicts: list[Routed] = []
        for partition in batch:
            if partition in dead_letters:
                self._breakers.record(partition, dead_letters[partition])
            kept = screened.get(partition)
            if kept is None or self._dedup is None:
                outcomes.update(r.outcome for r in routed[partition])
                continue
            self._dedup.remember(partition, kept)
            outcomes.update(r.outcome for r in kept.outputs)
            outcomes["duplicate"] += kept.duplicates
            conflicts += kept.conflicts
        seconds = None if fetched_at is None else time.perf_counter() - fetched_at
        self._metrics.count_batch(outcomes, seconds=seconds, conflicts=len(conflicts))
        if self._dedup is not None:
            self._metrics.set_remembered(self._dedup.remembered, self._dedup.nbytes)
        for conflict in conflicts:
            log.warning(
                "delivery.conflict",
                delivery_id=conflict.delivery_id,
                topic=conflict.topic,
                detail="this delivery id was routed before with other bytes: not a retry, "
                "so it is routed again; subscribers get both versions",
            )
        self._log_batch(batch, routed, outcomes)

    def _hold(
        self,
        partition: TopicPartition,
        records: Sequence[Any],
        routed: Sequence[Routed],
        reason: str,
    ) -> None:
        """The breaker tripped: nothing of this batch leaves; the partition rests."""
        self._consumer.seek(partition, records[0].offset)
        self._consumer.pause(partition)
        until = self._breakers.trip(partition, time.time())
        classes = Counter(
            value.decode()
            for result in routed
            if result.outcome == "dlq"
            for name, value in result.headers
            if name == ERROR_CLASS
        )
        self._metrics.breaker_tripped(paused=len(self._breakers.paused()))
        log.error(
            "partition.dlq_breaker_open",
            topic=partition.topic,
            partition=partition.partition,
            offset=records[0].offset,
            reason=reason,
            error_classes=dict(classes),
            retry_in_s=self._config.worker.dlq_pause_s,
            detail="this partition is paused and nothing more of it is routed or committed; "
            "its records stay in the raw topic. Find the cause in webhooks.dlq "
            "(error.class, error.message): a bad deploy (roll back) or a provider format "
            "change (update the contract). The worker tries again every "
            "worker.dlq_pause_s; worker.dlq_max_ratio: 1.0 turns the breaker off.",
            paused_until=round(until, 3),
        )

    def _resume_rested(self) -> None:
        for partition in self._breakers.due(time.time()):
            if partition in self._consumer.assignment():
                self._consumer.resume(partition)
                log.info(
                    "partition.dlq_breaker_retry",
                    topic=partition.topic,
                    partition=partition.partition,
                )
        self._metrics.breaker_paused(len(self._breakers.paused()))

    def not_ready(self) -> Unready | None:
        """Why this worker cannot route now, for /readyz; None when it can."""
        if not self._reachable():
            return Unready(
                "kafka_unreachable",
                "no broker answers; the worker retries and resumes by itself",
            )
        if (produce := self._produce_failure) is not None:
            return Unready(
                "produce_failing",
                f"Kafka did not take the last batch ({type(produce.cause).__name__}); "
                "it is retried with a growing pause, nothing is committed meanwhile",
            )
        if (commit := self._commit_failure) is not None:
            return Unready(
                "commit_failing",
                f"the last offsets commit failed ({type(commit.cause).__name__}); its "
                "batch is routed again by whoever owns the partition next",
            )
        if paused := partition_names(self._breakers.paused()):
            return Unready(
                "dlq_breaker_open",
                "too many records of these partitions went to the DLQ: they are paused "
                "and tried again every worker.dlq_pause_s; see webhooks.dlq",
                tuple(paused),
            )
        return None

    def _partitions_moved(self) -> None:
        """A failed produce or commit concerned partitions the group has just moved: the
        next batch says again whether writing works (an idle topic might never)."""
        self._produce_failure = self._commit_failure = None

    def _produce_recovered(self) -> None:
        """A batch's outputs were written: the pause before a retry starts over."""
        if self._failed_attempts:
            log.info("batch.produce_recovered", failed_attempts=self._failed_attempts)
            self._failed_attempts = 0
            self._produce_failure = None
        self._backoff = self._config.worker.retry_backoff_s

    def _produce_failed(self, failure: ProduceFailed, *, records: int) -> None:
        """Count every failed attempt; report a streak of them once. Kafka being away is
        a warning (it heals); a refusal such as a missing ACL needs a human."""
        self._metrics.produce_failures.inc()
        self._failed_attempts += 1
        self._produce_failure = failure
        if self._failed_attempts > 1:
            return
        (log.error if failure.needs_a_human else log.warning)(
            "batch.produce_failed",
            error=repr(failure.cause),
            records=records,
            timeout_s=self._config.worker.produce_timeout_s,
            detail="the batch is rewound and retried after a pause that doubles "
            f"from {self._backoff:g} s to {self._config.worker.max_retry_backoff_s:g} s "
            "until Kafka takes it; nothing is committed meanwhile",
        )

    def _rewind(self, batch: Batch) -> None:
        for tp, records in batch.items():
            if tp in self._consumer.assignment():
                self._consumer.seek(tp, records[0].offset)

    def _log_batch(
        self, batch: Batch, routed: Mapping[TopicPartition, list[Routed]], outcomes: Counter[str]
    ) -> None:
        if outcomes["dlq"]:  # nearly every batch has none: no walk over its records then
            for partition, records in batch.items():
                for record, result in zip(records, routed[partition], strict=True):
                    if result.outcome == "dlq":
                        log.warning(
                            "delivery.dead_lettered",
                            delivery_id=result.delivery_id,
                            reason=result.error,
                            topic=record.topic,
                            partition=record.partition,
                            offset=record.offset,
                        )
        log.info(
            "batch.committed",
            records=sum(outcomes.values()),
            routed=outcomes["routed"],
            unrouted=outcomes["unrouted"],
            dlq=outcomes["dlq"],
            duplicate=outcomes["duplicate"],
            partitions={
                f"{tp.topic}/{tp.partition}": recs[-1].offset for tp, recs in batch.items()
            },
        )


async def _nothing() -> None:
    pass


async def run_worker(config: Config) -> None:
    """The `processor worker` process: run until SIGTERM or SIGINT.

    With worker.metrics_port set, /healthz and /metrics answer from before the worker
    connects to Kafka until after it has left the group, so a slow start is not taken
    for a dead process. Raises ConfigError when that port is taken.
    """
    metrics = WorkerMetrics()
    worker = Worker(config=config, metrics=metrics)
    port = config.worker.metrics_port
    http: contextlib.AbstractAsyncContextManager[None] = contextlib.nullcontext()
    if port is not None:
        http = serve_health_and_metrics(
            host=config.worker.metrics_host,
            port=port,
            metrics=metrics,
            not_ready=worker.not_ready,
        )
    stop = asyncio.Event()
    with stop_on_signals(stop):
        async with http:
            await worker.run(stop)
