"""Every use of aiokafka's private internals, for the one version they were written for.

aiokafka keeps private what a service that must survive outages needs: a client's
metadata refresh and connections (to pace and report them), the fetcher's record
reader (to park a record it cannot read), and a producer's sender, accumulator and
transaction state (to close a producer for good, now, whatever the broker does), and a
consumer's group generation. Nor does it speak three requests a worker needs: LeaveGroup
v3 (KIP-345), the one way a static member leaves its group; TxnOffsetCommit v3
(KIP-447), which commits a transaction's offsets with the group's generation so the
broker fences a worker that lost its partitions; and OffsetFetch v7 with require_stable
(KIP-447), which holds back offsets a transaction has not ended yet. Its protocol
classes make those requests here.
Nothing else in `processor` reaches past aiokafka's public API; this module checks at
import that each internal it uses is where it expects it, and
`tests/unit/test_aiokafka_internals.py` fails on any other aiokafka version, so an
upgrade starts by re-reading the aiokafka source behind each function here.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Final

import aiokafka
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.client import AIOKafkaClient, CoordinationType
from aiokafka.conn import AIOKafkaConnection
from aiokafka.consumer import fetcher
from aiokafka.consumer.group_coordinator import GroupCoordinator
from aiokafka.errors import (
    GroupAuthorizationFailedError,
    GroupCoordinatorNotAvailableError,
    IllegalGenerationError,
    KafkaError,
    NotCoordinatorForGroupError,
    UnknownMemberIdError,
    UnknownTopicOrPartitionError,
    for_code,
)
from aiokafka.producer.message_accumulator import MessageAccumulator, MessageBatch
from aiokafka.producer.sender import Sender, TxnOffsetCommitHandler
from aiokafka.producer.transaction_manager import TransactionManager, TransactionState
from aiokafka.protocol.api import Request, RequestStruct, Response
from aiokafka.protocol.types import (
    Array,
    Boolean,
    CompactArray,
    CompactString,
    Int16,
    Int32,
    Int64,
    Schema,
    String,
    TaggedFields,
)
from aiokafka.record.memory_records import MemoryRecords
from aiokafka.structs import OffsetAndMetadata

__all__ = [
    "WRITTEN_FOR",
    "GroupFenced",
    "GroupMember",
    "MemoryRecords",
    "UnstableOffsets",
    "abandon",
    "broker_versions",
    "check_layout",
    "client_of",
    "commit_offsets_as_member",
    "group_member",
    "kip447_missing",
    "read_fetched_records_with",
    "read_stable_offsets",
    "remove_static_member",
    "sender_failure",
    "wrap_connect",
    "wrap_metadata_refresh",
]

# The aiokafka release every function below was read against.
WRITTEN_FOR: Final = "0.14.0"

# Bounds closing an abandoned producer's connections; nothing is flushed by then.
_CLOSE_CONNECTIONS_S: Final = 5.0


def check_layout() -> None:
    """Raise ImportError naming this module if an internal it uses is missing (another
    aiokafka than the one it was written for). Run at import."""
    expected: dict[type[Any] | ModuleType, tuple[str, ...]] = {
        AIOKafkaClient: (
            "_metadata_update",
            "_get_conn",
            "coordinator_lookup",
            "send",
            "get_random_node",
        ),
        AIOKafkaConnection: ("_versions",),
        AIOKafkaConsumer: ("_client", "_coordinator", "_group_instance_id"),
        AIOKafkaProducer: ("_sender", "_message_accumulator", "_txn_manager", "_closed"),
        Sender: ("sender_task", "_do_txn_offset_commit", "_find_coordinator", "_coordinator_dead"),
        TxnOffsetCommitHandler: ("create_request", "handle_response", "do", "_offsets"),
        GroupCoordinator: ("generation", "member_id", "_do_fetch_commit_offsets", "_send_req"),
        MessageAccumulator: ("_batches", "_pending_batches", "_exception", "_closed"),
        MessageBatch: ("_drain_waiter", "retry_count", "future"),
        TransactionManager: (
            "_transaction_waiter",
            "_pending_txn_offsets",
            "_pending_txn_partitions",
            "_transition_to",
            "transactional_id",
        ),
        fetcher: ("MemoryRecords",),
    }
    missing = [
        f"{owner.__name__}.{name}"
        for owner, names in expected.items()
        for name in names
        if not hasattr(owner, name) and name not in _named_in_init(owner)
    ]
    if missing:
        raise ImportError(
            f"aiokafka {aiokafka.__version__} lacks {', '.join(missing)}, which "
            f"processor.kafka.aiokafka_internals (written for {WRITTEN_FOR}) uses: "
            "install the aiokafka version pinned in constraints.txt"
        )


def _named_in_init(owner: type[Any] | ModuleType) -> tuple[str, ...]:
    """The names a class's __init__ refers to: its instance attributes are among them."""
    init = getattr(owner, "__init__", None)
    code = getattr(init, "__code__", None)
    return () if code is None else tuple(code.co_names)


