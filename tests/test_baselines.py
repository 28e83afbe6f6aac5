"""Baseline routers and the knob sweep on small hand-made cases."""
import numpy as np
import pytest

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
    assert pick_k(emb, noise, noise) >= 40
    centres = rng.normal(size=(30, 16))
    label = np.arange(300) % 30
    clustered = centres[label] + 0.01 * rng.normal(size=(300, 16))
    clustered /= np.linalg.norm(clustered, axis=1, keepdims=True)
    outcome = np.stack([(label % 2).astype(float), 1.0 - (label % 2)], axis=1)
    assert pick_k(clustered, outcome, outcome) <= 5


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
