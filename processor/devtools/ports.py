"""Ports: whether one is taken, and one on 127.0.0.1 that is free."""

from __future__ import annotations

import random
import socket
from pathlib import Path
from typing import Final

__all__ = ["free_port", "port_in_use"]

# Below the kernel's ephemeral range (where every outgoing connection, a Kafka client's
# included, gets its local port), so a port picked here is not taken a moment later by
# a connection: only another picker could take it, one chance in ten thousand.
_RANGE: Final = (20_000, 30_000)


def _ephemeral() -> range:
    try:
        low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        return range(32_768, 61_000)
    return range(low, high + 1)


def free_port() -> int:
    """A port nothing listens on now, outside the ephemeral range (a start that finds it
    taken since still says so: LocalBroker's temporary brokers then pick another)."""
    ephemeral = _ephemeral()
    for _ in range(100):
        port = random.randrange(*_RANGE)  # noqa: S311 (a port, not a secret)
        if port not in ephemeral and not port_in_use(port):
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:  # the kernel's pick then
        sock.bind(("127.0.0.1", 0))
        picked: int = sock.getsockname()[1]
        return picked


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something listens on (or still holds) host:port: a bind attempt says."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
        return False
