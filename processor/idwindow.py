"""The delivery ids one raw partition has seen within a window (stand-in: a dict).

Replaced by the measured, compact store of branch `idwindow`; same API.
"""

from __future__ import annotations

import hashlib
import struct
import zlib
from collections.abc import Sequence

__all__ = ["IdWindow", "fingerprint", "id_hash"]


def id_hash(delivery_id: str) -> int:
    value = int.from_bytes(hashlib.blake2b(delivery_id.encode(), digest_size=8).digest(), "little")
    return value or 1


def fingerprint(value: bytes) -> int:
    return zlib.crc32(value)


class IdWindow:
    def __init__(self, *, window_s: float) -> None:
        self._window_s = window_s
        self._seen: dict[int, tuple[int, int]] = {}

    def lookup_many(self, id_hashes: Sequence[int], now: float) -> list[int | None]:
        cutoff = now - self._window_s
        found: list[int | None] = []
        for key in id_hashes:
            entry = self._seen.get(key)
            found.append(entry[0] if entry is not None and entry[1] >= cutoff else None)
        return found

    def remember(
        self, id_hashes: Sequence[int], fingerprints: Sequence[int], seen_at: float
    ) -> None:
        for key, print_ in zip(id_hashes, fingerprints, strict=True):
            self._seen[key] = (print_, int(seen_at))

    def restore(self, id_hashes: bytes, fingerprints: bytes, seen_at: bytes) -> None:
        count = len(id_hashes) // 8
        keys = struct.unpack(f"<{count}Q", id_hashes)
        prints = struct.unpack(f"<{count}I", fingerprints)
        times = struct.unpack(f"<{count}I", seen_at)
        for key, print_, time in zip(keys, prints, times, strict=True):
            self._seen[key] = (print_, time)

    def evict(self, now: float) -> int:
        cutoff = now - self._window_s
        expired = [key for key, (_, time) in self._seen.items() if time < cutoff]
        for key in expired:
            del self._seen[key]
        return len(expired)

    def __len__(self) -> int:
        return len(self._seen)

    @property
    def nbytes(self) -> int:
        return len(self._seen) * 100
