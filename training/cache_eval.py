"""`openclaw-router cache-eval --pairs FILE --out FILE.parquet`

For each pair: would a request with `text_b` be served from a cache that holds `text_a`'s
answer, under the default settings (single-user-turn requests to `auto`, same empty
context)? Each pair goes through the real cache: `text_a`'s request is stored, `text_b`'s
is looked up, unless the gateway would do neither for one of them (`router.cache.policy`). Pairs are kept apart by giving each its own tenant, so a lookup only ever
sees its own pair's entry. Embeddings are computed in batch up front (memoised on disk).
Each stage (embed, cache) shows a progress bar on stderr. Besides `row` and `hit`, the output
says how close each pair came: the cosine of its embeddings, the verifier's score and why a pair
missed (docs/CACHE.md, Evaluate).
"""
from __future__ import annotations

import argparse
import logging
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    import numpy as np

    from router.cache.cache import Lookup

log = logging.getLogger(__name__)

# Why a pair missed before any lookup (the lookup's own: router.cache.cache.Lookup.reason).
EMPTY_TEXT = "empty_text"  # a side asks nothing (an empty cell)
NOT_CACHEABLE = "not_cacheable"  # the gateway would neither store nor serve a side (router.cache.policy)
CACHE_OFF = "cache_off"  # cache.enabled: false in --config


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pairs", required=True, type=Path, help="parquet, CSV, TSV or JSON Lines with text_a, text_b (and "
                        "optionally label), or QQP's question1, question2 (and is_duplicate)")
    parser.add_argument("--out", required=True, type=Path, help="output parquet: row, hit, similarity, score, reason (docs/CACHE.md)")
    parser.add_argument("--config", type=Path, help="a gateway config (what `serve --config` takes) whose `cache` settings "
                        "(enabled, semantic, verifier, threshold) to use; default: the built-in defaults")


def _request(text: str) -> dict:
    return {"model": "auto", "messages": [{"role": "user", "content": text}]}


def _answer(text: str) -> dict:
    return {
        "id": "chatcmpl-eval",
        "object": "chat.completion",
        "model": "eval",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": f"answer to: {text}"}, "finish_reason": "stop"}],
    }


def both_asked(a: str, b: str) -> bool:
    """False where a text is missing (an empty cell): it asks nothing a cache could answer."""
    return bool(a.strip()) and bool(b.strip())


def evaluate_pairs(df, cache, emb_a, emb_b) -> list[bool]:
    return [r.hit is not None for r in explain_pairs(df, cache, emb_a, emb_b)]


def explain_pairs(df, cache, emb_a, emb_b, progress: Callable[[], object] | None = None) -> list[Lookup]:
    """Each pair's lookup (`ResponseCache.explain`), or why none was made; `progress` is called per pair."""
    from router.cache.cache import Lookup
    from router.cache.keys import request_keys
    from router.cache.policy import request_cacheable

    results = []
    for i, (a, b) in enumerate(zip(df["text_a"], df["text_b"])):
        # As the gateway: a request it may not cache (a question about the moment of asking) is
        # neither stored nor served. The requests carry no temperature, so that setting is moot.
        if not both_asked(a, b):
            results.append(Lookup(None, EMPTY_TEXT))
        elif request_cacheable(_request(a), False) or request_cacheable(_request(b), False):
            results.append(Lookup(None, NOT_CACHEABLE))
        else:
            tenant = f"pair-{i}"
            keys_a = request_keys(_request(a), "auto", tenant)
            cache.put(keys_a, tenant=tenant, route="auto", response=_answer(a), model="eval", cost_usd=0.0, vector=emb_a[i])
            results.append(cache.explain(request_keys(_request(b), "auto", tenant), emb_b[i]))
        if progress is not None:
            progress()
    return results


def embed_with_progress(df) -> tuple[np.ndarray, np.ndarray]:
    """`training.qqp.embed_pairs`, the distinct texts under a progress bar."""
    from training.embed_progress import encode_with_progress

    texts = sorted(set(df["text_a"]) | set(df["text_b"]))
    vecs = encode_with_progress(texts)
    pos = {t: i for i, t in enumerate(texts)}
    return vecs[[pos[t] for t in df["text_a"]]], vecs[[pos[t] for t in df["text_b"]]]


