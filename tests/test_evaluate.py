"""The evaluation job: metrics wiring on synthetic outcomes, then the real CLI on real data."""
import json
from pathlib import Path

import numpy as np
import pytest

from training import baselines as bl
from training.evaluate import evaluate_arrays, format_table, resolve_candidates
from training.data import datasets_dir


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
    assert s["methods"]["router"]["aiq"] <= s["methods"]["zero"]["aiq"]  # noise gains nothing over mixing single models
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
    # side by side with the baselines that mix the two models at random (Zero's hull is that line)
    assert pair["random"] == pair["zero"] == {"apgr": 0.5, "cpt_50": 0.5, "cpt_80": 0.8}


def test_models_at_one_cost_have_no_aiq_but_a_quality_at_randoms_cost_and_a_plot():
    from training.plots import cost_quality_figure

    emb, quality, _, p = _synthetic()
    cost = np.full(quality.shape, 0.001)  # random's mean over all cells comes out 1 ULP below each model's
    s, _ = evaluate_arrays(quality, cost, ["a", "b", "c"], p, cost, _truth_router(p, cost), emb)
    for name, m in s["methods"].items():
        assert m["aiq"] is None, name
        assert m["quality_at_random_cost"] is not None, name
    assert s["methods"]["router"]["quality_at_random_cost"] > s["methods"]["random"]["mean_quality"]
    assert s["methods"]["zero"]["quality_at_random_cost"] == pytest.approx(quality.mean(axis=0).max())
    (ax,) = cost_quality_figure({**s, "data": "same.parquet"}).axes  # one price: the quality bars
    assert "no AIQ" in ax.get_xlabel()


def test_costs_equal_but_for_rounding_are_one_cost():
    from training.metrics import aiq, quality_at_budget

    c = 0.001
    below = np.nextafter(c, 0.0)
    assert quality_at_budget([c, 2 * c], [0.5, 0.9], below) == 0.5
    assert np.isnan(quality_at_budget([c, 2 * c], [0.5, 0.9], c * (1 - 1e-6)))  # a real difference still counts
    with pytest.raises(ValueError, match="c_max > c_min"):
        aiq([c], [0.5], below, c)


def test_random_routings_aiq_says_it_is_one_point():
    emb, quality, cost, p = _synthetic()
    s, _ = evaluate_arrays(quality, cost, ["a", "b", "c"], p, cost, _truth_router(p, cost), emb)
    rnd = s["methods"]["random"]
    assert rnd["points"] == [[rnd["mean_cost"], rnd["mean_quality"]]]
    lo, hi = s["cost_range"]
    assert rnd["aiq"] == pytest.approx(rnd["mean_quality"] * (hi - rnd["mean_cost"]) / (hi - lo))
    assert "no knob" in rnd["aiq_note"] and "Zero router" in rnd["aiq_note"]


def test_a_pair_whose_pricier_model_is_not_better_or_costs_the_same_has_no_apgr():
    emb, quality, cost, p = _synthetic()
    # "c" is dearer and better; make the cheap "a" the better one by swapping their qualities.
    q2, c2, p2 = quality[:, [2, 0]], cost[:, [0, 2]], p[:, [2, 0]]
    s, _ = evaluate_arrays(q2, c2, ["a", "c"], p2, c2, _truth_router(p2, c2), emb)
    pair = s["two_model"]
    assert (pair["strong"], pair["weak"]) == ("c", "a")  # the pricier is "strong", even though it is worse
    assert pair["router"] == {"apgr": None, "cpt_50": None, "cpt_80": None} and pair["oracle"]["apgr"] is None
    assert "no better than the cheaper a" in pair["note"] and "random" not in pair
    assert "two-model metrics: the pricier c" in format_table({**s, "n_rows": len(q2)})
    same = np.full(c2.shape, 0.002)
    s, _ = evaluate_arrays(q2, same, ["a", "c"], p2, same, _truth_router(p2, same), emb)
    assert s["two_model"]["strong"] is None and "cost the same" in s["two_model"]["note"]
    assert s["two_model"]["router"]["apgr"] is None


