"""What training the router on all three outcome tables costs each one (docs/ROUTER.md "The
shipped artifact"): 5-fold cross-validation on one table (the folds of bench_routing_quality.py),
each fold's router trained by `openclaw-router train` on that table's other four folds alone
(`own`) or with the other two tables added whole (`union`), evaluated by the eval job on the
held-out fold with kNN fit on the same four folds.

    python bench/bench_union_router.py --table routerbench --variant own      # ~1 min a fold
    python bench/bench_union_router.py --table routerbench --variant union    # ~2 min a fold
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.bench_routing_quality import DATASETS, wide_frame  # noqa: E402

TABLES = {
    "routerbench": DATASETS / "routerbench_subset" / "routerbench_subset_train.parquet",
    "nim9": DATASETS / "llmrouter_nim9" / "llmrouter_nim9_train.parquet",
    "routerdc": DATASETS / "routerdc_7llm" / "routerdc_7llm_train.parquet",
}


def fold_result(table, emb, train_rows, test_rows, router_dir: Path) -> dict:
    from router.engine import LearnedRouter
    from training.evaluate import evaluate_table

    router = LearnedRouter.load(router_dir)
    methods = evaluate_table(table.subset(test_rows), emb[test_rows], router,
                             knn_train=(table.subset(train_rows), emb[train_rows])).summary["methods"]
    out = {f"aiq_{name}": methods[name]["aiq"] for name in ("router", "knn", "zero", "random", "oracle")}
    out["q50_router"] = methods["router"]["quality_at_best_cost_fraction"]["0.5"]
    # With one price for every model (RouterDC) AIQ is undefined: the best quality reached tells.
    out.update({f"best_{name}": max(p[1] for p in methods[name]["points"]) for name in ("router", "knn")})
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--table", choices=sorted(TABLES), default="routerbench")
    parser.add_argument("--variant", choices=("own", "union"), default="union")
    parser.add_argument("--out", type=Path, help="JSON of the per-fold results")
    args = parser.parse_args()

    from router.embedding import encode_cached
    from service.cli import main as cli
    from training.data import load_outcomes

    path = TABLES[args.table]
    frame = wide_frame(path)
    table = load_outcomes(path, flat_price=True, frame=frame)  # as the eval job loads it
    emb = encode_cached(table.texts)
    fold = np.random.default_rng(0).permutation(len(frame)) % 5
    others = [arg for name, other in TABLES.items() if name != args.table for arg in ("--data", str(other))]
    rows = []
    for k in range(5):
        train_rows, test_rows = np.nonzero(fold != k)[0], np.nonzero(fold == k)[0]
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            frame.iloc[train_rows].reset_index(drop=True).to_parquet(tmp / "train.parquet", index=False)
            prices = path.with_name("models.json")  # nim9's list prices travel beside its file
            if prices.exists():
                shutil.copy(prices, tmp / "models.json")
            rc = cli(["train", "--data", str(tmp / "train.parquet"), *(others if args.variant == "union" else []),
                      "--out", str(tmp / "router"), "--tracking-uri", f"sqlite:///{tmp / 'mlflow.db'}"])
            if rc != 0:
                return rc
            rows.append({"fold": k, **fold_result(table, emb, train_rows, test_rows, tmp / "router")})
        print(json.dumps(rows[-1]), flush=True)
    for key in ("aiq_router", "aiq_knn", "q50_router", "best_router", "best_knn"):
        values = [r[key] for r in rows if r[key] is not None]
        if values:
            print(f"{key}: {np.mean(values):.4f} ± {np.std(values):.4f}  per fold {', '.join(f'{v:.4f}' for v in values)}")
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
