"""Off-policy estimators on a synthetic logged policy whose true value is known analytically."""
import numpy as np
import pytest

from router import ope

N_CTX, K = 6, 4


def _world(seed=0):
    rng = np.random.default_rng(seed)
    mu = rng.uniform(0.1, 0.9, size=(N_CTX, K))  # P(reward=1 | context, action)
    logits = rng.normal(size=(N_CTX, K))
    logging = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return mu, logging


def _log(mu, logging, n, seed, q_noise=None):
    rng = np.random.default_rng(seed)
    ctx = rng.integers(0, N_CTX, size=n)
    cum = logging[ctx].cumsum(axis=1)
    actions = (rng.random(n)[:, None] > cum).sum(axis=1)
    rewards = (rng.random(n) < mu[ctx, actions]).astype(float)
    q_hat = None
    if q_noise is not None:
        q_hat = np.clip(mu[ctx] + q_noise, 0, 1)
    return ctx, ope.LoggedData(actions=actions, rewards=rewards, propensities=logging[ctx, actions], q_hat=q_hat)


def _true_value(mu, target):
    return float(np.mean(np.sum(target * mu, axis=1)))  # contexts are uniform


def test_estimates_cover_the_analytic_value():
    mu, logging = _world()
    best = np.eye(K)[mu.argmax(axis=1)]  # deterministic target: the best action per context
    truth = _true_value(mu, best)
    ctx, log = _log(mu, logging, 20_000, seed=1, q_noise=0.15)  # a biased reward model: DR must still be right
    est = ope.evaluate(log, best[ctx])
    assert set(est) == {"ips", "snips", "dr"}
    for name, e in est.items():
        assert e.lo <= truth <= e.hi, (name, e, truth)
        assert e.hi - e.lo < 0.1
    # the logging policy's own value is the plain mean reward, which SNIPS must reproduce exactly
    assert ope.snips(log, logging[ctx]).value == pytest.approx(log.rewards.mean())


def test_interval_coverage_over_replications():
    mu, logging = _world(seed=3)
    rng = np.random.default_rng(7)
    target = rng.dirichlet(np.ones(K), size=N_CTX)  # a stochastic target policy
    truth = _true_value(mu, target)
    hits = {"ips": 0, "snips": 0, "dr": 0}
    reps = 120
    for r in range(reps):
        ctx, log = _log(mu, logging, 800, seed=100 + r, q_noise=np.random.default_rng(r).normal(0, 0.1, size=(800, K)))
        for name, e in ope.evaluate(log, target[ctx], seed=r).items():
            hits[name] += e.lo <= truth <= e.hi
    for name, h in hits.items():
        assert h / reps >= 0.85, (name, h / reps)


def _turn_log(mu, logging, turns, steps, seed):
    """The gateway's way of logging: one draw per user turn, every step of its loop the same action."""
    rng = np.random.default_rng(seed)
    ctx = np.repeat(rng.integers(0, N_CTX, size=turns), steps)
    turn_actions = (rng.random(turns)[:, None] > logging[ctx[::steps]].cumsum(axis=1)).sum(axis=1)
    actions = np.repeat(turn_actions, steps)
    rewards = (rng.random(turns * steps) < mu[ctx, actions]).astype(float)
    return ctx, actions, rewards


def test_intervals_cover_when_one_draw_serves_a_whole_turn():
    mu, logging = _world(seed=5)
    logging = 0.5 * logging + 0.5 / K  # weights of at most 8: the CLT's own shortfall stays small
    target = np.eye(K)[mu.argmax(axis=1)]
    truth = _true_value(mu, target)
    hits = {"clustered": {"ips": 0, "snips": 0}, "as_if_independent": {"ips": 0, "snips": 0}}
    reps, turns, steps = 120, 400, 8
    for r in range(reps):
        ctx, actions, rewards = _turn_log(mu, logging, turns, steps, seed=500 + r)
        for kind, clusters in (("clustered", np.repeat(np.arange(turns), steps)), ("as_if_independent", None)):
            log = ope.LoggedData(actions=actions, rewards=rewards, propensities=logging[ctx, actions], clusters=clusters)
            for name in ("ips", "snips"):
                e = ope.ips(log, target[ctx]) if name == "ips" else ope.snips(log, target[ctx], n_boot=300, seed=r)
                hits[kind][name] += e.lo <= truth <= e.hi
    for name in ("ips", "snips"):
        assert hits["clustered"][name] / reps >= 0.9, hits
        # the steps of a turn share its draw: counting them as independent under-covers
        assert hits["as_if_independent"][name] < hits["clustered"][name], hits


