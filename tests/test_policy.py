"""The routing policy: utility, every hard constraint, ranking, the knob and its calibration."""
from __future__ import annotations

import numpy as np
import pytest

from router.config import ModelSpec, Price, Profile
from router.policy import (
    NoEligibleModel,
    calibrate_willingness_to_pay,
    choose_batch,
    decide,
    eligibility,
    knob_grid,
    prompt_cache_cost,
    utility,
)
from router.predictor import Predictions
from router.types import Constraints, LiveStats, RoutingRequest


def spec(name, price_in=1.0, price_out=1.0, **kw) -> ModelSpec:
    return ModelSpec(name=name, provider="p", price=Price(input_per_1m=price_in, output_per_1m=price_out), **kw)


CATALOG = [
    spec("cheap", 0.1, 0.1, capabilities=frozenset({"json"}), tags=frozenset({"local"}), context_window=4096),
    spec("mid", 1, 2, capabilities=frozenset({"json", "tools"}), context_window=16384),
    spec("best", 10, 30, capabilities=frozenset({"json", "tools", "vision"}), context_window=128000),
]
# One request: P(good) rises with price; cost and latency too.
PRED = Predictions(
    models=["cheap", "mid", "best"],
    p_good=np.array([[0.5, 0.7, 0.9]]),
    p_good_std=np.array([[0.05, 0.05, 0.05]]),
    output_tokens=np.array([[100.0, 100.0, 100.0]]),
    cost_usd=np.array([[0.0001, 0.001, 0.01]]),
    latency_s=np.array([[1.0, 2.0, 4.0]]),
)
REQ = RoutingRequest(text="hi", input_tokens=100)


def route(profile=Profile(willingness_to_pay=1.0), request=REQ, **kw):
    return decide(PRED, request, catalog=CATALOG, profile=profile, **kw)


def test_utility_formula():
    u = utility(np.array([0.9]), np.array([0.01]), np.array([2.0]), 0.1, latency_weight=0.05)
    assert u[0] == pytest.approx(0.9 - 0.1 - 0.1)


def test_knob_extremes():
    assert route(Profile(willingness_to_pay=1e-6)).model == "cheap"
    assert route(Profile(willingness_to_pay=1e3)).model == "best"
    # wtp 0.01: mid's extra 0.2 quality is worth $0.002 > its extra $0.0009; best's extra 0.2 is not worth $0.009.
    assert route(Profile(willingness_to_pay=0.01)).model == "mid"


def test_decision_ranks_candidates_with_reason():
    d = route(Profile(willingness_to_pay=0.01), embedding=np.ones(3, dtype=np.float32))
    utilities = [c.utility for c in d.candidates]
    assert utilities == sorted(utilities, reverse=True)
    assert d.candidates[0].model == d.model == "mid"
    assert "\n" not in d.reason and d.reason.startswith("mid")
    assert d.fallbacks() == ["cheap", "best"]  # by utility at wtp 0.01: cheap 0.49, best -0.1
    assert d.embedding is not None and d.knob == 0.01


@pytest.mark.parametrize("kwargs, request_, gone, why", [
    ({"constraints": Constraints(allowed_models=frozenset({"cheap", "mid"}))}, REQ, "best", "allowed"),
    ({"constraints": Constraints(excluded_models=frozenset({"best"}))}, REQ, "best", "excluded"),
    ({}, RoutingRequest(text="see image", input_tokens=10, needs=frozenset({"vision"})), "mid", "vision"),
    ({}, RoutingRequest(text="long", input_tokens=10000), "cheap", "context window"),
    ({}, RoutingRequest(text="long", input_tokens=3000, max_output_tokens=2000), "cheap", "context window"),
    ({"constraints": Constraints(required_tags=frozenset({"local"}))}, REQ, "best", "tag local"),
    ({"constraints": Constraints(max_cost_usd=0.005)}, REQ, "best", "cost"),
    ({"constraints": Constraints(max_latency_s=3.0)}, REQ, "best", "latency"),
    ({"live": {"best": LiveStats(healthy=False)}}, REQ, "best", "unhealthy"),
])
def test_each_hard_constraint_excludes(kwargs, request_, gone, why):
    d = route(Profile(willingness_to_pay=1e3), request=request_, **kwargs)
    excluded = {c.model: c.excluded for c in d.candidates if c.excluded}
    assert gone in excluded and why in excluded[gone]
    assert d.model != gone and d.model not in excluded
    # Excluded models rank after every eligible one and appear in the reason.
    flags = [c.excluded is not None for c in d.candidates]
    assert flags == sorted(flags)
    assert gone in d.reason
    assert gone not in d.fallbacks()



