"""The evaluation job: metrics wiring on synthetic outcomes, then the real CLI on real data."""
import json
import os
from pathlib import Path

import numpy as np
import pytest

from training import baselines as bl
from training.evaluate import evaluate_arrays, resolve_candidates


def _synthetic(n=300, seed=0):
    """Three models with a real trade-off: quality depends on a latent difficulty the
    embedding encodes, the dear model is best on hard prompts."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(12, 16))
    cluster = rng.integers(0, 12, n)
    emb = centres[cluster] + 0.05 * rng.normal(size=(n, 16))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    hard = (cluster % 3) / 2.0  # 0, 0.5, 1
    p = np.stack([0.9 - 0.8 * hard, 0.9 - 0.4 * hard, np.full(n, 0.92)], axis=1)
    quality = (rng.random((n, 3)) < p).astype(float)
    cost = np.array([0.1, 0.4, 2.0]) * (1 + 0.1 * rng.random((n, 3)))
    return emb, quality, cost, p


def _truth_router(p, cost):
    return lambda w: bl.choose(p, cost, w)


def test_a_router_that_knows_the_probabilities_beats_zero_knn_and_random():
    emb, quality, cost, p = _synthetic()
    s, ops = evaluate_arrays(quality, cost, ["a", "b", "c"], p, cost, _truth_router(p, cost), emb)
    m = s["methods"]
    assert m["router"]["aiq"] > m["zero"]["aiq"]
    assert m["router"]["aiq"] > m["random"]["aiq"]
    assert m["oracle"]["aiq"] > m["router"]["aiq"]
    assert m["router"]["quality_at_random_cost"] > m["random"]["mean_quality"]
    # The sweep covers the range: its cheapest point puts every row on the cheapest model.
    assert (ops[0].choice == 0).all()
    assert len(s["methods"]["router"]["points"]) == len(ops)
    assert s["best_single_model"]["model"] == "c"
    assert m["zero"]["cost_to_reach_best_ratio"] == pytest.approx(1.0)


def test_a_router_with_noise_predictions_does_no_better_than_zero():
    emb, quality, cost, p = _synthetic()
    noise = np.random.default_rng(5).random(p.shape)
    s, _ = evaluate_arrays(quality, cost, ["a", "b", "c"], noise, cost, _truth_router(noise, cost), emb)
    good, _ = evaluate_arrays(quality, cost, ["a", "b", "c"], p, cost, _truth_router(p, cost), emb)
    assert s["methods"]["router"]["aiq"] < good["methods"]["router"]["aiq"] - 0.02
    # kNN on embeddings that encode difficulty learns the trade-off from cross-fitting.
    assert s["methods"]["knn"]["aiq"] > s["methods"]["zero"]["aiq"]
    assert s["methods"]["knn"]["fit"].startswith("5-fold")


def test_knn_fit_on_a_separate_training_set():
    emb, quality, cost, p = _synthetic(seed=1)
    tr_emb, tr_q, tr_c, _ = _synthetic(seed=2)
    s, _ = evaluate_arrays(quality, cost, ["a", "b", "c"], p, cost, _truth_router(p, cost), emb,
                           knn_train=(tr_emb, tr_q, tr_c))
    assert s["methods"]["knn"]["fit"] == "on --knn-train"


def test_two_model_pool_reports_routellm_metrics():
    emb, quality, cost, p = _synthetic()
    q2, c2, p2 = quality[:, [0, 2]], cost[:, [0, 2]], p[:, [0, 2]]
    s, _ = evaluate_arrays(q2, c2, ["a", "c"], p2, c2, _truth_router(p2, c2), emb)
    pair = s["two_model"]
    assert (pair["strong"], pair["weak"]) == ("c", "a")
    assert pair["router"]["apgr"] > 0.5
    assert pair["oracle"]["apgr"] >= pair["router"]["apgr"]
    assert pair["router"]["cpt_50"] < 0.5
    assert pair["router"]["strong_share"][0] == 0.0 and pair["router"]["strong_share"][-1] == 1.0


def test_budgets_and_unreached_targets_are_reported():
    emb, quality, cost, p = _synthetic()
    s, _ = evaluate_arrays(quality, cost, ["a", "b", "c"], p, cost, _truth_router(p, cost), emb, budgets=[1e-6])
    assert s["methods"]["router"]["quality_at_budget"]["1e-06"] is None  # below any operating point
    assert len(s["methods"]["router"]["quality_at_budget"]) == 5


def test_candidates_are_the_intersection_and_bad_requests_are_named():
    cands, notes = resolve_candidates(["a", "b", "x"], ["a", "b", "c"], None, "f.parquet")
    assert cands == ["a", "b"]
    assert notes["not_in_router"] == ["x"] and notes["not_in_file"] == ["c"]
    with pytest.raises(ValueError, match="x"):
        resolve_candidates(["a", "b", "x"], ["a", "b", "c"], ["a", "x"], "f.parquet")
    with pytest.raises(ValueError, match="at least two"):
        resolve_candidates(["a", "x"], ["a", "c"], None, "f.parquet")
    with pytest.raises(ValueError, match="no model"):
        resolve_candidates(["x"], ["a"], None, "f.parquet")
