"""Outcome predictors on real RouterBench outcomes (a subsample, real MiniLM embeddings)."""
from __future__ import annotations


import numpy as np
import pytest

from router.features import request_features
from router.predictor import UNSEEN_STD, OutcomePredictor
from router.types import RoutingRequest
from training.train import expected_calibration_error
from training.data import DEFAULT_OUTPUT_TOKENS, datasets_dir
from tests.conftest import require_dataset

DATASETS = datasets_dir()
ROUTERBENCH = DATASETS / "routerbench_subset" / "routerbench_subset_train.parquet"


@pytest.fixture(scope="module")
def data():
    if not ROUTERBENCH.exists():
        require_dataset(ROUTERBENCH)
    from router.embedding import encode_cached
    from training.data import load_outcomes

    table = load_outcomes(ROUTERBENCH)
    table = table.subset(np.arange(0, len(table), 3))  # 735 prompts, all three tasks
    emb = encode_cached(table.texts)
    reqs = [RoutingRequest(text=t, input_tokens=int(n)) for t, n in zip(table.texts, table.input_tokens)]
    X = np.hstack([emb, request_features(reqs)])
    rng = np.random.default_rng(0)
    held_out = rng.random(len(table)) < 0.3
    return table, X, np.flatnonzero(~held_out), np.flatnonzero(held_out)


@pytest.fixture(scope="module")
def fitted(data):
    table, X, train, _ = data
    return OutcomePredictor(folds=3, num_rounds=80).fit(X[train], table.subset(train))


def test_held_out_calibration_beats_base_rate(data, fitted):
    """Calibrated P(good) on prompts never seen in training: lower Brier score than the
    constant base-rate predictor (the training share of good answers per model), and an
    expected calibration error below 0.07. A perfectly calibrated predictor scored on these
    ~2,400 (prompt, model) pairs in 10 bins shows ~0.02-0.03 of ECE from sampling alone;
    0.07 leaves room for that twice over while catching a miscalibrated model (the raw
    boosters of an uncalibrated fit are off by more on the extreme bins)."""
    table, X, train, test = data
    pred = fitted.predict(X[test])
    p, std = pred.p_good, pred.p_good_std
    y = table.quality[test]
    base = np.tile(np.nanmean(table.quality[train], axis=0), (len(test), 1))
    brier, brier_base = np.mean((p - y) ** 2), np.mean((base - y) ** 2)
    assert brier < brier_base
    assert expected_calibration_error(p.ravel(), y.ravel()) < 0.07
    assert p.min() >= 0 and p.max() <= 1
    assert (std >= 0).all() and std.mean() > 0


def test_out_of_fold_predictions_cover_every_row(data, fitted):
    table, _, train, _ = data
    assert fitted.oof.shape == (len(train), len(table.models))
    assert not np.isnan(fitted.oof).any()


def test_predictions_cost_and_latency_follow_prices(data, fitted):
    table, X, _, test = data
    prices = [(table.prices[m].input_per_1m, table.prices[m].output_per_1m) for m in table.models]
    pred = fitted.predict(X[test[:20]], table.input_tokens[test[:20]], prices=prices)
    assert pred.models == table.models
    gpt4, mistral = pred.column("gpt-4-1106-preview"), pred.column("mistral-7b-chat")
    assert (pred.cost_usd[:, gpt4] > pred.cost_usd[:, mistral]).all()
    expected = (table.input_tokens[test[:20]] * prices[gpt4][0] + pred.output_tokens[:, gpt4] * prices[gpt4][1]) / 1e6
    np.testing.assert_allclose(pred.cost_usd[:, gpt4], expected)
    assert (pred.latency_s > 0).all() and (pred.output_tokens >= 1).all()


def test_output_tokens_track_observed_lengths(data, fitted):
    table, X, _, test = data
    pred = fitted.predict(X[test], table.input_tokens[test])
    observed = np.nanmean(table.output_tokens[test], axis=0)
    predicted = pred.output_tokens.mean(axis=0)
    # Models that answer at length are predicted to, across all 11 models.
    assert np.corrcoef(np.log(observed), np.log(predicted))[0, 1] > 0.7


