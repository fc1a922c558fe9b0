"""The dedup window's memory, restore, lookup and remember costs, beside its alternatives.

Variants, each run in a process of its own so that the RSS it grows is its alone:

- `idwindow`: `processor.dedup.idwindow.IdWindow` with its production defaults (its merges
  run a slice at a time within remember and evict);
- `idwindow+mmap`: the same under `MALLOC_MMAP_THRESHOLD_=1048576`. glibc's threshold
  otherwise rises to 32 MB as big arrays are freed, and then keeps the freed arrays
  of merges in its heap: RSS grows past what the window holds;
- `dict`: one dict {id hash: fingerprint << 32 | seen_at}, what one writes first; an
  id remembered again is moved to the end, so that evict pops expired ids off the
  front of the dict's insertion order;
- `rocksdict`: RocksDB through rocksdict (how Quix Streams keeps state) in a temporary
  folder: 8-byte keys and values in raw mode, one WriteBatch per remember, one
  multi-get per lookup. RocksDB cannot drop ids by their seen_at (its TTL counts from
  the write, so restored ids would live a whole new window), so it evicts nothing.

Each remembers N ids (`--ids`, default 10,000,000) in batches of 2,000 whose times
span one window, so all N are live at the end; its RSS growth per id is taken at
N/10, N/2 and N. Then, against those N ids: 100 lookups of 2,000 unknown ids and 100
of 2,000 remembered ones. Then the steady state: N/4 more ids past the window, with
evict after each batch (about N ids live, the expired ones going). Last, restore of
1,000,000 packed ids into a new store.

Costs per id are CPU time of the calling thread, steadier than wall time on a shared
machine. A pause is the longest single call on the calling thread, as wall time and
as that thread's CPU time (the gap between the two is time the thread waited for
the CPU or the kernel: on a shared machine, mostly other processes).

Rerun (from the repository root; rocksdict is not a dependency of the project, so
`.venv/bin/pip install rocksdict==0.3.29` first, or leave it out with --variants):

    .venv/bin/python benchmarks/bench_idwindow.py                  # 10,000,000 ids
    .venv/bin/python benchmarks/bench_idwindow.py --ids 1000000 --variants idwindow,dict
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Final, Protocol

import numpy as np

from processor.dedup.idwindow import IdWindow

BATCH: Final = 2_000  # ids per call: what the worker checks per batch
WINDOW_S: Final = 345_600.0  # dedup.window_s: 4 days
T0: Final = 1_750_000_000  # when the first id is seen
LOOKUPS: Final = 100  # batches looked up, of unknown ids and of remembered ones
RESTORE_IDS: Final = 1_000_000
LOW32: Final = 0xFFFF_FFFF
PAGE: Final = os.sysconf("SC_PAGE_SIZE")


class Store(Protocol):
    def lookup_many(self, id_hashes: Sequence[int], now: float) -> list[int | None]: ...

    def remember(
        self, id_hashes: Sequence[int], fingerprints: Sequence[int], seen_at: float
    ) -> None: ...

    def restore(self, id_hashes: bytes, fingerprints: bytes, seen_at: bytes) -> None: ...

    def evict(self, now: float) -> int: ...

    def __len__(self) -> int: ...


def packed_values(fingerprints: bytes, seen_at: bytes) -> np.ndarray[Any, np.dtype[np.uint64]]:
    values: np.ndarray[Any, np.dtype[np.uint64]] = np.frombuffer(fingerprints, "<u4").astype(
        np.uint64
    ) << np.uint64(32)
    return values | np.frombuffer(seen_at, "<u4").astype(np.uint64)


class DictWindow:
    """The first thing one writes: a dict in time order, expired ids popped off its front."""

    def __init__(self, *, window_s: float) -> None:
        self.window_s = window_s
        self.ids: dict[int, int] = {}

    def lookup_many(self, id_hashes: Sequence[int], now: float) -> list[int | None]:
        cutoff, get = math.ceil(now - self.window_s), self.ids.get
        found = [get(key) for key in id_hashes]
        return [None if v is None or v & LOW32 < cutoff else v >> 32 for v in found]

    def remember(
        self, id_hashes: Sequence[int], fingerprints: Sequence[int], seen_at: float
    ) -> None:
        second, ids = int(seen_at), self.ids
        for key, fp in zip(id_hashes, fingerprints, strict=True):
            ids.pop(key, None)  # to the end: the dict stays in time order
            ids[key] = fp << 32 | second

    def restore(self, id_hashes: bytes, fingerprints: bytes, seen_at: bytes) -> None:
        keys = np.frombuffer(id_hashes, "<u8").tolist()
        ids = self.ids
        for key, value in zip(keys, packed_values(fingerprints, seen_at).tolist(), strict=True):
            ids.pop(key, None)
            ids[key] = value

    def evict(self, now: float) -> int:
        cutoff, expired = math.ceil(now - self.window_s), []
        for key, value in self.ids.items():
            if value & LOW32 >= cutoff:
                break
            expired.append(key)
        for key in expired:
            del self.ids[key]
        return len(expired)

    def __len__(self) -> int:
        return len(self.ids)


class RocksWindow:
    """RocksDB through rocksdict: 8-byte keys and values, raw mode; evicts nothing."""

    def __init__(self, *, window_s: float, path: Path) -> None:
        from rocksdict import Options, Rdict, WriteBatch

        self.window_s, self.path, self.write_batch = window_s, path, WriteBatch
        self.db = Rdict(str(path), Options(raw_mode=True))
        self.writes = 0  # RocksDB has no cheap count of its keys

    def lookup_many(self, id_hashes: Sequence[int], now: float) -> list[int | None]:
        cutoff = math.ceil(now - self.window_s)
        found = self.db.get([key.to_bytes(8, "little") for key in id_hashes])
        values = [None if v is None else int.from_bytes(v, "little") for v in found]
        return [None if v is None or v & LOW32 < cutoff else v >> 32 for v in values]

    def write(self, pairs: Iterator[tuple[bytes, bytes]]) -> None:
        batch = self.write_batch(raw_mode=True)
        for key, value in pairs:
            batch.put(key, value)
            self.writes += 1
        self.db.write(batch)

    def remember(
        self, id_hashes: Sequence[int], fingerprints: Sequence[int], seen_at: float
    ) -> None:
        second = int(seen_at)
        self.write(
            (key.to_bytes(8, "little"), (fp << 32 | second).to_bytes(8, "little"))
            for key, fp in zip(id_hashes, fingerprints, strict=True)
        )

    def restore(self, id_hashes: bytes, fingerprints: bytes, seen_at: bytes) -> None:
        values = packed_values(fingerprints, seen_at).astype("<u8").tobytes()
        count = len(id_hashes) // 8
        for start in range(0, count, 10_000):
            self.write(
                (id_hashes[i * 8 : i * 8 + 8], values[i * 8 : i * 8 + 8])
                for i in range(start, min(start + 10_000, count))
            )

    def evict(self, now: float) -> int:
        return 0

    def __len__(self) -> int:
        return self.writes


# The environment a variant's process runs in, beyond this one's.
VARIANT_ENV: Final = {"idwindow+mmap": {"MALLOC_MMAP_THRESHOLD_": "1048576"}}


def new_store(name: str, path: Path) -> Store:
    if name.startswith("idwindow"):
        return IdWindow(window_s=WINDOW_S)
    if name == "dict":
        return DictWindow(window_s=WINDOW_S)
    return RocksWindow(window_s=WINDOW_S, path=path)


def batch_of(seed: int, index: int) -> tuple[list[int], list[int]]:
    """Batch `index` of the ids of `seed` and their fingerprints: the same every time."""
    rng = np.random.default_rng([seed, index])
    keys = rng.integers(1, 2**64, BATCH, dtype=np.uint64)
    fps = rng.integers(0, 2**32, BATCH, dtype=np.uint64)
    return keys.tolist(), fps.tolist()


def rss() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * PAGE


def peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class Calls:
    """Wall and CPU time (of the calling thread) of each call of one kind."""

    def __init__(self) -> None:
        self.walls: list[float] = []
        self.cpus: list[float] = []

    def __call__(self, call: Callable[..., Any], *args: Any) -> Any:
        wall, cpu = time.perf_counter(), time.thread_time()
        result = call(*args)
        self.cpus.append(time.thread_time() - cpu)
        self.walls.append(time.perf_counter() - wall)
        return result

    @property
    def cpu(self) -> float:
        return sum(self.cpus)


def measure(name: str, ids: int, folder: Path) -> dict[str, Any]:
    store = new_store(name, folder / "fill")
    batches = ids // BATCH
    step = WINDOW_S / batches  # the N ids span exactly one window
    remember, evict = Calls(), Calls()
    lookups = {"miss": Calls(), "hit": Calls()}
    result: dict[str, Any] = {"variant": name, "ids": ids}

    base = rss()
    checkpoints = {batches // 10: "rss_10pct", batches // 2: "rss_50pct"}
    for index in range(batches):
        keys, fps = batch_of(1, index)
        now = T0 + index * step
        remember(store.remember, keys, fps, now)
        if index + 1 in checkpoints:
            result[checkpoints[index + 1]] = (rss() - base) / ((index + 1) * BATCH)
    now = T0 + WINDOW_S
    result["rss_full"] = (rss() - base) / ids
    result["remember_us"] = remember.cpu / ids * 1e6
    if isinstance(store, IdWindow):
        result["nbytes"] = store.nbytes / len(store)
        result["segments"] = len(store._segments)

    rng = np.random.default_rng(2)
    for kind, seed in (("miss", 3), ("hit", 1)):  # seed 1: the ids remembered above
        for _ in range(LOOKUPS):
            keys, _ = batch_of(seed, int(rng.integers(batches)))
            found = lookups[kind](store.lookup_many, keys, now)
            assert (None in found) == (kind == "miss"), f"{name}: {kind} lookups went wrong"
        result[f"lookup_{kind}_us"] = lookups[kind].cpu / (LOOKUPS * BATCH) * 1e6

    evicted = 0
    for index in range(batches, batches + batches // 4):
        keys, fps = batch_of(1, index)
        now = T0 + index * step
        remember(store.remember, keys, fps, now)
        evicted += evict(store.evict, now)
    result["steady_rss"] = (rss() - base) / max(1, len(store))
    result["peak_rss"] = (peak_rss() - base) / ids
    result["evicted"] = evicted
    if isinstance(store, RocksWindow):
        result["disk"] = sum(f.stat().st_size for f in store.path.rglob("*") if f.is_file()) / ids
    kinds = {"remember": [remember], "evict": [evict], "lookup": list(lookups.values())}
    for kind, calls in kinds.items():
        walls = sorted(wall for c in calls for wall in c.walls)
        result[f"worst_{kind}_ms"] = walls[-1] * 1e3
        result[f"p999_{kind}_ms"] = walls[int(len(walls) * 0.999)] * 1e3
        result[f"worst_{kind}_cpu_ms"] = max(cpu for c in calls for cpu in c.cpus) * 1e3
    return result


def restore_rate(name: str, folder: Path) -> float:
    """Ids per second restored from packed bytes into a new store."""
    rng = np.random.default_rng(4)
    packed = (
        rng.integers(1, 2**64, RESTORE_IDS, dtype=np.uint64).astype("<u8").tobytes(),
        rng.integers(0, 2**32, RESTORE_IDS, dtype=np.uint32).astype("<u4").tobytes(),
        np.full(RESTORE_IDS, T0, dtype="<u4").tobytes(),
    )
    store = new_store(name, folder / "restore")
    start = time.perf_counter()
    store.restore(*packed)
    return RESTORE_IDS / (time.perf_counter() - start)


ROWS: Final = (
    ("rss_10pct", "RSS growth, bytes/id at N/10", "{:.1f}"),
    ("rss_50pct", "RSS growth, bytes/id at N/2", "{:.1f}"),
    ("rss_full", "RSS growth, bytes/id at N", "{:.1f}"),
    ("nbytes", "  its nbytes/id at N", "{:.1f}"),
    ("peak_rss", "peak RSS growth, bytes/id of N", "{:.1f}"),
    ("steady_rss", "steady state: RSS growth, bytes/live id", "{:.1f}"),
    ("disk", "  on disk, bytes/id", "{:.1f}"),
    ("segments", "segments at N", "{}"),
    ("restore", f"restore of {RESTORE_IDS:,} ids, ids/s", "{:,.0f}"),
    ("lookup_miss_us", "lookup of unknown ids, CPU µs/id", "{:.3f}"),
    ("lookup_hit_us", "lookup of remembered ids, CPU µs/id", "{:.3f}"),
    ("remember_us", "remember, CPU µs/id", "{:.3f}"),
    ("worst_remember_ms", "longest remember, wall ms", "{:.1f}"),
    ("p999_remember_ms", "  99.9th percentile, wall ms", "{:.1f}"),
    ("worst_remember_cpu_ms", "  longest, CPU ms", "{:.1f}"),
    ("worst_evict_ms", "longest evict, wall ms", "{:.1f}"),
    ("p999_evict_ms", "  99.9th percentile, wall ms", "{:.1f}"),
    ("worst_evict_cpu_ms", "  longest, CPU ms", "{:.1f}"),
    ("worst_lookup_ms", "longest lookup, wall ms", "{:.1f}"),
    ("p999_lookup_ms", "  99.9th percentile, wall ms", "{:.1f}"),
    ("worst_lookup_cpu_ms", "  longest, CPU ms", "{:.1f}"),
    ("evicted", "ids evicted in the steady state", "{:,}"),
)


def print_table(results: list[dict[str, Any]]) -> None:
    width = max(len(label) for _, label, _ in ROWS)
    print(f"\n{'N = ' + format(results[0]['ids'], ','):<{width}}", end="")
    print("".join(f"{r['variant']:>14}" for r in results))
    for key, label, form in ROWS:
        cells = [form.format(r[key]) if key in r else "-" for r in results]
        print(f"{label:<{width}}" + "".join(f"{cell:>14}" for cell in cells))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ids", type=int, default=10_000_000, help="ids to remember")
    parser.add_argument(
        "--variants", default="idwindow,idwindow+mmap,dict,rocksdict", help="comma-separated"
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.ids < 10 * BATCH:
        parser.error(f"--ids must be at least {10 * BATCH}")
    if args.child:
        folder = Path(tempfile.mkdtemp(prefix="bench_idwindow."))
        try:
            result = measure(args.child, args.ids, folder)
            result["restore"] = restore_rate(args.child, folder)
            print(json.dumps(result))
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        return
    load = os.getloadavg()[0]
    print(f"numpy {np.__version__}, {os.cpu_count()} CPUs, load average {load:.1f} at start")
    results = []
    for name in args.variants.split(","):
        argv = [sys.executable, __file__, "--ids", str(args.ids), "--child", name]
        started = time.perf_counter()
        env = {**os.environ, **VARIANT_ENV.get(name, {})}
        child = subprocess.run(argv, capture_output=True, text=True, check=False, env=env)
        if child.returncode:
            print(f"{name}: failed\n{child.stderr}", file=sys.stderr)
            continue
        results.append(json.loads(child.stdout))
        print(f"{name}: {time.perf_counter() - started:.0f} s", flush=True)
    if results:
        print_table(results)


if __name__ == "__main__":
    main()
