"""Memory of the in-memory response cache filled by agent traffic, and lookup+put time as it fills.

    python bench/bench_cache_memory.py [--entries 100000] [--at 10000 50000] [--max-bytes B] [--json OUT]

Fills one cache (`max_entries` = --entries, no folder: the default config) with the answers an
OpenClaw-style agent gets, as the gateway stores them: sessions of 3-25 user turns under one of
three 35 KB system prompts, nine sessions in ten with their own runtime line at its end (as the
review's soak sent them); the first turn asks under the system prompt alone, each later turn
after the whole history, and half the turns end with a tool loop, whose final answer is stored
under the request ending with the tool result (exact-only). Questions and answers are QQP
questions (answers 200-2,000 characters of them, as English compresses), vectors random unit
vectors. Each request is what the gateway does: `may_hit`, a lookup when it says one is
possible, then `put`.

Prints, at each of --at and at --entries: entries, contexts in the index, RSS growth per entry
(a first fill), Python-traced bytes per entry (tracemalloc, a second fill: FAISS's C++
allocations are not traced, so only RSS counts them), the cache's own estimate (what
`cache.max_bytes` bounds) and the p50 of may_hit+lookup+put over the last 10 % of the fill;
then RSS after another 20 % of puts past full, each evicting one.
"""
from __future__ import annotations

import argparse
import gc
import json
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from router.cache.cache import ResponseCache  # noqa: E402
from router.cache.keys import request_keys  # noqa: E402
from router.cache.verifier import Verifier  # noqa: E402
from training.qqp import default_pairs, load_pairs  # noqa: E402


def rss_bytes() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS"))