def test_a_request_limit_is_the_reason_before_a_models_health():
    # An unhealthy model the request's caps rule out anyway reads as ruled out by them: "unhealthy"
    # makes the gateway answer 503 "retry shortly", which no retry can serve.
    sick = {m: LiveStats(healthy=False) for m in ("cheap", "best")}
    for limits, why in ((Constraints(max_cost_usd=0.005), "predicted cost"), (Constraints(max_latency_s=3.0), "predicted latency")):
        d = route(constraints=limits, live=sick)
        excluded = {c.model: c.excluded for c in d.candidates}
        assert d.model == "mid" and excluded["best"].startswith(why) and excluded["cheap"].startswith("unhealthy")

def test_the_context_check_counts_the_output_limit_the_model_will_be_sent():
    # OpenClaw asks for up to 32,768 tokens; a 16k model whose own limit is 4,096 gets 4,096, and fits.
    small = [spec("small", 0.1, 0.1, context_window=16384, max_output_tokens=4096), CATALOG[2]]
    pred = Predictions(models=["small", "best"], p_good=np.array([[0.9, 0.8]]), p_good_std=np.full((1, 2), 0.05),
                       output_tokens=np.full((1, 2), 100.0), cost_usd=np.array([[0.0001, 0.01]]), latency_s=np.ones((1, 2)))
    ask = RoutingRequest(text="next step", input_tokens=9000, max_output_tokens=32768)
    assert decide(pred, ask, catalog=small, profile=Profile(willingness_to_pay=1.0)).model == "small"
    # A limit left at its default (not known to be the model's) is not assumed: the request's counts.
    unknown = [spec("small", 0.1, 0.1, context_window=16384), CATALOG[2]]
    d = decide(pred, ask, catalog=unknown, profile=Profile(willingness_to_pay=1.0))
    assert d.model == "best" and "context window" in next(c.excluded for c in d.candidates if c.model == "small")


def test_profile_limits_merge_with_request_constraints():
    d = route(Profile(willingness_to_pay=1e3, max_cost_usd=0.005), constraints=Constraints(max_cost_usd=0.5))
    assert d.model == "mid"
    d = route(Profile(willingness_to_pay=1e3, allowed_models=frozenset({"cheap", "best"})),
              constraints=Constraints(allowed_models=frozenset({"cheap", "mid"})))
    assert d.model == "cheap"


def test_live_latency_blends_into_prediction():
    # Predicted 2 s for mid; a measured 10 s EWMA pushes it over a 4 s limit.
    d = route(Profile(willingness_to_pay=0.01), constraints=Constraints(max_latency_s=4.0),
              live={"mid": LiveStats(ewma_latency_s=10.0)})
    mid = next(c for c in d.candidates if c.model == "mid")
    assert mid.latency_s == pytest.approx(6.0) and "latency" in mid.excluded


def test_no_eligible_model_lists_reasons():
    with pytest.raises(NoEligibleModel) as exc:
        route(constraints=Constraints(max_cost_usd=1e-9))
    assert len(exc.value.candidates) == 3 and all(c.excluded for c in exc.value.candidates)
    assert "cheap" in str(exc.value)


def test_latency_weight_prefers_faster():
    assert route(Profile(willingness_to_pay=1e3)).model == "best"
    assert route(Profile(willingness_to_pay=1e3, latency_weight=0.5)).model == "cheap"


def random_predictions(rng, n=200, m=6) -> Predictions:
    p = rng.random((n, m))
    cost = np.exp(rng.normal(-7, 2, (n, m)))
    z = np.zeros((n, m))
    return Predictions([f"m{j}" for j in range(m)], p, z, z + 100, cost, z + 1)


def test_knob_monotone_in_predicted_quality_property():
    """More willingness to pay never lowers the predicted quality of the chosen model."""
    rng = np.random.default_rng(1)
    grid = knob_grid(61)
    for _ in range(50):
        pred = random_predictions(rng)
        rows = np.arange(len(pred.p_good))
        chosen_q = np.stack([pred.p_good[rows, choose_batch(pred, w)] for w in grid])
        assert (np.diff(chosen_q, axis=0) >= 0).all()
        chosen_c = np.stack([pred.cost_usd[rows, choose_batch(pred, w)] for w in grid])
        assert (np.diff(chosen_c, axis=0) >= 0).all()


