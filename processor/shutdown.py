"""How every long-running process learns it should stop: SIGTERM or SIGINT.

Orchestrators send SIGTERM, a terminal sends SIGINT (Ctrl-C); both only set an
event, and each process then takes its own bounded path out (finish the batch,
drain the requests, stop the children). A worker also takes SIGUSR1: stop, and leave
the consumer group even as a static member (a scale-down, not a restart).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Awaitable, Callable, Iterator

__all__ = ["LEAVE_SIGNAL", "on_signal", "stop_on_signals", "unless_stopped"]

SIGNALS = (signal.SIGTERM, signal.SIGINT)
LEAVE_SIGNAL = signal.SIGUSR1


@contextlib.contextmanager
def stop_on_signals(stop: asyncio.Event) -> Iterator[None]:
    """SIGTERM and SIGINT set `stop` while the block runs; afterwards the defaults
    return, so a second Ctrl-C during a slow shutdown interrupts as usual."""
    loop = asyncio.get_running_loop()
    for signum in SIGNALS:
        loop.add_signal_handler(signum, stop.set)
    try:
        yield
    finally:
        for signum in SIGNALS:
            loop.remove_signal_handler(signum)


@contextlib.contextmanager
def on_signal(signum: signal.Signals, *callbacks: Callable[[], None]) -> Iterator[None]:
    """`signum` calls each of `callbacks` in turn while the block runs."""
    loop = asyncio.get_running_loop()

    def handle() -> None:
        for callback in callbacks:
            callback()

    loop.add_signal_handler(signum, handle)
    try:
        yield
    finally:
        loop.remove_signal_handler(signum)


async def unless_stopped(work: Awaitable[object], stop: asyncio.Event) -> bool:
    """Run `work` until it ends (True; its error passes through) or `stop` is set
    first (False: `work` is cancelled). Cancelled itself, it cancels `work` too."""
    task = asyncio.ensure_future(work)
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait((task, stopping), return_when=asyncio.FIRST_COMPLETED)
    finally:
        for future in (task, stopping):
            future.cancel()
        await asyncio.gather(task, stopping, return_exceptions=True)
    if task.cancelled():
        return False
    task.result()
    return True
