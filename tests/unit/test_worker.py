"""The worker's own decisions, through its seams: commit, rewind, retry, pause, revoke, stop.

A fake consumer hands out batches and a fake guarantee commits or fails as told
(tests/unit/worker_fakes.py); what Kafka itself does is tested in tests/integration.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import AsyncIterator, Callable, MutableMapping
from typing import Any

import msgspec
import pytest
from aiokafka import TopicPartition
from aiokafka.errors import CommitFailedError, KafkaTimeoutError, TopicAuthorizationFailedError
from structlog.testing import capture_logs

from processor.config import Config
from processor.dedup.idwindow import id_hash
from processor.dedup.record import Restored, RestoredBuilder
from processor.dedup.screen import Dedup
from processor.errors import TopicsMissing
from processor.kafka.batching import OutgoingRecord
from processor.kafka.topics import all_topics
from processor.metrics import WorkerMetrics
from processor.testing import RAW, Batch, FakeConsumer, FakeGuarantee, Record
from processor.worker.checkpoint import CommitFailed, ProduceFailed
from processor.worker.loop import Worker
from processor.worker.parts import WorkerParts
from tests.deliveries import integration_event

P0 = TopicPartition(RAW, 0)
P1 = TopicPartition(RAW, 1)


def settings(**worker: Any) -> Config:
    base = Config()
    # A checkpoint per batch: what a test decides about one batch is committed with it.
    defaults = {
        "fetch_timeout_ms": 5,
        "retry_backoff_s": 0.02,
        "max_retry_backoff_s": 0.08,
        "commit_interval_ms": 0,
    }
    return msgspec.structs.replace(
        base,
        worker=msgspec.structs.replace(base.worker, **(defaults | worker)),
        dedup=msgspec.structs.replace(base.dedup, enabled=False),
    )


def delivery(index: int, status: str = "active") -> bytes:
    return integration_event(index=index, uid="user_1", status=status)


def two_partitions() -> Batch:
    return {
        P0: [Record(0, 5, delivery(1)), Record(0, 6, delivery(2, "COMPLETED"))],
        P1: [Record(1, 10, delivery(3))],
    }


def unready_partitions(worker: Worker) -> tuple[str, ...] | None:
    unready = worker.not_ready()
    return None if unready is None else unready.partitions


class Clock:
    """Wall time as the worker reads it, which a test can move forward."""

    def __init__(self) -> None:
        self.ahead = 0.0

    def __call__(self) -> float:
        return time.time() + self.ahead


class NoChangelog:
    """A dedup changelog with nothing in it yet."""

    async def read(self, partition: int) -> Restored:
        return RestoredBuilder().build()


class Running:
    def __init__(self, config: Config, metrics: WorkerMetrics) -> None:
        self.config = config
        self.metrics = metrics
        self.clock = Clock()
        self.consumer = FakeConsumer(topics=all_topics(config))
        self.consumer.assigned = {P0, P1}
        self.guarantee = FakeGuarantee()
        self.stop = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.worker: Worker | None = None
        self.dedup = None
        if config.dedup.enabled:
            self.dedup = Dedup(
                topic=config.topics.dedup,
                window_s=config.dedup.window_s,
                reader=NoChangelog(),
                clock=self.clock,
            )

    def start(self) -> None:
        self.worker = Worker(
            config=self.config,
            metrics=self.metrics,
            parts=WorkerParts(
                consumer=self.consumer,
                guarantee=self.guarantee,
                dedup=self.dedup,
                clock=self.clock,
            ),
        )
        self.task = asyncio.create_task(self.worker.run(self.stop))

    def unready(self) -> str | None:
        assert self.worker is not None
        unready = self.worker.not_ready()
        return None if unready is None else unready.error

    def failures(self) -> float:
        return (
            self.metrics.registry.get_sample_value("processor_worker_produce_failures_total") or 0
        )


@contextlib.asynccontextmanager
async def running(config: Config | None = None) -> AsyncIterator[Running]:
    state = Running(config or settings(), WorkerMetrics())
    state.start()
    try:
        yield state
    except BaseException:
        # A test that failed with a gate closed must not leave the worker unable to
        # stop: its own failure is the one to report.
        guarantee = state.guarantee
        for gate in (guarantee.gate, guarantee.revoke_gate, guarantee.visible_gate):
            gate.set()
        raise
    finally:
        state.stop.set()
        assert state.task is not None
        await asyncio.wait_for(state.task, 5)


def begun(worker: Running, count: int) -> Callable[[], bool]:
    return lambda: len(worker.guarantee.checkpoints) >= count


def trips(worker: Running) -> float:
    return worker.metrics.registry.get_sample_value("processor_worker_dlq_breaker_trips_total") or 0


def committed(worker: Running, index: int) -> bool:
    checkpoints = worker.guarantee.checkpoints
    return len(checkpoints) > index and checkpoints[index].committed is not None


async def until(condition: Callable[[], object], timeout: float = 2) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.001)


async def test_a_batch_is_committed_with_each_partitions_next_offset() -> None:
    async with running() as worker:
        worker.consumer.batches.put_nowait(two_partitions())
        await until(
            lambda: worker.guarantee.checkpoints and worker.guarantee.checkpoints[0].committed
        )

    (checkpoint,) = worker.guarantee.checkpoints
    assert checkpoint.committed == {P0: 7, P1: 11}
    assert [r.topic for r in checkpoint.produced[P0]] == [
        "integration.status.active",
        "integration.status.completed",
    ]
    assert [r.value for r in checkpoint.produced[P1]] == [delivery(3)]
    assert worker.consumer.seeks == []


async def test_a_failed_produce_is_aborted_and_rewound_to_each_owned_partitions_first_offset() -> (
    None
):
    async with running() as worker:
        worker.guarantee.failures.append(ProduceFailed(KafkaTimeoutError()))
        worker.consumer.assigned = {P0}  # P1 went to another member meanwhile
        worker.consumer.batches.put_nowait(two_partitions())
        # The consumer hands P0's records out again after the rewind, as Kafka does.
        await until(lambda: len(worker.guarantee.checkpoints) == 2)
        await until(lambda: worker.guarantee.checkpoints[1].committed)

    first, second = worker.guarantee.checkpoints
    assert first.aborted
    assert first.committed is None
    assert worker.consumer.seeks == [(P0, 5)]
    assert second.committed == {P0: 7}
    assert worker.failures() == 1


async def test_the_pause_before_a_retry_doubles_to_the_maximum_and_resets_after_a_commit() -> None:
    config = settings(retry_backoff_s=0.02, max_retry_backoff_s=0.16)
    async with running(config) as worker:
        begun: list[float] = []
        guarantee = worker.guarantee
        original = guarantee.begin

        def timed_begin() -> Any:
            begun.append(time.monotonic())
            return original()

        guarantee.begin = timed_begin  # type: ignore[method-assign]
        # One batch failing five times: rewound and handed out again after each pause.
        guarantee.failures = [ProduceFailed(KafkaTimeoutError()) for _ in range(5)]
        worker.consumer.batches.put_nowait({P0: two_partitions()[P0]})
        await until(lambda: len(begun) == 6 and guarantee.checkpoints[5].committed, timeout=5)
        guarantee.failures = [ProduceFailed(KafkaTimeoutError())]
        worker.consumer.batches.put_nowait({P0: [Record(0, 7, delivery(4))]})
        await until(lambda: len(begun) == 8, timeout=5)

    pauses = [later - earlier for earlier, later in itertools.pairwise(begun)]
    for pause, expected in zip(pauses, [0.02, 0.04, 0.08, 0.16, 0.16], strict=False):
        assert pause >= expected * 0.9, pauses
    assert pauses[5] < 0.1, "no pause after a committed batch"
    assert pauses[6] < 0.1, "the pause starts over after a committed batch"


async def test_a_failed_offsets_commit_is_counted_and_neither_rewound_nor_retried() -> None:
    with capture_logs() as logs:
        async with running() as worker:
            worker.guarantee.failures.append(CommitFailed(CommitFailedError("rebalanced")))
            worker.consumer.batches.put_nowait(two_partitions())
            worker.consumer.batches.put_nowait({P0: [Record(0, 7, delivery(4))]})
            await until(lambda: len(worker.guarantee.checkpoints) == 2)
            await until(lambda: worker.guarantee.checkpoints[1].committed)

    [failed] = [line for line in logs if line["event"] == "batch.commit_failed"]
    assert failed["records"] == sum(map(len, two_partitions().values()))

    assert worker.consumer.seeks == []
    assert worker.guarantee.checkpoints[1].committed == {P0: 8}
    commit_failures = "processor_worker_commit_failures_total"
    assert worker.metrics.registry.get_sample_value(commit_failures) == 1
    assert worker.failures() == 0


async def test_stop_during_the_pause_before_a_retry_ends_the_run_at_once() -> None:
    worker = Running(settings(retry_backoff_s=30), WorkerMetrics())
    worker.start()
    worker.guarantee.failures.append(ProduceFailed(KafkaTimeoutError()))
    worker.consumer.batches.put_nowait(two_partitions())
    await until(lambda: worker.guarantee.checkpoints and worker.guarantee.checkpoints[0].aborted)

    worker.stop.set()
    assert worker.task is not None
    await asyncio.wait_for(worker.task, 1)

    assert worker.consumer.stopped
    assert worker.guarantee.stopped


async def test_a_revoke_waits_for_the_batch_in_flight_but_not_for_a_pause() -> None:
    async with running(settings(retry_backoff_s=30)) as worker:
        worker.guarantee.gate.clear()
        worker.consumer.batches.put_nowait(two_partitions())
        await until(worker.guarantee.committing.is_set)
        revoking = asyncio.create_task(worker.consumer.listener.on_partitions_revoked({P1}))
        await asyncio.sleep(0.05)
        assert not revoking.done(), "partitions were given away with a batch in flight"
        worker.guarantee.gate.set()
        await asyncio.wait_for(revoking, 1)
        assert worker.guarantee.revoked_calls == [{P1}]

        worker.guarantee.failures.append(ProduceFailed(KafkaTimeoutError()))
        worker.consumer.batches.put_nowait({P0: [Record(0, 7, delivery(4))]})
        await until(lambda: worker.guarantee.checkpoints[-1].aborted)
        await asyncio.wait_for(worker.consumer.listener.on_partitions_revoked({P0}), 0.5)

    assert worker.guarantee.revoked_calls == [{P1}, {P0}]


# --- checkpoints on an interval (worker.commit_interval_ms, commit_every_records) ---------

INTERVAL = settings(commit_interval_ms=60_000, commit_every_records=100)


def handed(worker: Running, records: int) -> Callable[[], bool]:
    """True once the open checkpoint holds `records` outputs."""
    return lambda: (
        bool(worker.guarantee.checkpoints)
        and (sum(map(len, worker.guarantee.checkpoints[-1].produced.values())) >= records)
    )


async def test_batches_within_the_interval_are_one_checkpoint_committed_at_its_end() -> None:
    async with running(INTERVAL) as worker:
        worker.consumer.batches.put_nowait({P0: [Record(0, 5, delivery(1))]})
        worker.consumer.batches.put_nowait(two_partitions() | {P0: [Record(0, 6, delivery(2))]})
        await until(handed(worker, 3))
        await asyncio.sleep(0.02)  # empty fetches meanwhile: not due yet
        (checkpoint,) = worker.guarantee.checkpoints
        assert checkpoint.committed is None

        worker.clock.ahead += 60
        await until(lambda: checkpoint.committed is not None)

    assert checkpoint.committed == {P0: 7, P1: 11}
    assert len(worker.guarantee.checkpoints) == 1


def remembered_ids(records: list[OutgoingRecord]) -> set[int]:
    """The id hashes changelog records hold."""
    restored = RestoredBuilder()
    for record in records:
        restored.add(record.value, 0)
    hashes = restored.build().id_hashes
    return {int.from_bytes(hashes[i : i + 8], "little") for i in range(0, len(hashes), 8)}


async def test_a_checkpoint_writes_the_ids_it_remembers_as_a_record_per_partition() -> None:
    config = msgspec.structs.replace(INTERVAL, dedup=Config().dedup)
    async with running(config) as worker:
        worker.consumer.batches.put_nowait({P0: [Record(0, 5, delivery(1))]})
        # A later batch of the same checkpoint: a new id, a retry, another partition.
        worker.consumer.batches.put_nowait(
            {P0: [Record(0, 6, delivery(2)), Record(0, 7, delivery(1))], P1: two_partitions()[P1]}
        )
        await until(handed(worker, 3))
        worker.clock.ahead += 60
        await until(lambda: committed(worker, 0))
        worker.consumer.batches.put_nowait({P0: [Record(0, 8, delivery(2))]})  # a retry
        await until(lambda: len(worker.guarantee.checkpoints) == 2)
        await until(lambda: P0 in worker.guarantee.checkpoints[1].produced)

    first, second = worker.guarantee.checkpoints
    assert first.committed == {P0: 8, P1: 11}
    assert {tp: len(records) for tp, records in first.state.items()} == {P0: 1, P1: 1}
    assert remembered_ids(first.state[P0]) == {id_hash("whd_00000001"), id_hash("whd_00000002")}
    assert remembered_ids(first.state[P1]) == {id_hash("whd_00000003")}
    # Remembered once committed: the retry is not produced, and no id is written again.
    assert (second.committed, second.produced, second.state) == ({P0: 9}, {P0: []}, {P0: []})


async def test_a_checkpoint_is_committed_once_it_holds_commit_every_records() -> None:
    config = settings(commit_interval_ms=60_000, commit_every_records=3)
    async with running(config) as worker:
        worker.consumer.batches.put_nowait({P0: [Record(0, 5, delivery(1))]})
        worker.consumer.batches.put_nowait(two_partitions() | {P0: [Record(0, 6, delivery(2))]})
        await until(lambda: committed(worker, 0))
        worker.consumer.batches.put_nowait({P0: [Record(0, 7, delivery(4))]})
        await until(lambda: len(worker.guarantee.checkpoints) == 2 and handed(worker, 1)())

        assert worker.guarantee.checkpoints[0].committed == {P0: 7, P1: 11}
        assert worker.guarantee.checkpoints[1].committed is None  # 1 record of 3
    assert worker.guarantee.checkpoints[1].committed == {P0: 8}, "committed at stop"


async def test_a_failed_checkpoint_rewinds_each_partition_to_where_it_began_in_it() -> None:
    async with running(INTERVAL) as worker:
        worker.consumer.batches.put_nowait({P0: [Record(0, 5, delivery(1))]})
        worker.consumer.batches.put_nowait(
            {P0: [Record(0, 6, delivery(2))], P1: two_partitions()[P1]}
        )
        await until(handed(worker, 3))
        worker.guarantee.failures.append(ProduceFailed(KafkaTimeoutError()))
        worker.clock.ahead += 60
        await until(lambda: worker.guarantee.checkpoints[0].aborted)
        # Retried from where the checkpoint began: every record of it is routed again.
        await until(lambda: len(worker.guarantee.checkpoints) == 2 and handed(worker, 3)())
        worker.clock.ahead += 60
        await until(lambda: committed(worker, 1))

    assert set(worker.consumer.seeks) == {(P0, 5), (P1, 10)}
    retried = worker.guarantee.checkpoints[1]
    assert retried.committed == {P0: 7, P1: 11}
    assert [len(retried.produced[tp]) for tp in (P0, P1)] == [2, 1]


async def test_an_output_refused_as_it_is_handed_over_rewinds_the_whole_checkpoint() -> None:
    async with running(INTERVAL) as worker:
        worker.consumer.batches.put_nowait({P0: [Record(0, 5, delivery(1))]})
        await until(handed(worker, 1))
        worker.guarantee.produce_failures.append(ProduceFailed(KafkaTimeoutError()))
        worker.consumer.batches.put_nowait(two_partitions() | {P0: [Record(0, 6, delivery(2))]})
        await until(lambda: worker.guarantee.checkpoints[0].aborted)
        await until(lambda: len(worker.guarantee.checkpoints) == 2 and handed(worker, 3)())
        assert worker.failures() == 1

    assert set(worker.consumer.seeks) == {(P0, 5), (P1, 10)}
    assert worker.guarantee.checkpoints[0].committed is None
    assert worker.guarantee.checkpoints[1].committed == {P0: 7, P1: 11}


@pytest.mark.parametrize(("went_through", "retried_from"), [({}, 5), ({P0: 7}, 7)])
async def test_a_failed_checkpoint_goes_on_from_where_the_guarantee_says_it_went_through(
    went_through: dict[TopicPartition, int], retried_from: int
) -> None:
    async with running() as worker:
        worker.guarantee.committed_anyway = went_through  # exactly once: it reached Kafka
        worker.guarantee.failures.append(ProduceFailed(TimeoutError()))
        worker.consumer.batches.put_nowait(
            {P0: [Record(0, 5, delivery(1)), Record(0, 6, delivery(2))]}
        )
        await until(lambda: bool(worker.consumer.seeks))

    assert worker.guarantee.checkpoints[0].aborted
    assert worker.guarantee.went_through_calls == [{P0: 5}]
    assert worker.consumer.seeks[0] == (P0, retried_from)


async def test_a_revoke_waits_until_the_guarantee_sees_the_offsets_committed() -> None:
    async with running(INTERVAL) as worker:
        worker.consumer.batches.put_nowait(two_partitions())
        await until(handed(worker, 3))
        worker.guarantee.visible_gate.clear()
        revoking = asyncio.create_task(worker.consumer.listener.on_partitions_revoked({P0, P1}))
        await until(lambda: bool(worker.guarantee.visible_calls))
        await asyncio.sleep(0.05)
        assert not revoking.done(), "the partitions went before their offsets were visible"
        assert worker.guarantee.visible_calls == [{P0: 7, P1: 11}]
        assert worker.guarantee.revoked_calls == []

        worker.guarantee.visible_gate.set()
        await asyncio.wait_for(revoking, 1)
        assert worker.guarantee.revoked_calls == [{P0, P1}]


async def test_a_revoke_commits_what_is_staged_before_the_partitions_go() -> None:
    async with running(INTERVAL) as worker:
        worker.consumer.batches.put_nowait(two_partitions())
        await until(handed(worker, 3))
        (checkpoint,) = worker.guarantee.checkpoints
        assert checkpoint.committed is None

        await asyncio.wait_for(worker.consumer.listener.on_partitions_revoked({P0, P1}), 1)
        assert checkpoint.committed == {P0: 7, P1: 11}
        assert worker.guarantee.revoked_calls == [{P0, P1}]


async def test_a_batch_handed_out_before_a_revoke_is_not_routed_but_read_again() -> None:
    # A fetch that waits for its batch: the worker is always in one when idle, never
    # queued for the batch lock the revoke holds with the next batch still unfetched.
    async with running(settings(fetch_timeout_ms=10_000)) as worker:
        worker.consumer.batches.put_nowait({P0: [Record(0, 5, delivery(1))]})
        await until(lambda: committed(worker, 0))
        # The group takes the partitions back just as the next batch is handed out: the
        # revoke holds the batch lock until it is done.
        worker.guarantee.revoke_gate.clear()
        revoking = asyncio.create_task(worker.consumer.listener.on_partitions_revoked({P0, P1}))
        await until(worker.guarantee.revoking.is_set)
        worker.consumer.batches.put_nowait({P1: [Record(1, 10, delivery(3))]})
        await until(worker.consumer.batches.empty)  # handed out; its routing waits
        worker.guarantee.revoke_gate.set()
        await asyncio.wait_for(revoking, 1)
        await worker.consumer.listener.on_partitions_assigned({P0})
        worker.consumer.assigned = {P0}
        worker.consumer.batches.put_nowait({P0: [Record(0, 6, delivery(2))]})
        await until(lambda: committed(worker, 1))

    produced = [list(c.produced) for c in worker.guarantee.checkpoints]
    assert produced == [[P0], [P0]], "a record of a revoked partition was routed"
    assert worker.guarantee.checkpoints[1].committed == {P0: 7}


async def test_each_partitions_lag_is_what_it_has_not_committed_and_goes_when_it_moves() -> None:
    def lag(worker: Running) -> float | None:
        labels = {"topic": RAW, "partition": "0"}
        return worker.metrics.registry.get_sample_value("processor_worker_consumer_lag", labels)

    async with running(settings(log_interval_s=0.02)) as worker:
        worker.consumer.batches.put_nowait({P0: [Record(0, 5, delivery(1))]})
        await until(lambda: committed(worker, 0))
        assert lag(worker) == 0
        worker.guarantee.gate.clear()  # the next checkpoint's commit waits
        worker.guarantee.committing.clear()
        worker.consumer.batches.put_nowait(
            {P0: [Record(0, 6 + i, delivery(2 + i)) for i in range(3)]}
        )
        await until(worker.guarantee.committing.is_set)
        await until(lambda: lag(worker) == 3)  # fetched, not committed: the summary says so
        worker.guarantee.gate.set()
        await until(lambda: committed(worker, 1))
        assert lag(worker) == 0

        worker.consumer.assigned = {P1}
        await worker.consumer.listener.on_partitions_revoked({P0})
        assert lag(worker) is None, "a partition another worker owns now is its to report"


async def test_assigned_partitions_reach_the_guarantee() -> None:
    async with running() as worker:
        await until(lambda: worker.consumer.listener is not None)
        await worker.consumer.listener.on_partitions_assigned({P0, P1})

    assert worker.guarantee.assigned_calls == [{P0, P1}]


@pytest.mark.parametrize(
    ("cause", "level"),
    [(KafkaTimeoutError(), "warning"), (TopicAuthorizationFailedError(), "error")],
)
async def test_a_failing_produce_is_reported_once_per_streak_and_its_end_once(
    cause: Exception, level: str
) -> None:
    with capture_logs() as logs:
        async with running() as worker:
            worker.guarantee.failures = [ProduceFailed(cause) for _ in range(3)]
            worker.consumer.batches.put_nowait({P0: two_partitions()[P0]})  # retried thrice
            await until(lambda: len(worker.guarantee.checkpoints) == 4)
            await until(lambda: worker.guarantee.checkpoints[3].committed)

    failed = [entry for entry in logs if entry["event"] == "batch.produce_failed"]
    recovered = [entry for entry in logs if entry["event"] == "batch.produce_recovered"]
    assert [entry["log_level"] for entry in failed] == [level]
    assert failed[0]["error"] == repr(cause)
    assert [entry["failed_attempts"] for entry in recovered] == [3]
    assert worker.failures() == 3


async def test_each_outcome_of_a_committed_batch_is_counted_once() -> None:
    unrouted = (
        b'{"id":"whd_u","event":"portfolio.updated","timestamp":"2025-02-19T12:00:00Z",'
        b'"data":{"uid":"user_2"}}'
    )
    batch = {
        P0: [
            Record(0, 0, delivery(1)),
            Record(0, 1, unrouted),
            Record(0, 2, b"not json"),
            Record(0, 3, delivery(2)),
        ]
    }
    async with running() as worker:
        worker.consumer.batches.put_nowait(batch)
        await until(
            lambda: worker.guarantee.checkpoints and worker.guarantee.checkpoints[0].committed
        )
        await asyncio.sleep(0.01)

    sample = worker.metrics.registry.get_sample_value
    counts = {
        outcome: sample("processor_worker_records_total", {"outcome": outcome})
        for outcome in ("routed", "unrouted", "dlq")
    }
    assert counts == {"routed": 2, "unrouted": 1, "dlq": 1}
    assert sample("processor_worker_batches_total") == 1


async def test_missing_destination_topics_end_the_start_with_what_to_do() -> None:
    worker = Running(settings(), WorkerMetrics())
    worker.consumer = FakeConsumer(topics={RAW})
    worker.start()
    assert worker.task is not None

    with pytest.raises(
        TopicsMissing, match=r"integration\.status\.queued.*processor topics create"
    ):
        await asyncio.wait_for(worker.task, 2)
    assert worker.consumer.stopped
    assert worker.guarantee.stopped


async def test_a_partition_turning_bad_is_held_paused_and_tried_again_after_its_rest() -> None:
    config = settings(dlq_max_consecutive=3, dlq_pause_s=0.2)
    turning_bad = [Record(1, 18, delivery(7)), Record(1, 19, delivery(8))] + [
        Record(1, offset, b"not json") for offset in range(20, 25)
    ]
    async with running(config) as worker:
        worker.consumer.batches.put_nowait({P0: [Record(0, 5, delivery(1))], P1: turning_bad})
        await until(lambda: committed(worker, 0))
        assert worker.consumer.paused == {P1}
        await until(lambda: worker.consumer.resumed == [P1], timeout=3)
        # Tried again after its rest: handed out again, still bad, held again (and again
        # every rest: a loaded machine may see it between two of them, resumed).
        sample = worker.metrics.registry.get_sample_value
        await until(
            lambda: trips(worker) >= 2 and sample("processor_worker_dlq_breaker_open") == 1,
            timeout=3,
        )

    (checkpoint,) = worker.guarantee.checkpoints
    # What came before the bad run is routed; nothing from the run on is produced or committed.
    assert checkpoint.committed == {P0: 6, P1: 20}
    assert [r.value for r in checkpoint.produced[P1]] == [delivery(7), delivery(8)]
    # Its records stay to be read again (after the rest, the bad run trips it again).
    assert set(worker.consumer.seeks) == {(P1, 20)}


async def test_a_tripped_breaker_is_logged_once_with_the_error_classes_and_the_way_out() -> None:
    config = settings(dlq_max_consecutive=2, dlq_pause_s=30)
    bad = [Record(0, offset, b"not json") for offset in range(3)]
    with capture_logs() as logs:
        consumer = FakeConsumer(topics=all_topics(config))
        worker = Worker(
            config=config, parts=WorkerParts(consumer=consumer, guarantee=FakeGuarantee())
        )
        stop = asyncio.Event()
        task = asyncio.create_task(worker.run(stop))
        consumer.batches.put_nowait({P0: bad})
        await until(lambda: unready_partitions(worker) == ("webhooks.raw/0",))
        stop.set()
        await asyncio.wait_for(task, 5)

    (opened,) = [e for e in logs if e["event"] == "partition.dlq_breaker_open"]
    assert opened["log_level"] == "error"
    assert opened["partition"] == 0
    assert opened["reason"] == "3 records in a row went to the DLQ (limit 2)"
    assert opened["error_classes"] == {"DecodeError": 3}
    assert "worker.dlq_max_ratio: 1.0 turns the breaker off" in opened["detail"]


async def test_readiness_says_produce_failing_from_the_first_failure_to_the_next_write() -> None:
    async with running(settings(retry_backoff_s=0.3, max_retry_backoff_s=0.3)) as worker:
        assert worker.unready() is None
        worker.guarantee.failures = [ProduceFailed(KafkaTimeoutError())]
        worker.consumer.batches.put_nowait({P0: two_partitions()[P0]})
        await until(lambda: worker.unready() == "produce_failing")
        await until(lambda: committed(worker, 1), timeout=3)  # handed out again, written
        assert worker.unready() is None


async def test_readiness_says_commit_failing_until_an_offsets_commit_succeeds() -> None:
    with capture_logs() as logs:
        async with running() as worker:
            worker.guarantee.failures = [CommitFailed(CommitFailedError()) for _ in range(2)]
            for index in range(3):
                worker.consumer.batches.put_nowait({P0: [Record(0, 5 + index, delivery(1))]})
                await until(begun(worker, index + 1))
                if index < 2:
                    await until(lambda: worker.unready() == "commit_failing")
            await until(lambda: committed(worker, 2))
            assert worker.unready() is None

    events = [entry["event"] for entry in logs]
    assert events.count("batch.commit_failed") == 1, "one line per streak"
    assert events.count("batch.commit_recovered") == 1


async def test_a_rebalance_clears_a_failure_of_partitions_it_moved() -> None:
    async with running() as worker:
        worker.guarantee.failures = [CommitFailed(CommitFailedError())]
        worker.consumer.batches.put_nowait({P0: [Record(0, 5, delivery(1))]})
        await until(lambda: worker.unready() == "commit_failing")
        await worker.consumer.listener.on_partitions_revoked({P0})

        assert worker.unready() is None, "an idle worker would say commit_failing forever"


async def test_a_healthy_worker_sums_up_each_interval_and_each_batch_only_at_debug() -> None:
    def summaries() -> list[MutableMapping[str, Any]]:
        return [entry for entry in logs if entry["event"] == "worker.summary"]

    with capture_logs() as logs:
        async with running(settings(log_interval_s=0.05)) as worker:
            worker.consumer.batches.put_nowait(two_partitions())
            await until(lambda: any(entry["records"] for entry in summaries()))
            # Two records wait in a paused partition: read by the consumer, not handed out.
            worker.consumer.pause(P0)
            worker.consumer.batches.put_nowait({P0: [Record(0, 7, b"x"), Record(0, 8, b"y")]})
            await until(lambda: summaries()[-1]["lag"] == 2)
            said = len(summaries())

    (busy,) = [entry for entry in summaries() if entry["records"]]
    assert busy["log_level"] == "info"
    counts = {key: busy[key] for key in ("records", "routed", "unrouted", "dlq", "duplicate")}
    assert counts == {"records": 3, "routed": 3, "unrouted": 0, "dlq": 0, "duplicate": 0}
    assert (busy["batches"], busy["partitions"], busy["lag"]) == (1, 2, 0)
    assert len(summaries()) == said + 1, "one last summary at stop"
    assert [entry["log_level"] for entry in logs if entry["event"] == "batch.committed"] == [
        "debug"
    ]


@pytest.mark.parametrize("told_to_leave", [False, True])
async def test_a_worker_leaves_its_group_at_stop_only_when_told_to(told_to_leave: bool) -> None:
    config = settings()
    consumer = FakeConsumer(topics=all_topics(config))
    consumer_stopped_first: list[bool] = []

    async def leave() -> None:
        consumer_stopped_first.append(consumer.stopped)

    worker = Worker(
        config=config,
        parts=WorkerParts(consumer=consumer, guarantee=FakeGuarantee(), leave=leave),
    )
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    await until(lambda: consumer.listener is not None)
    if told_to_leave:
        worker.leave_at_stop()
    stop.set()
    await asyncio.wait_for(task, 5)

    assert consumer_stopped_first == ([True] if told_to_leave else [])
