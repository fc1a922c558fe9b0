"""Deliveries for tests: a mixed stream where each record knows where it must land."""

from __future__ import annotations

import random
from dataclasses import dataclass

import msgspec

from processor.config import Config
from processor.naming import normalise_status

# The provider's own example payload (spec/webhook-events.md), byte for byte.
SPEC_EXAMPLE = b"""{
  "id": "whd_abc123def456",
  "event": "integration.created",
  "timestamp": "2025-02-19T12:00:00.000Z",
  "data": {
    "uid": "user_123",
    "provider": "binance",
    "providerPublicName": "Binance",
    "publicAddress": null,
    "walletId": "wallet_abc123",
    "logoUrl": "https://storage.googleapis.com/kryptos-public/logos/binance.png",
    "isContract": false,
    "alias": "Main Trading Account",
    "status": "active",
    "addedOn": 1640995200000,
    "lastSyncedAt": 1672531200000,
    "category": "exchange",
    "type": "api",
    "totalTransactions": 0
  }
}"""

# Statuses as the provider spells them in its two documents, plus ones nobody configured.
KNOWN_STATUSES = ("QUEUED", "ONGOING", "COMPLETED", "FAILED", "active", "inactive", "error",
                  "PARTIALLY SYNCED", "Completed")  # fmt: skip
UNKNOWN_STATUSES = ("PAUSED", "archived")


@dataclass(frozen=True)
class Delivery:
    key: bytes
    value: bytes
    kind: str  # "routed:<status>", "other", "unrouted" or "dlq"

    def expected_topic(self, config: Config) -> str:
        template = config.routing.routes["integration"]
        assert isinstance(template, str), "tests route integration events by a template"
        if self.kind.startswith("routed:"):
            return template.format(status=normalise_status(self.kind.removeprefix("routed:")))
        if self.kind == "other":
            return template.format(status=config.routing.other_status)
        return config.topics.unrouted if self.kind == "unrouted" else config.topics.dlq


def integration_event(*, index: int, uid: str, status: str) -> bytes:
    return msgspec.json.encode(
        {
            "id": f"whd_{index:08d}",
            "event": "integration.updated",
            "timestamp": "2025-02-19T12:00:00.000Z",
            "data": {
                "uid": uid,
                "provider": "binance",
                "providerPublicName": "Binance",
                "publicAddress": None,
                "walletId": f"wallet_{index}",
                "logoUrl": "https://example.invalid/binance.png",
                "isContract": False,
                "alias": "Main Trading Account",
                "status": status,
                "addedOn": 1640995200000,
                "lastSyncedAt": 1672531200000,
                "category": "exchange",
                "type": "api",
                "totalTransactions": index,
            },
        }
    )


def mixed_stream(count: int, *, users: int = 50, seed: int = 7) -> list[Delivery]:
    """Mostly routable integration events, some unknown statuses and categories, some junk."""
    rng = random.Random(seed)
    stream = []
    for index in range(count):
        uid = f"user_{rng.randrange(users)}"
        roll = rng.random()
        if roll < 0.80:
            status = rng.choice(KNOWN_STATUSES)
            value, kind = integration_event(index=index, uid=uid, status=status), f"routed:{status}"
        elif roll < 0.87:
            status = rng.choice(UNKNOWN_STATUSES)
            value, kind = integration_event(index=index, uid=uid, status=status), "other"
        elif roll < 0.94:
            value = msgspec.json.encode(
                {"id": f"whd_{index:08d}", "event": "portfolio.updated",
                 "timestamp": "2025-02-19T12:00:00Z", "data": {"uid": uid, "n": index}}
            )  # fmt: skip
            kind = "unrouted"
        else:
            value = f'{{"id": "nope-{index}", "event": "integration.updated"}}'.encode()
            kind = "dlq"
        stream.append(Delivery(key=uid.encode(), value=value, kind=kind))
    return stream


def with_retries(
    stream: list[Delivery], *, fraction: float = 1 / 3, seed: int = 5
) -> list[Delivery]:
    """`stream` as the provider would send it: `fraction` of the valid deliveries sent
    again once or twice (same key, same bytes), each retry somewhere after its first
    copy, some soon after it, some much later."""
    rng = random.Random(seed)
    placed = [(float(position), delivery) for position, delivery in enumerate(stream)]
    for position, delivery in enumerate(stream):
        if delivery.kind == "dlq" or rng.random() >= fraction:
            continue
        retries = rng.choice((1, 2))
        placed.extend((rng.uniform(position + 0.5, len(stream)), delivery) for _ in range(retries))
    placed.sort(key=lambda item: item[0])
    return [delivery for _, delivery in placed]


def status_topic(config: Config, status: str) -> str:
    """The derived topic of integration events with `status` (already normalised)."""
    template = config.routing.routes["integration"]
    assert isinstance(template, str), "tests route integration events by a template"
    return template.format(status=status)
