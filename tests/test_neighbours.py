"""The kNN estimate of P(good) and its blend into the predictor (router/neighbours.py)."""
import json

import numpy as np
import pytest

from router.neighbours import NeighbourQuality, blend_weight, pick_k
from router.predictor import OutcomePredictor
from training.data import ModelPrice, OutcomeTable

NAN = np.nan
# Two stacked tables with no model in common: rows 0-2 have outcomes for models 0 and 1, rows 3-5
# for model 2 (a soft label among them).
VECTORS = np.array([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [0.6, 0.8], [-1.0, 0.0], [0.0, -1.0]])
LABELS = np.array([
    [1.0, 0.0, NAN],
    [0.0, 1.0, NAN],
    [1.0, 1.0, NAN],
    [NAN, NAN, 1.0],
    [NAN, NAN, 0.0],
    [NAN, NAN, 0.5],
])


def test_each_model_averages_its_k_nearest_rows_among_those_with_its_outcome():
    nq = NeighbourQuality(VECTORS, LABELS, k=2)
    # (1, 0): similarities 1, .8, 0 | .6, -1, 0. Models 0, 1 take rows 0 and 1; model 2 takes rows
    # 3 and 5, not rows 0 and 1 (nearer, but without its outcome).
    # (0, -3), unit (0, -1): 0, -.6, -1 | -.8, 0, 1: rows 0, 1 and rows 5, 4.
    got = nq.predict(np.array([[1.0, 0.0], [0.0, -3.0]]))
    np.testing.assert_allclose(got, [[0.5, 0.5, 0.75], [0.5, 0.5, 0.25]], atol=1e-12)
    np.testing.assert_allclose(nq.predict(np.array([[1.0, 0.0]]), cols=[2, 0]), [[0.75, 0.5]], atol=1e-12)
    assert len(nq.blocks) == 2  # models 0 and 1 share one search
    # k larger than a block: the mean of all of its rows.
    np.testing.assert_allclose(NeighbourQuality(VECTORS, LABELS, k=80).predict(VECTORS[:1]), [[2 / 3, 2 / 3, 0.5]])


def test_k_is_chosen_leaving_each_prompts_copies_out():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(40, 8))
    group = np.repeat(np.arange(40), 3)
    v = centres[group] + 0.01 * rng.normal(size=(120, 8))
    q = rng.integers(0, 2, size=(120, 2)).astype(float)
    fitted = NeighbourQuality.fit(v, q, groups=np.array([f"text {g}" for g in group], dtype=object))
    unit = v / np.linalg.norm(v, axis=1, keepdims=True)
    assert fitted.k == pick_k(unit.astype(np.float16).astype(np.float32), q, group)


def _table(q: np.ndarray) -> OutcomeTable:
    n, m = q.shape
    return OutcomeTable(path="synthetic", texts=[f"prompt {i}" for i in range(n)], models=[f"m{j}" for j in range(m)],
                        quality=q, cost=None, output_tokens=np.full((n, m), 100.0), input_tokens=np.full(n, 10),
                        prices={f"m{j}": ModelPrice(1.0, 2.0) for j in range(m)})


def _local_outcomes(rng, clusters=75, per=8, dim=8):
    """Outcomes of 75 tight clusters of prompts, a coin per cluster: neighbours know them, seven-leaf
    boosters with 50 rows a leaf cannot carve 75 regions."""
    c = np.repeat(np.arange(clusters), per)
    X = np.hstack([rng.normal(size=(clusters, dim))[c] + 0.05 * rng.normal(size=(len(c), dim)), rng.normal(size=(len(c), 2))])
    p = rng.choice([0.1, 0.9], size=(clusters, 2))[c]
    return X, (rng.random(p.shape) < p).astype(float)