def test_decide_agrees_with_choose_batch():
    rng = np.random.default_rng(2)
    pred = random_predictions(rng, n=30, m=4)
    catalog = [spec(m, context_window=10**6) for m in pred.models]
    for w in (1e-5, 1e-3, 1e-1):
        batch = choose_batch(pred, w)
        for i in range(30):
            d = decide(pred, REQ, catalog=catalog, profile=Profile(willingness_to_pay=w), row=i)
            assert d.model == pred.models[batch[i]]


def test_knob_grid_spans_both_extremes():
    rng = np.random.default_rng(3)
    pred = random_predictions(rng)
    grid = knob_grid()
    cheapest, best = pred.cost_usd.argmin(axis=1), pred.p_good.argmax(axis=1)
    assert (cheapest != best).mean() > 0.5  # the two extremes are different choices to reach
    assert (choose_batch(pred, grid[0]) == cheapest).all()
    assert (choose_batch(pred, grid[-1]) == best).all()
    assert np.all(np.diff(grid) > 0)


@pytest.mark.parametrize("target", [0.1, 0.3, 0.5, 0.8])
def test_calibrate_willingness_to_pay_hits_target_share(target):
    rng = np.random.default_rng(4)
    n = 1000
    # RouteLLM's setting: the strong model is better everywhere, by a prompt-dependent margin.
    weak_q = rng.random(n) * 0.6
    strong_q = weak_q + rng.random(n) * 0.4
    pred = Predictions(["weak", "strong"], np.column_stack([weak_q, strong_q]), np.zeros((n, 2)),
                       np.full((n, 2), 50.0), np.column_stack([np.full(n, 1e-5), np.full(n, 1e-3)]), np.ones((n, 2)))
    w = calibrate_willingness_to_pay(pred, "strong", target)
    share = np.mean(choose_batch(pred, w) == 1)
    assert abs(share - target) <= 2 / n


def test_calibrate_refuses_a_share_no_knob_reaches_and_what_it_cannot_calibrate_on():
    rng = np.random.default_rng(4)
    n = 500
    # "rare" is never better and never cheaper: no willingness to pay sends it much traffic.
    q = np.column_stack([rng.random(n) * 0.5, rng.random(n) * 0.5 + 0.5, rng.random(n) * 0.2])
    cost = np.column_stack([np.full(n, 1e-5), np.full(n, 1e-3), np.full(n, 1e-3)])
    pred = Predictions(["weak", "strong", "rare"], q, np.zeros((n, 3)), np.full((n, 3), 50.0), cost, np.ones((n, 3)))
    with pytest.raises(ValueError, match="rare gets 0.0%-0.0% of these rows over the 241 willingness-to-pay values tried; 90.0% is out of reach"):
        calibrate_willingness_to_pay(pred, "rare", 0.9)
    with pytest.raises(ValueError, match="'nope' is not among the predicted models"):
        calibrate_willingness_to_pay(pred, "nope", 0.5)
    empty = Predictions(["weak", "strong"], np.zeros((0, 2)), np.zeros((0, 2)), np.zeros((0, 2)), np.zeros((0, 2)), np.zeros((0, 2)))
    with pytest.raises(ValueError, match="no predictions"):
        calibrate_willingness_to_pay(empty, "strong", 0.5)
    assert 0 < calibrate_willingness_to_pay(pred, "strong", 0.5)  # a reachable share still calibrates


def test_batch_choices_under_eligibility_match_decide_row_by_row():
    """The vectorised sweep (what `calibrate` and sweeps use) picks what `decide` picks, under a
    profile whose limits exclude different models on different rows."""
    rng = np.random.default_rng(8)
    n = 300
    base = random_predictions(rng, n=n, m=3)
    pred = Predictions(["cheap", "mid", "best"], base.p_good, base.p_good_std, base.output_tokens, base.cost_usd,
                       rng.random((n, 3)) * 6)
    requests = [RoutingRequest(text="q", input_tokens=int(t), needs=frozenset({"tools"}) if i % 7 == 0 else frozenset())
                for i, t in enumerate(rng.integers(10, 20000, n))]
    profile = Profile(willingness_to_pay=0.02, latency_weight=0.01, max_cost_usd=float(np.median(base.cost_usd)),
                      max_latency_s=5.0, allowed_models=frozenset({"cheap", "mid", "best"}))
    mask = eligibility(pred, requests, CATALOG, profile)
    assert 0 < mask.sum() < mask.size
    rows = np.nonzero(mask.any(axis=1))[0]
    sub = Predictions(pred.models, *(a[rows] for a in (pred.p_good, pred.p_good_std, pred.output_tokens, pred.cost_usd,
                                                       pred.latency_s)))
    batch = choose_batch(sub, profile.willingness_to_pay, profile.latency_weight, eligible=mask[rows])
    for k, i in enumerate(rows):
        d = decide(pred, requests[i], catalog=CATALOG, profile=profile, row=int(i))
        assert pred.models[batch[k]] == d.model
        assert {c.model for c in d.candidates if c.excluded is None} == {pred.models[j] for j in np.nonzero(mask[i])[0]}
    for i in np.nonzero(~mask.any(axis=1))[0]:
        with pytest.raises(NoEligibleModel):
            decide(pred, requests[i], catalog=CATALOG, profile=profile, row=int(i))