check_layout()


def client_of(consumer: AIOKafkaConsumer) -> AIOKafkaClient:
    """A consumer's client (producers offer theirs as `.client`): for metadata requests
    and for Connectivity, which the consumer exposes no other way."""
    client: AIOKafkaClient = consumer._client
    return client


def wrap_metadata_refresh(
    client: AIOKafkaClient,
    wrap: Callable[[Callable[..., Awaitable[bool]]], Callable[..., Awaitable[bool]]],
) -> None:
    """Route every metadata refresh of `client` through `wrap(original)`; the instance only.

    `_metadata_update` is what aiokafka's sync task and every forced update await; it
    returns whether a broker answered.
    """
    client._metadata_update = wrap(client._metadata_update)


def wrap_connect(
    client: AIOKafkaClient,
    wrap: Callable[[Callable[..., Awaitable[Any]]], Callable[..., Awaitable[Any]]],
) -> None:
    """Route every connection `client` opens through `wrap(original)`; the instance only.

    `_get_conn` returns a connection, or None when the node cannot be reached.
    """
    client._get_conn = wrap(client._get_conn)


def read_fetched_records_with(factory: Callable[[bytes], Any]) -> None:
    """From now on, in this process, the fetcher reads each partition's fetched bytes with
    `factory(data)` instead of `MemoryRecords(data)` (processor.kafka.unreadable's reader).
    Idempotent for one factory; another would replace a replacement, which is a bug."""
    current = fetcher.MemoryRecords
    if current is not factory and current is not MemoryRecords:
        raise RuntimeError(f"aiokafka's fetcher already reads records with {current!r}")
    fetcher.MemoryRecords = factory


def sender_failure(producer: AIOKafkaProducer) -> BaseException | None:
    """What ended the producer's sender task, if it has ended: such a producer delivers
    nothing more (every later send raises that error) and must be replaced."""
    task = producer._sender.sender_task
    if task is None or not task.done() or task.cancelled():
        return None
    failure: BaseException | None = task.exception()
    return failure


async def abandon(producer: AIOKafkaProducer, reason: BaseException) -> None:
    """Close `producer` at once, for good: nothing of it outlives this call.

    `AIOKafkaProducer.stop()` first flushes, and with the broker away that waits
    without bound (aiokafka#1101); cut short, it leaves the sender task pending and
    batch futures that fail later, unretrieved, logged by asyncio as errors when the
    broker answers again. Here, instead: the sender task and the requests it has in
    flight are cancelled, every batch still queued or in flight fails with `reason`
    (its ack futures complete, so whoever awaits them stops waiting), every future
    aiokafka made is marked retrieved, and the connections close. A write that was in
    flight may still land: its sender hears `reason`, as for any failed write.
    """
    producer._closed = True  # stop() becomes a no-op, and no "Unclosed" warning
    sender: Sender = producer._sender
    task = sender.sender_task
    requests = _sender_requests(sender)
    if task is not None:
        # The sender's own CancelledError handler awaits its requests: cancel it again.
        while not task.done():
            task.cancel()
            await asyncio.wait([task], timeout=0.05)
        if not task.cancelled():
            task.exception()  # its failure is why we are here; mark it retrieved
    for request in requests:
        request.cancel()
    await asyncio.gather(*requests, return_exceptions=True)
    _fail_batches(producer, reason)
    _fail_transaction(producer, reason)
    with contextlib.suppress(TimeoutError, OSError):
        async with asyncio.timeout(_CLOSE_CONNECTIONS_S):
            await producer.client.close()


