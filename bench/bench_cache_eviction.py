"""LRU eviction in one big context: lookup latency as tombstones accumulate, and whether any
request waits while the HNSW index is rebuilt.

    python bench/bench_cache_eviction.py [--entries 20000] [--evictions N]

Fills a cache of `--entries` (its `max_entries`) in one context, so every further `put` evicts the
least recently used entry and tombstones its vector in the HNSW index; at a quarter of the index
the index is rebuilt. Prints the lookup p50 (missing lookups: the verifier never runs, this is
the index) with no tombstones and at six points of the eviction phase, the slowest `put`, and the
latencies of a steady stream of lookups (one every 5 ms on another thread) from the first
eviction until the rebuild has been swapped in. Random unit vectors; FAISS on one thread in the
calling threads (a background rebuild uses FAISS's default).

Below `DEFAULT_HNSW_FROM` (4,096) entries a context stays a flat index, whose tombstones are
compacted at once inside the `put`: such a run measures no HNSW rebuild, and says so.
With fewer than entries/3 evictions no rebuild happens either.
"""
from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from router.cache.cache import DEFAULT_HNSW_FROM, ResponseCache  # noqa: E402
from router.cache.keys import request_keys  # noqa: E402
from router.cache.verifier import Verifier  # noqa: E402
from training.cache_eval import _answer, _request  # noqa: E402

MIN_ENTRIES = 100


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=20_000)
    parser.add_argument("--evictions", type=int, default=None, help="default: entries/3 (the rebuild) + 5%%")
    args = parser.parse_args(argv)
    n = args.entries
    if n < MIN_ENTRIES:
        parser.error(f"--entries must be at least {MIN_ENTRIES}: smaller contexts are a single vector or a few, not an index")
    evictions = args.evictions if args.evictions is not None else n // 3 + n // 20
    import faiss

    faiss.omp_set_num_threads(1)
    rng = np.random.default_rng(0)
    lock = threading.Lock()  # numpy's generator is not thread-safe

    def vector() -> np.ndarray:
        with lock:
            v = rng.standard_normal(384).astype(np.float32)
            salt = int(rng.integers(1 << 30))
        return v / np.linalg.norm(v), salt

    cache = ResponseCache(None, verifier=Verifier.load(), max_entries=n)

    def store(text: str) -> float:
        v, _ = vector()
        t = time.perf_counter()
        cache.put(request_keys(_request(text), "auto", "t"), tenant="t", route="auto", response=_answer("a"),
                  model="m", cost_usd=0.0, vector=v)
        return time.perf_counter() - t

    def lookup() -> float:
        v, salt = vector()
        keys = request_keys(_request(f"new question {salt}"), "auto", "t")
        t = time.perf_counter()
        cache.lookup(keys, v)
        return time.perf_counter() - t

    def p50_ms(reps: int = 50) -> float:
        return 1000 * float(np.median([lookup() for _ in range(reps)]))

    def tombstones() -> int:
        with cache._lock:
            bucket = next(iter(cache._index.buckets.values()))
            return bucket._index.ntotal - len(bucket.live)

    t = time.perf_counter()
    for i in range(n):
        store(f"q {i}")
    cache._index.wait_for_rebuilds()  # from DEFAULT_HNSW_FROM entries on, the switch from flat builds in the background
    kind = "HNSW" if next(iter(cache._index.buckets.values())).hnsw else f"flat: below {DEFAULT_HNSW_FROM} a context is never HNSW"
    print(f"filled {n} entries ({kind}) in {time.perf_counter() - t:.1f} s", flush=True)
    print(f"lookup p50 with 0 tombstones: {p50_ms():.2f} ms", flush=True)

    stream: list[float] = []
    done = threading.Event()

    def steady_lookups() -> None:
        while not done.is_set():
            stream.append(lookup())
            time.sleep(0.005)

    side = threading.Thread(target=steady_lookups, daemon=True)
    side.start()
    worst_put, most = 0.0, 0
    for i in range(evictions):
        worst_put = max(worst_put, store(f"more {i}"))
        if (i + 1) % max(evictions // 6, 1) == 0:
            dead = tombstones()
            most = max(most, dead)
            print(f"after {i + 1} evictions: {dead} tombstones, lookup p50 {p50_ms():.2f} ms", flush=True)
    t = time.perf_counter()
    finished = cache._index.wait_for_rebuilds(600)  # returns at once when no rebuild was started
    waited = time.perf_counter() - t
    done.set()
    side.join()
    ms = 1000 * np.array(stream)
    if not finished:
        rebuild = f"rebuild still running {waited:.0f} s after the last put"
    elif next(iter(cache._index.buckets.values())).hnsw and tombstones() < most:
        rebuild = f"rebuild swapped in {waited:.1f} s after the last put"
    else:
        rebuild = "no background rebuild (a flat index compacts inside the put; an HNSW one rebuilds at entries/3 tombstones)"
    print(f"slowest put: {1000 * worst_put:.1f} ms; {rebuild}", flush=True)
    print(f"steady lookups during the eviction phase and the rebuild: {len(ms)}, p50 {np.median(ms):.2f} ms,"
          f" p99 {np.percentile(ms, 99):.2f} ms, max {ms.max():.1f} ms", flush=True)
    print(f"lookup p50 at the end ({tombstones()} tombstones): {p50_ms():.2f} ms", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
