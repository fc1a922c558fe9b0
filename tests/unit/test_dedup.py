"""Dedup decisions: a provider retry is counted, not produced; a conflict is routed; an id
is remembered only once its record is durable, and comes back from the changelog."""

from __future__ import annotations

import re

import pytest
from aiokafka import TopicPartition

from processor.config import RoutingConfig, TopicsConfig
from processor.dedup.idwindow import fingerprint, id_hash
from processor.dedup.record import ChangelogRecord, Restored, RestoredBuilder, ids_per_record
from processor.dedup.screen import Dedup
from processor.routing import Routed, Router
from processor.testing import Record
from tests.deliveries import integration_event

P0 = TopicPartition("webhooks.raw", 0)
P1 = TopicPartition("webhooks.raw", 1)
WINDOW_S = 3600.0


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


class Changelog:
    """What a partition's changelog holds (values and timestamps, as Kafka keeps them),
    read back as the real reader reads it."""

    def __init__(self) -> None:
        self.entries: dict[int, list[tuple[bytes, int]]] = {}

    def write(self, partition: int, records: list[ChangelogRecord], seen_at: float) -> None:
        for record in records:
            self.entries.setdefault(partition, []).append((record.value, int(seen_at * 1000)))

    async def read(self, partition: int) -> Restored:
        restored = RestoredBuilder()
        for value, timestamp_ms in self.entries.get(partition, []):
            restored.add(value, timestamp_ms)
        return restored.build()


ROUTER = Router(routing=RoutingConfig(), topics=TopicsConfig())


def ids(*delivery_ids: str) -> bytes:
    """The ids' hashes as a changelog record holds them."""
    return b"".join(id_hash(i).to_bytes(8, "little") for i in delivery_ids)


def restored(record: ChangelogRecord) -> Restored:
    builder = RestoredBuilder()
    builder.add(record.value, 0)
    return builder.build()


def routed(index: int, status: str = "active", *, offset: int = 0) -> Routed:
    value = integration_event(index=index, uid="user_1", status=status)
    return ROUTER.route(Record(0, offset, value))


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def changelog() -> Changelog:
    return Changelog()


@pytest.fixture
async def dedup(clock: Clock, changelog: Changelog) -> Dedup:
    dedup = Dedup(topic="webhooks.dedup", window_s=WINDOW_S, reader=changelog, clock=clock)
    await dedup.assigned([P0, P1])
    return dedup


async def test_a_retry_after_the_first_copy_is_durable_is_counted_not_produced(
    dedup: Dedup,
) -> None:
    first = dedup.screen(P0, [routed(1)])
    dedup.remember(P0, first)

    retry = dedup.screen(P0, [routed(1)])

    assert [r.delivery_id for r in first.outputs] == ["whd_00000001"]
    assert retry.outputs == []
    assert retry.duplicates == 1
    assert dedup.changelog(P0, (0, 0)) == []  # nothing staged


async def test_an_id_is_not_remembered_before_its_record_is_durable(dedup: Dedup) -> None:
    dedup.screen(P0, [routed(1)])  # produced, but the checkpoint failed: never remembered
    dedup.unstage([P0])

    again = dedup.screen(P0, [routed(1)])

    assert [r.delivery_id for r in again.outputs] == ["whd_00000001"]
    assert again.duplicates == 0


async def test_a_retry_in_a_later_batch_of_the_same_checkpoint_is_a_duplicate(dedup: Dedup) -> None:
    first = dedup.screen(P0, [routed(1)])  # staged, its checkpoint not committed yet
    retry = dedup.screen(P0, [routed(1), routed(2)])
    other = dedup.screen(P1, [routed(1)])  # another partition stages its own

    assert [r.delivery_id for r in first.outputs] == ["whd_00000001"]
    assert [r.delivery_id for r in retry.outputs] == ["whd_00000002"]
    assert retry.duplicates == 1
    assert [r.delivery_id for r in other.outputs] == ["whd_00000001"]


async def test_a_retry_within_one_batch_is_a_duplicate_of_its_first_copy(dedup: Dedup) -> None:
    screened = dedup.screen(P0, [routed(1), routed(2), routed(1)])

    assert [r.delivery_id for r in screened.outputs] == ["whd_00000001", "whd_00000002"]
    assert screened.duplicates == 1
    (record,) = dedup.changelog(P0, (0, 2))
    assert restored(record).id_hashes == ids("whd_00000001", "whd_00000002")


async def test_the_same_id_with_other_bytes_is_a_conflict_routed_again(dedup: Dedup) -> None:
    dedup.remember(P0, dedup.screen(P0, [routed(1, "active")]))

    screened = dedup.screen(P0, [routed(1, "COMPLETED")])

    assert [r.topic for r in screened.outputs] == ["integration.status.completed"]
    assert [r.delivery_id for r in screened.conflicts] == ["whd_00000001"]
    assert screened.duplicates == 0
    # Remembered with its new bytes: a retry of the new version is a duplicate.
    dedup.remember(P0, screened)
    assert dedup.screen(P0, [routed(1, "COMPLETED")]).duplicates == 1