def test_a_line_break_does_not_change_how_long_an_answer_is_predicted(data, fitted):
    # In RouterBench every multi-line prompt is multiple choice: a booster free to split on the
    # count of line breaks predicted ~5 output tokens for any prompt with one, a trailing newline
    # included, so "Write a haiku" split over two lines was priced at a thirtieth of its cost.
    table, X, _, test = data
    one_line = [i for i in test if "\n" not in table.texts[i]]
    with_break = [RoutingRequest(text=table.texts[i] + "\n", input_tokens=int(table.input_tokens[i])) for i in one_line]
    X_break = np.hstack([X[one_line, :384], request_features(with_break)])
    before = fitted.predict(X[one_line], table.input_tokens[one_line]).output_tokens
    after = fitted.predict(X_break, table.input_tokens[one_line]).output_tokens
    assert len(one_line) > 20 and np.median(after / before) > 0.8


def test_unseen_model_gets_documented_prior(data, fitted):
    table, X, _, test = data
    pred = fitted.predict(X[test[:5]], table.input_tokens[test[:5]], models=["gpt-4-1106-preview", "brand-new"],
                          prices=[(10, 30), (1, 1)])
    new = pred.column("brand-new")
    np.testing.assert_allclose(pred.p_good[:, new], fitted.prior_quality)
    np.testing.assert_allclose(pred.p_good_std[:, new], UNSEEN_STD)
    assert fitted.prior_quality == pytest.approx(np.nanmean(table.quality[data[2]]))
    assert (pred.p_good_std[:, new] > pred.p_good_std[:, 0]).all()


def test_save_load_roundtrip(tmp_path, data, fitted):
    _, X, _, test = data
    spec = fitted.save(tmp_path)
    again = OutcomePredictor.load(tmp_path, spec)
    a, b = fitted.predict(X[test[:10]]), again.predict(X[test[:10]])
    np.testing.assert_allclose(a.p_good, b.p_good, rtol=1e-6)
    np.testing.assert_allclose(a.output_tokens, b.output_tokens, rtol=1e-6)


def test_soft_labels_and_unobserved_cells(data):
    """RouterDC-style soft labels and a log where each prompt saw only some models."""
    table, X, train, _ = data
    sub = table.subset(train[:300])
    rng = np.random.default_rng(1)
    q = np.clip(sub.quality * 0.8 + rng.random(sub.quality.shape) * 0.2, 0, 1)
    q[rng.random(q.shape) < 0.5] = np.nan
    from dataclasses import replace

    soft = replace(sub, quality=q)
    p = OutcomePredictor(folds=2, num_rounds=20, mode="per_model").fit(X[train[:300]], soft)
    mean = p.predict(X[train[:10]]).p_good
    assert mean.shape == (10, len(table.models)) and np.isfinite(mean).all()


def test_merged_forest_equals_individual_boosters(data, fitted):
    """Serving evaluates all boosters in one LightGBM call; it must give their exact outputs."""
    table, X, _, test = data
    Z = fitted.transform(X[test[:15]])
    n, m = len(Z), len(table.models)
    pairs = fitted._pairs(Z, np.repeat(np.arange(n), m), np.tile(np.arange(m), n))
    raw, tok = fitted._raw_outputs(Z, np.arange(m))
    for k, booster in enumerate(fitted.quality_boosters):
        np.testing.assert_allclose(raw[k], booster.predict(pairs).reshape(n, m), atol=1e-12)
    np.testing.assert_allclose(tok, fitted.token_booster.predict(pairs).reshape(n, m), atol=1e-10)


