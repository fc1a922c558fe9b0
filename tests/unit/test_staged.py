"""The open checkpoint's bookkeeping: when it is due, where each partition's retry
starts, what it commits, and which batches are done once some partitions are."""

from __future__ import annotations

from aiokafka import TopicPartition

from processor.testing import RAW, FakeGuarantee, Record
from processor.worker.batch import Share
from processor.worker.staged import Staged

P0 = TopicPartition(RAW, 0)
P1 = TopicPartition(RAW, 1)


def share(partition: int, *offsets: int) -> Share:
    return Share([Record(partition, offset, b"{}") for offset in offsets], [])


def staged() -> Staged:
    open_ = Staged(FakeGuarantee().begin(), opened_at=100.0)
    open_.add({P0: share(0, 5, 6)}, fetched_at=1.0)
    open_.add({P0: share(0, 7), P1: share(1, 10, 11, 12)}, fetched_at=2.0)
    return open_


def test_each_partition_commits_past_its_last_record_and_retries_from_its_first() -> None:
    open_ = staged()

    assert open_.next == {P0: 8, P1: 13}
    assert open_.first == {P0: 5, P1: 10}
    assert open_.spans() == {P0: (5, 7), P1: (10, 12)}
    assert (open_.records, open_.records_of({P1})) == (6, 3)


def test_it_is_due_after_its_interval_or_once_it_holds_enough_records() -> None:
    open_ = staged()

    assert not open_.due(100.9, every_records=7, interval_s=1.0)
    assert open_.due(101.0, every_records=7, interval_s=1.0)
    assert open_.due(100.0, every_records=6, interval_s=1.0)


def test_a_batch_done_in_part_has_no_fetch_time() -> None:
    done = list(staged().done({P0}))

    assert [(list(shares), fetched_at) for shares, fetched_at in done] == [
        ([P0], 1.0),
        ([P0], None),  # its P1 share failed: no time from fetch to commit
    ]
