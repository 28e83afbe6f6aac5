"""Baseline routers and the knob sweep on small hand-made cases."""
import tracemalloc

import numpy as np
import pytest

from router import neighbours
from training import baselines as bl
from training.baselines import (
    choose,
    knn_crossfit,
    knn_predict,
    knob_sweep,
    oracle_sweep,
    pick_k,
    random_point,
    realise,
    single_model_points,
    switch_points,
)

Q = np.array([[0.5, 0.8, 0.9], [0.9, 0.2, 0.3]])
C = np.array([[1.0, 2.0, 4.0], [1.0, 2.0, 4.0]])


def test_switch_points_walk_the_envelope():
    # Row 0: from model 0, +1$ for +0.3 (3.33 $/pt) beats +3$ for +0.4 (7.5); then +2$ for +0.1 (20).
    # Row 1: the cheapest model is also the best: no switch.
    assert np.sort(switch_points(Q, C)) == pytest.approx([10 / 3, 20.0])


def test_choose_follows_the_switch_points_and_breaks_ties_to_the_cheaper_model():
    assert choose(Q, C, 3.0).tolist() == [0, 0]
    assert choose(Q, C, 4.0).tolist() == [1, 0]
    assert choose(Q, C, 25.0).tolist() == [2, 0]
    same_q = np.array([[0.7, 0.7]])
    assert choose(same_q, np.array([[2.0, 1.0]]), 1e9).tolist() == [1]


def test_knob_sweep_spans_cheapest_to_best():
    rng = np.random.default_rng(1)
    q, c = rng.random((50, 4)), rng.random((50, 4))
    grid = knob_sweep(q, c, n=10)
    assert np.all(np.diff(grid) > 0)
    cheapest = np.lexsort((-q, c), axis=-1)[:, 0]
    best = np.lexsort((c, -q), axis=-1)[:, 0]
    assert choose(q, c, grid[0]).tolist() == cheapest.tolist()
    assert choose(q, c, grid[-1]).tolist() == best.tolist()


def test_knob_sweep_without_trade_offs_is_one_point():
    assert knob_sweep(np.array([[0.9, 0.1]]), np.array([[1.0, 2.0]])).tolist() == [1.0]


def test_realise_and_reference_points():
    c, q = realise(np.array([2, 0]), Q, C)
    assert (c, q) == pytest.approx((2.5, 0.9))
    mc, mq = single_model_points(Q, C)
    assert mq.tolist() == pytest.approx([0.7, 0.5, 0.6])
    assert random_point(Q, C) == pytest.approx((7 / 3, 3.6 / 6))


def test_oracle_reaches_the_row_maxima():
    last = oracle_sweep(Q, C)[-1]
    assert last.mean_quality == pytest.approx(0.9)
    assert last.choice.tolist() == [2, 0]


def test_knn_predict_averages_nearest_rows():
    emb = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    q = np.array([[1.0, 0.0], [0.0, 0.0], [0.0, 1.0]])
    qh, ch = knn_predict(emb, q, q * 2, np.array([[1.0, 0.0]]), k=2)
    assert qh.tolist() == [[0.5, 0.0]]
    assert ch.tolist() == [[1.0, 0.0]]


def test_knn_crossfit_never_sees_the_row_itself():
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(40, 8))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    q = rng.random((40, 3))
    q[7] = 1e6  # a leak of row 7's own outcome into its prediction would show
    qh, ch, ks = knn_crossfit(emb, q, q.copy(), folds=5)
    assert qh[7].max() < 1.0
    assert len(ks) == 5


def test_pick_k_prefers_large_k_on_pure_noise_and_small_k_on_clusters():
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(300, 16))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    noise = rng.random((300, 2))
    assert pick_k(emb, noise) >= 40
    centres = rng.normal(size=(30, 16))
    label = np.arange(300) % 30
    clustered = centres[label] + 0.01 * rng.normal(size=(300, 16))
    clustered /= np.linalg.norm(clustered, axis=1, keepdims=True)
    outcome = np.stack([(label % 2).astype(float), 1.0 - (label % 2)], axis=1)
    assert pick_k(clustered, outcome) <= 5