def _sender_requests(sender: Sender) -> list[asyncio.Task[Any]]:
    """The tasks the sender runs for its requests (produce and transaction requests):
    coroutines of the sender's methods, found by their `self`."""
    found = []
    for task in asyncio.all_tasks():
        frame = getattr(task.get_coro(), "cr_frame", None)
        if (
            frame is not None
            and frame.f_locals.get("self") is sender
            and (task is not sender.sender_task)
        ):
            found.append(task)
    return found


def _fail_batches(producer: AIOKafkaProducer, reason: BaseException) -> None:
    accumulator = producer._message_accumulator
    queued = [batch for batches in accumulator._batches.values() for batch in batches]
    # A batch sent and put back for a retry has a done-callback that removes it from the
    # in-flight set, where aiokafka's own fail_all would not find it (a KeyError later).
    in_flight = set(accumulator._pending_batches) | {b for b in queued if b.retry_count}
    accumulator._pending_batches = in_flight
    accumulator._batches.clear()
    accumulator._exception = reason  # a send after this raises it
    accumulator._closed = True
    for batch in [*queued, *in_flight]:
        batch.failure(exception=reason)
        _retrieved(batch.future)
        _retrieved(batch._drain_waiter)


def _fail_transaction(producer: AIOKafkaProducer, reason: BaseException) -> None:
    manager = producer._txn_manager
    if manager is None or manager.transactional_id is None:
        return
    waiter = manager._transaction_waiter
    if waiter is not None:
        if not waiter.done():
            waiter.set_exception(reason)
        _retrieved(waiter)
    for _, _, offsets_committed in manager._pending_txn_offsets:
        if not offsets_committed.done():
            offsets_committed.set_exception(reason)
        _retrieved(offsets_committed)
    manager._pending_txn_offsets.clear()


def _retrieved(future: asyncio.Future[Any]) -> None:
    if future.done() and not future.cancelled():
        future.exception()


class GroupFenced(KafkaError):  # type: ignore[misc]
    """The group refused a transaction's offsets: the member they were committed as is
    not in the group at that generation any more, so another worker owns its
    partitions. Kafka aborts the transaction; nothing of it becomes visible."""


class UnstableOffsets(KafkaError):  # type: ignore[misc]
    """A transaction holding offsets of the partition has not ended yet: asked again."""

    retriable = True


@dataclass(frozen=True, kw_only=True)
class GroupMember:
    """Who a consumer is in its group at one generation: what a transaction's offsets
    are committed as (KIP-447)."""

    group_id: str
    generation_id: int
    member_id: str
    group_instance_id: str | None


def group_member(consumer: AIOKafkaConsumer) -> GroupMember:
    """The started `consumer`'s group, generation and member id now (aiokafka's
    `consumer_group_metadata()` is missing); within a rebalance listener's
    `on_partitions_assigned`, the generation the partitions were assigned in."""
    coordinator: GroupCoordinator = consumer._coordinator
    return GroupMember(
        group_id=coordinator.group_id,
        generation_id=coordinator.generation,
        member_id=coordinator.member_id,
        group_instance_id=consumer._group_instance_id,
    )


# TxnOffsetCommit errors that say the member is not (or no longer) the one the
# partitions were assigned to: ILLEGAL_GENERATION, UNKNOWN_MEMBER_ID,
# REBALANCE_IN_PROGRESS and FENCED_INSTANCE_ID.
_NOT_THE_MEMBER: Final = frozenset(
    {IllegalGenerationError.errno, UnknownMemberIdError.errno, 27, 82}
)
# OffsetFetch's UNSTABLE_OFFSET_COMMIT (aiokafka does not know it).
_UNSTABLE_OFFSET_COMMIT: Final = 88


def commit_offsets_as_member(
    producer: AIOKafkaProducer, member_of: Callable[[str], GroupMember]
) -> None:
    """From now on the transactional `producer` commits a transaction's offsets for
    group G as `member_of(G)` (TxnOffsetCommit v3, Kafka 2.5+): the group coordinator
    refuses them, and the transaction fails with GroupFenced, unless that member still
    belongs to G at that generation. aiokafka's `send_offsets_to_transaction` sends no
    generation (v0), which any process may commit with."""
    sender: Sender = producer._sender

    async def txn_offset_commit(offsets: dict[TopicPartition, Any], group_id: str) -> None:
        if not offsets:
            return
        try:
            node_id = await sender._find_coordinator(CoordinationType.GROUP, group_id)
        except GroupAuthorizationFailedError as exc:
            _abortable_error(sender._txn_manager, exc)
            return
        await _TxnOffsetCommitAsMember(sender, offsets, member_of(group_id)).do(node_id)

    sender._do_txn_offset_commit = txn_offset_commit


