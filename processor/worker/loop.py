"""The worker: consume `webhooks.raw`, route each delivery, produce, then commit.

One loop, batch in and batch out, each batch in named steps over its partitions'
shares (processor.worker.batch):

1. fetch: `getmany` from the partitions this member owns;
2. route every record (pure, never raises) to exactly one destination, and let each
   partition's DLQ breaker hold back a stream that turned bad;
3. screen out provider retries (processor.dedup.screen), when dedup is on;
4. stage: hand the outputs to the open Checkpoint of the
   guarantee: at least once (processor.worker.checkpoint) sends the outputs at once,
   exactly once (processor.worker.exactly_once) keeps them for its transactions;
5. commit, once `worker.commit_interval_ms` or `commit_every_records` is reached (a
   second at least once, 100 ms exactly once, by default), at a rebalance and at
   stop: the checkpoint makes its outputs, the ids dedup staged in it (a changelog
   record per partition) and next offsets durable together, or fails;
6. done: remember what was written, count and log it.

A failed checkpoint seeks its failed partitions back to their first offset in it and
retries them, pausing longer while the failures last (processor.worker.health). A
rebalance waits for the batch in flight and commits the open checkpoint, never waits
for a pause; a partition assigned is set up (its transactional producer fences the
previous owner, its remembered ids are restored) before any of its records is routed.

A Worker is made of `WorkerParts`: `run_worker` builds them with aiokafka
(processor.worker.parts), tests and benchmarks give fakes (processor.testing).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Collection, Mapping
from typing import Any

import structlog
from aiokafka import TopicPartition
from aiokafka.errors import KafkaError

from processor.config import Config
from processor.kafka.clients import connect, group_instance_id, require_topics
from processor.kafka.topics import all_topics
from processor.metrics import WorkerMetrics
from processor.routing import Router
from processor.shutdown import LEAVE_SIGNAL, on_signal, stop_on_signals
from processor.worker.batch import Share, log_breaker_open, log_committed, tally
from processor.worker.breaker import Breakers
from processor.worker.checkpoint import CommitFailed, ProduceFailed
from processor.worker.collector import tuned_collection
from processor.worker.health import Health
from processor.worker.http import Unready, serve_health_and_metrics
from processor.worker.parts import Batch, WorkerParts, kafka_parts
from processor.worker.rebalance import Rebalance
from processor.worker.staged import Staged
from processor.worker.summary import Summary

__all__ = ["Worker", "run_worker"]

log = structlog.get_logger(__name__)

# A summary's lag asks each assigned partition's position, known at once while the
# worker reads; one that is being reset (a rebalance) is not waited for beyond this.
LAG_TIMEOUT_S = 1.0


class Worker:
    """One member of the routing consumer group; `run` until `stop` is set.

    It counts into `metrics`: pass the WorkerMetrics whose registry is served; the
    default, a fresh one nobody reads, suits tests and benchmarks.
    """

    def __init__(
        self, *, config: Config, parts: WorkerParts, metrics: WorkerMetrics | None = None
    ) -> None:
        self._config = config
        self._parts = parts
        self._consumer = parts.consumer
        self._guarantee = parts.guarantee
        self._dedup = parts.dedup
        self._clock = parts.clock
        self._metrics = WorkerMetrics() if metrics is None else metrics
        self._router = Router(routing=config.routing, topics=config.topics)
        # Held while a batch is between fetch and commit; a rebalance waits for it.
        self._in_flight = asyncio.Lock()
        settings = config.worker
        self._breakers = Breakers(
            max_ratio=settings.dlq_max_ratio,
            window=settings.dlq_window_records,
            max_consecutive=settings.dlq_max_consecutive,
            pause_s=settings.dlq_pause_s,
        )
        self._health = Health(
            settings=settings,
            metrics=self._metrics,
            reachable=parts.reachable,
            paused=self._breakers.paused,
        )
        self._summary = Summary()
        self._leaving = False
        self._open: Staged | None = None
        self._revokes = 0  # rebalances that took partitions from this worker, so far
        self._committed: dict[TopicPartition, int] = {}  # the offsets it last committed

    def not_ready(self) -> Unready | None:
        """Why this worker cannot route now, for /readyz; None when it can."""
        return self._health.not_ready()

    def _revoked(self, partitions: Collection[TopicPartition]) -> None:
        self._revokes += 1
        for partition in partitions:
            self._committed.pop(partition, None)
        self._metrics.forget_lag(partitions)

    def leave_at_stop(self) -> None:
        """Leave the group when stopping, even as a static member (a scale-down: no
        restart will come back for its partitions)."""
        self._leaving = True

    async def run(self, stop: asyncio.Event) -> None:
        """Route until `stop` is set, then finish the batch in flight and leave the group.

        From `stop` to return takes at most the batch in flight (produce_timeout_s +
        commit_timeout_s, milliseconds when Kafka is healthy) plus shutdown_timeout_s.
        """
        summarising: asyncio.Task[None] | None = None
        try:
            if not await self._start(stop):
                return
            summarising = asyncio.create_task(self._summarise())
            while (batch := await self._fetch(stop)) is not None:
                revokes = self._revokes
                self._resume_rested()
                fetched_at = time.perf_counter()
                async with self._in_flight:
                    if self._revokes != revokes:
                        # Partitions were revoked since this batch was handed out: another
                        # member may route it now, and what stays here is read again from
                        # the offsets committed at the revoke (a new assignment starts there).
                        batch = {}
                    done = await self._process(batch, fetched_at)
                if not done:
                    await self._back_off(stop)
        finally:
            if summarising is not None:
                async with self._in_flight:
                    await self._commit()  # what is staged, before leaving
                summarising.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await summarising
                await self._say_summary()  # the last interval's, cut short
            await self._close()

    async def _summarise(self) -> None:
        while True:
            await asyncio.sleep(self._config.worker.log_interval_s)
            await self._say_summary()

    async def _say_summary(self) -> None:
        self._summary.say(partitions=len(self._consumer.assignment()), lag=await self._lag())

    async def _lag(self) -> int | None:
        """Records of the assigned partitions not committed yet (each partition's lag
        also goes to the metric); None when no highwater is known (no fetch answered
        yet) or a position is being reset."""
        try:
            async with asyncio.timeout(LAG_TIMEOUT_S):
                for partition in self._consumer.assignment():
                    if partition not in self._committed:  # nothing committed here yet
                        offset = await self._consumer.committed(partition)
                        if offset is None:  # nor by the group: from where reading began
                            offset = await self._consumer.position(partition)
                        self._committed[partition] = offset
        except (TimeoutError, KafkaError):
            return None
        lags = self._lags({tp: self._committed[tp] for tp in self._consumer.assignment()})
        self._metrics.set_lag(lags)
        return sum(lags.values()) if lags else None

    def _lags(self, offsets: Mapping[TopicPartition, int]) -> dict[TopicPartition, int]:
        """Each partition's records from `offsets` to its high watermark, where known."""
        lags = {}
        for partition, offset in offsets.items():
            if (end := self._consumer.highwater(partition)) is not None:
                lags[partition] = max(0, end - offset)
        return lags

    async def _start(self, stop: asyncio.Event) -> bool:
        """Connect within kafka.connect_timeout_s, then join the group; False if stopped.

        Only connecting is bounded: waiting for partitions is normal (a member that
        died without leaving holds its partitions until its session expires) and
        happens in the first fetches, which `stop` can interrupt.
        """
        kafka = self._config.kafka

        async def start_clients() -> None:
            await self._parts.reach()
            await self._guarantee.start()
            await self._consumer.start()
            if self._parts.changelog is not None:
                await self._parts.changelog.start()
            # Every destination must exist, or the first batch for it would stall.
            require_topics(
                await self._consumer.topics(),
                all_topics(self._config),
                bootstrap=kafka.bootstrap_servers,
            )

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
                commit=self._commit_before_revoke,
                on_revoked=self._revoked,
                on_moved=self._health.partitions_moved,
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

    async def _back_off(self, stop: asyncio.Event) -> None:
        """Pause before retrying a failed batch, without the revoke lock: a rebalance
        can take the partitions meanwhile (the batch was rewound, nothing committed),
        and `stop` ends the pause at once."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._health.next_pause()):
                await stop.wait()

    async def _close(self) -> None:
        # Leaving the group hands the partitions over at once. A static member
        # (worker.group_instance_id) does not leave by itself: it keeps its partitions for
        # session_timeout_ms, so that a restart within it needs no rebalance; told to
        # (leave_at_stop: SIGUSR1), it is removed from the group as it stops.
        try:
            async with asyncio.timeout(self._config.worker.shutdown_timeout_s):
                await self._consumer.stop()
                if self._leaving:
                    await self._parts.leave()
                    log.info("worker.left_group", group_id=self._config.worker.group_id)
                await self._guarantee.stop()
                if self._parts.changelog is not None:
                    await self._parts.changelog.stop()
        except (TimeoutError, KafkaError) as exc:
            log.warning("worker.close_failed", error=repr(exc))
        log.info("worker.stopped", group_id=self._config.worker.group_id)

    async def _process(self, batch: Batch, fetched_at: float) -> bool:
        """Route and stage `batch` (maybe empty), and commit the checkpoint when it is
        due; False when some records were rewound to be retried."""
        shares = self._route(batch)
        unrestored = await self._screen(shares)
        self._rewind({tp: records[0].offset for tp, records in unrestored.items()})
        retried = False
        if shares:
            retried = await self._stage(shares, fetched_at)
        if not retried and self._due():
            retried = await self._commit()
        return not retried and not unrestored

    def _route(self, batch: Batch) -> dict[TopicPartition, Share]:
        """Each partition's records routed, less what its DLQ breaker holds back."""
        route = self._router.route
        breakers = self._breakers
        shares: dict[TopicPartition, Share] = {}
        for partition, records in batch.items():
            share = Share(records, [route(record) for record in records])
            if breakers.enabled:
                share.dead = [result.outcome == "dlq" for result in share.routed]
                if (trip := breakers.would_trip(partition, share.dead)) is not None:
                    self._hold(partition, share.split(trip.at), trip.reason)
                    if not share.records:
                        continue
            shares[partition] = share
        return shares

    async def _screen(self, shares: dict[TopicPartition, Share]) -> dict[TopicPartition, Any]:
        """Dedup's verdict on each share; the records of partitions whose remembered ids
        could not be restored yet are taken out, to be read again."""
        dedup = self._dedup
        unrestored: dict[TopicPartition, Any] = {}
        if dedup is None:
            return unrestored
        for partition in list(shares):
            if not dedup.owns(partition):
                await dedup.assigned([partition])  # its restore failed at assignment
                if not dedup.owns(partition):
                    unrestored[partition] = shares.pop(partition).records
                    continue
            share = shares[partition]
            share.screened = dedup.screen(partition, share.routed)
        return unrestored

    async def _stage(self, shares: dict[TopicPartition, Share], fetched_at: float) -> bool:
        """Hand the shares to the open checkpoint; True when it failed and was rewound."""
        if self._open is None:
            self._open = Staged(self._guarantee.begin(), opened_at=self._clock())
        open_ = self._open
        open_.add(shares, fetched_at)
        for partition, share in shares.items():
            if share.dead is not None:
                # Counted as routed, not as committed: a stream turning bad is held
                # within one checkpoint, whatever its interval (a retried one counts again).
                self._breakers.record(partition, share.dead)
        try:
            await open_.checkpoint.produce({tp: share.outputs for tp, share in shares.items()})
        except ProduceFailed as failure:
            self._open = None
            return await self._failed(open_, failure)
        return False

    def _due(self) -> bool:
        open_ = self._open
        if open_ is None:
            return False
        worker = self._config.worker
        return open_.due(
            self._clock(),
            every_records=worker.commit_every_records,
            interval_s=worker.checkpoint_interval_s,
        )

    async def _commit(self) -> bool:
        """Make the open checkpoint durable; True when some of it was rewound. Called
        under the batch lock: by the loop, at a rebalance and at stop."""
        open_, self._open = self._open, None
        if open_ is None:
            return False
        if self._dedup is not None:
            for partition, span in open_.spans().items():
                open_.checkpoint.add_state(partition, self._dedup.changelog(partition, span))
        try:
            await open_.checkpoint.commit(open_.next)
        except ProduceFailed as failure:
            return await self._failed(open_, failure)
        except CommitFailed as failure:
            # The outputs are written; the next owner re-routes them (duplicates).
            self._health.commit_failed(failure, records=open_.records)
        else:
            self._health.committed()
            self._note_committed(open_.next)
        self._health.written()
        self._settle(open_, open_.next)
        return False

    async def _commit_before_revoke(self) -> None:
        """At a revoke: commit the open checkpoint, and see its offsets in the group
        before the partitions go (the guarantee knows when they show)."""
        open_ = self._open
        if not await self._commit() and open_ is not None:
            await self._guarantee.visible(open_.next)

    async def _failed(self, open_: Staged, failure: ProduceFailed) -> bool:
        """Give the failed partitions of a checkpoint up and rewind them to where it
        started; what it committed of the others is done. True when any is retried."""
        await open_.checkpoint.abort()
        failed = failure.failed_partitions(open_.next)
        # A fenced partition is another worker's now: not retried (it logged why).
        retried = {tp for tp in failed if not failure.fenced(tp)}
        if retried:
            self._health.produce_failed(failure, records=open_.records_of(retried))
        if self._dedup is not None:
            self._dedup.unstage(failed)  # not remembered: screened again when retried
        starts = {partition: open_.first[partition] for partition in retried}
        went_through = await self._guarantee.went_through(starts) if retried else {}
        starts |= went_through
        if self._dedup is not None and went_through:
            # Its changelog records went through with it: remember them.
            self._dedup.revoked(went_through)
            await self._dedup.assigned(went_through)
        self._rewind(starts)
        committed = open_.next.keys() - failed
        self._note_committed({tp: open_.next[tp] for tp in committed} | went_through)
        self._settle(open_, committed)
        return bool(retried)

    def _note_committed(self, offsets: Mapping[TopicPartition, int]) -> None:
        self._committed |= offsets
        self._metrics.set_lag(self._lags(offsets))

    def _settle(self, open_: Staged, partitions: Collection[TopicPartition]) -> None:
        """The checkpoint's batches of `partitions` are in Kafka: done, batch by batch."""
        for shares, fetched_at in open_.done(partitions):
            self._done(shares, fetched_at)

    def _done(self, shares: Mapping[TopicPartition, Share], fetched_at: float | None) -> None:
        """What is in Kafka now: remember its ids, count it, log it."""
        for partition, share in shares.items():
            if share.screened is not None and self._dedup is not None:
                self._dedup.remember(partition, share.screened)
        outcomes, conflicts = tally(shares)
        self._summary.add(outcomes)
        seconds = None if fetched_at is None else time.perf_counter() - fetched_at
        self._metrics.count_batch(outcomes, seconds=seconds, conflicts=len(conflicts))
        if self._dedup is not None:
            self._metrics.set_remembered(self._dedup.remembered, self._dedup.nbytes)
        log_committed(shares, outcomes, conflicts)

    def _hold(self, partition: TopicPartition, held: Share, reason: str) -> None:
        """The breaker tripped: nothing of this batch leaves; the partition rests."""
        self._consumer.seek(partition, held.records[0].offset)
        self._consumer.pause(partition)
        until = self._breakers.trip(partition, self._clock())
        self._metrics.breaker_tripped(paused=len(self._breakers.paused()))
        log_breaker_open(
            partition, held, reason=reason, pause_s=self._config.worker.dlq_pause_s, until=until
        )

    def _resume_rested(self) -> None:
        for partition in self._breakers.due(self._clock()):
            if partition in self._consumer.assignment():
                self._consumer.resume(partition)
                log.info(
                    "partition.dlq_breaker_retry",
                    topic=partition.topic,
                    partition=partition.partition,
                )
        self._metrics.breaker_paused(len(self._breakers.paused()))

    def _rewind(self, offsets: Mapping[TopicPartition, int]) -> None:
        """Read each partition again from its offset, unless it is no longer this worker's."""
        for tp, offset in offsets.items():
            if tp in self._consumer.assignment():
                self._consumer.seek(tp, offset)


