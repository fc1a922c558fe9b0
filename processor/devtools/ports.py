"""Ports on 127.0.0.1: whether one is taken, and one that is free."""

from __future__ import annotations

import socket

__all__ = ["free_port", "port_in_use"]


def free_port() -> int:
    """A port the kernel just handed out; a start retries if it was taken since."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def port_in_use(port: int) -> bool:
    """Whether something listens on (or still holds) `port`: a bind attempt says."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return True
        return False