def test_budgets_and_unreached_targets_are_reported():
    emb, quality, cost, p = _synthetic()
    s, _ = evaluate_arrays(quality, cost, ["a", "b", "c"], p, cost, _truth_router(p, cost), emb, budgets=[1e-6])
    assert s["methods"]["router"]["quality_at_budget"]["1e-06"] is None  # below any operating point
    assert len(s["methods"]["router"]["quality_at_budget"]) == 5


def test_the_printed_table_keeps_its_columns_where_a_target_is_not_reached():
    emb, quality, cost, p = _synthetic()
    s, _ = evaluate_arrays(quality, cost, ["a", "b", "c"], p, cost, _truth_router(p, cost), emb)
    s.update(n_rows=len(quality), models=["a", "b", "c"])
    lines = format_table(s).splitlines()
    rows, notes = lines[1:7], lines[7:]
    assert any("—" in r for r in rows)  # random never reaches the best model's quality
    assert len({len(r) for r in rows}) == 1
    # Headers in words, and a footnote saying what the "—" means.
    assert rows[0].split() == ["method", "AIQ", *"quality at random's cost".split(), *"cost to reach best".split(),
                               "÷", "best's", "cost"]
    assert notes == ["— cost to reach best, ÷ best's cost: the method never reaches the best single model's quality "
                     f"(c, {s['best_single_model']['mean_quality']:.3f})"]


def test_candidates_are_the_intersection_and_bad_requests_are_named():
    cands, notes = resolve_candidates(["a", "b", "x"], ["a", "b", "c"], None, "f.parquet")
    assert cands == ["a", "b"]
    assert notes["not_in_router"] == ["x"] and notes["not_in_file"] == ["c"]
    # Requested names the file or the router lacks are left out while two usable ones remain...
    cands, notes = resolve_candidates(["a", "b", "x"], ["a", "b", "c"], ["b", "a", "x", "typo"], "f.parquet")
    assert cands == ["a", "b"]
    assert notes["requested_not_in_file"] == ["typo"] and notes["requested_not_in_router"] == ["x"]
    # ...and are an error naming them with fewer.
    with pytest.raises(ValueError, match=r"\['x'\] not usable.*two or more"):
        resolve_candidates(["a", "b", "x"], ["a", "b", "c"], ["a", "x"], "f.parquet")
    # One candidate is a degenerate pool, not an error.
    assert resolve_candidates(["a", "x"], ["a", "c"], None, "f.parquet")[0] == ["a"]
    assert resolve_candidates(["a", "b"], ["a", "b"], ["b"], "f.parquet")[0] == ["b"]
    with pytest.raises(ValueError, match="no model"):
        resolve_candidates(["x"], ["a"], None, "f.parquet")


# ---- the real command on real data ----------------------------------------------------------

ROOT = Path(__file__).resolve().parent.parent
DATASETS = datasets_dir()
RB = DATASETS / "routerbench_subset" / "routerbench_subset_train.parquet"
needs_data = pytest.mark.usefixtures("routerbench")


@pytest.fixture
def routerbench():
    from tests.conftest import require_dataset

    require_dataset(RB)


@pytest.fixture(scope="module")
def eval_file(tmp_path_factory):
    """150 routerbench prompts without answer columns (as a sealed test file may come), plus a
    model the router has never seen, without a cost column (left out, so never priced)."""
    import pandas as pd

    df = pd.read_parquet(RB).sample(150, random_state=3).reset_index(drop=True)
    df["quality__brand-new-model"] = 1.0
    path = tmp_path_factory.mktemp("eval") / "heldout.parquet"
    df.to_parquet(path, index=False)
    return path, df


@pytest.fixture(scope="module")
def router_dir(tmp_path_factory):
    """The shipped router when present; otherwise a tiny one trained with the real train job."""
    from service.cli import main

    shipped = ROOT / "models" / "default"
    if (shipped / "manifest.json").exists():
        return shipped
    import pandas as pd

    tmp = tmp_path_factory.mktemp("router")
    pd.read_parquet(RB).sample(200, random_state=4).to_parquet(tmp / "train.parquet", index=False)
    rc = main(["train", "--data", str(tmp / "train.parquet"), "--out", str(tmp / "r"), "--folds", "2",
               "--rounds", "20", "--tracking-uri", f"sqlite:///{tmp / 'mlflow.db'}"])
    assert rc == 0
    return tmp / "r"


