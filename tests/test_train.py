"""`openclaw-router train` end to end: real LightGBM, real MLflow (SQLite store in tmp_path)."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from router.config import ModelSpec, Price, Profile
from router.engine import LearnedRouter
from router.request_view import view_chat_request, view_prompt
from service.cli import main
from training.data import datasets_dir
from tests.conftest import require_dataset

DATASETS = datasets_dir()
ROUTERBENCH = DATASETS / "routerbench_subset" / "routerbench_subset_train.parquet"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    if not ROUTERBENCH.exists():
        require_dataset(ROUTERBENCH)
    tmp = tmp_path_factory.mktemp("train")
    frame = pd.read_parquet(ROUTERBENCH).iloc[::3].reset_index(drop=True)  # same prompts as test_predictor
    data = tmp / "small_train.parquet"
    frame.to_parquet(data)
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    rc = main(["train", "--data", str(data), "--out", str(tmp / "router"), "--folds", "3", "--rounds", "40",
               "--tracking-uri", uri, "--registered-name", "test-router"])
    assert rc == 0
    return tmp / "router", uri


def test_registered_version_and_metrics(trained):
    import mlflow
    from mlflow.tracking import MlflowClient

    out, uri = trained
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    versions = client.search_model_versions("name='test-router'")
    assert len(versions) >= 1
    run = client.get_run(versions[0].run_id)
    assert run.data.params["folds"] == "3"
    assert 0.5 < run.data.metrics["mean_auc"] < 1.0
    assert run.data.metrics["brier"] < run.data.metrics["brier_base_rate"]
    assert "auc.gpt-4-1106-preview" in run.data.metrics
    # The registered pyfunc model loads and predicts from text alone.
    model = mlflow.pyfunc.load_model(f"models:/test-router/{versions[0].version}")
    p = model.predict(pd.DataFrame({"text": ["What is 2 + 2?\nA) 3\nB) 4"]}))
    assert list(p.columns) == json.loads((out / "manifest.json").read_text())["models"]
    assert ((p.values >= 0) & (p.values <= 1)).all()


def test_artifact_folder_loads_and_routes(trained):
    out, _ = trained
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["metrics"]["mean_auc"] is not None and manifest["reliability"]
    assert (out / "reliability.png").stat().st_size > 1000
    router = LearnedRouter.load(out)
    assert len(router.models) == 11
    catalog = [ModelSpec(name=m, provider="p", price=Price(input_per_1m=p[0], output_per_1m=p[1]))
               for m, p in manifest["prices_seen"].items()]
    cheap = router.route(view_prompt("Is the sky blue?"), catalog=catalog, profile=Profile(willingness_to_pay=1e-7))
    best = router.route(view_prompt("Is the sky blue?"), catalog=catalog, profile=Profile(willingness_to_pay=1e3))
    by_cost = min(cheap.candidates, key=lambda c: c.cost_usd)
    assert cheap.model == by_cost.model
    assert max(c.p_good for c in best.candidates) == next(c.p_good for c in best.candidates if c.model == best.model)
    assert cheap.embedding is not None and cheap.embedding.shape == (384,)
    # A chat request routes on its last user turn; the embedding is reusable by the cache.
    req = view_chat_request({"messages": [{"role": "system", "content": "x" * 5000}, {"role": "user", "content": "hi"}]})
    d = router.route(req, catalog=catalog, profile=Profile(willingness_to_pay=0.01), embedding=cheap.embedding)
    assert d.model in router.models and np.array_equal(d.embedding, cheap.embedding)


def test_catalog_maps_names_and_prices_unseen_models(trained):
    out, _ = trained
    router = LearnedRouter.load(out)
    catalog = [
        ModelSpec(name="fast-gpt4", provider="p", router_model="gpt-4-1106-preview",
                  price=Price(input_per_1m=10, output_per_1m=30), throughput_tps=100.0),
        ModelSpec(name="newcomer", provider="p", price=Price(input_per_1m=0.1, output_per_1m=0.1)),
    ]
    pred = router.predict([view_prompt("Explain recursion.")], catalog=catalog)
    assert pred.models == ["fast-gpt4", "newcomer"]
    assert pred.p_good[0, 1] == pytest.approx(router.predictor.prior_quality)
    assert pred.p_good_std[0, 1] > pred.p_good_std[0, 0]
    assert router.unseen(catalog) == ["newcomer"]


def test_train_reports_validation_error(tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    pd.DataFrame({"prompt": ["a", "b"], "quality__m": [1.0, None], "cost_usd__m": [1e-5, 1e-5]}).to_csv(bad, index=False)
    rc = main(["train", "--data", str(bad), "--out", str(tmp_path / "r"), "--tracking-uri", f"sqlite:///{tmp_path}/m.db"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "bad.csv" in err and "quality__m" in err


@pytest.mark.parametrize("command", ["train", "eval", "cache-eval", "simulate"])
def test_an_output_path_that_cannot_be_written_is_refused_before_the_work(tmp_path, capsys, command):
    data = tmp_path / "t.csv"
    pd.DataFrame({"prompt": ["a", "b"], "quality__m": [1.0, 0.0], "cost_usd__m": [1e-5, 1e-5]}).to_csv(data, index=False)
    pairs = tmp_path / "p.csv"
    pd.DataFrame({"text_a": ["a"], "text_b": ["b"]}).to_csv(pairs, index=False)
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    argv = {
        "train": ["train", "--data", str(data), "--out", str(blocker), "--tracking-uri", f"sqlite:///{tmp_path}/m.db"],
        "eval": ["eval", "--data", str(data), "--router", "models/default", "--decisions-out", str(tmp_path / "d.parquet"),
                 "--report-dir", str(blocker)],
        "cache-eval": ["cache-eval", "--pairs", str(pairs), "--out", str(blocker / "hits.parquet")],
        "simulate": ["simulate", "--data", str(data), "--requests", "10", "--out", str(tmp_path)],
    }[command]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "error: --" in err and "Traceback" not in err
    assert not (tmp_path / "d.parquet").exists()  # refused before any output was written


def test_a_model_name_mlflow_would_refuse_is_logged_under_a_safe_name(tmp_path):
    import mlflow

    require_dataset(ROUTERBENCH)
    frame = pd.read_parquet(ROUTERBENCH).iloc[::10].reset_index(drop=True)
    frame = frame.rename(columns={"quality__mixtral-8x7b-chat": "quality__command-r+", "cost_usd__mixtral-8x7b-chat": "cost_usd__command-r+"})
    data = tmp_path / "plus.parquet"
    frame.to_parquet(data)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "router"), "--folds", "2", "--rounds", "20",
                 "--tracking-uri", uri]) == 0
    mlflow.set_tracking_uri(uri)
    run = mlflow.search_runs(search_all_experiments=True).iloc[0]
    assert "metrics.auc.command-r_" in run.index  # "+" is not allowed in an MLflow name


def test_a_table_with_neither_costs_nor_prices_trains_at_one_flat_price(tmp_path, caplog):
    from training.data import FLAT_PRICE_PER_1M

    # RouterDC's layout: quality per self-hosted model, no cost_usd__ columns, no models.json.
    rng = np.random.default_rng(0)
    n = 60
    frame = pd.DataFrame({"uid": [f"u{i}" for i in range(n)], "query": [f"question {i}: what is {i} + {i % 5}?" for i in range(n)]})
    for m, p in (("Mistral-7B-v0.1", 0.4), ("zephyr-7b-beta", 0.6)):
        frame[f"quality__{m}"] = (rng.random(n) < p).astype(float)
    data = tmp_path / "rdc.parquet"
    frame.to_parquet(data)
    with caplog.at_level("WARNING"):
        assert main(["train", "--data", str(data), "--out", str(tmp_path / "router"), "--folds", "2", "--rounds", "10",
                     "--tracking-uri", f"sqlite:///{tmp_path / 'ml.db'}"]) == 0
    assert any("priced alike" in r.getMessage() for r in caplog.records if r.levelname == "WARNING")
    manifest = json.loads((tmp_path / "router" / "manifest.json").read_text())
    assert manifest["prices_seen"] == {m: [FLAT_PRICE_PER_1M, FLAT_PRICE_PER_1M] for m in ("Mistral-7B-v0.1", "zephyr-7b-beta")}


def test_a_fractional_feedback_score_keeps_its_model_in_the_mean_auc(tmp_path, capsys):
    from training.train import quality_metrics

    rng = np.random.default_rng(1)
    n = 200
    y = (rng.random((n, 2)) < 0.5).astype(float)
    oof = np.clip(0.6 * y + 0.4 * rng.random((n, 2)), 0, 1)
    hard = quality_metrics(y, oof, oof, ["a", "b"])
    y[0, 1] = 0.3  # one fractional score
    m = quality_metrics(y, oof, oof, ["a", "b"])
    assert m["per_model"]["b"]["auc"] is not None and m["auc_models"] == 2 and m["auc_binarised"] == ["b"]
    assert m["mean_auc"] == pytest.approx(hard["mean_auc"], abs=0.01)  # the same models, nearly the same value
    y[:, 1] = 1.0  # one class only: no AUC, and named
    one = quality_metrics(y, oof, oof, ["a", "b"])
    assert one["auc_left_out"] == ["b"] and one["auc_models"] == 1 and one["mean_auc"] == one["per_model"]["a"]["auc"]

    frame = pd.DataFrame({"query": [f"question {i}: what is {i} + {i % 7}?" for i in range(60)]})
    for j, name in enumerate(("m1", "m2")):
        frame[f"quality__{name}"] = (rng.random(60) < 0.5).astype(float)
        frame[f"cost_usd__{name}"] = 1e-5 * (j + 1)
    frame.loc[0, "quality__m2"] = 0.3
    data = tmp_path / "fractional.parquet"
    frame.to_parquet(data)
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "router"), "--folds", "2", "--rounds", "10",
                 "--tracking-uri", f"sqlite:///{tmp_path / 'ml.db'}"]) == 0
    assert "over 2 of 2 models (scores of m2 binarised at 0.5)" in capsys.readouterr().out
