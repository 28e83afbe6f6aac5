"""`openclaw-router simulate` on a small slice of RouterBench: drift parsing, the report's
shape, and that the bandit router adapts where the static one cannot."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from service.cli import main
from training.simulate import Drift, parse_drift
from training.data import datasets_dir

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
        pytest.skip(f"dataset missing: {TABLE}")
    df = pd.read_parquet(TABLE).sample(700, random_state=1)
    keep = ["uid", "query", "prompt_full", "eval_name"] + [f"{k}__{m}" for m in MODELS for k in ("quality", "cost_usd")]
    path = tmp_path_factory.mktemp("sim") / "small.parquet"
    df[keep].to_parquet(path)
    return path


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
    assert rec["from_request"] == 1300 and rec["recovered_share"] > 0
    # the ceiling measured in the same run: a static router told of the drift at request 300
    assert rec["informed_static_regained"] > 0 and rec["recovered_share_of_recoverable"] > 0
    t = rep["totals"]
    assert t["bandit"]["quality"] > t["static"]["quality"]
    assert 0 < t["min_propensity"] <= 1
    assert rep["setup"]["replayed_prompts"] < 700  # replayed prompts are held out of the router's training


def test_added_model_is_unavailable_before_its_start(small_table, tmp_path):
    rep = _simulate(small_table, tmp_path / "add.json", "--drift", "add:mixtral-8x7b-chat@600")
    for w in rep["windows"]:
        if w["end"] <= 600:
            assert "mixtral-8x7b-chat" not in w["traffic"]["static"] and "mixtral-8x7b-chat" not in w["traffic"]["bandit"]
    added = rep["added"]["mixtral-8x7b-chat"]
    assert added["first_routed_at"] is None or added["first_routed_at"] >= 600
    assert set(added["by_task_after_1000"]) <= {"arc-challenge", "mbpp", "winogrande"}


def test_unknown_drift_model_is_a_clear_error(small_table, tmp_path, capsys):
    code = main(["simulate", "--data", str(small_table), "--requests", "10", "--out", str(tmp_path / "x.json"),
                 "--drift", "degrade:nope:0.5@1"])
    assert code == 2 and "nope" in capsys.readouterr().err
