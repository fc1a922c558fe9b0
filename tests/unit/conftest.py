"""Fixtures for unit tests of the ingress: served in-process, a fake publisher for Kafka."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest

from processor.config import Config
from tests.ingress_harness import SECRET, RecordingPublisher, Serve, Served, serving


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    """`client = await serve(max_body_bytes=...)`: the ingress on a free port, with
    `client.publisher` a RecordingPublisher unless `publisher=` says otherwise."""
    async with contextlib.AsyncExitStack() as stack:

        async def start(publisher: Any = None, **ingress: Any) -> Served:
            return await stack.enter_async_context(
                serving(
                    Config(),
                    publisher if publisher is not None else RecordingPublisher(),
                    **{"secrets": (SECRET,), **ingress},
                )
            )

        yield start
