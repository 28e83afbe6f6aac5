"""Latency of one routing decision: embed + predict + policy over 11 candidates, one core.

Times `LearnedRouter.route` end to end for a short prompt and a 2,000-token prompt, and
the embed / predict / policy parts separately. Prints a markdown table (docs/BENCHMARKS.md).

    python bench/bench_routing.py [--router models/default] [--n 300]
"""
from __future__ import annotations

import os

# One core, set before numpy / onnxruntime / lightgbm load their thread pools.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SHORT = "Which is heavier, a kilogram of feathers or a kilogram of steel? Explain briefly."
PARAGRAPH = (
    "The committee reviewed the quarterly report on water usage across the district, noting that "
    "consumption rose in the summer months while reservoir levels fell below the five-year average. "
)


def long_prompt(tokens: int = 2000) -> str:
    text = ""
    while len(text) < tokens * 4:
        text += PARAGRAPH
    return text[: tokens * 4] + "\nSummarise the main risks and propose three measures."


def percentiles(samples: list[float]) -> tuple[float, float]:
    a = np.asarray(samples) * 1e3
    return float(np.percentile(a, 50)), float(np.percentile(a, 99))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--router", default=str(ROOT / "models" / "default"))
    ap.add_argument("--candidates", type=int, default=11, help="models routed among: the artifact's first N")
    ap.add_argument("--n", type=int, default=300, help="timed decisions per prompt")
    args = ap.parse_args(argv)

    from router.config import ModelSpec, Price, Profile
    from router.embedding import Embedder
    from router.engine import LearnedRouter
    from router.policy import decide
    from router.request_view import view_prompt

    router = LearnedRouter.load(args.router)
    # The artifact's first 11 models (RouterBench's, in models/default): the 11 candidates,
    # whatever else the artifact was trained on.
    prices = router.manifest["prices_seen"]
    catalog = [
        ModelSpec(name=m, provider="bench", price=Price(input_per_1m=prices[m][0], output_per_1m=prices[m][1]), context_window=32768)
        for m in router.models[:args.candidates]
    ]
    profile = Profile(willingness_to_pay=0.01)
    router._embedder = Embedder(threads=1)
    prompts = {"short (%d chars)" % len(SHORT): SHORT, "2,000 tokens": long_prompt()}
    rows = []
    for label, text in prompts.items():
        req = view_prompt(text)
        n = args.n if len(text) < 1000 else max(args.n // 5, 30)
        total: list[float] = []
        parts: dict[str, list[float]] = {"embed": [], "predict": [], "policy": []}
        for _ in range(5):  # warm-up: first calls allocate ONNX Runtime and LightGBM buffers
            router.route(req, catalog=catalog, profile=profile)
        for _ in range(n):
            t0 = time.perf_counter()
            router.route(req, catalog=catalog, profile=profile)
            total.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            e = router._embedder.encode([req.text])
            t1 = time.perf_counter()
            pred = router.predict([req], e, catalog)
            t2 = time.perf_counter()
            decide(pred, req, catalog=catalog, profile=profile)
            t3 = time.perf_counter()
            parts["embed"].append(t1 - t0)
            parts["predict"].append(t2 - t1)
            parts["policy"].append(t3 - t2)
        p50, p99 = percentiles(total)
        comp = " / ".join(f"{percentiles(parts[k])[0]:.2f}" for k in ("embed", "predict", "policy"))
        rows.append(f"| {label} | {p50:.2f} | {p99:.2f} | {min(total) * 1e3:.2f} | {comp} | {n} |")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"router {args.router}: {len(catalog)} candidates, {router.predictor.folds} fold boosters; "
          f"{platform.processor() or platform.machine()}, load average {load:.1f} on {os.cpu_count()} cores\n")
    # The minimum is the best estimate of the uncontended cost on a shared machine.
    print("| prompt | p50 ms | p99 ms | min ms | p50 embed / predict / policy ms | decisions |")
    print("|---|---|---|---|---|---|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
