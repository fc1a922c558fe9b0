"""What Connectivity reports as a client's connections and metadata refreshes come and go.

A stand-in for aiokafka's client: Connectivity wraps its `_metadata_update` and
`_get_conn`, and a clock of the test's own moves time.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

from processor.kafka import connectivity as connectivity_module
from processor.kafka.connectivity import CONFIRM_S, Connectivity


class Client:
    """Answers as a broker that is up (`up`) or not; no sockets."""

    def __init__(self) -> None:
        self.up = True

    async def _metadata_update(self, *_: Any) -> bool:
        return await self._get_conn(1) is not None

    async def _get_conn(self, *_: Any, **__: Any) -> object | None:
        return object() if self.up else None


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(autouse=True)
def no_pause(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(connectivity_module, "RETRY_BACKOFF_S", 0.0)
    monkeypatch.setattr(connectivity_module, "MAX_RETRY_BACKOFF_S", 0.0)


def watched() -> tuple[Connectivity, Client, Clock]:
    clock = Clock()
    connectivity = Connectivity(bootstrap="kafka:9092", registry=CollectorRegistry(), clock=clock)
    client = Client()
    connectivity.watch(client)
    return connectivity, client, clock


def events(logs: list[MutableMapping[str, Any]]) -> list[str]:
    return [e["event"] for e in logs if e["event"].startswith("kafka.")]


async def test_an_outage_is_one_warning_and_one_line_once_kafka_has_been_back_a_while() -> None:
    connectivity, client, clock = watched()
    with capture_logs() as logs:
        client.up = False
        for _ in range(5):
            assert not await client._metadata_update()
            clock.now += 1
        assert not connectivity.reachable
        client.up = True
        assert await client._get_conn(1) is not None
        assert connectivity.reachable  # ready at once...
        assert events(logs) == ["kafka.unreachable"]  # ...and said so once it lasted
        clock.now += CONFIRM_S
        await client._get_conn(1)
    assert events(logs) == ["kafka.unreachable", "kafka.reachable"]
    assert logs[-1]["unreachable_for_s"] == 5.0


async def test_a_connection_dropped_at_once_in_an_outage_is_the_same_outage() -> None:
    connectivity, client, clock = watched()
    with capture_logs() as logs:
        client.up = False
        await client._metadata_update()
        # A broker shutting down accepts one more connection, then resets it.
        client.up = True
        await client._get_conn(1)
        client.up = False
        clock.now += 0.01
        await client._metadata_update()
        assert not connectivity.reachable
        clock.now += 10
        client.up = True
        await client._get_conn(1)
        clock.now += CONFIRM_S / 2
        await client._get_conn(1)
        assert events(logs) == ["kafka.unreachable"]
        clock.now += CONFIRM_S / 2
        await client._get_conn(1)
    assert events(logs) == ["kafka.unreachable", "kafka.reachable"]
    assert logs[-1]["unreachable_for_s"] == 10.0