def run(args: argparse.Namespace) -> int:
    from training.outputs import removed_if_left_empty

    with removed_if_left_empty(args.out.parent):
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    import numpy as np
    import pandas as pd
    from tqdm import tqdm

    from router.cache.cache import Lookup, ResponseCache
    from router.cache.verifier import Verifier
    from router.config import CacheSection, load_config, resolve_path
    from training.outputs import check_output_file
    from training.qqp import load_pairs, precision_recall

    if not args.pairs.exists():
        raise FileNotFoundError(f"--pairs {args.pairs} does not exist")
    check_output_file(args.out, "--out")
    if args.out.resolve() == args.pairs.resolve():
        raise ValueError(f"--out {args.out} is the --pairs file: writing it would replace the pairs with the verdicts")
    section = CacheSection()
    verifier_path = Path(section.verifier)
    if args.config:
        config = load_config(args.config)
        section = config.cache
        verifier_path = resolve_path(config, section.verifier)
    df = load_pairs(args.pairs)
    t0 = t1 = time.perf_counter()
    similarity = np.full(len(df), np.nan)
    if section.enabled:
        emb_a, emb_b = embed_with_progress(df)
        similarity = np.einsum("ij,ij->i", emb_a, emb_b).astype(np.float64)
        t1 = time.perf_counter()
        verifier = Verifier.load(verifier_path, threshold=section.verifier_threshold) if section.semantic else None
        cache = ResponseCache(None, ttl_s=section.ttl_s, max_entries=max(section.max_entries, len(df) + 1),
                              semantic=section.semantic, verifier=verifier)
        with tqdm(total=len(df), desc="cache", unit="pair") as bar:
            results = explain_pairs(df, cache, emb_a, emb_b, progress=bar.update)
        cache.close()
    else:
        print(f"the cache is off in {args.config} (cache.enabled: false): no request is served from it")
        results = [Lookup(None, CACHE_OFF)] * len(df)
    t2 = time.perf_counter()
    hits = [r.hit is not None for r in results]
    asked = np.array([both_asked(a, b) for a, b in zip(df["text_a"], df["text_b"])], dtype=bool)
    similarity[~asked] = np.nan  # a cosine against an empty text's vector says nothing; the pair was not looked up
    unasked = int((~asked).sum())
    if unasked:
        print(f"{unasked} pairs with an empty or missing text were not looked up (hit = false)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({
        "row": range(len(df)),
        "hit": pd.Series(hits, dtype=bool),
        "similarity": similarity,
        "score": pd.Series([r.score for r in results], dtype="float64"),
        "reason": pd.Series([r.reason for r in results], dtype=object),
    }).to_parquet(args.out, index=False)
    print(f"{len(df)} pairs: {sum(hits)} hits; embedding {t1 - t0:.1f} s, cache {t2 - t1:.1f} s; wrote {args.out}")
    misses = Counter(r.reason for r in results if r.hit is None)
    if misses:
        print("misses by reason: " + ", ".join(f"{reason} {n}" for reason, n in misses.most_common()))
    if "label" in df.columns:
        label = df["label"].to_numpy()
        scored = ~np.isnan(label)
        precision, recall = precision_recall(np.asarray(hits, dtype=bool)[scored], label[scored].astype(bool))
        unlabelled = f" ({int((~scored).sum())} pairs without a label not scored)" if not scored.all() else ""
        if not scored.any():
            print(f"precision n/a, recall n/a: no labelled pairs{unlabelled}")
        else:
            shown = "n/a (no hits)" if np.isnan(precision) else f"{precision:.4f}"
            recalled = "n/a (no pair labelled a duplicate)" if np.isnan(recall) else f"{recall:.4f}"
            print(f"precision {shown}  recall {recalled}{unlabelled}")
    return 0
