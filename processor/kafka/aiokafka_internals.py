"""Every use of aiokafka's private internals, for the one version they were written for.

aiokafka keeps private what a service that must survive outages needs: a client's
metadata refresh and connections (to pace and report them), the fetcher's record
reader (to park a record it cannot read), and a producer's sender, accumulator and
transaction state (to close a producer for good, now, whatever the broker does). Nor
does it speak LeaveGroup v3 (KIP-345), the one way a static member leaves its group:
its protocol classes make that request here.
Nothing else in `processor` reaches past aiokafka's public API; this module checks at
import that each internal it uses is where it expects it, and
`tests/unit/test_aiokafka_internals.py` fails on any other aiokafka version, so an
upgrade starts by re-reading the aiokafka source behind each function here.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from types import ModuleType
from typing import Any, Final

import aiokafka
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.client import AIOKafkaClient, CoordinationType
from aiokafka.consumer import fetcher
from aiokafka.producer.message_accumulator import MessageAccumulator, MessageBatch
from aiokafka.producer.sender import Sender
from aiokafka.producer.transaction_manager import TransactionManager
from aiokafka.protocol.api import Request, RequestStruct, Response
from aiokafka.protocol.types import Array, Int16, Int32, Schema, String
from aiokafka.record.memory_records import MemoryRecords

__all__ = [
    "WRITTEN_FOR",
    "MemoryRecords",
    "abandon",
    "check_layout",
    "client_of",
    "read_fetched_records_with",
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
        AIOKafkaClient: ("_metadata_update", "_get_conn", "coordinator_lookup", "send"),
        AIOKafkaConsumer: ("_client",),
        AIOKafkaProducer: ("_sender", "_message_accumulator", "_txn_manager", "_closed"),
        Sender: ("sender_task",),
        MessageAccumulator: ("_batches", "_pending_batches", "_exception", "_closed"),
        MessageBatch: ("_drain_waiter", "retry_count", "future"),
        TransactionManager: ("_transaction_waiter", "_pending_txn_offsets", "transactional_id"),
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
