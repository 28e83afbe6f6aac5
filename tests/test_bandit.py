"""The contextual bandit: propensities, constraints, budgets, online learning, thread safety,
and the propensity it logs through a running gateway."""
from __future__ import annotations

import re
import threading
from contextlib import contextmanager

import httpx
import numpy as np
import pytest

from router.bandit import BanditSettings, ContextualBandit
from router.types import Candidate, Decision
from tests.fake_upstream import FakeUpstream
from tests.gateway_harness import QualityRouter, Running, fake_config, routed_questions

MODELS = ["a", "b", "c", "d"]


def _arrays(p=(0.80, 0.79, 0.78, 0.30), std=(0.05, 0.05, 0.05, 0.05), cost=(1e-3, 1e-3, 1e-3, 1e-4)):
    p, cost = np.array(p), np.array(cost)
    return dict(models=list(MODELS), p_good=p, p_good_std=np.array(std), penalty=cost / 0.1, cost=cost)


def test_propensities_are_a_distribution_and_match_the_draws():
    bandit = ContextualBandit(BanditSettings(explore_share=1.0, extra_cost_share=10.0, seed=1))
    rng = np.random.default_rng(0)
    counts = dict.fromkeys(MODELS, 0)
    first = None
    for _ in range(3000):
        choice = bandit.choose(**_arrays(), rng=rng)
        assert sum(choice.probabilities.values()) == pytest.approx(1.0)
        assert choice.propensity == choice.probabilities[choice.model] > 0
        counts[choice.model] += 1
        first = first or choice.probabilities
    assert first["d"] == 0.0  # far below the best utility: never explored
    assert 0 < first["b"] < 1 and 0 < first["a"] < 1
    # With no feedback the probabilities stay put, so the empirical frequencies match them.
    for m in ("a", "b", "c"):
        assert counts[m] / 3000 == pytest.approx(first[m], abs=0.04)


def test_only_eligible_candidates_are_ever_chosen():
    bandit = ContextualBandit(BanditSettings(explore_share=1.0, extra_cost_share=10.0))
    cands = (
        Candidate("a", 0.80, 0.1, 10, 1e-3, 1.0, 0.79),
        Candidate("x", 0.95, 0.1, 10, 1e-3, 1.0, 0.94, excluded="not in allowed models"),
        Candidate("b", 0.79, 0.1, 10, 1e-3, 1.0, 0.78),
    )
    decision = Decision("a", cands, "a: best utility", 0.1)
    seen = set()
    for i in range(300):
        d = bandit.choose_for(decision, request_id=f"r{i}")
        seen.add(d.model)
        assert d.model != "x" and 0 < d.propensity <= 1
        assert d.candidates[0].model == d.model
    assert seen == {"a", "b"}


def test_exploration_share_budget_is_respected():
    s = BanditSettings(explore_share=0.05, extra_cost_share=10.0, seed=3)
    bandit = ContextualBandit(s)
    rng = np.random.default_rng(1)
    explored = sum(bandit.choose(**_arrays(), rng=rng).explored for _ in range(4000))
    assert bandit.stats()["explore_share"] <= s.explore_share + 0.01
    assert explored / 4000 <= s.explore_share + 0.02


def test_a_cap_of_zero_never_explores_not_even_the_first_request():
    # The caps are checked before a decision adds to its account: at the first, an account of 0
    # was "within" a cap of 0 and that request was explored (p=0.48 here).
    for settings in (BanditSettings(explore_share=0.0, extra_cost_share=10.0, seed=5),
                     BanditSettings(explore_share=1.0, new_model_explore_share=0.0, extra_cost_share=10.0, seed=5),
                     BanditSettings(explore_share=1.0, new_model_explore_share=1.0, extra_cost_share=0.0, seed=5)):
        bandit = ContextualBandit(settings)
        new = settings.new_model_explore_share == 0.0  # "b" unseen by the predictor: a new model
        arrays = dict(models=["a", "b"], p_good=np.array([0.90, 0.899]), p_good_std=np.array([0.05, 0.5 if new else 0.05]),
                      penalty=np.zeros(2), cost=np.full(2, 1e-3))
        rng = np.random.default_rng(0)
        assert all(bandit.choose(**arrays, rng=rng).propensity == 1.0 for _ in range(50))
        assert bandit.explore_mass == bandit.new_model_explore_mass == 0.0