async def run_worker(config: Config) -> None:
    """The `processor worker` process: run until SIGTERM or SIGINT, or SIGUSR1, which
    also takes it out of the group as it stops (a scale-down of static members).

    With worker.metrics_port set, /healthz and /metrics answer from before the worker
    connects to Kafka until after it has left the group, so a slow start is not taken
    for a dead process. Raises ConfigError when that port is taken, before any Kafka
    client exists (one made and never closed is an ERROR at exit).
    """
    metrics = WorkerMetrics()
    worker: Worker | None = None

    def not_ready() -> Unready | None:
        if worker is None:
            return Unready("starting", "the worker has not made its Kafka clients yet")
        return worker.not_ready()

    port = config.worker.metrics_port
    http: contextlib.AbstractAsyncContextManager[None] = contextlib.nullcontext()
    if port is not None:
        http = serve_health_and_metrics(
            host=config.worker.metrics_host, port=port, metrics=metrics, not_ready=not_ready
        )
    stop = asyncio.Event()
    with stop_on_signals(stop):
        async with http:
            worker = Worker(config=config, parts=kafka_parts(config, metrics), metrics=metrics)
            with on_signal(LEAVE_SIGNAL, worker.leave_at_stop, stop.set), tuned_collection():
                await worker.run(stop)
