"""The routing decision, in one place.

The knob is **willingness to pay** (`wtp`): how many US dollars a client pays for +1.0 of
expected quality on one request (P(good answer) from 0 to 1). Each eligible model scores

    utility = P(good) - cost_usd / wtp - latency_weight * latency_s

and the highest utility wins. Small `wtp` buys the cheapest adequate model, large `wtp`
the best one regardless of price; in between, a model is worth its extra cost only when
its extra quality times `wtp` exceeds that cost. With `latency_weight = 0`, raising `wtp`
never lowers the predicted quality of the chosen model (swap the two utility inequalities
of the models chosen at w1 < w2: the one chosen at w2 costs at least as much, hence is
at least as good); ties go to the higher predicted quality so this holds exactly.

Hard constraints come before utility: a model that breaks one is never chosen; it stays in
the ranked candidates with the reason it was excluded.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from router.config import ModelSpec, Profile
from router.predictor import Predictions
from router.types import Candidate, Constraints, Decision, LiveStats, RoutingRequest

KNOB_MIN, KNOB_MAX = 1e-7, 1e3  # USD per quality point: from "always cheapest" to "always best"
LIVE_LATENCY_WEIGHT = 0.5  # share of the live EWMA latency in the blended latency estimate
_TIE = 1e-12


class NoEligibleModel(ValueError):
    """Every candidate breaks a hard constraint; `candidates` says which and why (the message
    leaves out the models outside the allowed ones)."""

    def __init__(self, message: str, candidates: tuple[Candidate, ...]):
        super().__init__(message)
        self.candidates = candidates


def utility(p_good, cost_usd, latency_s, willingness_to_pay, latency_weight=0.0) -> np.ndarray:
    """Expected quality minus what its price and its wait are worth to the client."""
    return np.asarray(p_good) - np.asarray(cost_usd) / willingness_to_pay - latency_weight * np.asarray(latency_s)


def _argmax_quality_ties(u: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Per row, the highest P(good) among the models within `_TIE` of the best utility; a
    non-finite utility never counts (NaN would compare false everywhere and fall to column 0)."""
    u = np.where(np.isfinite(u), u, -np.inf)
    best = u.max(axis=1, keepdims=True)
    stuck = ~np.isfinite(best[:, 0])
    if stuck.any():
        raise ValueError(f"row {int(np.argmax(stuck))} has no model with a finite utility")
    return np.where(u >= best - _TIE, np.nan_to_num(p, nan=-np.inf), -np.inf).argmax(axis=1)


def choose_batch(pred: Predictions, willingness_to_pay: float, latency_weight: float = 0.0,
                 allowed: Sequence[str] | None = None, eligible: np.ndarray | None = None) -> np.ndarray:
    """Index (into `pred.models`) of the chosen model for every row; for offline sweeps.
    `eligible` (rows x models, bool) leaves out what a hard constraint excludes (`eligibility`)."""
    u = utility(pred.p_good, pred.cost_usd, pred.latency_s, willingness_to_pay, latency_weight)
    if allowed is not None:
        mask = np.array([m in set(allowed) for m in pred.models])
        if not mask.any():
            raise ValueError(f"none of the allowed models {list(allowed)} is among {pred.models}")
        u = np.where(mask[None, :], u, -np.inf)
    if eligible is not None:
        u = np.where(eligible, u, -np.inf)
    return _argmax_quality_ties(u, pred.p_good)


def eligibility(pred: Predictions, requests: Sequence[RoutingRequest], catalog: Sequence[ModelSpec],
                profile: Profile, constraints: Constraints = Constraints()) -> np.ndarray:
    """(rows x models, bool) which catalog models `decide` would consider for each request under
    `profile` and the requests' own `constraints`, offline (every model healthy). No hard
    constraint depends on the knob, so one mask serves a whole sweep of it."""
    allowed, tags, max_cost, max_latency = _limits(profile, constraints)
    out = np.zeros(pred.p_good.shape, dtype=bool)
    for spec in catalog:
        j = pred.column(spec.name)
        for i, request in enumerate(requests):
            out[i, j] = _exclusion(
                spec, request, allowed, constraints.excluded_models, tags, max_cost, max_latency,
                float(pred.p_good[i, j]), float(pred.cost_usd[i, j]) + input_surcharge(spec, request), float(pred.latency_s[i, j]),
                float(pred.output_tokens[i, j]), None) is None
    return out


