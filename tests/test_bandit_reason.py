"""The bandit's routing reason names what moved its choice: feedback it learnt from, or the prices
calls turned out to have; never "feedback" on a gateway that has had none."""
from __future__ import annotations

import time

import httpx
import numpy as np

from router.bandit import BanditSettings, ContextualBandit
from router.types import Candidate, Decision
from tests.fake_upstream import FakeUpstream, ok
from tests.gateway_harness import QualityRouter, Running, fake_config

# Not exploring: every choice off the predictor's is the bandit's refinement.
STILL = BanditSettings(explore_share=0.0, new_model_explore_share=0.0, extra_cost_share=10.0, seed=5)


def _decision(emb: np.ndarray) -> Decision:
    # (model, p_good, p_good_std, output tokens, cost $, latency s, utility): a costs 0.02 of utility, b 0.01
    cands = (Candidate("a", 0.90, 0.05, 10, 1e-3, 1.0, 0.88), Candidate("b", 0.885, 0.05, 10, 1e-3, 1.0, 0.875))
    return Decision("a", cands, "a: best utility", 0.1, embedding=emb)


def test_a_choice_moved_by_realised_prices_says_so_and_not_feedback():
    bandit = ContextualBandit(STILL)
    emb = np.random.default_rng(1).normal(size=384)
    decision = _decision(emb)
    for _ in range(30):  # a's answers cost 4x what was predicted; no reward ever comes
        bandit.observe_cost("a", 1e-3, 4e-3)
    d = bandit.choose_for(decision, request_id="q", rng=np.random.default_rng(0))
    assert d.model == "b", d.reason
    ratios = bandit.stats()["cost_ratios"]  # what GET /admin/router/bandit returns
    assert set(ratios) == {"a"} and ratios["a"]["ratio"] > 1 and ratios["a"]["calls"] > 20
    # The reason gives the ratio the bandit priced a with, as the admin API shows it.
    assert d.reason.startswith(f"bandit refinement: b instead of a (realised prices: a costs {ratios['a']['ratio']:.2f}x "
                               "its predicted cost"), d.reason
    assert "feedback" not in d.reason  # it said "(corrected by feedback)" with no feedback at all


def test_a_choice_moved_by_feedback_names_the_corrections_not_prices():
    bandit = ContextualBandit(STILL)
    rng = np.random.default_rng(3)
    decision = _decision(rng.normal(size=384))
    for i in range(300):  # a fails, b succeeds; prices as predicted
        d = bandit.choose_for(decision, request_id=f"q{i}", rng=rng)
        bandit.observe_cost(d.model, 1e-3, 1e-3)
        bandit.feedback(f"q{i}", float(d.model != "a"))
    d = bandit.choose_for(decision, request_id="last", rng=rng)
    assert d.model == "b" and d.reason.startswith("bandit refinement: b instead of a (feedback corrected P(good): b +")
    assert "realised prices" not in d.reason


def _bandit_state(gw: Running) -> dict:
    return httpx.get(f"{gw.url}/admin/router/bandit", headers={"authorization": "Bearer mk-reason-test"}).json()


def _calls(state: dict) -> float:
    return sum(r["calls"] for r in state["cost_ratios"].values())


def _after_the_cost_of_one_more_call(gw: Running, before: dict) -> dict:
    """The bandit's state once it has the realised cost of a call more than in `before`."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        state = _bandit_state(gw)
        if _calls(state) > _calls(before):
            return state
        time.sleep(0.02)
    raise AssertionError(f"no realised cost reached the bandit: {before['cost_ratios']}")


def test_a_fresh_gateway_without_feedback_explains_its_refinements_by_price(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENCLAW_MASTER_KEY", "mk-reason-test")
    quality = {"m1": 0.9, "m2": 0.899, "m3": 0.2}
    extra = ("learning: {bandit: {enabled: true, explore_share: 0.0, new_model_explore_share: 0.0, "
             "extra_cost_share: 10.0, total_cost_share: null}}")
    reasons = []
    with FakeUpstream() as up:
        up.default("m1", ok("word " * 4000))  # ~5,000 output tokens where 50 were predicted
        gw = Running(fake_config(up.base_url, f"sqlite:///{tmp_path}/o.sqlite", extra=extra), router=QualityRouter(quality))
        try:
            state = _bandit_state(gw)
            for i in range(12):
                raw = gw.client().chat.completions.with_raw_response.create(
                    model="auto", messages=[{"role": "user", "content": f"question {i}"}])
                reasons.append(raw.headers["x-router-reason"])
                state = _after_the_cost_of_one_more_call(gw, state)  # it reaches the bandit in a post-hook
        finally:
            gw.stop()
    moved = [r for r in reasons if r.startswith("bandit refinement")]
    assert reasons[0].startswith("m1") and moved, reasons
    assert all(r.startswith("bandit refinement: m2 instead of m1 (realised prices: m1 costs ") for r in moved), moved
    assert not any("feedback" in r for r in reasons)
    assert state["cost_ratios"]["m1"]["ratio"] > 5 and sum(a["n_eff"] for a in state["arms"].values()) == 0
