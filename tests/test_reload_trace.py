"""What a hot reload leaves behind on the gateway (a log line, /healthz, GET /admin/router), and
what `simulate` says about a drift model it does not know or a measurement it cannot make."""
from __future__ import annotations

import logging
import shutil

import httpx
import pytest

from router.engine import LearnedRouter, default_artifact
from service.cli import main
from tests.conftest import require_dataset
from tests.fake_upstream import FakeUpstream
from tests.gateway_harness import Running, fake_config
from training.data import datasets_dir

TABLE = datasets_dir() / "routerbench_subset" / "routerbench_subset_train.parquet"


def test_a_reload_is_logged_and_the_serving_artifact_is_shown(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("OPENCLAW_MASTER_KEY", "mk-trace")
    admin = {"authorization": "Bearer mk-trace"}
    promoted = shutil.copytree(default_artifact(), tmp_path / "candidate-20261127-120000")  # a second real artifact
    trained_at = LearnedRouter.load(promoted).manifest["trained_at"]
    with FakeUpstream() as up:
        gw = Running(fake_config(up.base_url, f"sqlite:///{tmp_path}/o.sqlite"), router=LearnedRouter.load(default_artifact()))
        try:
            health = httpx.get(f"{gw.url}/healthz").json()
            assert health["router_artifact"] == {"name": "default", "trained_at": trained_at}
            state = httpx.get(f"{gw.url}/admin/router", headers=admin).json()
            assert state["artifact"] == {"path": str(default_artifact().resolve()), "trained_at": trained_at}
            assert state["object"] == "router" and state["models"]

            with caplog.at_level(logging.INFO, logger="service.api_admin_router"):
                r = httpx.post(f"{gw.url}/admin/router/reload", json={"path": str(promoted)}, headers=admin, timeout=60)
            assert r.status_code == 200, r.text
            [line] = [rec.getMessage() for rec in caplog.records if rec.name == "service.api_admin_router"]
            assert line == (f"router reloaded: now serving {promoted.resolve()} (trained {trained_at}, "
                            f"{len(state['models'])} models); was {default_artifact().resolve()}")

            assert httpx.get(f"{gw.url}/healthz").json()["router_artifact"]["name"] == "candidate-20261127-120000"
            assert httpx.get(f"{gw.url}/admin/router", headers=admin).json()["artifact"]["path"] == str(promoted.resolve())
            denied = httpx.get(f"{gw.url}/admin/router")  # the full path is behind the master key
            assert denied.status_code == 401 and denied.json()["error"]["code"] == "missing_api_key"
        finally:
            gw.stop()


def test_a_gateway_without_a_router_says_so():
    with FakeUpstream() as up:
        gw = Running(fake_config(up.base_url, "sqlite:///:memory:"))
        try:
            health = httpx.get(f"{gw.url}/healthz").json()
            assert health["router_loaded"] is False and health["router_artifact"] is None
        finally:
            gw.stop()


@pytest.mark.parametrize("typed, suggested", [
    ("gpt-4", "did you mean 'gpt-4-1106-preview'?"),
    ("GPT4", "did you mean 'gpt-4-1106-preview'?"),
    ("claude", "did you mean 'claude-v1' or 'claude-v2' or 'claude-instant-v1'?"),
    ("mixtrall-8x7b-chat", "did you mean 'mixtral-8x7b-chat'"),  # then the next nearest by spelling
])
def test_a_shortened_drift_model_name_is_suggested(tmp_path, capsys, typed, suggested):
    require_dataset(TABLE)
    code = main(["simulate", "--data", str(TABLE), "--requests", "100", "--out", str(tmp_path / "s.json"),
                 "--drift", f"degrade:{typed}:0.4@10"])
    err = capsys.readouterr().err
    assert code == 2 and f"--drift names model {typed!r}, which is not in" in err and suggested in err, err
    assert not (tmp_path / "s.json").exists()


def test_the_summary_says_one_request_and_no_dangling_recovery(capsys):
    from training.simulate_summary import print_summary

    # The shape simulate wrote for the reviewer's run (3,000 requests, gpt-4 degraded at 1,000, claude-v2
    # added at 1,500), reduced to what the summary reads.
    out = {"totals": {"static": {"quality": 0.8023, "cost": 0.000645}, "bandit": {"quality": 0.808, "cost": 0.000356},
                      "bandit_extra_cost_pct": -44.71, "bandit_quality_delta_points": 0.57, "bandit_explore_share": 0.024},
           "drift": [{"kind": "degrade", "model": "gpt-4-1106-preview", "start": 1000, "fraction": 0.4},
                     {"kind": "add", "model": "claude-v2", "start": 1500, "fraction": 0.0}],
           "recovery": {"gpt-4-1106-preview": {"from_request": 2000, "static_lost": 0.0, "recovered_share": None}},
           "added": {"claude-v2": {"first_routed_at": 1509, "bandit_share_first_1000": 0.01,
                                   "where_only_bandit_chose_it": {"requests": 1, "added_model_quality": 1.0,
                                                                  "static_choice_quality": 1.0}}},
           "setup": {}}
    print_summary(out, 3000)
    printed = capsys.readouterr().out
    assert ("degraded gpt-4-1106-preview: from request 2,000 the static router lost 0.00 quality points, too few to "
            "measure a recovery of them by the bandit (a share of them is reported from 1.00 points lost)\n") in printed
    assert ("added claude-v2: first routed at request 1509, 1% of the 1,000 requests after it came; on the 1 request "
            "only the bandit sent to it, quality 1.000 against 1.000 for the static router's choice\n") in printed
