"""Routing quality, 5-fold cross-validation on routerbench_subset (docs/BENCHMARKS.md).

For each fold: `openclaw-router train` on the other four folds into a temporary artifact,
then the eval job's `evaluate_table` on the held-out fold, with the kNN baseline fit on the
same four training folds. Prints per-fold and mean ± std of AIQ (router, kNN, Zero, random,
oracle), the cost at which the router reaches the best single model's quality (as a share of
that model's cost), and, for the RouteLLM-style pair gpt-4-1106-preview / mixtral-8x7b-chat,
APGR and CPT(50 %), CPT(80 %).

    python bench/bench_routing_quality.py [--folds 5] [--data FILE] [--json OUT.json]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DATASETS = Path(os.environ.get("OPENCLAW_DATASETS", ROOT.parent / "shared" / "datasets"))
DEFAULT_DATA = DATASETS / "routerbench_subset" / "routerbench_subset_train.parquet"
PAIR = ("gpt-4-1106-preview", "mixtral-8x7b-chat")


def wide_frame(path: Path):
    """The table with its answers joined in, so each fold file is self-contained."""
    from training.data import _join_responses, read_frame

    return _join_responses(read_frame(path), path)


def train_fold(frame, folder: Path, extra: list[str]) -> Path:
    """`openclaw-router train` on one fold's training rows (MLflow store inside the temp folder)."""
    from service.cli import main as cli

    data = folder / "train.parquet"
    frame.to_parquet(data, index=False)
    out = folder / "router"
    rc = cli(["train", "--data", str(data), "--out", str(out), "--tracking-uri", f"sqlite:///{folder / 'mlflow.db'}", *extra])
    if rc != 0:
        raise RuntimeError(f"training failed with exit code {rc}")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="write per-fold summaries here")
    ap.add_argument("--train-args", default="", help="extra arguments for `openclaw-router train`")
    args = ap.parse_args(argv)

    from router.embedding import encode_cached
    from router.engine import LearnedRouter
    from training.data import wide_to_outcomes
    from training.evaluate import evaluate_table

    path = Path(args.data)
    frame = wide_frame(path)
    table = wide_to_outcomes(frame, path)
    emb = encode_cached(table.texts)
    fold = np.random.default_rng(args.seed).permutation(len(frame)) % args.folds
    rows = []
    for k in range(args.folds):
        tr, te = np.nonzero(fold != k)[0], np.nonzero(fold == k)[0]
        with tempfile.TemporaryDirectory(prefix=f"rq-fold{k}-") as tmp:
            router = LearnedRouter.load(train_fold(frame.iloc[tr].reset_index(drop=True), Path(tmp), args.train_args.split()))
            train_table = table.subset(tr)
            full = evaluate_table(table.subset(te), emb[te], router, knn_train=(train_table, emb[tr]))
            pair = evaluate_table(table.subset(te), emb[te], router, models=list(PAIR), knn_train=(train_table, emb[tr]))
        rows.append({"fold": k, "all": full.summary, "pair": pair.summary})
        m = full.summary["methods"]
        print(f"fold {k}: AIQ router {m['router']['aiq']:.4f} knn {m['knn']['aiq']:.4f} zero {m['zero']['aiq']:.4f} "
              f"oracle {m['oracle']['aiq']:.4f}; reach best at {m['router']['cost_to_reach_best_ratio']} of its cost; "
              f"APGR {pair.summary['two_model']['router']['apgr']:.3f}", flush=True)
    print(report(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


def _ms(values) -> str:
    v = np.array([np.nan if x is None else x for x in values], dtype=float)
    if np.isnan(v).all():
        return "never reached"
    if np.isnan(v).any():
        return f"{np.nanmean(v):.4f} ± {np.nanstd(v):.4f} ({int(np.isnan(v).sum())} folds never reach)"
    return f"{v.mean():.4f} ± {v.std():.4f}"


def report(rows: list[dict]) -> str:
    methods = ("router", "knn", "zero", "random", "oracle")
    out = ["| method | AIQ (mean ± std over folds) | quality at random's cost | quality at 25 % / 50 % of best single's cost "
           "| cost to reach best single / its cost |",
           "|---|---|---|---|---|"]
    for name in methods:
        ms = [r["all"]["methods"][name] for r in rows]
        at = [m["quality_at_best_cost_fraction"] for m in ms]
        out.append(f"| {name} | {_ms([m['aiq'] for m in ms])} | {_ms([m['quality_at_random_cost'] for m in ms])} | "
                   f"{_ms([a['0.25'] for a in at])} / {_ms([a['0.5'] for a in at])} | "
                   f"{_ms([m['cost_to_reach_best_ratio'] for m in ms])} |")
    best = [r["all"]["best_single_model"] for r in rows]
    out.insert(0, f"best single model: {best[0]['model']}, quality {_ms([b['mean_quality'] for b in best])} "
                  f"at ${_ms([b['mean_cost'] for b in best])} per prompt\n")
    gap = [r["all"]["methods"]["router"]["aiq"] - max(r["all"]["methods"]["knn"]["aiq"], r["all"]["methods"]["zero"]["aiq"])
           for r in rows]
    out.append(f"\nrouter AIQ − max(kNN, Zero) per fold: {', '.join(f'{g:+.4f}' for g in gap)}")
    out.append(f"\npair {PAIR[0]} / {PAIR[1]}:")
    out.append("| method | APGR | CPT(50%) | CPT(80%) |\n|---|---|---|---|")
    for name in ("router", "knn", "oracle"):
        ps = [r["pair"]["two_model"][name] for r in rows]
        out.append(f"| {name} | {_ms([p['apgr'] for p in ps])} | {_ms([p['cpt_50'] for p in ps])} | {_ms([p['cpt_80'] for p in ps])} |")
    return "\n".join(out)


if __name__ == "__main__":
    sys.exit(main())
