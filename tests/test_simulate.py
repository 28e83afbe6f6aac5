"""`openclaw-router simulate` on a small slice of RouterBench: drift parsing, the report's
shape, and that the bandit router adapts where the static one cannot."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from service.cli import main
from training.simulate import Drift, Stream, by_task, parse_drift, random_means
from training.data import datasets_dir
from tests.conftest import require_dataset

DATA = datasets_dir()
TABLE = DATA / "routerbench_subset" / "routerbench_subset_train.parquet"
MODELS = ["gpt-4-1106-preview", "mixtral-8x7b-chat", "gpt-3.5-turbo-1106", "mistral-7b-chat"]


def test_parse_drift():
    assert parse_drift("degrade:gpt-4:0.4@1000") == Drift("degrade", "gpt-4", 1000, 0.4)
    assert parse_drift("add:org/model:v2@50") == Drift("add", "org/model:v2", 50)
    for bad in ("degrade:gpt-4@10", "degrade:gpt-4:1.5@10", "add:m@x", "remove:m@3", "add:@3"):
        with pytest.raises(ValueError, match="drift"):
            parse_drift(bad)


@pytest.fixture(scope="module")
def small_table(tmp_path_factory):
    import pandas as pd

    if not TABLE.exists():
        require_dataset(TABLE)
    df = pd.read_parquet(TABLE).sample(700, random_state=1)
    keep = ["uid", "query", "prompt_full", "eval_name"] + [f"{k}__{m}" for m in MODELS for k in ("quality", "cost_usd")]
    path = tmp_path_factory.mktemp("sim") / "small.parquet"
    df[keep].to_parquet(path)
    return path


@pytest.mark.parametrize("extra, says", [
    (["--feedback-rate", "5"], "--feedback-rate"),
    (["--explore-share", "-1"], "--explore-share"),
    (["--willingness-to-pay", "-1"], "--willingness-to-pay"),
    (["--drift", "degrade:nope:0.4@10"], "'nope'"),
])
def test_knobs_out_of_range_and_unknown_drift_models_are_refused(small_table, tmp_path, capsys, extra, says):
    argv = ["simulate", "--data", str(small_table), "--requests", "100", "--out", str(tmp_path / "o.json"), *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert says in err and "Traceback" not in err
    assert not (tmp_path / "o.json").exists()


def _simulate(table, out, *extra):
    code = main(["simulate", "--data", str(table), "--requests", "1500", "--window", "300", "--out", str(out),
                 "--willingness-to-pay", "1.0", *extra])
    assert code == 0
    return json.loads(Path(out).read_text())


def test_bandit_recovers_from_a_degraded_model(small_table, tmp_path):
    rep = _simulate(small_table, tmp_path / "deg.json", "--drift", "degrade:gpt-4-1106-preview:1.0@300")
    assert [(w["start"], w["end"]) for w in rep["windows"]] == [(0, 300), (300, 600), (600, 900), (900, 1200), (1200, 1500)]
    for w in rep["windows"]:
        for who in ("static", "bandit"):
            assert 0 <= w[who]["quality"] <= 1 and w[who]["cost"] > 0
    first, last = rep["windows"][0], rep["windows"][-1]
    # the static router keeps sending traffic to the broken model; the bandit learns to stop
    assert last["traffic"]["static"].get("gpt-4-1106-preview", 0) > 0.5
    assert last["traffic"]["bandit"].get("gpt-4-1106-preview", 0) < 0.2
    assert last["static"]["quality"] < first["static"]["quality"] - 0.3
    assert last["bandit"]["quality"] > last["static"]["quality"] + 0.2
    rec = rep["recovery"]["gpt-4-1106-preview"]
    assert rec["from_request"] == 900 and rec["recovered_share"] > 0  # 300 + 1,200 // 2: under 2,000 followed
    # the ceiling measured in the same run: a static router told of the drift at request 300
    assert rec["informed_static_regained"] > 0 and rec["recovered_share_of_recoverable"] > 0
    # net of what the bandit differs by in the same stream without the drift
    assert abs(rec["bandit_gap_without_drift"]) < 0.1 and rec["recovered_share_net"] > 0
    t = rep["totals"]
    assert t["bandit"]["quality"] > t["static"]["quality"]
    assert 0 < t["min_propensity"] <= 1
    assert rep["setup"]["replayed_prompts"] < 700  # replayed prompts are held out of the router's training


def test_added_model_is_unavailable_before_its_start(small_table, tmp_path, capsys):
    rep = _simulate(small_table, tmp_path / "add.json", "--drift", "add:mixtral-8x7b-chat@600")
    printed = capsys.readouterr().out  # the summary says what became of it, not only the JSON
    assert "added mixtral-8x7b-chat: " in printed and f"{rep['added']['mixtral-8x7b-chat']['bandit_share_first_1000']:.0%}" in printed
    for w in rep["windows"]:
        if w["end"] <= 600:
            assert "mixtral-8x7b-chat" not in w["traffic"]["static"] and "mixtral-8x7b-chat" not in w["traffic"]["bandit"]
    added = rep["added"]["mixtral-8x7b-chat"]
    assert added["first_routed_at"] is None or added["first_routed_at"] >= 600
    assert set(added["by_task_from"]) <= {"arc-challenge", "mbpp", "winogrande"}
    halves = rep["by_task_second_half"]
    assert set(halves) <= {"arc-challenge", "mbpp", "winogrande"} and sum(t["requests"] for t in halves.values()) == 750
    # without drift in the first half, the learned router beats routing at random
    assert rep["windows"][0]["static"]["quality"] > rep["totals"]["random"]["quality"]


def test_unknown_drift_model_is_a_clear_error(small_table, tmp_path, capsys):
    code = main(["simulate", "--data", str(small_table), "--requests", "10", "--out", str(tmp_path / "x.json"),
                 "--drift", "degrade:nope:0.5@1"])
    assert code == 2 and "nope" in capsys.readouterr().err
    every_model_added = [arg for m in MODELS for arg in ("--drift", f"add:{m}@5")]
    code = main(["simulate", "--data", str(small_table), "--requests", "10", "--out", str(tmp_path / "x.json"), *every_model_added])
    err = capsys.readouterr().err
    assert code == 2 and "every model is added by a drift" in err and "small.parquet" in err


def test_random_baseline_and_task_breakdown_by_hand():
    # 4 requests, 2 models; model 1 is not available at request 0 (added later).
    stream = Stream(rows=np.arange(4), quality=np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 0.0]]),
                    cost=np.array([[1.0, 3.0], [1.0, 3.0], [2.0, 4.0], [2.0, 4.0]]), latency=np.ones((4, 2)),
                    available=np.array([[True, False], [True, True], [True, True], [True, True]]),
                    task=np.array(["a", "a", "b", "b"]))
    # request 0: only model 0 (q 1, c 1); then (0+1)/2, (1+1)/2, 0 and costs 2, 3, 3
    assert random_means(stream, slice(None)) == {"quality": (1 + 0.5 + 1 + 0) / 4, "cost": (1 + 2 + 3 + 3) / 4, "latency_s": 1.0}
    static, bandit = np.array([0, 0, 0, 0]), np.array([0, 1, 1, 1])
    tasks = by_task(["m0", "m1"], stream, static, bandit, start=1)
    assert set(tasks) == {"a", "b"}
    assert tasks["a"]["requests"] == 1 and tasks["a"]["static"]["quality"] == 0.0 and tasks["a"]["bandit"]["quality"] == 1.0
    assert tasks["b"]["random"] == {"quality": 0.5, "cost": 3.0, "latency_s": 1.0}
    assert tasks["b"]["traffic"] == {"static": {"m0": 1.0}, "bandit": {"m1": 1.0}}


def test_a_table_without_costs_runs_with_prices_and_the_json_is_strict(small_table, tmp_path):
    import pandas as pd

    bare = tmp_path / "bare.parquet"
    pd.read_parquet(small_table).drop(columns=[f"cost_usd__{m}" for m in MODELS]).to_parquet(bare)
    prices = tmp_path / "prices.json"
    prices.write_text(json.dumps({m: {"input_per_1m": 1.0 + i, "output_per_1m": 2.0 + i} for i, m in enumerate(MODELS)}))
    out = tmp_path / "sim.json"
    # tiny windows: most lack some task, whose share there is no number (null, not NaN)
    assert main(["simulate", "--data", str(bare), "--prices", str(prices), "--requests", "400", "--window", "5",
                 "--drift", "add:mistral-7b-chat@100", "--out", str(out)]) == 0
    def refuse(constant):
        raise ValueError(f"not JSON: {constant}")

    rep = json.loads(out.read_text(), parse_constant=refuse)
    assert rep["totals"]["static"]["cost"] > 0


def test_several_degradations_are_measured_together_and_inf_means_no_spend_cap(small_table, tmp_path):
    rep = _simulate(small_table, tmp_path / "two.json", "--drift", "degrade:gpt-4-1106-preview:0.4@100",
                    "--drift", "degrade:mixtral-8x7b-chat:1.0@200", "--total-cost-share", "inf")
    assert list(rep["recovery"]) == ["all"]  # one run cannot tell which drift the routers answered
    rec = rep["recovery"]["all"]
    assert rec["from_request"] == 850 and len(rec["drifts"]) == 2  # 200 + 1,300 // 2 after the last
    assert rep["bandit_state"]["spend_price_per_usd"] == 0.0  # no cap, no shadow price (it was NaN)
    assert rep["setup"]["bandit"]["total_cost_share"] is None


@pytest.mark.parametrize("extra,says", [(["--window", "0"], "--window"), (["--train-share", "0.9999"], "no prompt to replay")])
def test_options_that_leave_nothing_to_report_are_clear_errors(small_table, tmp_path, capsys, extra, says):
    code = main(["simulate", "--data", str(small_table), "--requests", "100", "--out", str(tmp_path / "x.json"), *extra])
    err = capsys.readouterr().err
    assert code == 2 and says in err and "Traceback" not in err


def test_a_router_with_fewer_embedding_dimensions_than_the_bandits_context_is_replayed(small_table, tmp_path):
    router = tmp_path / "pca4"
    assert main(["train", "--data", str(small_table), "--out", str(router), "--pca-dim", "4", "--folds", "2",
                 "--rounds", "20", "--tracking-uri", f"sqlite:///{tmp_path / 'ml.db'}"]) == 0
    rep = _simulate(small_table, tmp_path / "pca4.json", "--router", str(router))
    assert rep["totals"]["bandit"]["quality"] > 0


def test_a_degradation_the_static_router_hardly_meets_reports_no_recovery_share(small_table, tmp_path, capsys):
    # At the cheap end gpt-4 is seldom chosen: a share of the little it loses would be noise over noise.
    code = main(["simulate", "--data", str(small_table), "--requests", "1500", "--out", str(tmp_path / "d.json"),
                 "--willingness-to-pay", "0.0001", "--drift", "degrade:gpt-4-1106-preview:0.5@200",
                 "--drift", "add:mixtral-8x7b-chat@9000"])
    assert code == 0
    rec = json.loads((tmp_path / "d.json").read_text())["recovery"]["gpt-4-1106-preview"]
    assert rec["static_lost"] < 0.01 and rec["recovered_share"] is None and rec["recovered_share_net"] is None
    out = capsys.readouterr().out
    assert "too few to measure a recovery of" in out
    assert "add:mixtral-8x7b-chat@9000 starts after the last of the 1500 requests" in out


def test_a_router_that_knows_none_of_the_files_models_is_a_clear_error(small_table, tmp_path, capsys):
    import pandas as pd

    df = pd.read_parquet(small_table)
    renamed = tmp_path / "renamed.parquet"
    df.rename(columns=lambda c: c.replace("__", "__other-") if "__" in c else c).to_parquet(renamed)
    code = main(["simulate", "--data", str(renamed), "--requests", "100", "--out", str(tmp_path / "x.json"),
                 "--router", str(Path(__file__).resolve().parents[1] / "models" / "default")])
    err = capsys.readouterr().err
    assert code == 2 and "no model is both in the file" in err and "Traceback" not in err


def _routerdc_like(path, n: int = 80, costs: bool = False) -> Path:
    """RouterDC's layout, small: a query, a task, quality per self-hosted model, no costs and no
    models.json beside it (unless `costs`); m2 is the best model on every task."""
    import pandas as pd

    rng = np.random.default_rng(3)
    tasks = np.array(["maths", "code", "trivia", "chemistry"])[np.arange(n) % 4]
    df = pd.DataFrame({"uid": [f"u{i}" for i in range(n)], "task": tasks,
                       "query": [f"{t} question {i}: how many {i % 7} plus {i}?" for i, t in enumerate(tasks)]})
    for j, p in enumerate((0.3, 0.4, 0.9)):
        df[f"quality__m{j}"] = (rng.random(n) < p).astype(float)
        if costs:
            df[f"cost_usd__m{j}"] = 1e-5 * (j + 1)
    df.to_parquet(path, index=False)
    return path


def test_a_table_with_neither_costs_nor_prices_replays_at_one_flat_price(tmp_path, capsys, caplog):
    from training.data import FLAT_PRICE_PER_1M

    data = _routerdc_like(tmp_path / "rdc.parquet")
    with caplog.at_level("WARNING"):
        assert main(["simulate", "--data", str(data), "--requests", "200", "--out", str(tmp_path / "s.json")]) == 0
    warned = "\n".join(r.getMessage() for r in caplog.records if r.levelname == "WARNING")
    assert f"priced alike at ${FLAT_PRICE_PER_1M:g}" in warned and "every model costs the same" in warned
    t = json.loads((tmp_path / "s.json").read_text())["totals"]
    assert t["random"]["cost"] > 0
    assert t["static"]["cost"] == pytest.approx(t["random"]["cost"])  # one price: cost cannot tell models apart


def test_simulate_with_a_router_prices_a_file_without_costs_at_the_routers_prices(tmp_path, caplog):
    from training.data import load_outcomes, load_prices

    data = _routerdc_like(tmp_path / "rdc.parquet")
    prices = tmp_path / "prices.json"
    prices.write_text(json.dumps({f"m{j}": {"input_per_1m": p, "output_per_1m": 2 * p} for j, p in enumerate((0.5, 2.0, 9.0))}))
    router = tmp_path / "router"
    assert main(["train", "--data", str(data), "--prices", str(prices), "--out", str(router), "--folds", "2",
                 "--rounds", "10", "--tracking-uri", f"sqlite:///{tmp_path / 'ml.db'}"]) == 0
    caplog.clear()
    # Every prompt once: random routing's cost is the table's mean cost at the router's prices.
    with caplog.at_level("WARNING"):
        assert main(["simulate", "--data", str(data), "--router", str(router), "--requests", "80",
                     "--out", str(tmp_path / "s.json")]) == 0
    assert "priced alike" not in "\n".join(r.getMessage() for r in caplog.records)
    rep = json.loads((tmp_path / "s.json").read_text())
    expected = load_outcomes(data, prices=load_prices(prices)).cost.mean()
    assert rep["totals"]["random"]["cost"] == pytest.approx(expected)
    assert rep["setup"]["replays_per_prompt"] == 1.0 and "note" not in rep["setup"]


def test_the_summary_prints_the_net_recovery_first_and_warns_of_prompts_replayed_often(tmp_path, capsys):
    data = _routerdc_like(tmp_path / "costed.parquet", costs=True)
    out = tmp_path / "s.json"
    assert main(["simulate", "--data", str(data), "--requests", "1300", "--willingness-to-pay", "1.0",
                 "--drift", "degrade:m2:1.0@100", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    line = next(x for x in printed.splitlines() if x.startswith("  the bandit regains "))
    assert "of them, net of the" in line and line.index("net of the") < line.index("gross")
    setup = json.loads(out.read_text())["setup"]
    assert setup["distinct_prompts"] == setup["replayed_prompts"] > 0  # every query of the file is its own
    assert setup["replays_per_prompt"] == pytest.approx(1300 / setup["distinct_prompts"], abs=0.01)
    assert setup["replays_per_prompt"] > 3
    assert "memorising repeated prompts" in setup["note"] and "warning: each of the" in printed


@pytest.mark.parametrize("requests, measured_from", [(700, 400), (1300, 700), (2100, 1100), (2300, 1100)])
def test_a_drift_is_measured_over_at_least_half_of_the_requests_after_it(tmp_path, capsys, requests, measured_from):
    # Drifts at 100: 600 requests follow (none was measured, K + 1,000 lay past the end), 1,200 (100 were),
    # then 2,000 and more, where the measured stretch starts 1,000 after the drift as it always did.
    data = _routerdc_like(tmp_path / "costed.parquet", costs=True)
    out = tmp_path / "s.json"
    assert main(["simulate", "--data", str(data), "--requests", str(requests), "--willingness-to-pay", "1.0",
                 "--drift", "degrade:m2:1.0@100", "--drift", "add:m1@100", "--out", str(out)]) == 0
    rep = json.loads(out.read_text())
    rec = rep["recovery"]["m2"]
    assert rec["from_request"] == measured_from and rec["static_lost"] > 0.3 and rec["recovered_share_net"] is not None
    added = rep["added"]["m1"]
    assert added["by_task_from_request"] == measured_from and added["by_task_from"]
    lines = capsys.readouterr().out.splitlines()
    at = next(i for i, x in enumerate(lines) if x.startswith("degraded m2"))
    line = lines[at]
    assert line.startswith(f"degraded m2: from request {measured_from:,}") and line.endswith(":")
    # then one measure a line: the loss, the bandit's share of it
    assert lines[at + 1].startswith("  the static router lost ") and lines[at + 2].startswith("  the bandit regains ")
    shortened = f"(measured after {measured_from - 100:,} of the {requests - 100:,} requests that followed the drift at 100, "
    assert (shortened in line) == (requests - 100 < 2000)


def test_recorded_latencies_are_replayed_and_only_missing_ones_modelled(tmp_path):
    # The replay had modelled every latency from answer tokens, whatever the table recorded.
    import pandas as pd

    from training.data import load_outcomes
    from training.simulate import build_stream

    pd.DataFrame({"prompt": ["a?", "b?", "c?"], "quality__m1": [1.0, 0.0, 1.0], "quality__m2": [0.0, 1.0, 1.0],
                  "cost_usd__m1": [1e-4] * 3, "cost_usd__m2": [2e-4] * 3, "latency_s__m1": [1.5, np.nan, 3.0],
                  "output_tokens__m2": [100.0, 50.0, 25.0]}).to_parquet(tmp_path / "t.parquet")
    table = load_outcomes(tmp_path / "t.parquet")
    stream = build_stream(table, 3, [], seed=0, ttft_s=0.5, tps=50.0)
    recorded = {0: 1.5, 2: 3.0}
    for i, row in enumerate(stream.rows):
        assert stream.latency[i, 0] == recorded.get(int(row), 0.5 + 200.0 / 50.0)  # a NaN cell: the default answer length
        assert stream.latency[i, 1] == 0.5 + [100.0, 50.0, 25.0][row] / 50.0
