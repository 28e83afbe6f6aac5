"""How long a gateway's cache takes to open after a restart: reading the snapshot a clean shutdown
wrote, against a start without one (what a crash leaves), which serves from a flat index while the
HNSW graph is rebuilt from the SQLite rows in the background.

    python bench/bench_cache_restart.py [--entries 100000]

One context holds every entry (the worst case: one index of that size); the vectors are random
unit vectors (building HNSW costs about the same for real embeddings). FAISS on one thread.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from router.cache.cache import ResponseCache  # noqa: E402
from router.cache.keys import request_keys  # noqa: E402
from router.cache.verifier import Verifier  # noqa: E402
from training.cache_eval import _answer, _request  # noqa: E402


def lookup_ms(cache: ResponseCache, rng, n: int = 50) -> float:
    """Median time of a semantic lookup of a question the cache does not hold."""
    times = []
    for i in range(n):
        v = rng.standard_normal(384).astype(np.float32)
        keys = request_keys(_request(f"an unseen question {i}"), "auto", "t")
        t = time.perf_counter()
        cache.lookup(keys, v / np.linalg.norm(v))
        times.append(time.perf_counter() - t)
    return float(np.median(times)) * 1e3


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=100_000)
    args = parser.parse_args(argv)
    import faiss

    faiss.omp_set_num_threads(1)
    verifier = Verifier.load()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(prefix="cache-restart-") as tmp:
        folder = Path(tmp)
        cache = ResponseCache(folder, verifier=verifier, max_entries=args.entries + 1)
        t = time.perf_counter()
        for i in range(args.entries):
            v = rng.standard_normal(384).astype(np.float32)
            cache.put(request_keys(_request(f"question number {i}"), "auto", "t"), tenant="t", route="auto",
                      response=_answer("an answer"), model="m", cost_usd=0.0, vector=v / np.linalg.norm(v))
        cache._index.wait_for_rebuilds()  # the switch from flat to HNSW chases the puts in the background
        print(f"filled {args.entries} entries in {time.perf_counter() - t:.1f} s", flush=True)
        t = time.perf_counter()
        cache.close()
        size = sum(f.stat().st_size for f in (folder / "index").glob("*.faiss"))
        print(f"clean shutdown (snapshot of {size / 1e6:.0f} MB written): {time.perf_counter() - t:.2f} s", flush=True)
        t = time.perf_counter()
        reopened = ResponseCache(folder, verifier=verifier, max_entries=args.entries + 1)
        print(f"start from the snapshot: {time.perf_counter() - t:.2f} s", flush=True)
        reopened.close()
        shutil.rmtree(folder / "index")  # as after a crash: no snapshot
        t = time.perf_counter()
        crashed = ResponseCache(folder, verifier=verifier, max_entries=args.entries + 1)
        print(f"start after a crash (serving from a flat index): {time.perf_counter() - t:.2f} s", flush=True)
        flat_ms = lookup_ms(crashed, rng)
        crashed._index.wait_for_rebuilds()
        print(f"  HNSW built in the background {time.perf_counter() - t:.2f} s after the start; lookup p50 "
              f"{flat_ms:.2f} ms while flat, {lookup_ms(crashed, rng):.2f} ms after", flush=True)
        crashed.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
