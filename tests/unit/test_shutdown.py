"""Racing work against the stop event: `unless_stopped`, and `connect` built on it."""

from __future__ import annotations

import asyncio

import pytest

from processor.config import KafkaConfig
from processor.errors import BrokerUnavailable, TopicsMissing
from processor.kafka.clients import connect
from processor.shutdown import unless_stopped


async def test_work_that_ends_first_is_true_and_its_error_passes_through() -> None:
    async def fails() -> None:
        raise TopicsMissing("no such topic")

    assert await unless_stopped(asyncio.sleep(0), asyncio.Event()) is True
    with pytest.raises(TopicsMissing):
        await unless_stopped(fails(), asyncio.Event())


async def test_a_stop_first_is_false_and_cancels_the_work() -> None:
    stop = asyncio.Event()
    cancelled = asyncio.Event()

    async def forever() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    asyncio.get_running_loop().call_later(0.01, stop.set)
    assert await asyncio.wait_for(unless_stopped(forever(), stop), 1) is False
    assert cancelled.is_set()


async def test_connect_is_false_on_stop_and_names_the_address_on_timeout() -> None:
    config = KafkaConfig(bootstrap_servers="127.0.0.1:1", connect_timeout_s=0.05)
    stopped = asyncio.Event()
    stopped.set()

    assert await connect(lambda: asyncio.Event().wait(), config=config, stop=stopped) is False
    with pytest.raises(BrokerUnavailable, match=r"127\.0\.0\.1:1 within 0\.05 s"):
        await asyncio.wait_for(
            connect(lambda: asyncio.Event().wait(), config=config, stop=asyncio.Event()), 1
        )
    assert await connect(lambda: asyncio.sleep(0), config=config, stop=asyncio.Event()) is True