def _eval(args):
    from service.cli import main

    return main(["eval", *map(str, args)])


@needs_data
def test_eval_command_writes_decisions_that_reproduce_the_summary(eval_file, router_dir, tmp_path):
    import pandas as pd

    path, df = eval_file
    rc = _eval(["--data", path, "--router", router_dir, "--decisions-out", tmp_path / "d.parquet",
                "--report-dir", tmp_path / "rep", "--knob-points", 12])
    assert rc == 0
    summary = json.loads((tmp_path / "rep" / "summary.json").read_text())
    assert (tmp_path / "rep" / "cost_quality.png").read_bytes()[:4] == b"\x89PNG"
    assert summary["models_left_out"]["not_in_router"] == ["brand-new-model"]
    assert "brand-new-model" not in summary["models"]
    dec = pd.read_parquet(tmp_path / "d.parquet")
    assert list(dec.columns) == ["row", "knob", "model"]
    knobs = sorted(dec["knob"].unique())
    assert len(dec) == len(df) * len(knobs) == len(df) * len(summary["methods"]["router"]["points"])
    assert set(dec["model"]) <= set(summary["models"])
    # Realised means recomputed from the decision file and the data file match the summary.
    for cost, quality, knob in summary["methods"]["router"]["points"]:
        d = dec[dec["knob"] == knob].sort_values("row")
        assert d["row"].tolist() == list(range(len(df)))
        got_c = np.mean([df.at[r, f"cost_usd__{m}"] for r, m in zip(d["row"], d["model"])])
        got_q = np.mean([df.at[r, f"quality__{m}"] for r, m in zip(d["row"], d["model"])])
        assert (got_c, got_q) == pytest.approx((cost, quality))
    # The sweep spans the range: the first knob is cheap, the last buys more quality.
    pts = summary["methods"]["router"]["points"]
    assert pts[0][0] < pts[-1][0]
    assert summary["methods"]["oracle"]["aiq"] >= summary["methods"]["router"]["aiq"]


@needs_data
def test_eval_two_model_pool(eval_file, router_dir, tmp_path):
    import pandas as pd

    path, _ = eval_file
    pair = "gpt-4-1106-preview,mixtral-8x7b-chat"
    rc = _eval(["--data", path, "--router", router_dir, "--models", pair, "--decisions-out", tmp_path / "d.parquet",
                "--report-dir", tmp_path / "rep", "--knob-points", 12])
    assert rc == 0
    summary = json.loads((tmp_path / "rep" / "summary.json").read_text())
    assert summary["models"] == ["gpt-4-1106-preview", "mixtral-8x7b-chat"]
    assert summary["two_model"]["strong"] == "gpt-4-1106-preview"
    assert set(pd.read_parquet(tmp_path / "d.parquet")["model"]) <= set(pair.split(","))
    assert summary["two_model"]["oracle"]["apgr"] > 0.5  # knowing the outcomes beats random mixing
    left_out = summary["models_left_out"]  # the other nine are in the file: left out by --models
    known = json.loads((Path(router_dir) / "manifest.json").read_text())["models"]
    assert sorted(left_out["not_in_file"]) == sorted(set(known) - set(summary["models"]) - set(left_out["not_requested"]))
    assert left_out["not_in_router"] == ["brand-new-model"]
    assert len(left_out["not_requested"]) == 9 and not set(left_out["not_requested"]) & set(pair.split(","))


@needs_data
def test_eval_names_a_missing_text_column_and_unknown_models(eval_file, router_dir, tmp_path, capsys):
    path, _ = eval_file
    common = ["--data", path, "--router", router_dir, "--decisions-out", tmp_path / "d.parquet", "--report-dir", tmp_path / "r"]
    assert _eval([*common, "--text-column", "no_such_column"]) == 2
    assert "no_such_column" in capsys.readouterr().err
    assert _eval([*common, "--knob-points", "-3"]) == 2
    assert "--knob-points" in capsys.readouterr().err
    assert _eval([*common, "--models", "gpt-4-1106-preview,brand-new-model"]) == 2
    err = capsys.readouterr().err
    in_file = err.split("the file has", 1)[1].split("the router knows", 1)[0]
    assert "brand-new-model" in err and "mixtral-8x7b-chat" in in_file  # the file's whole model list, not the request's
    assert not (tmp_path / "d.parquet").exists()