def attachment_cost(spec: ModelSpec, request: RoutingRequest) -> float:
    """What `spec` may bill for the request's inline files and audio, at their worst case
    (router.request_view): the predictors price the text only. Priced into the candidate's cost,
    so a cost cap or a key's ceiling moves such a request to a model it fits."""
    return spec.price.cost(request.attachment_tokens_within(spec.context_window), 0) if request.attachment_tokens else 0.0


def held_tokens(spec: ModelSpec, request: RoutingRequest) -> int:
    """Tokens of the request's prompt that the model's provider holds in its prompt cache from an
    earlier request and bills at its cached price (none under the provider's minimum)."""
    held = min(request.warm_tokens.get(spec.name, 0), request.input_tokens)
    return held if held >= spec.price.cache_min_tokens else 0


def prompt_cache_cost(spec: ModelSpec, request: RoutingRequest) -> float:
    """What the provider's prompt cache changes in the predictors' input cost (every input token
    at the list price). An agent resends its system prompt, tools and whole conversation on every
    turn: the part a model's provider holds from an earlier request (`held_tokens`) is read back at
    the cached price (a tenth of the list price at Anthropic and DeepSeek, a quarter to a half
    elsewhere), and what the request leaves in the cache (`cacheable_tokens`) and the provider does
    not hold yet is written at the cache-write price where it has one (Anthropic, 1.25x). Priced
    in, moving a conversation to another model costs what it does, instead of looking as cheap as
    staying."""
    price = spec.price
    held = held_tokens(spec, request)
    written = max(request.cacheable_tokens - held, 0) if request.cacheable_tokens >= price.cache_min_tokens else 0
    read = price.input_per_1m if price.cached_input_per_1m is None else price.cached_input_per_1m
    write = price.input_per_1m if price.cache_write_per_1m is None else price.cache_write_per_1m
    return (held * (read - price.input_per_1m) + written * (write - price.input_per_1m)) / 1e6


def input_surcharge(spec: ModelSpec, request: RoutingRequest) -> float:
    """What a candidate's cost adds to the predictors' (text at the list price)."""
    return attachment_cost(spec, request) + prompt_cache_cost(spec, request)


def _limits(profile: Profile, constraints: Constraints) -> tuple[frozenset[str] | None, frozenset[str], float | None, float | None]:
    """A profile's limits combined with a request's: allowed models both allow, tags either
    requires, the tighter cost and latency caps."""
    allowed = constraints.allowed_models
    if profile.allowed_models is not None:
        allowed = profile.allowed_models if allowed is None else allowed & profile.allowed_models
    return (allowed, constraints.required_tags | profile.required_tags,
            _tighter(constraints.max_cost_usd, profile.max_cost_usd), _tighter(constraints.max_latency_s, profile.max_latency_s))


def shortest_knob(w: float, share_at) -> str:
    """The shortest decimal of `w` that `share_at` maps to the same share: a knob at a decision
    boundary, rounded to 6 digits, can send another share than the one it was found for."""
    target = share_at(w)
    for digits in (6, 8, 10, 12, 14):
        text = format(w, f".{digits}g")
        if share_at(float(text)) == target:
            return text
    return repr(w)


def knob_grid(n: int = 81, lo: float = KNOB_MIN, hi: float = KNOB_MAX) -> np.ndarray:
    """Log-spaced willingness-to-pay values spanning the knob's whole useful range."""
    return np.geomspace(lo, hi, n)