def _cheap_feature_outcomes(rng, n=600, dim=8):
    """Outcomes set by a cheap feature, which the boosters see and the kNN (embedding only) does not."""
    X = rng.normal(size=(n, dim + 2))
    p = np.where(X[:, [dim, dim]] > 0, 0.9, 0.1)
    return X, (rng.random(p.shape) < p).astype(float)


@pytest.fixture(scope="module")
def local():
    X, q = _local_outcomes(np.random.default_rng(1))
    return X, q, OutcomePredictor(folds=3, num_rounds=30, embed_dim=8, pca_dim=4).fit(X, _table(q))


def test_the_blend_weight_leans_on_whichever_predicts_better_out_of_fold(local):
    knn_better = local[2]
    boosters_better = OutcomePredictor(folds=3, num_rounds=30, embed_dim=8, pca_dim=0).fit(
        *(lambda X, q: (X, _table(q)))(*_cheap_feature_outcomes(np.random.default_rng(2))))
    assert knn_better.neighbour_weight > 0.5
    assert boosters_better.neighbour_weight < 0.5
    assert boosters_better.neighbours.vectors.shape == (600, 8)  # pca_dim 0: the whole embedding


def test_blend_weight_is_the_brier_minimiser_on_the_grid():
    # Errors +.21 and −.09 on a soft label: the blend is exact at w = .21 / .30 = 0.7.
    labels = np.array([[0.5, NAN], [NAN, 1.0]])
    assert blend_weight(np.array([[0.71, 0.0], [0.2, 1.0]]), np.array([[0.41, 0.9], [0.3, 1.0]]), labels) == 0.7
    assert blend_weight(np.array([[0.5]]), np.array([[0.9]]), np.array([[0.5]])) == 0.0
    assert blend_weight(np.array([[0.1]]), np.array([[0.5]]), np.array([[0.5]])) == 1.0


def test_served_p_good_blends_the_boosters_with_the_neighbours_and_survives_save_and_load(tmp_path, local):
    X, _, fitted = local
    w = fitted.neighbour_weight
    pred = fitted.predict(X[:20])
    Z = fitted.transform(X[:20])
    boosters, std = fitted._calibrated(fitted._raw_outputs(Z, np.arange(2))[0], np.arange(2))
    knn = fitted.neighbours.predict(fitted._vectors(Z))
    np.testing.assert_allclose(pred.p_good, (1 - w) * boosters + w * knn, atol=1e-12)
    np.testing.assert_allclose(pred.p_good_std, std, atol=1e-12)  # the folds' spread, as before
    spec = json.loads(json.dumps(fitted.save(tmp_path)))
    assert spec["neighbours"] == {"file": "neighbours.npz", "weight": w, "k": fitted.neighbours.k}
    with np.load(tmp_path / "neighbours.npz") as z:
        assert z["vectors"].dtype == np.float16 and z["vectors"].shape == (len(X), 4)
        assert z["labels"].dtype == np.float16
    again = OutcomePredictor.load(tmp_path, spec)
    loaded = again.predict(X[:20], models=["m1", "unknown", "m0"])
    np.testing.assert_array_equal(loaded.p_good[:, [2, 0]], pred.p_good)
    assert (loaded.p_good[:, 1] == fitted.prior_quality).all()


def test_an_artifact_from_before_the_blend_loads_and_serves_its_boosters_alone(tmp_path, local):
    X, _, fitted = local
    spec = fitted.save(tmp_path)
    (tmp_path / "neighbours.npz").unlink()
    old = OutcomePredictor.load(tmp_path, {k: v for k, v in spec.items() if k != "neighbours"})
    assert old.neighbour_weight == 0 and old.neighbours is None
    Z = fitted.transform(X[:10])
    boosters, _ = fitted._calibrated(fitted._raw_outputs(Z, np.arange(2))[0], np.arange(2))
    np.testing.assert_allclose(old.predict(X[:10]).p_good, boosters, atol=1e-12)
    assert not np.allclose(fitted.predict(X[:10]).p_good, boosters)