class _TxnOffsetCommitAsMember(TxnOffsetCommitHandler):  # type: ignore[misc]
    """aiokafka's handler, speaking v3: the request names the member, and a refusal of
    the member fails the transaction rather than the producer."""

    def __init__(self, sender: Sender, offsets: dict[TopicPartition, Any], member: GroupMember):
        super().__init__(sender, offsets, member.group_id)
        self._member = member

    def create_request(self) -> _TxnOffsetCommitV3:
        manager = self._sender._txn_manager
        topics: dict[str, list[tuple[Any, ...]]] = collections.defaultdict(list)
        for partition, offset in sorted(self._offsets.items()):
            # No leader epoch (-1): the broker then skips the check it enables.
            topics[partition.topic].append(
                (partition.partition, offset.offset, -1, offset.metadata, {})
            )
        member = self._member
        return _TxnOffsetCommitV3(
            (
                manager.transactional_id,
                member.group_id,
                manager.producer_id,
                manager.producer_epoch,
                member.generation_id,
                member.member_id,
                member.group_instance_id,
                [(topic, partitions, {}) for topic, partitions in topics.items()],
                {},
            )
        )

    def handle_response(self, response: Any) -> float | None:
        errors = [
            (topic, [(partition, code) for partition, code, _tags in partitions])
            for topic, partitions, _tags in response.errors
        ]
        refused = {code for _, partitions in errors for _, code in partitions} & _NOT_THE_MEMBER
        if refused:
            member = self._member
            _abortable_error(
                self._sender._txn_manager,
                GroupFenced(
                    f"{member.group_id} refused offsets from member {member.member_id} of "
                    f"generation {member.generation_id} ({for_code(min(refused)).__name__})"
                ),
            )
            return None
        # The rest as aiokafka handles v0, whose errors have the same codes.
        result: float | None = super().handle_response(_TxnOffsetCommitErrors(errors))
        return result


def _abortable_error(manager: TransactionManager, reason: BaseException) -> None:
    """aiokafka's `error_transaction`, but the transaction keeps its partitions, so that
    the abort that follows reaches the broker. aiokafka's forgets them, then takes the
    transaction for an empty one and skips the EndTxn: it stays open until Kafka's
    transaction timeout, and read_committed subscribers of its partitions wait for it."""
    manager._transition_to(TransactionState.ABORTABLE_ERROR)
    manager._pending_txn_partitions.clear()
    for _, _, offsets_committed in manager._pending_txn_offsets:
        offsets_committed.set_exception(reason)
    manager._pending_txn_offsets.clear()
    manager._transaction_waiter.set_exception(reason)
    # The caller hears it from the offsets' future; the abort makes a new waiter.
    _retrieved(manager._transaction_waiter)


@dataclass(frozen=True)
class _TxnOffsetCommitErrors:
    errors: list[tuple[str, list[tuple[int, int]]]]


class _TxnOffsetCommitResponseV3(Response):  # type: ignore[misc]
    API_KEY = 28
    API_VERSION = 3
    FLEXIBLE_VERSION = True
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        (
            "errors",
            CompactArray(
                ("topic", CompactString("utf-8")),
                (
                    "partitions",
                    CompactArray(
                        ("partition", Int32), ("error_code", Int16), ("tags", TaggedFields)
                    ),
                ),
                ("tags", TaggedFields),
            ),
        ),
        ("tags", TaggedFields),
    )


