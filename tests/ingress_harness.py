"""The ingress served in-process for tests, with a fake publisher in place of Kafka."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from processor.publisher import RawRecord


class RecordingPublisher:
    """A Publisher that keeps what it is given and answers as told.

    `outcome` is what every publish resolves to (None: acknowledged); with `hang`, no
    publish ever resolves, as when Kafka does not answer.
    """

    def __init__(self, *, outcome: BaseException | None = None, hang: bool = False) -> None:
        self.records: list[RawRecord] = []
        self.outcome = outcome
        self.hang = hang

    async def publish(self, record: RawRecord) -> BaseException | None:
        self.records.append(record)
        if self.hang:
            await asyncio.Event().wait()
        return self.outcome

    async def check_ready(self, topic: str) -> None:
        """Always ready: readiness against Kafka is an integration test."""

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        yield