def test_doubly_robust_beats_ips_with_a_good_reward_model():
    mu, logging = _world(seed=5)
    best = np.eye(K)[mu.argmax(axis=1)]
    ctx, log = _log(mu, logging, 5000, seed=2, q_noise=0.0)
    width = {k: e.hi - e.lo for k, e in ope.evaluate(log, best[ctx]).items()}
    assert width["dr"] < width["ips"]


def test_compare_orders_a_better_and_a_worse_policy():
    mu, logging = _world(seed=11)
    best = np.eye(K)[mu.argmax(axis=1)]
    worst = np.eye(K)[mu.argmin(axis=1)]
    gap = _true_value(mu, best) - _true_value(mu, worst)
    ctx, log = _log(mu, logging, 10_000, seed=4, q_noise=0.05)
    diff = ope.compare(log, best[ctx], worst[ctx])
    for name, e in diff.items():
        assert e.lo > 0, (name, e)
        assert e.lo <= gap <= e.hi, (name, e, gap)
    same = ope.compare(log, best[ctx], best[ctx])
    assert same["ips"].value == 0.0 and same["ips"].lo == 0.0


def test_against_the_logging_policy_itself_no_support_is_needed():
    # A bandit's refinement logs another model with probability 1 where the live router's argmax
    # would have chosen a third: that argmax has no support there, the logged policy always has.
    mu, logging = _world(seed=5)
    best = np.eye(K)[mu.argmax(axis=1)]
    ctx, log = _log(mu, logging, 20_000, seed=2, q_noise=0.05)
    logged_value = _true_value(mu, logging)
    for name, e in ope.evaluate(log, None).items():
        assert e.value == pytest.approx(log.rewards.mean()) and e.lo <= logged_value <= e.hi, name
    gap = _true_value(mu, best) - logged_value
    for name, e in ope.compare(log, best[ctx], None).items():
        assert e.lo > 0 and e.lo <= gap <= e.hi, (name, e, gap)
    assert ope.compare(log, best[ctx], None)["ips"].value == pytest.approx(
        ope.compare(log, best[ctx], logging[ctx])["ips"].value)  # the same thing, where the propensities are all known


def test_rejects_invalid_propensities():
    with pytest.raises(ValueError, match="propensities"):
        ope.LoggedData(actions=np.array([0]), rewards=np.array([1.0]), propensities=np.array([0.0]))
    with pytest.raises(ValueError, match="reward model"):
        ope.doubly_robust(ope.LoggedData(np.array([0]), np.array([1.0]), np.array([1.0])), np.ones((1, 1)))


def test_nan_propensities_and_improper_target_policies_are_refused():
    from router.ope import LoggedData, ips

    with pytest.raises(ValueError, match="propensities"):
        LoggedData(actions=np.array([0, 1]), rewards=np.array([1.0, 0.0]), propensities=np.array([0.5, np.nan]))
    log = LoggedData(actions=np.array([0, 1]), rewards=np.array([1.0, 0.0]), propensities=np.array([0.5, 0.5]))
    with pytest.raises(ValueError, match="distribution"):
        ips(log, np.array([[1.0, 1.0], [0.5, 0.5]]))  # the first row sums to 2


def test_actions_outside_the_policy_and_a_reward_model_with_nan_are_refused():
    from router.ope import LoggedData, ips

    with pytest.raises(ValueError, match="actions"):  # -1 would quietly index the last action
        LoggedData(actions=np.array([0, -1]), rewards=np.array([1.0, 0.0]), propensities=np.array([0.5, 0.5]))
    with pytest.raises(ValueError, match="q_hat must be finite"):
        LoggedData(actions=np.array([0]), rewards=np.array([1.0]), propensities=np.array([0.5]), q_hat=np.array([[np.nan, 0.5]]))
    log = LoggedData(actions=np.array([0, 2]), rewards=np.array([1.0, 0.0]), propensities=np.array([0.5, 0.5]))
    with pytest.raises(ValueError, match="a logged action is 2, target_probs covers 2 actions"):
        ips(log, np.array([[0.5, 0.5], [0.5, 0.5]]))