def calibrate_willingness_to_pay(pred: Predictions, model: str, target_share: float, latency_weight: float = 0.0,
                                 allowed: Sequence[str] | None = None, eligible: np.ndarray | None = None) -> float:
    """The `wtp` at which `model` is chosen for `target_share` of the rows (RouteLLM's
    `calibrate_threshold`): scan the knob grid, then bisect between the bracketing points."""
    if not 0.0 <= target_share <= 1.0:
        raise ValueError(f"target_share must be in [0, 1], got {target_share}")
    if model not in pred.models:
        raise ValueError(f"{model!r} is not among the predicted models {list(pred.models)}")
    rows = len(pred.p_good)
    if rows == 0:
        raise ValueError("no predictions to calibrate on")
    j = pred.column(model)

    tried: dict[float, float] = {}  # every knob value evaluated, for the error below

    def share(w: float) -> float:
        tried[w] = float(np.mean(choose_batch(pred, w, latency_weight, allowed, eligible) == j))
        return tried[w]

    grid = knob_grid(241)
    shares = np.array([share(w) for w in grid])
    # A share no knob value comes near (a model the policy seldom prefers) is an error, not the
    # nearest knob: that would quietly route as if calibrated.
    slack = max(1.0 / rows, 0.01)
    if not shares.min() - slack <= target_share <= shares.max() + slack:
        raise ValueError(f"{model} gets {shares.min():.1%}-{shares.max():.1%} of these rows over the {len(grid)} "
                         f"willingness-to-pay values tried; {target_share:.1%} is out of reach")
    i = int(np.argmin(np.abs(shares - target_share)))
    if shares[i] == target_share:
        return float(grid[i])
    best = _bisect_share(grid, shares, i, target_share, share)
    if abs(tried[best] - target_share) > slack:
        # Rows that move together (copies of one prompt, a group alike to the predictor) make the
        # share jump past the target: say so, with the knobs on either side, not the nearer one.
        below = max(((s, w) for w, s in tried.items() if s < target_share), default=None)
        above = min(((s, w) for w, s in tried.items() if s > target_share), default=None)
        near = " and ".join(f"{s:.1%} at willingness_to_pay {shortest_knob(w, share)}" for s, w in filter(None, (below, above)))
        raise ValueError(f"{model}'s share jumps past {target_share:.1%} of these rows: the nearest a knob gives are {near}")
    return best


def _bisect_share(grid: np.ndarray, shares: np.ndarray, i: int, target_share: float, share) -> float:
    """The knob nearest `target_share` between grid point `i` and its neighbour across the target."""
    # Bisect in log space towards the neighbour on the other side of the target.
    lo_i, hi_i = (i - 1, i) if i > 0 and (shares[i - 1] - target_share) * (shares[i] - target_share) < 0 else (i, i + 1)
    if hi_i >= len(grid) or (shares[lo_i] - target_share) * (shares[hi_i] - target_share) > 0:
        return float(grid[i])
    lo, hi = np.log(grid[lo_i]), np.log(grid[hi_i])
    s_lo = shares[lo_i]
    best_w, best_gap = float(grid[i]), abs(shares[i] - target_share)
    for _ in range(40):
        mid = 0.5 * (lo + hi)
        s = share(float(np.exp(mid)))
        if abs(s - target_share) < best_gap:
            best_w, best_gap = float(np.exp(mid)), abs(s - target_share)
        if (s - target_share) * (s_lo - target_share) > 0:
            lo, s_lo = mid, s
        else:
            hi = mid
    return best_w


def blend_latency(predicted: float, live: LiveStats | None) -> float:
    """Mix the model's live EWMA latency into the token-based prediction once it is measured."""
    if live is None or live.ewma_latency_s is None or not np.isfinite(live.ewma_latency_s):
        return predicted
    return (1.0 - LIVE_LATENCY_WEIGHT) * predicted + LIVE_LATENCY_WEIGHT * live.ewma_latency_s


def _exclusion(spec: ModelSpec, request: RoutingRequest, allowed: frozenset[str] | None, excluded: frozenset[str],
               tags: frozenset[str], max_cost: float | None, max_latency: float | None, p: float, cost: float,
               latency: float, out_tokens: float, live: LiveStats | None) -> str | None:
    """The first hard constraint `spec` breaks for this request, or None."""
    if not (np.isfinite(p) and np.isfinite(cost) and np.isfinite(latency)):
        return "no finite prediction"  # NaN would pass every limit below and scramble the ranking
    if allowed is not None and spec.name not in allowed:
        return "not in allowed models"
    if spec.name in excluded:
        return "excluded by request"
    missing = set(request.needs) - set(spec.capabilities)
    if missing:
        return f"lacks capability {', '.join(sorted(missing))}"
    if not spec.takes_choices(request.answers):
        return f"answers at most {spec.max_choices} choice(s), n={request.answers} asked"
    # The output limit as the model will be sent it (lowered to its own limit), not as asked.
    needed = request.input_tokens + (spec.output_cap(request.max_output_tokens) or int(np.ceil(out_tokens)))
    if needed > spec.context_window:
        return f"context window {spec.context_window} < {needed} tokens"
    if not tags <= spec.tags:
        return f"lacks tag {', '.join(sorted(tags - spec.tags))}"
    if max_cost is not None and cost > max_cost:
        return f"predicted cost ${cost:.6f} > max ${max_cost:g}"
    if max_latency is not None and latency > max_latency:
        return f"predicted latency {latency:.2f}s > max {max_latency:g}s"
    # The model's own state (an open circuit, a key not set) comes after every limit of the request:
    # a model those rule out anyway makes the request's 400 (or its budget's 402), not a 503 to retry
    # or the operator's 502.
    if live is not None and live.excluded:
        return live.excluded
    if live is not None and not live.healthy:
        return "unhealthy (circuit open or rate limit reached)"
    return None


