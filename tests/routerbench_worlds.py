"""Routers trained on the shared RouterBench table, and a real outcome log of its prompts: costly to
build (training, embedding), so tests/conftest.py builds each once per session for every module
that asks (`world`, `shadow_artifact`). Tests only read them; files they write go beside them."""
from __future__ import annotations

from argparse import Namespace
from pathlib import Path

import numpy as np

from router.feedback_log import Feedback, FeedbackLog
from router.outcome_log import OutcomeRecord, open_outcome_log
from training.data import datasets_dir

TABLE = datasets_dir() / "routerbench_subset" / "routerbench_subset_train.parquet"
MODELS = ["gpt-3.5-turbo-1106", "Yi-34B-Chat", "WizardLM-13B-V1.2"]
WTP = 1.0
# The shadow artifact learns m1..m3 from these RouterBench models: it prefers m2 where the live
# router of tests/test_shadow.py (fixed qualities) always prefers m1, so the two disagree on most requests.
SHADOW_MODELS = {"m1": "WizardLM-13B-V1.2", "m2": "Yi-34B-Chat", "m3": "gpt-3.5-turbo-1106"}


def frame(rows, invert=False):
    """The table's `rows`, with MODELS' quality and cost; `invert` flips every quality label."""
    import pandas as pd

    df = pd.read_parquet(TABLE).iloc[rows].reset_index(drop=True)
    keep = ["uid", "query", "prompt_full", "eval_name"] + [f"{k}__{m}" for m in MODELS for k in ("quality", "cost_usd")]
    df = df[keep].copy()
    if invert:
        for m in MODELS:
            df[f"quality__{m}"] = 1.0 - df[f"quality__{m}"]
    return df


def retrain_world(root: Path) -> Namespace:
    """Under `root`: routers trained on the true and on inverted labels (`routers`), their training
    tables and one more (`paths`), and `db`, an SQLite outcome log of 800 other prompts served by
    a uniformly exploring policy (propensity 1/3) with their recorded correctness as feedback."""
    from router.embedding import encode_cached
    from training.data import load_outcomes
    from training.retrain import features, fit_router

    rng = np.random.default_rng(0)
    rows = rng.permutation(2205)
    base, logged, extra = rows[:500], rows[500:1300], rows[1300:1700]
    paths = {}
    for name, idx, invert in (("base", base, False), ("inverted", base, True), ("extra", extra, False)):
        paths[name] = root / f"{name}.parquet"
        frame(idx, invert).to_parquet(paths[name])
    routers = {}
    for name in ("base", "inverted"):
        t = load_outcomes(paths[name])
        router, _ = fit_router(t, features(t.texts, t.input_tokens), folds=3, rounds=60, seed=1)
        routers[name] = router.save(root / f"router-{name}")

    db = f"sqlite:///{root}/outcomes.sqlite"
    df = frame(logged)
    emb = encode_cached(df["query"].tolist())
    log, fb = open_outcome_log(db), FeedbackLog(db)
    for i, r in df.iterrows():
        a = int(rng.integers(0, 3))
        cands = [{"model": m, "p_good": 0.5, "p_good_std": 0.1, "output_tokens": 50.0, "cost_usd": float(r[f"cost_usd__{m}"]),
                  "latency_s": 1.0, "utility": 0.5 - float(r[f"cost_usd__{m}"]) / WTP, "excluded": None} for m in MODELS]
        rid = f"req_{i}"
        log.write(OutcomeRecord(request_id=rid, ts=1000.0 + i, prompt=r["query"], embedding=emb[i].astype(np.float32).tobytes(),
                                input_tokens_est=len(r["prompt_full"]) // 4, candidates=cands, knob=WTP,
                                chosen_model=MODELS[a], propensity=1 / 3, answered_model=MODELS[a],
                                cost_usd=float(r[f"cost_usd__{MODELS[a]}"]), status="ok"))
        fb.add_feedback(Feedback(rid, float(r[f"quality__{MODELS[a]}"]), label=r["eval_name"]))
    log.close()
    fb.close()
    return Namespace(root=root, db=db, paths=paths, routers=routers)


def train_shadow_router(root: Path) -> Path:
    """A router trained on 400 of the table's prompts for m1..m3 (SHADOW_MODELS), saved under `root`."""
    import pandas as pd

    from training.data import load_outcomes
    from training.retrain import features, fit_router

    df = pd.read_parquet(TABLE).sample(400, random_state=0)
    cols = {"query": df["query"], "prompt_full": df["prompt_full"]}
    for m, src in SHADOW_MODELS.items():
        cols[f"quality__{m}"] = df[f"quality__{src}"]
        cols[f"cost_usd__{m}"] = df[f"cost_usd__{src}"]
    pd.DataFrame(cols).to_parquet(root / "t.parquet")
    t = load_outcomes(root / "t.parquet")
    router, _ = fit_router(t, features(t.texts, t.input_tokens), folds=3, rounds=40, seed=2)
    return router.save(root / "artifact")