class Traffic:
    """Agent requests and their answers, the same sequence for the same seed."""

    def __init__(self, questions: list[str], seed: int = 0):
        self.q = questions
        self.rng = np.random.default_rng(seed)
        prompts = np.random.default_rng(99)
        self.systems = [" ".join(self._pick(prompts, 5000)) + f" (prompt {i})" for i in range(3)]
        self.session = 0

    def _pick(self, rng, n_words: int) -> list[str]:
        words: list[str] = []
        while len(words) < n_words:
            words += self.q[int(rng.integers(len(self.q)))].split()
        return words[:n_words]

    def text(self, lo: int, hi: int) -> str:
        return " ".join(self._pick(self.rng, int(self.rng.integers(lo, hi)) // 6))

    def __iter__(self):
        rng = self.rng
        while True:
            self.session += 1
            system = self.systems[int(rng.integers(3))]
            if rng.random() < 0.9:  # OpenClaw's prompt ends with the session's runtime line
                system += f"\nRuntime: session {self.session}, host box{int(rng.integers(50))}"
            messages = [{"role": "system", "content": system}]
            for turn in range(int(rng.integers(3, 26))):
                messages.append({"role": "user", "content": self.q[int(rng.integers(len(self.q)))]})
                if rng.random() < 0.5:  # a tool loop: its tool-call steps are not cached, its final answer is
                    call = {"id": f"call_{self.session}_{turn}", "type": "function",
                            "function": {"name": "read", "arguments": json.dumps({"path": f"/src/f{turn}.py"})}}
                    messages += [{"role": "assistant", "content": None, "tool_calls": [call]},
                                 {"role": "tool", "tool_call_id": call["id"], "content": self.text(600, 3000)}]
                answer = self.text(200, 2000)
                yield list(messages), answer
                messages.append({"role": "assistant", "content": answer})


def completion(text: str) -> dict:
    return {"id": "chatcmpl-bench", "object": "chat.completion", "created": 1764000000, "model": "m3",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 12000, "completion_tokens": len(text) // 4, "total_tokens": 12000 + len(text) // 4}}


def fill(cache: ResponseCache, questions: list[str], n: int, marks: list[int], measure, seed: int = 0) -> list[dict]:
    """`n` stored answers; at each mark: what `measure()` says, the contexts and the p50 time."""
    rng = np.random.default_rng(seed + 1)
    traffic = iter(Traffic(questions, seed))
    times: list[float] = []
    out = []
    for i in range(1, n + 1):
        messages, answer = next(traffic)
        keys = request_keys({"model": "auto", "messages": messages}, "auto", "agent-key")
        vector = rng.standard_normal(384).astype(np.float32)
        vector /= np.linalg.norm(vector)
        t = time.perf_counter()
        exact, semantic = cache.may_hit(keys)
        if exact or semantic:
            cache.lookup(keys, vector if semantic else None, semantic=semantic)
        cache.put(keys, tenant="agent-key", route="auto", response=completion(answer), model="m3", cost_usd=0.01, vector=vector)
        times.append(time.perf_counter() - t)
        if i in marks:
            gc.collect()
            recent = np.array(times[-max(i // 10, 1):]) * 1000
            out.append({"entries": len(cache), "contexts": len(cache._index.buckets), "bytes": measure(),
                        "estimate": getattr(cache, "bytes_held", None),  # what max_bytes bounds (not in older code)
                        "put_p50_ms": round(float(np.median(recent)), 3)})
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=100_000, help="puts, and the cache's max_entries")
    parser.add_argument("--max-bytes", type=float, default=float("inf"),
                        help="the cache's max_bytes (default: none; `cache.max_bytes` is 134217728)")
    parser.add_argument("--at", type=int, nargs="*", default=[10_000, 50_000], help="also report at these sizes")
    parser.add_argument("--pairs", type=Path, default=None, help="QQP pairs file (default: the shared dataset)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    df = load_pairs(args.pairs or default_pairs())
    questions = [q for q in df["text_a"].tolist() + df["text_b"].tolist() if q.strip()]
    del df
    verifier = Verifier.load()
    marks = sorted({m for m in args.at if m < args.entries} | {args.entries})

    # Not the cache's: FAISS's libraries (loaded on first use) and the allocator's first growth
    # for request bodies of 100 KB.
    import faiss  # noqa: F401

    for _, (messages, _) in zip(range(500), Traffic(questions, seed=3)):
        request_keys({"model": "auto", "messages": messages}, "auto", "agent-key")
    gc.collect()
    base = rss_bytes()
    cache = ResponseCache(None, verifier=verifier, max_entries=args.entries, max_bytes=args.max_bytes)
    by_rss = fill(cache, questions, args.entries, marks, lambda: rss_bytes() - base)
    churn = fill(cache, questions, args.entries // 5, [args.entries // 5], lambda: rss_bytes() - base, seed=7)[0]
    cache.close()
    del cache
    gc.collect()

    tracemalloc.start()
    cache = ResponseCache(None, verifier=verifier, max_entries=args.entries, max_bytes=args.max_bytes)
    start = tracemalloc.get_traced_memory()[0]
    by_traced = fill(cache, questions, args.entries, marks, lambda: tracemalloc.get_traced_memory()[0] - start)
    tracemalloc.stop()

    rows = []
    for r, t in zip(by_rss, by_traced):
        row = {"entries": r["entries"], "contexts": r["contexts"], "rss_mb": round(r["bytes"] / 2**20, 1),
               "rss_per_entry_b": round(r["bytes"] / r["entries"]), "traced_per_entry_b": round(t["bytes"] / t["entries"]),
               "estimated_per_entry_b": round(r["estimate"] / r["entries"]) if r["estimate"] is not None else None,
               "put_p50_ms": r["put_p50_ms"]}
        rows.append(row)
        print(f"{row['entries']:>7} entries, {row['contexts']:>6} contexts in the index: RSS +{row['rss_mb']} MB"
              f" ({row['rss_per_entry_b']} B/entry), traced {row['traced_per_entry_b']} B/entry,"
              f" estimated {row['estimated_per_entry_b']} B/entry;"
              f" may_hit+lookup+put p50 {row['put_p50_ms']} ms", flush=True)
    full = {"puts": args.entries // 5, "rss_mb": round(churn["bytes"] / 2**20, 1), "put_p50_ms": churn["put_p50_ms"]}
    print(f"after {full['puts']} more puts, each evicting one: RSS +{full['rss_mb']} MB;"
          f" may_hit+lookup+put p50 {full['put_p50_ms']} ms", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"fill": rows, "past_full": full}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