def test_ips_without_overlap_is_unknown_not_a_certain_zero():
    from router.ope import LoggedData, compare, ips

    log = LoggedData(actions=np.array([0, 0, 0]), rewards=np.array([1.0, 0.0, 1.0]), propensities=np.array([0.5, 0.5, 0.5]))
    never = np.array([[0.0, 1.0]] * 3)  # the candidate never takes the logged action
    assert np.isnan(ips(log, never).value)
    assert np.isnan(compare(log, never, np.array([[1.0, 0.0]] * 3))["ips"].value)


def _reference_counts(groups: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """The bootstrap written out in full: one n_boot × G array of how often each group is drawn."""
    g = int(groups.max()) + 1
    draws = np.random.default_rng(seed).integers(0, g, size=(n_boot, g))
    return np.stack([np.bincount(row, minlength=g) for row in draws]).astype(np.float64)


def _reference_ratios(counts, groups, terms, w):
    g = counts.shape[1]
    tot_w = counts @ np.bincount(groups, weights=w, minlength=g)
    tot_t = counts @ np.bincount(groups, weights=terms, minlength=g)
    return np.where(tot_w > 0, tot_t / np.where(tot_w > 0, tot_w, 1.0), np.nan)


def test_the_chunked_bootstrap_draws_what_one_full_array_draws():
    # Enough groups that the 1,000 samples come in several chunks.
    mu, logging = _world(seed=5)
    turns, steps = 20_000, 2
    ctx, actions, rewards = _turn_log(mu, logging, turns, steps, seed=9)
    groups = np.repeat(np.arange(turns), steps)
    log = ope.LoggedData(actions=actions, rewards=rewards, propensities=logging[ctx, actions], clusters=groups)
    target = np.eye(K)[mu.argmax(axis=1)][ctx]

    boot = ope.Bootstrap(groups, n_boot=1000, seed=3)
    chunks = list(boot.counts())
    assert len(chunks) > 1 and max(len(c) for c in chunks) * turns <= 1 << 22  # never the whole array at once
    counts = _reference_counts(groups, 1000, 3)
    np.testing.assert_array_equal(np.vstack(chunks), counts)  # the same multinomial draws, in the same order

    wr, w = ope.ips_terms(log, target)
    lo, hi = np.nanpercentile(_reference_ratios(counts, groups, wr, w), [2.5, 97.5])
    e = ope.snips(log, target, seed=3)
    # Sums of the same numbers; only the BLAS's order of adding may differ.
    np.testing.assert_allclose([e.lo, e.hi], [lo, hi], rtol=1e-12)
    d = ope.compare(log, target, None, seed=3)["snips"]
    boots = (_reference_ratios(counts, groups, wr, w)
             - _reference_ratios(counts, groups, rewards, np.ones(len(rewards))))
    np.testing.assert_allclose([d.lo, d.hi], np.nanpercentile(boots, [2.5, 97.5]), rtol=1e-12)


def test_estimates_sharing_one_bootstrap_are_those_drawn_apart():
    mu, logging = _world(seed=5)
    ctx, actions, rewards = _turn_log(mu, logging, 300, 4, seed=2)
    groups = np.repeat(np.arange(300), 4)
    target = np.eye(K)[mu.argmax(axis=1)][ctx]
    logs = [ope.LoggedData(actions=actions, rewards=r, propensities=logging[ctx, actions], clusters=groups)
            for r in (rewards, 1 - rewards, rewards * 0.3)]
    boot = ope.shared_bootstrap(logs, target, logging[ctx], seed=4)
    for log in logs:
        assert ope.evaluate(log, target, seed=4, boot=boot) == ope.evaluate(log, target, seed=4)
        assert ope.evaluate(log, logging[ctx], seed=4, boot=boot) == ope.evaluate(log, logging[ctx], seed=4)
        assert ope.compare(log, target, logging[ctx], seed=4, boot=boot) == ope.compare(log, target, logging[ctx], seed=4)
    other = ope.LoggedData(actions=actions, rewards=rewards, propensities=logging[ctx, actions])  # one group a request
    with pytest.raises(ValueError, match="groups"):
        ope.snips(other, target, boot=boot)