@needs_data
def test_eval_prices_a_file_without_cost_columns_at_the_routers_prices(eval_file, router_dir, tmp_path):
    _, df = eval_file
    bare = df[[c for c in df.columns if not c.startswith("cost_usd__") and "brand-new-model" not in c]]
    path = tmp_path / "no_costs.csv"
    bare.to_csv(path, index=False)
    rc = _eval(["--data", path, "--router", router_dir, "--decisions-out", tmp_path / "d.parquet",
                "--report-dir", tmp_path / "rep", "--knob-points", 8])
    assert rc == 0
    summary = json.loads((tmp_path / "rep" / "summary.json").read_text())
    assert summary["cost_estimated_from_prices"] == summary["models"]
    single = summary["single_models"]
    # Priced per token, gpt-4 stays far dearer than mistral-7b, as in the recorded costs.
    assert single["gpt-4-1106-preview"]["mean_cost"] > 10 * single["mistral-7b-chat"]["mean_cost"]


@needs_data
def test_eval_of_a_file_too_small_for_knn_reports_every_other_method(eval_file, router_dir, tmp_path):
    _, df = eval_file
    path = tmp_path / "five.parquet"
    df.head(5).to_parquet(path, index=False)
    rc = _eval(["--data", path, "--router", router_dir, "--decisions-out", tmp_path / "d.parquet",
                "--report-dir", tmp_path / "rep", "--knob-points", 6])
    assert rc == 0
    summary = json.loads((tmp_path / "rep" / "summary.json").read_text())
    assert set(summary["methods"]) == {"router", "zero", "oracle", "random"}
    assert "distinct prompts" in summary["knn_left_out"]


@needs_data
def test_eval_of_a_costed_file_missing_one_models_cost_names_the_column(eval_file, router_dir, tmp_path, capsys):
    _, df = eval_file
    path = tmp_path / "one_cost_missing.parquet"
    df.drop(columns=["cost_usd__claude-v1"]).to_parquet(path, index=False)
    common = ["--data", path, "--router", router_dir, "--decisions-out", tmp_path / "d.parquet", "--report-dir", tmp_path / "r"]
    # Priced at tokens x price beside recorded costs, claude-v1 cost 2.3x its recorded mean.
    assert _eval(common) == 2
    assert "cost_usd__claude-v1" in capsys.readouterr().err
    # A sealed file whose only cost column is a model the router does not know is priced alike.
    bare = df[[c for c in df.columns if not c.startswith("cost_usd__")]].assign(**{"cost_usd__brand-new-model": 0.001})
    bare.to_parquet(path, index=False)
    assert _eval([*common, "--knob-points", 6]) == 0
    # --models leaves it out, and with it the check (as for NaN labels of a model left out).
    df.drop(columns=["cost_usd__claude-v1"]).assign(**{"quality__claude-v1": np.nan}).to_parquet(path, index=False)
    assert _eval([*common, "--models", "gpt-4-1106-preview,mixtral-8x7b-chat", "--knob-points", 6]) == 0


def _routerbench_like(n: int, cost) -> "object":
    """A small file in the RouterBench layout, with two of the shipped router's models."""
    import pandas as pd

    rng = np.random.default_rng(1)
    topics = ["algebra", "poetry", "chemistry", "history", "football", "cooking"]
    return pd.DataFrame({
        "uid": [f"u{i}" for i in range(n)],
        "query": [f"Question {i} about {topics[i % 6]}: what is {i} times {i + 3}?" for i in range(n)],
        "quality__gpt-4-1106-preview": (rng.random(n) < 0.9).astype(float),
        "quality__mistral-7b-chat": (rng.random(n) < 0.5).astype(float),
        "cost_usd__gpt-4-1106-preview": cost(n, 0),
        "cost_usd__mistral-7b-chat": cost(n, 1),
    })


