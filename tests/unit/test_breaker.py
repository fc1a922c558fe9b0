"""The DLQ circuit breaker's arithmetic: a ratio over a full window, a run of DLQ records,
and partitions paused and tried again."""

from __future__ import annotations

import pytest
from aiokafka import TopicPartition

from processor.worker.breaker import Breakers, DlqBreaker, Trip

P0 = TopicPartition("webhooks.raw", 0)
P1 = TopicPartition("webhooks.raw", 1)


def breaker(**overrides: float) -> DlqBreaker:
    settings = {"max_ratio": 0.5, "window": 10, "max_consecutive": 4} | overrides
    return DlqBreaker(
        max_ratio=float(settings["max_ratio"]),
        window=int(settings["window"]),
        max_consecutive=int(settings["max_consecutive"]),
    )


def test_the_ratio_is_judged_only_over_a_full_window() -> None:
    b = breaker(max_consecutive=100)
    mostly_dead = [True, True, False] * 3  # 9 records: not yet a window of 10

    assert b.would_trip(mostly_dead) is None
    b.record(mostly_dead)
    assert b.would_trip([True]) == Trip(0, "7 of the last 10 records went to the DLQ (limit 50%)")


def test_exactly_the_ratio_does_not_trip_one_more_does() -> None:
    b = breaker(max_consecutive=100)
    b.record([True, False] * 5)  # 5 of 10

    assert b.would_trip([False]) is None  # pushes out a True: 4 of 10
    # The first pushes out a True (5 of 10), the second a False (6 of 10): hold from it.
    assert b.would_trip([True, True]) == Trip(
        1, "6 of the last 10 records went to the DLQ (limit 50%)"
    )


def test_the_window_slides_as_records_are_committed() -> None:
    b = breaker(max_consecutive=100)
    b.record([True] * 4 + [False] * 6)

    b.record([False] * 4)  # the four DLQ records leave the window

    assert b.would_trip([True] * 5) is None
    assert b.would_trip([True] * 6) == Trip(
        5, "6 of the last 10 records went to the DLQ (limit 50%)"
    )


def test_a_run_of_dlq_records_trips_across_batches() -> None:
    b = breaker(window=1000)
    b.record([False, True, True])

    assert b.would_trip([True, True]) is None  # a run of 4: the limit itself
    # The run began two records before this batch: everything of the batch is held.
    assert b.would_trip([True, True, True]) == Trip(
        0, "5 records in a row went to the DLQ (limit 4)"
    )
    assert b.would_trip([False, True, True, True, True]) is None
    # A run that starts in this batch is held from its first record.
    assert b.would_trip([False, False, True, True, True, True, True]) == Trip(
        2, "5 records in a row went to the DLQ (limit 4)"
    )


def test_would_trip_changes_nothing() -> None:
    b = breaker()
    b.would_trip([True] * 50)

    assert b.would_trip([True] * 4) is None


@pytest.mark.parametrize("outcomes", [[True] * 100, [True, False] * 100])
def test_a_ratio_of_one_turns_the_breaker_off(outcomes: list[bool]) -> None:
    b = breaker(max_ratio=1.0)
    b.record(outcomes)

    assert not b.enabled
    assert b.would_trip(outcomes) is None


def test_a_tripped_partition_rests_then_is_tried_again_afresh() -> None:
    breakers = Breakers(max_ratio=0.5, window=10, max_consecutive=2, pause_s=60)
    breakers.record(P0, [True, True])
    assert breakers.would_trip(P0, [True]) is not None

    until = breakers.trip(P0, now=1000.0)

    assert until == 1060.0
    assert breakers.paused() == [P0]
    assert breakers.due(1059.9) == []
    assert breakers.due(1060.0) == [P0]
    assert breakers.paused() == []
    assert breakers.would_trip(P0, [True, True]) is None, "a fresh breaker after the rest"


def test_revoked_partitions_are_forgotten() -> None:
    breakers = Breakers(max_ratio=0.5, window=10, max_consecutive=2, pause_s=60)
    breakers.trip(P0, now=0.0)
    breakers.record(P1, [True, True])

    breakers.forget([P0, P1])

    assert breakers.paused() == []
    assert breakers.would_trip(P1, [True, True]) is None
