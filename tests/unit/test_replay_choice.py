"""Which records `processor replay` picks: its filters, without Kafka."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from aiokafka.structs import ConsumerRecord

from processor.ops.replay import ReplayFilters, ReplaySummary, _choose

SINCE = datetime(2025, 1, 1, tzinfo=UTC)
AFTER = int(datetime(2025, 6, 1, tzinfo=UTC).timestamp() * 1000)
BEFORE = int(datetime(2024, 6, 1, tzinfo=UTC).timestamp() * 1000)


def dead_letter(received_at: bytes, timestamp: int) -> ConsumerRecord[bytes, bytes]:
    headers = [("delivery-id", b"whd_1"), ("received-at", received_at)]
    return ConsumerRecord("webhooks.dlq", 0, 7, timestamp, 0, b"user_1", b"{}", None, 6, 2, headers)


@pytest.mark.parametrize(
    ("received_at", "timestamp", "chosen"),
    [
        (b"2025-03-01T00:00:00.000Z", BEFORE, 1),  # the header decides
        (b"2024-03-01T00:00:00.000Z", AFTER, 0),
        # Naive: no moment on the timeline, so the record's own time decides.
        (b"2025-03-01T00:00:00", BEFORE, 0),
        (b"2024-03-01T00:00:00", AFTER, 1),
        (b"yesterday", AFTER, 1),
    ],
)
def test_since_compares_received_at_or_else_the_record_time(
    received_at: bytes, timestamp: int, chosen: int
) -> None:
    filters = ReplayFilters(source="webhooks.dlq", target="webhooks.raw", since=SINCE)
    summary = ReplaySummary(source=filters.source, target=filters.target, dry_run=True)

    picked, scanned = _choose([dead_letter(received_at, timestamp)], filters, 3, summary, room=None)

    assert (len(picked), scanned) == (chosen, 1)