def test_a_new_model_has_its_own_exploration_budget():
    # "n" is a model the predictor has never seen (its p_good_std is the unseen-model prior's):
    # exploring it is charged to new_model_explore_share, exploring the known "b" to explore_share.
    s = BanditSettings(explore_share=0.02, new_model_explore_share=0.10, extra_cost_share=10.0, seed=7)
    bandit = ContextualBandit(s)
    arrays = dict(models=["a", "b", "n"], p_good=np.array([0.80, 0.79, 0.70]), p_good_std=np.array([0.05, 0.05, 0.5]),
                  penalty=np.zeros(3), cost=np.full(3, 1e-3))
    rng = np.random.default_rng(3)
    chosen = [bandit.choose(**arrays, rng=rng).model for _ in range(4000)]
    stats = bandit.stats()
    # Each share is reported under its cap's name, as that cap counts it: explore_share is the known
    # models' alone (it had counted "n" as well, 0.07 against a cap of 0.02 on a reviewer's gateway).
    for shares in (stats, stats["recent"]):
        assert shares["explore_share"] <= s.explore_share + 0.005, shares
        assert s.new_model_explore_share - 0.01 <= shares["new_model_explore_share"] <= s.new_model_explore_share + 0.005
    assert stats["explore_share"] == pytest.approx(bandit.explore_mass / 4000)
    assert chosen.count("b") / 4000 <= s.explore_share + 0.01
    assert chosen.count("n") / 4000 > 2 * s.explore_share  # explored beyond the known models' cap
    # Once `new_model_observations` rewards have come in, "n" is known: exploring it is routine.
    z = bandit.context(None)
    for i in range(int(s.new_model_observations) + 20):
        bandit.update("n", z, float(i % 5 != 0), 0.80)  # as good as predicted, and as "a"
    arrays["p_good"] = np.array([0.80, 0.79, 0.80])
    new_mass, known_mass = bandit.new_model_explore_mass, bandit.explore_mass
    later = [bandit.choose(**arrays, rng=rng) for _ in range(2000)]
    assert any(c.explored and c.model == "n" for c in later)
    assert bandit.new_model_explore_mass == new_mass and bandit.explore_mass > known_mass
    # A known model whose change was detected is news for the spend cap, but not a new model.
    for _ in range(200):
        bandit.update("b", z, 0.0, 0.79)
    _, _, news, new = bandit._posterior(["b"], z, np.array([0.05]))
    assert bandit.stats()["arms"]["b"]["resets"] >= 1 and news[0] and not new[0]


def test_a_replica_meeting_a_new_model_through_shared_rewards_treats_it_as_new():
    from service.bandit_sync import BanditSync

    arrays = dict(models=["a", "n"], p_good=np.array([0.80, 0.70]), p_good_std=np.array([0.05, 0.5]),
                  penalty=np.zeros(2), cost=np.full(2, 1e-3))
    deciding, peer = ContextualBandit(BanditSettings(seed=1)), ContextualBandit(BanditSettings(seed=1))
    published: list[dict] = []
    sync = BanditSync(deciding, client=None)
    sync._publish = published.append  # what would go on the Redis stream
    rng = np.random.default_rng(0)
    for i in range(400):
        choice = deciding.choose(**arrays, request_id=f"r{i}", rng=rng)
        if choice.model == "n":
            sync.feedback(f"r{i}", 1.0)
    rewards = [f for f in published if f["kind"] == "obs"]
    assert rewards, "the new model was never explored"
    peer_sync = BanditSync(peer, client=None)
    for fields in rewards:
        peer_sync.apply({**fields, "from": "another replica"})
    z = deciding.context(None)
    mine, theirs = deciding._posterior(["n"], z, np.array([0.5])), peer._posterior(["n"], z, np.array([0.5]))
    # the same evidence, the same (wide) prior: the same correction, and the model is news to both
    assert theirs[0][0] == pytest.approx(mine[0][0]) and theirs[1][0] == pytest.approx(mine[1][0])
    assert bool(theirs[2][0]) and bool(mine[2][0]) and bool(theirs[3][0]) == bool(mine[3][0])


