"""How long a gateway's cache takes to open after a restart: rebuilding the HNSW index from the
SQLite rows (what a crash leaves) against reading the snapshot a clean shutdown wrote.

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
        ResponseCache(folder, verifier=verifier, max_entries=args.entries + 1)
        print(f"start after a crash (rebuild from the rows): {time.perf_counter() - t:.2f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
