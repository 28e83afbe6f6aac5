"""The bandit's budgets hold over a recent horizon of decisions, not since start: budget left
unspent while there was nothing worth exploring does not come out in a burst later."""
from __future__ import annotations

import numpy as np
import pytest

from router.bandit import BanditSettings, ContextualBandit

QUIET = 2000  # decisions with a single eligible model: nothing to explore, nothing spent on it
HORIZON = 200.0  # the budgets' horizon in these tests (small, so QUIET is many horizons)


def _arms(models: list[str], p_good: list[float], std: list[float], cost: list[float]) -> dict:
    return dict(models=models, p_good=np.array(p_good), p_good_std=np.array(std), penalty=np.zeros(len(models)),
                cost=np.array(cost))


def _after_quiet_spell(settings: BanditSettings, seed: int) -> tuple[ContextualBandit, np.random.Generator]:
    """A bandit that made QUIET decisions with "a" alone (nothing to explore), and its generator."""
    bandit, rng = ContextualBandit(settings), np.random.default_rng(seed)
    one = _arms(["a"], [0.80], [0.05], [1e-3])
    for _ in range(QUIET):
        assert bandit.choose(**one, rng=rng).propensity == 1.0
    return bandit, rng


def _explored_mass(bandit: ContextualBandit, arrays: dict, n: int, rng: np.random.Generator) -> np.ndarray:
    """Per decision, the probability given to models other than the greedy choice."""
    out = np.zeros(n)
    for i in range(n):
        choice = bandit.choose(**arrays, rng=rng)
        out[i] = 1.0 - choice.probabilities[choice.greedy]
    return out


def test_a_new_model_after_a_quiet_spell_gets_a_burst_of_at_most_share_times_horizon():
    # A router that does not know "n" is promoted after QUIET decisions with nothing to explore
    # (the hot-reload case): "n" may be explored on new_model_explore_share of the recent
    # traffic, not on that share of every decision since the process started.
    s = BanditSettings(new_model_explore_share=0.05, extra_cost_share=10.0, budget_horizon=HORIZON, seed=2)
    bandit, rng = _after_quiet_spell(s, seed=0)
    mass = _explored_mass(bandit, _arms(["a", "n"], [0.80, 0.75], [0.05, 0.5], [1e-3, 1e-3]), 2400, rng)
    assert mass[0] > 0.3  # Thompson would explore "n" on almost every other request, were it free
    burst = 400
    # The account is at most share x horizon plus one decision's mass (<= 1) over the cap, and it
    # loses 1/horizon of itself per decision: over `burst` decisions at most share x (horizon +
    # burst) + 1 + burst / horizon = 33. Since start it was share x (QUIET + burst) = 120.
    assert mass[:burst].sum() <= s.new_model_explore_share * (HORIZON + burst) + 1.0 + burst / HORIZON
    # Over the long run the share converges to the cap.
    assert mass[burst:].mean() == pytest.approx(s.new_model_explore_share, abs=0.005)
    recent = bandit.stats()["recent"]
    assert recent["decisions"] == pytest.approx(HORIZON, rel=0.01)
    assert recent["new_model_explore_share"] == pytest.approx(s.new_model_explore_share, abs=0.01)


def test_spend_left_unspent_long_ago_does_not_fund_a_splurge():
    # The exploration spend cap, likewise: after QUIET decisions of "a" alone, a 10x dearer "b"
    # as good as "a" appears. Its exploration's extra spend is capped over the horizon only.
    s = BanditSettings(explore_share=1.0, extra_cost_share=0.04, budget_horizon=HORIZON, seed=3)
    bandit, rng = _after_quiet_spell(s, seed=1)
    n = 100
    extra = _explored_mass(bandit, _arms(["a", "b"], [0.80, 0.79], [0.05, 0.05], [1e-3, 1e-2]), n, rng) * (1e-2 - 1e-3)
    assert extra[0] > 3e-3  # unconstrained, exploring "b" costs this much per request
    # Since start the allowance would be 0.04 x QUIET x 1e-3 = 0.08 USD, spent in ~20 requests.
    assert extra.sum() <= s.extra_cost_share * 1e-3 * (HORIZON + n) + 1e-2


def test_an_infinite_horizon_is_since_start_and_a_horizon_under_one_is_refused():
    s = BanditSettings(new_model_explore_share=0.05, extra_cost_share=10.0, budget_horizon=float("inf"), seed=2)
    bandit, _ = _after_quiet_spell(s, seed=0)
    assert bandit.stats()["recent"]["decisions"] == QUIET
    with pytest.raises(ValueError, match="budget_horizon"):
        ContextualBandit(BanditSettings(budget_horizon=0.5))