def _rank(rows: list[Candidate]) -> tuple[Candidate, ...]:
    """Eligible first, by utility. The first is chosen by `choose_batch`'s rule: the highest
    P(good) within `_TIE` of the best utility, which keeps the knob monotone."""
    eligible = sorted((c for c in rows if c.excluded is None), key=lambda c: (-c.utility, -c.p_good))
    if eligible:
        best = eligible[0].utility
        first = max((c for c in eligible if c.utility >= best - _TIE), key=lambda c: c.p_good)
        eligible.remove(first)
        eligible.insert(0, first)
    excluded = sorted((c for c in rows if c.excluded is not None),
                      key=lambda c: (-np.nan_to_num(c.utility, nan=-np.inf), -np.nan_to_num(c.p_good, nan=-np.inf)))
    return (*eligible, *excluded)


def _tighter(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else min(a, b)


def decide(pred: Predictions, request: RoutingRequest, *, catalog: Sequence[ModelSpec], profile: Profile,
           constraints: Constraints = Constraints(), live: Mapping[str, LiveStats] | None = None,
           row: int = 0, embedding: np.ndarray | None = None) -> Decision:
    """Choose a model for row `row` of `pred` (whose columns are the catalog names).

    Raises `NoEligibleModel` when every model breaks a hard constraint.
    """
    live = live or {}
    allowed, tags, max_cost, max_latency = _limits(profile, constraints)
    wtp, lw = profile.willingness_to_pay, profile.latency_weight
    rows = []
    for spec in catalog:
        j = pred.column(spec.name)
        p, cost = float(pred.p_good[row, j]), float(pred.cost_usd[row, j]) + input_surcharge(spec, request)
        latency = blend_latency(float(pred.latency_s[row, j]), live.get(spec.name))
        out_tokens = float(pred.output_tokens[row, j])
        u = float(utility(p, cost, latency, wtp, lw))
        why = _exclusion(spec, request, allowed, constraints.excluded_models, tags, max_cost, max_latency,
                         p, cost, latency, out_tokens, live.get(spec.name))
        rows.append(Candidate(spec.name, p, float(pred.p_good_std[row, j]), out_tokens, cost, latency, u, why))
    ranked = _rank(rows)
    chosen = ranked[0] if ranked else None
    # The reason and the error name only models inside the allowed ones: a client key's scope
    # reaches the router as allowed models, and its client is not to learn of the others.
    named = [c for c in ranked if allowed is None or c.model in allowed]
    if chosen is None or chosen.excluded is not None:
        summary = "; ".join(f"{c.model}: {c.excluded}" for c in named) or (
            "no model of the catalog is allowed" if ranked else "empty catalog")
        raise NoEligibleModel(f"no model satisfies the request's constraints ({summary})", ranked)
    n_ok = sum(c.excluded is None for c in ranked)
    excluded = [f"{c.model} ({c.excluded})" for c in named if c.excluded is not None]
    reason = (
        f"{chosen.model}: best utility {chosen.utility:.3f} of {n_ok} eligible "
        f"(P(good) {chosen.p_good:.2f}, ${chosen.cost_usd:.6f}, {chosen.latency_s:.1f}s; wtp ${wtp:g}/quality)"
    )
    if n_ok > 1:
        runner = ranked[1]
        reason += f"; next {runner.model} (P(good) {runner.p_good:.2f}, ${runner.cost_usd:.6f})"
    held = {spec.name: held_tokens(spec, request) for spec in catalog} if request.warm_tokens else {}
    warm = [f"{c.model} ({held[c.model]:,} tokens)" for c in named if c.excluded is None and held.get(c.model)]
    if warm:
        reason += f"; prompt cached at {', '.join(warm)}"
    if excluded:
        reason += f"; excluded: {', '.join(excluded)}"
    return Decision(model=chosen.model, candidates=ranked, reason=reason, knob=wtp, propensity=1.0, embedding=embedding)
