"""Where the log does not support a candidate's choices, retrain's advice names what held exploration
back: the cap the gateway's bandit is at (GET /admin/router/bandit, read by `retrain --gateway`), and
the choices the bandit made for certain because it had refined them. Real gateways with the bandit
on, over a fake upstream; the log they wrote, read back as retrain reads it."""
from __future__ import annotations

import sqlite3
import time

import httpx
import numpy as np
import pytest

from tests.fake_upstream import FakeUpstream, ok
from tests.gateway_harness import QualityRouter, Running, fake_config
from training.offpolicy import compare_routers, compare_with_router, load_traffic
from training.retrain import check_gateway, promotion
from training.support_advice import exploration_advice

KEY = "mk-advice-test"
QUALITY = {"m1": 0.9, "m2": 0.899, "m3": 0.2}


def _models(m2_price: float) -> list[dict]:
    return [{"name": m, "context_window": 100000, "in": p, "out": 2 * p} for m, p in (("m1", 0.01), ("m2", m2_price), ("m3", 0.01))]


def _serve_and_rate(gw: Running, n: int, wait_for_cost: bool = False) -> None:
    """`n` routed questions, each rated; with `wait_for_cost`, each one's realised cost reaches the
    bandit (a post-hook) before the next is asked."""
    headers = {"authorization": f"Bearer {KEY}"}
    for i in range(n):
        calls = sum(r["calls"] for r in gw.app.state.learning.bandit.stats()["cost_ratios"].values())
        raw = httpx.post(f"{gw.base_url}/chat/completions", headers=headers,
                         json={"model": "auto", "messages": [{"role": "user", "content": f"question {i}"}]}, timeout=10)
        assert raw.status_code == 200, raw.text
        rated = httpx.post(f"{gw.url}/v1/feedback", json={"request_id": raw.headers["x-request-id"], "score": 1.0}, headers=headers)
        assert rated.status_code == 200, rated.text
        deadline = time.monotonic() + 10
        while wait_for_cost and time.monotonic() < deadline and calls == sum(
                r["calls"] for r in gw.app.state.learning.bandit.stats()["cost_ratios"].values()):
            time.sleep(0.02)


def _advice_for_m3(db: str, state: dict, url: str):
    """The log read as retrain reads it, a candidate that takes m3 on every request (never logged),
    the advice, and the verdict it ends."""
    traffic = load_traffic(db)
    col = {m: i for i, m in enumerate(traffic.models)}
    live = np.tile([QUALITY[m] for m in traffic.models], (len(traffic), 1))
    candidate = np.where(np.arange(len(traffic.models)) == col["m3"], 1.0, 0.0) * np.ones_like(live)
    advice = exploration_advice(db, traffic, np.full(len(traffic), col["m3"]), state, url)
    verdict, _ = promotion(compare_routers(traffic, live, candidate), compare_with_router(traffic, live, live, candidate),
                           "dr", 10, advice)
    return traffic, advice, verdict


def test_the_advice_names_the_spend_cap_the_bandit_is_at_not_its_share(tmp_path, monkeypatch):
    # m2, as good as m1, costs 10x: exploring it spends over extra_cost_share at once, and the
    # bandit plays m1 for certain from then on, far under its explore_share of 1.0 (the reviewer's
    # gateway: explore_share 0.8, 11.5 % explored, extra_cost_share 0.0402 against 0.04).
    monkeypatch.setenv("OPENCLAW_MASTER_KEY", KEY)
    db = f"sqlite:///{tmp_path}/o.sqlite"
    extra = ("learning: {bandit: {enabled: true, explore_share: 1.0, extra_cost_share: 0.01, total_cost_share: null, "
             "budget_horizon: 100}}")
    with FakeUpstream() as up:
        gw = Running(fake_config(up.base_url, db, models=_models(0.1), extra=extra), router=QualityRouter(QUALITY))
        try:
            _serve_and_rate(gw, 30)
            state = check_gateway(gw.url)  # what retrain --gateway reads before training
        finally:
            gw.stop()
    assert state["caps"] == {"explore_share": 1.0, "new_model_explore_share": 0.05, "extra_cost_share": 0.01,
                             "total_cost_share": None}
    assert state["recent"]["extra_cost_share"] > 0.01 and state["recent"]["explore_share"] < 0.2, state["recent"]
    traffic, advice, verdict = _advice_for_m3(db, state, gw.url)
    assert len(traffic) == 30 and 0 < np.mean(traffic.propensity < 1) < 0.2
    recent = state["recent"]
    # `recent.decisions` is a weight decayed over the budget horizon, not a count of the latest decisions.
    assert (f"on {gw.url} now (its recent decisions, weighing about {recent['decisions']:,.0f}, {state['decisions']:,} since "
            f"start), learning.bandit's extra_cost_share "
            f"{recent['extra_cost_share']:.4f} (cap 0.01) has reached the cap: raise it; explore_share "
            f"{recent['explore_share']:.4f} (cap 1), new_model_explore_share 0.0000 (cap 0.05) are not what stops it") in advice
    assert not verdict.promote and verdict.reason.startswith("the log does not support the candidate's choices")
    assert verdict.reason.endswith(advice) and advice.endswith("; or collect more traffic")


@pytest.mark.parametrize("failed_over", [False, True], ids=["answered", "failed-over"])
def test_the_advice_names_the_refinements_the_log_made_for_certain(tmp_path, monkeypatch, failed_over):
    # m1's answers cost ~100x what was predicted: the bandit refines to m2, for certain (it may not
    # explore: explore_share 0). A candidate back on m1 is unsupported there, and told why. A refined
    # request that then failed over logs the refinement after its fallback (`request_summary.reason`):
    # such rows had not been counted.
    monkeypatch.setenv("OPENCLAW_MASTER_KEY", KEY)
    db = f"sqlite:///{tmp_path}/o.sqlite"
    extra = ("learning: {bandit: {enabled: true, explore_share: 0.0, new_model_explore_share: 0.0, "
             "extra_cost_share: 10.0, total_cost_share: null}}")
    with FakeUpstream() as up:
        up.default("m1", ok("word " * 4000))
        gw = Running(fake_config(up.base_url, db, models=_models(0.01), extra=extra), router=QualityRouter(QUALITY))
        try:
            _serve_and_rate(gw, 12, wait_for_cost=True)
            state = check_gateway(gw.url)
        finally:
            gw.stop()
    if failed_over:
        with sqlite3.connect(f"{tmp_path}/o.sqlite") as conn:
            conn.execute("UPDATE outcomes SET reason = 'm3: fallback after m2 (server); routed: ' || reason "
                         "WHERE reason LIKE 'bandit refinement:%'")
    traffic = load_traffic(db)
    refined = sum(traffic.models[a] == "m2" for a in traffic.action)
    assert np.all(traffic.propensity == 1.0) and 0 < refined < len(traffic)
    advice = exploration_advice(db, traffic, np.full(len(traffic), traffic.models.index("m1")), state, gw.url)
    assert advice.startswith("explore more: the gateway explored none of these requests (each is logged with propensity 1); "
                             f"on {gw.url} now (its recent decisions, weighing about 12, 12 since start), learning.bandit's "
                             "explore_share 0.0000 (cap 0) has "
                             "reached the cap: raise it;"), advice
    assert (f"; {refined} of the {refined} choices the candidate changes where the log chose for certain are the bandit's "
            f"refinements (feedback or realised prices moved its choice off the router's own; outside exploration it plays "
            f"them with propensity 1), {refined} of them back to the router's own choice; or collect more traffic") in advice