async def test_dead_lettered_records_are_never_screened(dedup: Dedup) -> None:
    invalid = ROUTER.route(Record(0, 0, b'{"id": "whd_x", "event": "integration.updated"}'))
    assert invalid.outcome == "dlq"

    first = dedup.screen(P0, [invalid])
    dedup.remember(P0, first)
    second = dedup.screen(P0, [invalid])

    assert second.outputs == [invalid]
    assert second.duplicates == 0
    assert dedup.changelog(P0, (0, 0)) == []


async def test_ids_are_remembered_per_raw_partition(dedup: Dedup) -> None:
    dedup.remember(P0, dedup.screen(P0, [routed(1)]))

    assert dedup.screen(P1, [routed(1)]).duplicates == 0


async def test_a_checkpoints_ids_are_one_record_on_the_raw_partitions_number(
    dedup: Dedup,
) -> None:
    dedup.screen(P1, [routed(7, offset=40)])
    dedup.screen(P1, [routed(8, offset=41), routed(7, offset=42)])  # a later batch, a retry

    (record,) = dedup.changelog(P1, (40, 42))

    prints = [
        fingerprint(integration_event(index=i, uid="user_1", status="active")) for i in (7, 8)
    ]
    assert (record.topic, record.partition, record.headers) == ("webhooks.dedup", 1, [])
    assert record.value == b"".join(
        [b"ids1", ids("whd_00000007", "whd_00000008"), *(p.to_bytes(4, "little") for p in prints)]
    )
    # The raw offsets it stands for, and a tag that keeps it apart under compaction.
    assert re.fullmatch(rb"40-42\.[0-9a-f]{8}", record.key)
    assert dedup.changelog(P1, (40, 42))[0].key != record.key


async def test_a_big_checkpoint_is_written_as_several_records(changelog: Changelog) -> None:
    dedup = Dedup(topic="webhooks.dedup", window_s=WINDOW_S, reader=changelog, ids_per_record=2)
    await dedup.assigned([P0])
    dedup.screen(P0, [routed(i) for i in range(5)])

    records = dedup.changelog(P0, (0, 4))

    assert [len(restored(r)) for r in records] == [2, 2, 1]
    assert len({r.key for r in records}) == 3
    assert b"".join(restored(r).id_hashes for r in records) == ids(
        *(f"whd_{i:08d}" for i in range(5))
    )


def test_each_record_holds_what_the_topic_allows() -> None:
    assert ids_per_record(2_097_152) == 65_536  # the default limit: capped
    assert ids_per_record(100_000) == (100_000 - 1024 - 4) // 12
    assert ids_per_record(10) == 1


async def test_a_changelog_written_one_record_per_id_is_still_restored(
    clock: Clock, changelog: Changelog
) -> None:
    # As earlier versions wrote it: key = the id, value = its hash and fingerprint.
    value = integration_event(index=1, uid="user_1", status="active")
    old = id_hash("whd_00000001").to_bytes(8, "little") + fingerprint(value).to_bytes(4, "little")
    changelog.entries[0] = [(old, int(clock.now * 1000)), (b"not a worker's", 0)]
    before = Dedup(topic="webhooks.dedup", window_s=WINDOW_S, reader=changelog, clock=clock)
    await before.assigned([P0])
    before.screen(P0, [routed(2)])
    changelog.write(0, before.changelog(P0, (0, 0)), clock.now)  # then the new format

    after = Dedup(topic="webhooks.dedup", window_s=WINDOW_S, reader=changelog, clock=clock)
    await after.assigned([P0])

    assert after.remembered == 2
    assert after.screen(P0, [routed(1), routed(2), routed(3)]).duplicates == 2


async def test_a_new_owner_restores_the_ids_from_the_changelog(
    clock: Clock, changelog: Changelog
) -> None:
    before = Dedup(topic="webhooks.dedup", window_s=WINDOW_S, reader=changelog, clock=clock)
    await before.assigned([P0])
    before.screen(P0, [routed(1), routed(2)])
    changelog.write(0, before.changelog(P0, (0, 1)), clock.now)

    after = Dedup(topic="webhooks.dedup", window_s=WINDOW_S, reader=changelog, clock=clock)
    await after.assigned([P0])

    assert after.screen(P0, [routed(2), routed(1), routed(3)]).duplicates == 2
    assert after.remembered == 2


async def test_an_id_older_than_the_window_is_routed_again(dedup: Dedup, clock: Clock) -> None:
    dedup.remember(P0, dedup.screen(P0, [routed(1)]))

    clock.now += WINDOW_S + 1

    assert dedup.screen(P0, [routed(1)]).duplicates == 0


async def test_a_revoked_partitions_ids_are_forgotten(dedup: Dedup) -> None:
    screened = dedup.screen(P0, [routed(1)])
    dedup.revoked([P0])

    dedup.remember(P0, screened)  # came back after the revoke: the next owner restores it

    assert not dedup.owns(P0)
    assert dedup.remembered == 0


async def test_a_replayed_delivery_is_not_swallowed(dedup: Dedup) -> None:
    dedup.remember(P0, dedup.screen(P0, [routed(1)]))
    value = integration_event(index=1, uid="user_1", status="active")
    replayed = ROUTER.route(Record(0, 9, value, headers=[("replay-of", b"webhooks.dlq/0/3")]))

    screened = dedup.screen(P0, [replayed])

    assert screened.outputs == [replayed]
    assert (screened.duplicates, screened.conflicts) == (0, [])