def test_costs_are_taken_at_the_prices_calls_turn_out_to_have():
    # "b" is predicted as cheap as "a", but its answers cost 3x the prediction.
    settings = BanditSettings(explore_share=1.0, extra_cost_share=10.0, total_cost_share=None, seed=8)
    learnt, naive = ContextualBandit(settings), ContextualBandit(settings)
    for _ in range(300):
        learnt.observe_cost("b", 1e-3, 3e-3)
    ratios = learnt.cost_ratios(["a", "b"])
    assert ratios[0] == 1.0 and 2.9 < ratios[1] <= 3.0
    # At $0.01 per quality point, 1 point of quality does not pay for b's real price.
    arrays = dict(models=["a", "b"], p_good=np.array([0.80, 0.81]), p_good_std=np.array([0.01, 0.01]),
                  penalty=np.full(2, 1e-3 / 0.01), cost=np.full(2, 1e-3))
    rng = np.random.default_rng(5)
    assert naive.choose(**arrays, rng=rng, willingness_to_pay=0.01).greedy == "b"
    assert learnt.choose(**arrays, rng=rng, willingness_to_pay=0.01).greedy == "a"
    # Spend is accounted at those prices too: exploring b is extra spend although predicted equal.
    arrays["p_good"] = np.array([0.80, 0.79])
    for bandit in (learnt, naive):
        for _ in range(500):
            bandit.choose(**arrays, rng=rng)
    assert naive.extra_spend == pytest.approx(0.0, abs=1e-12)
    assert learnt.extra_spend > 0


def test_extra_spend_budget_is_respected():
    # b and c are as good as a but cost 10x: exploring them is what the $ cap must stop.
    arrays = _arrays(p=(0.80, 0.80, 0.80, 0.3), cost=(1e-4, 1e-3, 1e-3, 1e-5))
    arrays["penalty"] = np.zeros(4) + np.array([0, 0.001, 0.001, 0])  # nearly free for the utility
    s = BanditSettings(explore_share=1.0, extra_cost_share=0.10, seed=4)
    bandit = ContextualBandit(s)
    rng = np.random.default_rng(2)
    spend = sum(arrays["cost"][MODELS.index(bandit.choose(**arrays, rng=rng).model)] for _ in range(3000))
    base = 3000 * 1e-4
    assert spend <= base * (1 + s.extra_cost_share) * 1.15  # realised draws around the expected cap
    assert spend > base  # it did explore within the cap


