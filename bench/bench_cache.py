"""Semantic-cache benchmark: verifier precision/recall on the held-out QQP split, flat vs HNSW
search time by index size, and end-to-end lookup latency at 100k entries on one core.

    python bench/bench_cache.py [--pairs FILE] [--entries 100000] [--json OUT]

Everything runs on one thread (FAISS and ONNX), as one gateway worker would.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from router.cache.cache import ResponseCache  # noqa: E402
from router.cache.keys import request_keys  # noqa: E402
from router.cache.semantic import Bucket  # noqa: E402
from router.cache.verifier import Verifier  # noqa: E402
from training.cache_eval import _answer, _request, evaluate_pairs  # noqa: E402
from training.qqp import default_pairs, embed_pairs, group_split, load_pairs, precision_recall  # noqa: E402


def held_out_quality(df, emb_a, emb_b, verifier) -> dict:
    split = group_split(df)
    out = {}
    for part in ("val", "test"):
        m = split == part
        sub = df[m].reset_index(drop=True)
        cache = ResponseCache(None, verifier=verifier, max_entries=len(sub) + 1)
        hits = np.array(evaluate_pairs(sub, cache, emb_a[m], emb_b[m]))
        label = sub["label"].to_numpy().astype(bool)
        p, r = precision_recall(hits, label)
        cos = np.einsum("ij,ij->i", emb_a[m], emb_b[m])
        cp, cr = precision_recall(cos >= 0.95, label)
        out[part] = {"pairs": int(m.sum()), "precision": round(p, 4), "recall": round(r, 4),
                     "cosine_0.95": {"precision": round(cp, 4), "recall": round(cr, 4)}}
    return out


def search_times(vectors: np.ndarray, sizes: list[int], queries: np.ndarray) -> dict:
    """Median search time (µs) of a flat and an HNSW bucket holding `size` vectors."""
    out = {}
    for size in sizes:
        row = {}
        for kind, hnsw_from in (("flat", size + 1), ("hnsw", 1)):
            bucket = Bucket(vectors.shape[1], hnsw_from=hnsw_from)
            bucket.add_many(list(range(size)), vectors[:size])
            if kind == "hnsw":
                bucket.compact()
            assert bucket.hnsw == (kind == "hnsw")
            times = []
            for q in queries:
                t = time.perf_counter()
                bucket.search(q, 4)
                times.append(time.perf_counter() - t)
            row[kind] = round(float(np.median(times)) * 1e6, 1)
        out[size] = row
        print(f"  {size:>7} vectors: flat {row['flat']:.1f} µs, hnsw {row['hnsw']:.1f} µs", flush=True)
    return out


def lookup_latency(df, emb_a, emb_b, verifier, entries: int) -> dict:
    """Fill one context with `entries` questions, then time lookups of held-out paraphrases."""
    texts = list(dict.fromkeys(list(df["text_a"]) + list(df["text_b"])))
    pos: dict[str, np.ndarray] = {}
    for t, v in zip(list(df["text_a"]) + list(df["text_b"]), np.vstack([emb_a, emb_b])):
        pos.setdefault(t, v)
    dim = emb_a.shape[1]
    rng = np.random.default_rng(0)
    split = group_split(df)
    queries = df[split == "test"].sample(2000, random_state=0)
    query_texts = set(queries["text_b"])
    fill = [t for t in texts if t not in query_texts]
    cache = ResponseCache(None, verifier=verifier, max_entries=entries + 1)
    t0 = time.perf_counter()
    n = 0
    while n < entries:
        i = n % len(fill)
        text = fill[i] if n < len(fill) else f"{fill[i]} (variant {n // len(fill)})"
        v = pos[fill[i]] if n < len(fill) else pos[fill[i]] + rng.normal(0, 0.02, dim).astype(np.float32)
        v = v / np.linalg.norm(v)
        cache.put(request_keys(_request(text), "auto", "t"), tenant="t", route="auto", response=_answer(text), model="m",
                  cost_usd=0.0, vector=v)
        n += 1
    fill_s = time.perf_counter() - t0
    # The switch to HNSW and its catch-up run in the background: measure the settled index, not
    # lookups that happen to run while the last inserts are still queued for the new graph.
    cache._index.wait_for_rebuilds()
    settle_s = time.perf_counter() - t0 - fill_s
    # count the lookups that reach the cross-encoder (the second stage runs only past the threshold)
    pairs_read: list[int] = []
    if verifier.cross_encoder is not None:
        logits = verifier.cross_encoder.logits

        def counted(a, b):
            pairs_read.append(len(a))
            return logits(a, b)

        verifier.cross_encoder.logits = counted
    times, hits, second = [], 0, []
    qpos = {t: v for t, v in zip(df["text_b"], emb_b)}
    for text in queries["text_b"]:
        keys = request_keys(_request(text), "auto", "t")
        before = len(pairs_read)
        t = time.perf_counter()
        hit = cache.lookup(keys, qpos[text])
        times.append(time.perf_counter() - t)
        second.append(len(pairs_read) > before)
        hits += hit is not None
    times_ms, second = np.array(times) * 1e3, np.array(second)

    def pct(x: np.ndarray, q: float) -> float | None:
        return round(float(np.percentile(x, q)), 3) if len(x) else None

    return {"entries": len(cache), "fill_s": round(fill_s, 1), "settle_s": round(settle_s, 1), "lookups": len(times), "hits": hits,
            "p50_ms": pct(times_ms, 50), "p90_ms": pct(times_ms, 90), "p99_ms": pct(times_ms, 99),
            "second_stage_lookups": int(second.sum()), "second_stage_pairs": int(sum(pairs_read)),
            "p50_ms_with_second_stage": pct(times_ms[second], 50), "p50_ms_first_stage_only": pct(times_ms[~second], 50)}


def main() -> int:
    import faiss

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=Path, default=default_pairs())
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    faiss.omp_set_num_threads(1)
    df = load_pairs(args.pairs)
    emb_a, emb_b = embed_pairs(df)
    verifier = Verifier.load()
    result = {"verifier_threshold": verifier.threshold}
    print("held-out quality (default settings, through the cache):", flush=True)
    result["quality"] = held_out_quality(df, emb_a, emb_b, verifier)
    print(json.dumps(result["quality"], indent=2), flush=True)
    print("search time by bucket size (median over 300 queries, one thread):", flush=True)
    result["search_us"] = search_times(np.vstack([emb_a, emb_b]), [256, 1024, 2048, 4096, 8192, 32768],
                                       emb_b[:300])
    print(f"lookup latency at {args.entries} entries in one context (one thread):", flush=True)
    result["lookup"] = lookup_latency(df, emb_a, emb_b, verifier, args.entries)
    print(json.dumps(result["lookup"], indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