def test_choose_batch_allowed_restricts():
    rng = np.random.default_rng(5)
    pred = random_predictions(rng, m=4)
    assert set(choose_batch(pred, 1e3, allowed=["m1", "m3"])) <= {1, 3}
    with pytest.raises(ValueError):
        choose_batch(pred, 1.0, allowed=["nope"])


def _one_row(models, p, cost, latency=None) -> Predictions:
    m = len(models)
    return Predictions(list(models), np.array([p], dtype=float), np.full((1, m), 0.05), np.full((1, m), 100.0),
                       np.array([cost], dtype=float), np.array([latency or [1.0] * m], dtype=float))


@pytest.mark.parametrize("order", [["a", "b", "c"], ["b", "a", "c"], ["c", "b", "a"]])
def test_a_non_finite_prediction_is_excluded_whatever_the_catalog_order(order):
    pred = _one_row(["a", "b", "c"], [0.5, np.nan, 0.9], [0.001, 0.001, 0.001])
    d = decide(pred, REQ, catalog=[spec(m) for m in order], profile=Profile(willingness_to_pay=1.0))
    assert d.model == "c" and dict((c.model, c.excluded) for c in d.candidates)["b"] == "no finite prediction"
    # NaN compares false against every limit: a NaN cost must not pass max_cost, nor a NaN live latency max_latency
    pred = _one_row(["a", "b"], [0.5, 0.9], [0.001, np.nan])
    d = decide(pred, REQ, catalog=[spec("a"), spec("b")], profile=Profile(willingness_to_pay=1.0),
               constraints=Constraints(max_cost_usd=0.002))
    assert d.model == "a"
    pred = _one_row(["a", "b"], [0.5, 0.9], [0.001, 0.001], latency=[1.0, 50.0])
    d = decide(pred, REQ, catalog=[spec("a"), spec("b")], profile=Profile(willingness_to_pay=1.0),
               constraints=Constraints(max_latency_s=2.0), live={"b": LiveStats(ewma_latency_s=float("nan"))})
    assert d.model == "a"


def test_choose_batch_never_leaves_allowed_models():
    pred = _one_row(["forbidden", "ok1", "ok2"], [0.9, np.nan, 0.5], [0.001, 0.001, 0.001])
    assert pred.models[choose_batch(pred, 1.0, allowed=["ok1", "ok2"])[0]] == "ok2"
    pred = _one_row(["forbidden", "ok1", "ok2"], [0.9, 0.5, 0.6], [0.001, np.inf, np.inf])
    with pytest.raises(ValueError, match="finite utility"):
        choose_batch(pred, 1.0, allowed=["ok1", "ok2"])


def test_near_ties_go_to_the_better_model_in_decide_and_choose_batch_alike():
    # u(strong) - u(weak) = 0.3 - 0.3 / w: within 1e-12 of a tie for w just below 1
    catalog = [spec("weak"), spec("strong")]
    pred = _one_row(["weak", "strong"], [0.6, 0.9], [1.0, 1.3])
    chosen = []
    for w in np.sort(1.0 - np.arange(1, 3000) * 1e-15):
        d = decide(pred, REQ, catalog=catalog, profile=Profile(willingness_to_pay=float(w)))
        assert d.model == pred.models[choose_batch(pred, float(w))[0]]
        chosen.append(d.candidates[0].p_good)
    assert np.all(np.diff(chosen) >= 0)  # more willingness to pay never picks the worse model


