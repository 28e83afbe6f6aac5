"""`openclaw-router shadow-report` and `retrain` on outcome logs of growing size.

    python bench/bench_learning_scale.py [--rows 10000 100000] [--out-dir /tmp/learning-scale]

Each log is written with the project's own writers (the outcome store, the feedback log):
`routerbench_subset` prompts with a row suffix, the file's 11 models as candidates, a uniform
propensity, an embedding (the prompt's, slightly perturbed) and feature row, explicit feedback
(the recorded quality of the logged model) and a shadow decision on every row, so every row is
usable. Each job then runs in a child process; peak memory is that child's maximum resident set.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
BATCH = 5000
WTP = 0.01


def _candidate(model: str, cost: float) -> dict:
    return {"model": model, "p_good": 0.5, "p_good_std": 0.1, "output_tokens": 50.0, "cost_usd": cost, "latency_s": 1.0,
            "utility": 0.5 - cost / WTP, "excluded": None}


def write_log(rows: int, path: Path) -> None:
    import pandas as pd

    from router.embedding import encode_cached
    from router.features import request_features
    from router.feedback_log import JSON_COLUMNS, SHADOW_COLUMNS, Feedback, FeedbackLog, ShadowRecord, feedback_insert
    from router.outcome_log import OutcomeRecord, SQLiteStore
    from router.types import RoutingRequest
    from training.data import datasets_dir

    df = pd.read_parquet(datasets_dir() / "routerbench_subset" / "routerbench_subset_train.parquet")
    models = [c[len("quality__"):] for c in df.columns if c.startswith("quality__")]
    emb = encode_cached(df["query"].tolist())
    tokens = [len(p) // 4 for p in df["prompt_full"]]
    feats = request_features([RoutingRequest(text=t, input_tokens=n) for t, n in zip(df["query"], tokens)])
    quality = df[[f"quality__{m}" for m in models]].to_numpy()
    cost = df[[f"cost_usd__{m}" for m in models]].to_numpy()
    rng = np.random.default_rng(0)
    path.unlink(missing_ok=True)
    store, feedback = SQLiteStore(str(path)), FeedbackLog(f"sqlite:///{path}")
    for start in range(0, rows, BATCH):
        outcomes, rewards, shadows = [], [], []
        for i in range(start, min(rows, start + BATCH)):
            r, a, s = i % len(df), int(rng.integers(len(models))), int(rng.integers(len(models)))
            v = emb[r] + rng.normal(0, 0.02, emb.shape[1]).astype(np.float32)
            rid = f"req_{i}"
            outcomes.append(OutcomeRecord(
                request_id=rid, ts=1000.0 + i, prompt=f"{df['query'].iat[r]} #{i}", prompt_hash=f"h{i}",
                embedding=(v / np.linalg.norm(v)).astype(np.float32).tobytes(), input_tokens_est=tokens[r],
                candidates=[_candidate(m, float(cost[r, j])) for j, m in enumerate(models)], knob=WTP,
                chosen_model=models[a], propensity=1 / len(models), answered_model=models[a], cost_usd=float(cost[r, a]),
                status="ok", attempts=[{"model": models[a], "status": "ok"}], fallback_chain=[models[a]],
                extras={"features": [round(float(x), 6) for x in feats[r]]}))
            fb = asdict(Feedback(rid, float(quality[r, a]), label=df["eval_name"].iat[r], ts=1000.0 + i + 0.5))
            rewards.append([fb[c] for c in ("request_id", "ts", "score", "source", "signal", "label", "comment")])
            record = ShadowRecord(request_id=rid, profile="auto", live_model=models[a], shadow_model=models[s],
                                  live_candidate=_candidate(models[a], float(cost[r, a])),
                                  shadow_candidate=_candidate(models[s], float(cost[r, s])),
                                  shadow_on_live_choice=_candidate(models[a], float(cost[r, a])), ts=1000.0 + i + 0.2,
                                  called=bool(rng.random() < 0.1), call_status="ok", call_cost_usd=float(cost[r, s]),
                                  call_latency_s=1.2)
            row = {**asdict(record), "agree": int(record.agree), "called": int(record.called)}
            for c in JSON_COLUMNS:
                row[c] = None if row[c] is None else json.dumps(row[c])
            shadows.append([row[c] for c in SHADOW_COLUMNS])
        store.write_many(outcomes)
        # Batched inserts through the log's own statements: one commit per row would take hours.
        with feedback._conn:
            feedback._conn.executemany(feedback_insert("?"), rewards)
            feedback._conn.executemany(f"INSERT OR REPLACE INTO shadow_decisions ({', '.join(SHADOW_COLUMNS)}) "
                                       f"VALUES ({', '.join('?' for _ in SHADOW_COLUMNS)})", shadows)
    store.close()
    feedback.close()


def timed(argv: list[str]) -> dict:
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "service.cli", *argv], check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    # The largest child so far: run the sizes in increasing order.
    return {"wall_s": round(time.perf_counter() - t0, 1),
            "peak_rss_gb": round(max(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, before) / 1e6, 2)}


def main() -> int:
    from training.data import datasets_dir

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--out-dir", type=Path, default=Path("/tmp/learning-scale"))
    args = parser.parse_args()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    base = datasets_dir() / "routerbench_subset" / "routerbench_subset_train.parquet"
    for n in sorted(args.rows):
        log = args.out_dir / f"log{n}.sqlite"
        write_log(n, log)
        db = f"sqlite:///{log}"
        report = timed(["shadow-report", "--db", db, "--out", str(args.out_dir / f"shadow{n}")])
        retrain = timed(["retrain", "--db", db, "--base-data", str(base), "--out", str(args.out_dir / f"candidate{n}"),
                         "--tracking-uri", f"sqlite:///{args.out_dir / 'mlflow.db'}"])
        print(json.dumps({"rows": n, "shadow_report": report, "retrain": retrain}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