def test_eval_of_models_at_one_cost_writes_its_summary_plot_and_decisions(router_dir, tmp_path):
    path = tmp_path / "same_cost.parquet"
    _routerbench_like(60, lambda n, j: np.full(n, 0.001)).to_parquet(path, index=False)
    rc = _eval(["--data", path, "--router", router_dir, "--decisions-out", tmp_path / "d.parquet",
                "--report-dir", tmp_path / "rep", "--knob-points", 6])
    assert rc == 0
    summary = json.loads((tmp_path / "rep" / "summary.json").read_text())
    assert all(m["quality_at_random_cost"] is not None for m in summary["methods"].values())
    assert "cost the same" in summary["two_model"]["note"]
    assert (tmp_path / "rep" / "cost_quality.png").read_bytes()[:4] == b"\x89PNG"
    decisions = len(__import__("pandas").read_parquet(tmp_path / "d.parquet"))
    assert decisions > 0 and decisions % 60 == 0


def test_eval_writes_the_decisions_before_the_plot(router_dir, tmp_path, monkeypatch):
    import training.plots

    def broken(*a, **k):
        raise OSError("disk full while drawing")

    monkeypatch.setattr(training.plots, "save_cost_quality_plot", broken)
    path = tmp_path / "t.parquet"
    _routerbench_like(60, lambda n, j: np.full(n, [0.005, 0.0001][j])).to_parquet(path, index=False)
    rc = _eval(["--data", path, "--router", router_dir, "--decisions-out", tmp_path / "d.parquet",
                "--report-dir", tmp_path / "rep", "--knob-points", 6])
    assert rc == 2  # the plot failed, and says so
    assert (tmp_path / "d.parquet").exists() and (tmp_path / "rep" / "summary.json").exists()


def test_eval_leaves_out_a_requested_model_the_file_lacks_while_two_remain(router_dir, tmp_path, capsys, caplog):
    path = tmp_path / "t.parquet"
    _routerbench_like(60, lambda n, j: np.full(n, [0.005, 0.0001][j])).to_parquet(path, index=False)
    common = ["--data", path, "--router", router_dir, "--decisions-out", tmp_path / "d.parquet",
              "--report-dir", tmp_path / "rep", "--knob-points", 6]
    with caplog.at_level("WARNING"):
        assert _eval([*common, "--models", "gpt-4-1106-preview,mistral-7b-chat,no-such-model"]) == 0
    summary = json.loads((tmp_path / "rep" / "summary.json").read_text())
    assert summary["models"] == ["gpt-4-1106-preview", "mistral-7b-chat"]
    assert summary["models_left_out"]["requested_not_in_file"] == ["no-such-model"]
    assert "no-such-model" in caplog.text
    # With one usable name left, which list was meant is unclear: an error naming the others.
    assert _eval([*common, "--models", "gpt-4-1106-preview,no-such-model"]) == 2
    assert "two or more" in capsys.readouterr().err


def test_eval_of_one_model_routes_every_row_to_it_beside_the_baselines(router_dir, tmp_path, capsys, caplog):
    import pandas as pd

    path = tmp_path / "t.parquet"
    _routerbench_like(60, lambda n, j: np.full(n, [0.005, 0.0001][j])).to_parquet(path, index=False)
    with caplog.at_level("WARNING"):
        rc = _eval(["--data", path, "--router", router_dir, "--models", "mistral-7b-chat", "--decisions-out",
                    tmp_path / "d.parquet", "--report-dir", tmp_path / "rep", "--knob-points", 6])
    assert rc == 0 and "one candidate model" in caplog.text
    summary = json.loads((tmp_path / "rep" / "summary.json").read_text())
    assert summary["models"] == ["mistral-7b-chat"]
    assert summary["models_left_out"]["not_requested"] == ["gpt-4-1106-preview"]
    single = summary["single_models"]["mistral-7b-chat"]
    assert {"router", "zero", "oracle", "random"} <= set(summary["methods"])
    for method in summary["methods"].values():
        assert method["points"][0][:2] == pytest.approx([single["mean_cost"], single["mean_quality"]])
    decisions = pd.read_parquet(tmp_path / "d.parquet")
    assert set(decisions["model"]) == {"mistral-7b-chat"} and len(decisions) % 60 == 0 and len(decisions) > 0
    assert "60 rows, 1 model;" in capsys.readouterr().out