def test_what_a_provider_holds_is_priced_at_its_cached_rate_and_what_it_writes_at_its_write_rate():
    anthropic_like = ModelSpec(name="a", provider="p", price=Price(input_per_1m=3.0, output_per_1m=15.0,
                                                                   cached_input_per_1m=0.3, cache_write_per_1m=3.75))
    openai_like = ModelSpec(name="o", provider="p", price=Price(input_per_1m=2.0, output_per_1m=8.0, cached_input_per_1m=0.5))
    plain = spec("plain", 1.0, 1.0)
    # An agent's next turn: 14k of its 15k tokens were the previous turn's prompt.
    agent = RoutingRequest(text="fix the bug", input_tokens=15_000, prefix_tokens=12_000, cacheable_tokens=15_000,
                           warm_tokens={"a": 14_000, "o": 14_000, "plain": 14_000})
    assert prompt_cache_cost(anthropic_like, agent) == pytest.approx((14_000 * (0.3 - 3.0) + 1_000 * (3.75 - 3.0)) / 1e6)
    assert prompt_cache_cost(openai_like, agent) == pytest.approx(14_000 * (0.5 - 2.0) / 1e6)  # OpenAI writes for free
    assert prompt_cache_cost(plain, agent) == 0.0  # no cached price: the list price
    # A first turn: the adapters mark the system prompt and tools only, written once at 1.25x.
    first = RoutingRequest(text="fix the bug", input_tokens=15_000, prefix_tokens=12_000, cacheable_tokens=12_000)
    assert prompt_cache_cost(anthropic_like, first) == pytest.approx(12_000 * (3.75 - 3.0) / 1e6)
    assert prompt_cache_cost(openai_like, first) == 0.0
    # Never more read back than the prompt holds; nothing under every provider's cacheable minimum.
    shorter = RoutingRequest(text="x", input_tokens=5_000, cacheable_tokens=5_000, warm_tokens={"a": 9_000})
    assert prompt_cache_cost(anthropic_like, shorter) == pytest.approx(5_000 * (0.3 - 3.0) / 1e6)
    short = RoutingRequest(text="hi", input_tokens=900, prefix_tokens=800, cacheable_tokens=800, warm_tokens={"a": 800})
    assert prompt_cache_cost(anthropic_like, short) == 0.0
    # Claude Haiku 4.5 caches nothing under 4,096 tokens: neither read back nor written there.
    haiku = anthropic_like.model_copy(update={"price": anthropic_like.price.model_copy(update={"cache_min_tokens": 4096})})
    mid = RoutingRequest(text="x", input_tokens=3_000, prefix_tokens=2_000, cacheable_tokens=3_000, warm_tokens={"a": 2_900})
    assert prompt_cache_cost(haiku, mid) == 0.0
    assert prompt_cache_cost(anthropic_like, mid) == pytest.approx((2_900 * (0.3 - 3.0) + 100 * (3.75 - 3.0)) / 1e6)


def test_a_conversation_stays_on_the_model_holding_its_prompt_prefix_while_that_is_cheaper():
    catalog = [
        ModelSpec(name="warm", provider="p", context_window=200_000,
                  price=Price(input_per_1m=3.0, output_per_1m=2.0, cached_input_per_1m=0.3)),
        ModelSpec(name="cheaper", provider="p", context_window=200_000,
                  price=Price(input_per_1m=2.5, output_per_1m=2.0, cached_input_per_1m=0.25)),
    ]
    cost = np.array([[s.price.cost(20_000, 100) for s in catalog]])
    pred = Predictions(["warm", "cheaper"], np.array([[0.8, 0.8]]), np.zeros((1, 2)), np.full((1, 2), 100.0), cost, np.ones((1, 2)))
    cold = RoutingRequest(text="next step", input_tokens=20_000, prefix_tokens=12_000)
    assert decide(pred, cold, catalog=catalog, profile=Profile(willingness_to_pay=1.0)).model == "cheaper"
    warm = RoutingRequest(text="next step", input_tokens=20_000, prefix_tokens=12_000, warm_tokens={"warm": 12_000})
    chosen = decide(pred, warm, catalog=catalog, profile=Profile(willingness_to_pay=1.0))
    assert chosen.model == "warm" and "prompt cached at warm (12,000 tokens)" in chosen.reason
    by_model = {c.model: c.cost_usd for c in chosen.candidates}
    assert by_model["warm"] == pytest.approx((8_000 * 3.0 + 12_000 * 0.3 + 100 * 2.0) / 1e6)
    assert by_model["cheaper"] == pytest.approx(cost[0, 1])
    # The cost cap sees the same price: the cached prefix fits a cap the list price breaks.
    cap = Constraints(max_cost_usd=0.03)
    assert decide(pred, warm, catalog=catalog, profile=Profile(willingness_to_pay=1.0), constraints=cap).model == "warm"
    with pytest.raises(NoEligibleModel):
        decide(pred, cold, catalog=catalog, profile=Profile(willingness_to_pay=1.0), constraints=cap)