class _TxnOffsetCommitRequestV3(RequestStruct):  # type: ignore[misc]
    API_KEY = 28
    API_VERSION = 3
    FLEXIBLE_VERSION = True
    RESPONSE_TYPE = _TxnOffsetCommitResponseV3
    SCHEMA = Schema(
        ("transactional_id", CompactString("utf-8")),
        ("group_id", CompactString("utf-8")),
        ("producer_id", Int64),
        ("producer_epoch", Int16),
        ("generation_id", Int32),
        ("member_id", CompactString("utf-8")),
        ("group_instance_id", CompactString("utf-8")),
        (
            "topics",
            CompactArray(
                ("topic", CompactString("utf-8")),
                (
                    "partitions",
                    CompactArray(
                        ("partition", Int32),
                        ("offset", Int64),
                        ("leader_epoch", Int32),
                        ("metadata", CompactString("utf-8")),
                        ("tags", TaggedFields),
                    ),
                ),
                ("tags", TaggedFields),
            ),
        ),
        ("tags", TaggedFields),
    )


class _TxnOffsetCommitV3(Request[_TxnOffsetCommitRequestV3]):  # type: ignore[misc]
    API_KEY = 28

    def __init__(self, fields: tuple[Any, ...]) -> None:
        self._fields = fields

    def build(
        self, request_struct_class: type[_TxnOffsetCommitRequestV3]
    ) -> _TxnOffsetCommitRequestV3:
        return request_struct_class(*self._fields)


# The request versions KIP-447 needs, by API key: TxnOffsetCommit v3 and OffsetFetch v7
# (Kafka 2.5 and later).
KIP_447: Final = {28: ("TxnOffsetCommit", 3), 9: ("OffsetFetch", 7)}


def kip447_missing(versions: dict[int, tuple[int, int]]) -> list[str]:
    """What of KIP-447 a broker lacks, given the (min, max) version it speaks of each API
    key (its ApiVersions answer); empty when it has it all."""
    missing = []
    for key, (name, needed) in KIP_447.items():
        low, high = versions.get(key, (0, -1))
        if not low <= needed <= high:
            spoken = "none" if high < 0 else f"v{low}-v{high}"
            missing.append(f"{name} v{needed} (it speaks {spoken})")
    return missing


async def broker_versions(client: AIOKafkaClient) -> dict[int, tuple[int, int]]:
    """The request versions a broker of the bootstrapped `client`'s cluster speaks, as its
    connection negotiated them (ApiVersions); raises KafkaError when none can be reached."""
    node = client.get_random_node()
    if node is None:
        raise KafkaError("no broker in the cluster's metadata to ask for its versions")
    conn = await client._get_conn(node)
    if conn is None:
        raise KafkaError(f"broker {node} cannot be reached to ask for its versions")
    versions: dict[int, tuple[int, int]] = conn._versions
    return versions


def read_stable_offsets(consumer: AIOKafkaConsumer) -> None:
    """From now on the started `consumer` reads its group's committed offsets with
    require_stable (OffsetFetch v7, Kafka 2.5+): while a transaction that commits
    offsets of a partition is open, the broker answers UNSTABLE_OFFSET_COMMIT and
    aiokafka's fetch asks again after its retry backoff. Without it the next owner of a
    partition reads the offset before that transaction and, should the transaction then
    commit, routes its records a second time. Covers the positions of newly assigned
    partitions and `committed()` alike."""
    coordinator: GroupCoordinator = consumer._coordinator

    async def fetch(partitions: list[TopicPartition]) -> dict[TopicPartition, OffsetAndMetadata]:
        topics: dict[str, list[int]] = collections.defaultdict(list)
        for partition in partitions:
            topics[partition.topic].append(partition.partition)
        response = await coordinator._send_req(
            _StableOffsetFetch(coordinator.group_id, list(topics.items()))
        )
        if response.error_code:
            raise _fetch_error(coordinator, response.error_code)
        offsets = {}
        for topic, found, _tags in response.topics:
            for partition, offset, _epoch, metadata, code, _ in found:
                if code == _UNSTABLE_OFFSET_COMMIT:
                    raise UnstableOffsets(f"{topic}-{partition}")
                if code == UnknownTopicOrPartitionError.errno:
                    continue  # as aiokafka: no committed offset to read
                if code:
                    raise _fetch_error(coordinator, code)
                if offset >= 0:  # -1: nothing committed
                    offsets[TopicPartition(topic, partition)] = OffsetAndMetadata(
                        offset, metadata or ""
                    )
        return offsets

    coordinator._do_fetch_commit_offsets = fetch


