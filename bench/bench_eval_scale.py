"""`openclaw-router eval` at growing sizes: wall time and peak memory of the job.

    python bench/bench_eval_scale.py [--copies 1 5 10] [--out-dir /tmp/eval-scale]

The table is `routerbench_subset` repeated K times, each copy's prompts suffixed with its
number, so every row is a distinct prompt. The new prompts are embedded (and memoised on disk)
before the timed runs, so the numbers are the job's own work: the first run of a size embeds
~2,200 prompts per copy (a few ms each on one core). Each size runs `eval` in a child process;
peak memory is that child's maximum resident set. The AIQs it prints past one copy are not a
quality measure: kNN's cross-fitting keeps only identical prompts apart, so each near-copy is
predicted from its twin.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def build(copies: int, out_dir: Path) -> Path:
    import pandas as pd

    from router.embedding import encode_cached
    from training.data import datasets_dir

    base = pd.read_parquet(datasets_dir() / "routerbench_subset" / "routerbench_subset_train.parquet")
    parts = []
    for r in range(copies):
        part = base.copy()
        if r:
            part["query"] = part["query"] + f" [{r}]"
        parts.append(part)
    table = pd.concat(parts, ignore_index=True)
    encode_cached(table["query"].tolist())  # embedded once, outside the timed run
    path = out_dir / f"routerbench_x{copies}.parquet"
    table.to_parquet(path)
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--copies", type=int, nargs="+", default=[1, 5, 10])
    parser.add_argument("--out-dir", type=Path, default=Path("/tmp/eval-scale"))
    args = parser.parse_args()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for k in args.copies:
        data = build(k, args.out_dir)
        report = args.out_dir / f"x{k}"
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "service.cli", "eval", "--data", str(data), "--router",
                        str(ROOT / "models" / "default"), "--decisions-out", str(report / "decisions.parquet"),
                        "--report-dir", str(report)], check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - t0
        # ru_maxrss of children is the largest child so far: sizes run in increasing order.
        peak_kb = max(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, before)
        summary = json.loads((report / "summary.json").read_text())
        rows.append({"rows": summary["n_rows"], "wall_s": round(wall, 1), "peak_rss_gb": round(peak_kb / 1e6, 2),
                     "router_aiq": summary["methods"]["router"]["aiq"], "knn_aiq": summary["methods"]["knn"]["aiq"]})
        print(json.dumps(rows[-1]), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
