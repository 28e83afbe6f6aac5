"""`retrain --db postgresql://user:PASSWORD@...` keeps no password in what it writes: the candidate's
manifest (copied to every replica), retrain_report.json, and the MLflow run's params."""
from __future__ import annotations

import json

import numpy as np

from router.feedback_log import Feedback, open_feedback_log
from router.outcome_log import OutcomeRecord, open_outcome_log
from service.cli import main
from tests.routerbench_worlds import MODELS, WTP, frame

PASSWORD = "hunter2-not-for-logs"


def _with_password(url: str) -> str:
    scheme, rest = url.split("://", 1)
    user, host = rest.split("@", 1)
    return f"{scheme}://{user}:{PASSWORD}@{host}"  # trust auth here: the server ignores it


def test_a_database_password_is_nowhere_in_what_retrain_writes(world, pg_url, tmp_path):
    from router.embedding import encode_cached

    db = _with_password(pg_url)
    rng = np.random.default_rng(5)
    df = frame(rng.permutation(2205)[1300:1600])
    emb = encode_cached(df["query"].tolist())
    log, fb = open_outcome_log(db), open_feedback_log(db)
    for i, (_, r) in enumerate(df.iterrows()):
        m = MODELS[int(rng.integers(0, 3))]
        cands = [{"model": c, "p_good": 0.5, "p_good_std": 0.1, "output_tokens": 50.0, "cost_usd": float(r[f"cost_usd__{c}"]),
                  "latency_s": 1.0, "utility": 0.5 - float(r[f"cost_usd__{c}"]) / WTP, "excluded": None} for c in MODELS]
        log.write(OutcomeRecord(request_id=f"req_{i}", ts=1000.0 + i, prompt=r["query"], embedding=emb[i].astype(np.float32).tobytes(),
                                input_tokens_est=len(r["prompt_full"]) // 4, candidates=cands, knob=WTP, chosen_model=m,
                                propensity=1 / 3, answered_model=m, cost_usd=float(r[f"cost_usd__{m}"]), status="ok"))
        fb.add_feedback(Feedback(f"req_{i}", float(r[f"quality__{m}"])))
    log.close()
    fb.close()

    out = tmp_path / "cand"
    mlflow_db = tmp_path / "mlflow.db"
    code = main(["retrain", "--db", db, "--router", str(world.routers["base"]), "--out", str(out), "--folds", "3",
                 "--rounds", "40", "--seed", "3", "--min-requests", "50", "--registered-name", "secrets-test",
                 "--tracking-uri", f"sqlite:///{mlflow_db}", "--experiment", "secrets-test"])
    assert code == 0
    written = [(out / "manifest.json").read_text(), (out / "retrain_report.json").read_text()]
    assert all(PASSWORD not in text for text in written)
    assert json.loads(written[1])["params"]["db"].startswith("postgresql://postgres:***@")

    import mlflow

    client = mlflow.tracking.MlflowClient(f"sqlite:///{mlflow_db}")
    runs = client.search_runs([client.get_experiment_by_name("secrets-test").experiment_id])
    assert runs and all(PASSWORD not in json.dumps(run.data.params) for run in runs)
