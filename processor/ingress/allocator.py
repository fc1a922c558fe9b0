"""Memory freed by the ingress goes back to the operating system.

glibc's malloc raises its mmap threshold each time a large block is freed (up to
32 MiB), so the buffers of large request bodies soon come from the heap, where freeing
them leaves the process's resident memory at its peak: after 60 stalled 1 MiB bodies
the ingress stayed at 114 MB once every connection had closed, against 64 MB before
(Python itself still held about 1 MB; `malloc_trim` gave the rest back). A fixed
threshold keeps blocks of that size in mappings of their own, unmapped when freed.
"""

from __future__ import annotations

import ctypes
import platform
from typing import Final

__all__ = ["return_freed_memory"]

_M_MMAP_THRESHOLD: Final = -3  # mallopt's parameter number, from glibc's malloc.h
# glibc's own initial threshold: a typical delivery (a few KiB) stays on the heap.
MMAP_THRESHOLD_BYTES: Final = 128 * 1024


def return_freed_memory() -> bool:
    """Fix glibc's mmap threshold for this process; False on another C library."""
    if platform.libc_ver()[0] != "glibc":
        return False
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    return mallopt is not None and mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1