def test_knn_crossfit_never_sees_a_copy_of_the_prompt():
    # 60 prompts, each 4 times, quality random per prompt: the text carries no signal, so a kNN that
    # cannot see the row's copies has nothing to go on.
    rng = np.random.default_rng(0)
    base = rng.normal(size=(60, 16))
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    emb, q = np.repeat(base, 4, axis=0), np.repeat(rng.integers(0, 2, size=(60, 2)).astype(float), 4, axis=0)
    texts = np.repeat([f"prompt {i}" for i in range(60)], 4)
    qh, _, _ = knn_crossfit(emb, q, q.copy(), folds=5, groups=texts)
    assert abs(np.corrcoef(qh[:, 0], q[:, 0])[0, 1]) < 0.35
    leaky, _, _ = knn_crossfit(emb, q, q.copy(), folds=5)  # rows as groups: the copies leak the answer
    assert np.corrcoef(leaky[:, 0], q[:, 0])[0, 1] > 0.6


def _grouped_problem(rng, n, n_groups, dim=8):
    """Copies of a prompt: near-identical embeddings (no exact ties), outcomes of their own."""
    groups = rng.integers(0, n_groups, n)
    centres = rng.normal(size=(n_groups, dim))
    emb = centres[groups] + 0.01 * rng.normal(size=(n, dim))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    return emb, rng.random((n, 3)), groups


def _reference_knn(train_emb, train_q, test_emb, k, train_groups, test_groups):
    """The whole similarity matrix, row by row: k capped to the fewest eligible neighbours."""
    sims = test_emb @ train_emb.T
    eligible = [np.flatnonzero(train_groups != g) for g in test_groups]
    k = max(1, min(k, min(len(e) for e in eligible)))
    return np.stack([train_q[e[np.argsort(-sims[i, e])[:k]]].mean(axis=0) for i, e in enumerate(eligible)])


@pytest.mark.parametrize("k", [1, 5, 40, 500])
def test_blocked_knn_predict_matches_the_whole_matrix(monkeypatch, k):
    rng = np.random.default_rng(3)
    train_emb, train_q, train_g = _grouped_problem(rng, 300, 40)
    test_emb, _, test_g = _grouped_problem(rng, 101, 40)
    monkeypatch.setattr(neighbours, "KNN_BLOCK", 300 * 7)  # blocks of 7 rows, the last one short
    qh, ch = knn_predict(train_emb, train_q, 2 * train_q, test_emb, k, train_g, test_g)
    ref = _reference_knn(train_emb, train_q, test_emb, k, train_g, test_g)
    np.testing.assert_allclose(qh, ref, rtol=1e-12)
    np.testing.assert_allclose(ch, 2 * ref, rtol=1e-12)


def test_knn_caps_k_to_the_fewest_eligible_neighbours(monkeypatch):
    # Group 0 holds 55 of the 60 rows: its rows have 5 neighbours to draw from, so every row uses k = 5.
    rng = np.random.default_rng(4)
    emb, q, _ = _grouped_problem(rng, 60, 10)
    groups = np.where(np.arange(60) < 55, 0, np.arange(60))
    monkeypatch.setattr(neighbours, "KNN_BLOCK", 60 * 8)
    qh, _ = knn_predict(emb, q, q, emb, 20, groups, groups)
    np.testing.assert_allclose(qh, _reference_knn(emb, q, emb, 5, groups, groups), rtol=1e-12)


def test_pick_k_matches_the_leave_one_group_out_errors_of_the_reference(monkeypatch):
    rng = np.random.default_rng(5)
    emb, q, groups = _grouped_problem(rng, 400, 60)
    monkeypatch.setattr(neighbours, "KNN_BLOCK", 400 * 33)
    errs = {k: ((_reference_knn(emb, q, emb, k, groups, groups) - q) ** 2).mean() for k in bl.KNN_KS}
    assert pick_k(emb, q, groups) == min(errs, key=errs.get)


def test_pick_k_never_holds_a_whole_similarity_matrix(monkeypatch):
    # 2,000 rows: the full matrix is 16 MB of float32 (and twice that in argpartition's indices).
    rng = np.random.default_rng(6)
    emb, q, groups = _grouped_problem(rng, 2000, 300, dim=16)
    emb = emb.astype(np.float32)
    monkeypatch.setattr(neighbours, "KNN_BLOCK", 2000 * 100)
    tracemalloc.start()
    try:
        pick_k(emb, q, groups)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2000 * 2000 * 4 / 2, peak