def test_predicting_some_models_gives_what_predicting_all_gives_for_them(data, fitted):
    """A catalog routes among a few of the artifact's models (and ones it never saw): scoring only
    those, in any order and repeated, gives the same columns as scoring every model."""
    table, X, _, test = data
    everything = fitted.predict(X[test[:15]])
    some = [table.models[3], "never-seen", table.models[0], table.models[3]]
    part = fitted.predict(X[test[:15]], models=some)
    for j, name in enumerate(some):
        if name in table.models:
            k = table.models.index(name)
            np.testing.assert_allclose(part.p_good[:, j], everything.p_good[:, k], atol=1e-12)
            np.testing.assert_allclose(part.p_good_std[:, j], everything.p_good_std[:, k], atol=1e-12)
            np.testing.assert_allclose(part.output_tokens[:, j], everything.output_tokens[:, k], atol=1e-9)
        else:
            assert (part.p_good[:, j] == fitted.prior_quality).all()
    unseen = fitted.predict(X[test[:3]], models=["never-seen"])
    assert unseen.p_good.shape == (3, 1) and (unseen.p_good == fitted.prior_quality).all()


def test_too_few_distinct_prompts_is_a_clear_error_not_a_lightgbm_crash(data):
    table, X, train, _ = data
    rows = train[:30]
    one_prompt = np.array([table.texts[rows[0]]] * len(rows), dtype=object)  # 30 outcomes of one prompt
    with pytest.raises(ValueError, match="distinct prompts"):
        OutcomePredictor(folds=3, num_rounds=20).fit(X[rows], table.subset(rows), groups=one_prompt)


def test_one_booster_per_model_needs_outcomes_of_every_model(data):
    from dataclasses import replace

    table, X, train, _ = data
    rows = train[:200]
    sub = table.subset(rows)
    q = sub.quality.copy()
    q[2:, 0] = np.nan  # the first model was observed on two prompts only
    with pytest.raises(ValueError, match=f"model '{sub.models[0]}' has 2"):
        OutcomePredictor(folds=3, num_rounds=20, mode="per_model").fit(X[rows], replace(sub, quality=q))


def test_misuse_of_the_estimator_gets_errors_that_say_what_is_wrong(data, fitted):
    table, X, train, _ = data
    with pytest.raises(ValueError, match="not fitted"):
        OutcomePredictor().predict(X[:2])
    with pytest.raises(ValueError, match="must be 2-D"):
        fitted.predict(X[0])
    broken = X[:3].copy()
    broken[1, 5] = np.nan
    with pytest.raises(ValueError, match="NaN or infinite"):  # LightGBM would read it as a missing value
        fitted.predict(broken)
    rows = train[:60]
    with pytest.raises(ValueError, match="X has 59 rows, the outcomes 60"):
        OutcomePredictor(folds=2, num_rounds=5).fit(X[rows[:-1]], table.subset(rows))


def test_a_router_refuses_broken_embeddings_predicts_no_rows_and_pickles_after_use():
    import pickle

    from router.engine import LearnedRouter, default_artifact

    router = LearnedRouter.load(default_artifact())
    request = RoutingRequest(text="What is 17 * 23?", input_tokens=8)
    with pytest.raises(ValueError, match="NaN or infinite"):
        router.predict([request], np.full(384, np.nan))
    with pytest.raises(ValueError, match=r"one 384-wide MiniLM vector per request \(1 x 384\)"):
        router.predict([request], np.zeros(10))
    assert router.predict([]).p_good.shape == (0, len(router.models))
    served = router.predict([request]).p_good  # opens the ONNX session, which cannot be pickled
    assert (pickle.loads(pickle.dumps(router)).predict([request]).p_good == served).all()


def test_a_table_without_answer_lengths_trains_with_a_warning_and_the_prior(data, caplog):
    # A sample written without RouterBench's *_responses.parquet: nothing to learn lengths from.
    from dataclasses import replace

    table, X, train, _ = data
    blind = replace(table.subset(train[:200]), output_tokens=None)
    with caplog.at_level("WARNING", logger="router.predictor"):
        p = OutcomePredictor(folds=2, num_rounds=10).fit(X[train[:200]], blind)
    assert "no answer lengths" in caplog.text
    assert (p.predict(X[train[:5]]).output_tokens == DEFAULT_OUTPUT_TOKENS).all()