def _fetch_error(coordinator: GroupCoordinator, code: int) -> KafkaError:
    """What aiokafka's own fetch does with an error: retriable ones are asked again."""
    error: KafkaError = for_code(code)()
    if isinstance(error, NotCoordinatorForGroupError | GroupCoordinatorNotAvailableError):
        coordinator.coordinator_dead()  # found anew before the retry
    return error


class _OffsetFetchResponseV7(Response):  # type: ignore[misc]
    API_KEY = 9
    API_VERSION = 7
    FLEXIBLE_VERSION = True
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        (
            "topics",
            CompactArray(
                ("topic", CompactString("utf-8")),
                (
                    "partitions",
                    CompactArray(
                        ("partition", Int32),
                        ("offset", Int64),
                        ("leader_epoch", Int32),
                        ("metadata", CompactString("utf-8")),
                        ("error_code", Int16),
                        ("tags", TaggedFields),
                    ),
                ),
                ("tags", TaggedFields),
            ),
        ),
        ("error_code", Int16),
        ("tags", TaggedFields),
    )


class _OffsetFetchRequestV7(RequestStruct):  # type: ignore[misc]
    API_KEY = 9
    API_VERSION = 7
    FLEXIBLE_VERSION = True
    RESPONSE_TYPE = _OffsetFetchResponseV7
    SCHEMA = Schema(
        ("group_id", CompactString("utf-8")),
        (
            "topics",
            CompactArray(
                ("topic", CompactString("utf-8")),
                ("partitions", CompactArray(Int32)),
                ("tags", TaggedFields),
            ),
        ),
        ("require_stable", Boolean),
        ("tags", TaggedFields),
    )


class _StableOffsetFetch(Request[_OffsetFetchRequestV7]):  # type: ignore[misc]
    API_KEY = 9

    def __init__(self, group_id: str, topics: list[tuple[str, list[int]]]) -> None:
        self._group_id = group_id
        self._topics = topics

    def build(self, request_struct_class: type[_OffsetFetchRequestV7]) -> _OffsetFetchRequestV7:
        no_tags: dict[int, bytes] = {}
        topics = [(topic, partitions, no_tags) for topic, partitions in self._topics]
        return request_struct_class(self._group_id, topics, True, no_tags)


class _LeaveGroupResponseV3(Response):  # type: ignore[misc]
    API_KEY = 13
    API_VERSION = 3
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        ("error_code", Int16),
        (
            "members",
            Array(
                ("member_id", String("utf-8")),
                ("group_instance_id", String("utf-8")),
                ("error_code", Int16),
            ),
        ),
    )


class _LeaveGroupRequestV3(RequestStruct):  # type: ignore[misc]
    API_KEY = 13
    API_VERSION = 3
    RESPONSE_TYPE = _LeaveGroupResponseV3
    SCHEMA = Schema(
        ("group_id", String("utf-8")),
        ("members", Array(("member_id", String("utf-8")), ("group_instance_id", String("utf-8")))),
    )


class _LeaveAsStaticMember(Request[_LeaveGroupRequestV3]):  # type: ignore[misc]
    API_KEY = 13

    def __init__(self, group_id: str, group_instance_id: str) -> None:
        self._group_id = group_id
        self._group_instance_id = group_instance_id

    def build(self, request_struct_class: type[_LeaveGroupRequestV3]) -> _LeaveGroupRequestV3:
        # An empty member id: the coordinator finds the member by its instance id.
        return request_struct_class(self._group_id, [("", self._group_instance_id)])


async def remove_static_member(
    client: AIOKafkaClient, *, group_id: str, group_instance_id: str
) -> int:
    """Ask the group's coordinator to remove the static member `group_instance_id` now,
    as Kafka's AdminClient.removeMembersFromConsumerGroup does: the group rebalances at
    once instead of after the member's session timeout. `client` must be bootstrapped.

    Returns Kafka's error code for the member (0: removed; 91, UNKNOWN_MEMBER_ID: it
    was not in the group). Raises KafkaError when the request itself fails.
    """
    coordinator = await client.coordinator_lookup(CoordinationType.GROUP, group_id)
    response = await client.send(coordinator, _LeaveAsStaticMember(group_id, group_instance_id))
    if response.error_code:
        return int(response.error_code)
    (member,) = response.members
    return int(member[2])