def _spend_with_feedback(settings, truth, n=2000, seed=6):
    """Requests over a cheap model "a" and a 10x pricier "b" that the predictor puts just below
    it; rewards drawn from `truth`. Returns (total spend, share of "b" in the last quarter)."""
    arrays = _arrays(p=(0.80, 0.78, 0.30, 0.30), cost=(1e-4, 1e-3, 1e-4, 1e-4))
    arrays["penalty"] = arrays["cost"]  # willingness to pay 1 USD: spend barely matters to utility
    bandit = ContextualBandit(settings)
    rng = np.random.default_rng(seed)
    spend, late_b = 0.0, 0
    for i in range(n):
        choice = bandit.choose(**arrays, request_id=f"r{i}", rng=rng)
        spend += arrays["cost"][MODELS.index(choice.model)]
        late_b += i >= 3 * n // 4 and choice.model == "b"
        bandit.feedback(f"r{i}", float(rng.random() < truth[choice.model]))
    return spend, late_b / (n // 4)


def test_total_spend_cap_prices_refinement_but_not_news():
    def settings(cap):  # exploring "b" is not held back by the exploration budgets here
        return BanditSettings(explore_share=0.1, extra_cost_share=10.0, total_cost_share=cap, seed=6)

    # "b" is really 12 points better than predicted: a refinement of a model the predictor knows.
    better_b = {"a": 0.80, "b": 0.90, "c": 0.3, "d": 0.3}
    base = 2000 * 1e-4  # the predictor's own choice is always "a"
    uncapped, _ = _spend_with_feedback(settings(None), better_b)
    capped, _ = _spend_with_feedback(settings(0.05), better_b)
    assert uncapped > 3 * base  # left alone, exploiting the correction moves the traffic to "b"
    assert capped <= base * 1.05 * 1.1  # the shadow price holds the whole spend near the cap
    # "a" breaks (news: its CUSUM fires): leaving it for "b" is not charged to the cap.
    broken_a = {"a": 0.20, "b": 0.78, "c": 0.3, "d": 0.3}
    spend, late_b = _spend_with_feedback(settings(0.05), broken_a)
    assert late_b > 0.8 and spend > 5 * base


def test_online_feedback_moves_traffic_away_from_a_degraded_model():
    bandit = ContextualBandit(BanditSettings(explore_share=0.1, extra_cost_share=10.0, seed=5))
    rng = np.random.default_rng(3)
    arrays = _arrays(p=(0.90, 0.80, 0.60, 0.30))
    emb = rng.normal(size=384)
    before = [bandit.choose(**arrays, embedding=emb, rng=rng).model for _ in range(200)]
    assert before.count("a") > 170
    for i in range(400):  # "a" now fails most of the time; feedback arrives by request id
        choice = bandit.choose(**arrays, embedding=emb, request_id=f"q{i}", rng=rng)
        reward = float(rng.random() < (0.2 if choice.model == "a" else 0.8))
        assert bandit.feedback(f"q{i}", reward)
    after = [bandit.choose(**arrays, embedding=emb, rng=rng).model for _ in range(200)]
    assert after.count("b") > after.count("a")
    assert not bandit.feedback("never-seen", 1.0)


@pytest.mark.parametrize("reward", [float("nan"), float("inf"), -0.5, 50.0])
def test_a_reward_outside_zero_to_one_is_refused_and_the_decision_keeps_waiting(reward):
    bandit = ContextualBandit(BanditSettings(explore_share=0.0, extra_cost_share=10.0, seed=5))
    rng = np.random.default_rng(3)
    emb = rng.normal(size=384)
    choice = bandit.choose(**_arrays(), embedding=emb, request_id="q", rng=rng)
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        bandit.feedback("q", reward)
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        bandit.update(choice.model, bandit.context(emb), reward, 0.8)
    assert all(arm["n_eff"] == 0 for arm in bandit.stats()["arms"].values())  # nothing learnt from it
    assert bandit.feedback("q", 1.0)  # the valid reward that follows still finds its decision


def test_a_choice_feedback_corrected_is_called_a_refinement_and_a_rebase_forgets_it():
    bandit = ContextualBandit(BanditSettings(explore_share=0.0, extra_cost_share=10.0, seed=5))
    rng = np.random.default_rng(3)
    emb = rng.normal(size=384)
    cands = tuple(Candidate(m, p, 0.05, 10, 1e-3, 1.0, p) for m, p in (("a", 0.90), ("b", 0.80), ("c", 0.60)))
    decision = Decision("a", cands, "a: best utility", 0.1, embedding=emb)
    for i in range(300):  # "a" fails, "b" succeeds: feedback corrects the predictions
        d = bandit.choose_for(decision, request_id=f"q{i}", rng=rng)
        bandit.feedback(f"q{i}", float(d.model != "a"))
    d = bandit.choose_for(decision, request_id="last", rng=rng)
    assert d.model == "b" and d.reason.startswith("bandit refinement: b") and "instead of a" in d.reason
    bandit.rebase(None)  # a new router: what was learnt against the old one's predictions goes
    assert bandit.stats()["arms"] == {} and bandit.choose_for(decision, request_id="new", rng=rng).model == "a"


def test_concurrent_choices_and_updates_are_consistent():
    # No forgetting and no change detection: every reward must be counted exactly once.
    bandit = ContextualBandit(BanditSettings(explore_share=1.0, extra_cost_share=10.0, forgetting=1.0,
                                             cusum_threshold=float("inf")))
    errors, known = [], []

    def work(k):
        rng = np.random.default_rng(k)
        try:
            for i in range(300):
                bandit.choose(**_arrays(), embedding=rng.normal(size=384), request_id=f"{k}-{i}", rng=rng)
                known.append(bandit.feedback(f"{k}-{i}", float(rng.random() < 0.5)))
        except Exception as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(6)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert not errors
    stats = bandit.stats()
    assert stats["decisions"] == 1800 and len(known) == 1800 and all(known)  # every decision found its reward
    assert sum(a["n_eff"] for a in stats["arms"].values()) == pytest.approx(1800)  # none lost, none twice
    assert sum(a["n_eff"] > 0 for a in stats["arms"].values()) >= 3


@contextmanager
def exploring_gateway(tmp_path):
    """A gateway whose bandit may explore on every request, between two near-equal models."""
    quality = {"m1": 0.80, "m2": 0.795, "m3": 0.2}
    with FakeUpstream() as up:
        config = fake_config(up.base_url, f"sqlite:///{tmp_path}/o.sqlite",
                             extra="learning: {bandit: {enabled: true, explore_share: 1.0, extra_cost_share: 10.0, "
                                   "total_cost_share: 10.0, budget_horizon: 250}}")
        gw = Running(config, router=QualityRouter(quality))
        try:
            yield gw
        finally:
            gw.stop()


def test_gateway_logs_the_bandit_propensity(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENCLAW_MASTER_KEY", "mk-bandit-test")
    with exploring_gateway(tmp_path) as gw:
        ids = routed_questions(gw, 40)
        rows = [gw.outcome(rid) for rid, _ in ids]
        state = httpx.get(f"{gw.url}/admin/router/bandit", headers={"authorization": "Bearer mk-bandit-test"}).json()
    assert state["decisions"] == 40 and 0 < state["explore_share"] <= 1
    learning = next(h for h in gw.gateway.pipeline.hooks if h.name == "learning")
    settings = learning.rt.bandit.settings  # the config's caps reached the bandit
    assert settings.total_cost_share == 10.0 and settings.budget_horizon == 250
    answered = {m for _, m in ids}
    assert answered <= {"m1", "m2"} and len(answered) == 2  # explored, never the far-worse m3
    for (rid, model), row in zip(ids, rows):
        assert row["chosen_model"] == model and 0 < row["propensity"] < 1
        if model == "m2":
            assert row["reason"].startswith("bandit exploration")
    # Each answer's realised cost reaches the bandit in a post-hook (awaited when the gateway stopped).
    assert set(learning.rt.bandit._cost_seen) == answered
    # /metrics counts the choice that was called, the bandit's, not the router's pick before it.
    counted = {m: float(n) for m, n in re.findall(r'^openclaw_routing_choices_total\{model="([^"]+)",profile="auto"\} (\S+)$',
                                                   gw.gateway.metrics.render().decode(), re.M)}
    assert counted == {m: float(sum(model == m for _, model in ids)) for m in answered}


def test_exploration_is_sticky_within_an_agent_tool_loop(tmp_path):
    """Every step of one user turn's tool loop gets the model its first step got; other turns
    still explore."""
    call = {"id": "call_1", "type": "function", "function": {"name": "read_file", "arguments": "{\"path\": \"a.py\"}"}}
    with exploring_gateway(tmp_path) as gw:
        client = gw.client()
        per_turn = []
        for turn in range(12):
            history = [{"role": "system", "content": "You are a coding agent."},
                       {"role": "user", "content": f"Fix the failing test number {turn}."}]
            models = []
            for step in range(4):
                models.append(client.chat.completions.create(model="auto", messages=history).model)
                history = history + [{"role": "assistant", "content": None, "tool_calls": [call]},
                                     {"role": "tool", "tool_call_id": "call_1", "content": f"step {step} output"}]
            per_turn.append(models)
    assert all(len(set(models)) == 1 for models in per_turn), per_turn
    assert len({models[0] for models in per_turn}) == 2  # turns still explore m1 and m2


def test_a_hot_reload_to_another_basis_width_never_fails_a_decision_or_its_feedback():
    # A reload to a router trained with another PCA width (`train --pca-dim 8`) rebases the bandit
    # while worker threads route and take feedback: a decision straddling it raised (a 500).
    import threading
    import time

    rng = np.random.default_rng(0)
    wide, narrow = ((np.zeros(384), np.linalg.qr(rng.normal(size=(384, d)))[0]) for d in (16, 8))
    bandit = ContextualBandit(BanditSettings(explore_share=1.0, extra_cost_share=10.0), basis=wide)
    errors, stop = [], threading.Event()

    def route(k: int) -> None:
        local = np.random.default_rng(k)
        for i in range(10**9):
            if stop.is_set():
                return
            try:
                bandit.choose(["m1", "m2"], np.array([0.8, 0.79]), np.array([0.05, 0.05]), np.zeros(2),
                              np.array([1e-3, 1e-3]), embedding=local.normal(size=384), request_id=f"{k}-{i}")
                bandit.feedback(f"{k}-{i}", 1.0)
            except Exception as exc:  # noqa: BLE001 - any failure is the defect
                errors.append(exc)

    threads = [threading.Thread(target=route, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for swap in range(20):
        bandit.rebase(narrow if swap % 2 == 0 else wide)
        time.sleep(0.05)
    stop.set()
    for t in threads:
        t.join()
    assert errors == []
