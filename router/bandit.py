"""Contextual bandit on top of the learned predictors: explore where it is worth it, learn online.

The predictors rank models by utility = P(good) − cost and latency penalties. They are
trained offline and go stale: a provider degrades a model, a new model appears with no
training data. The bandit adds, per model, an online *correction* of the predicted P(good):
a Bayesian linear model of the residual (observed reward − predicted P(good)) on a reduced
context (an intercept, the leading components of the prompt embedding and a coarse region
one-hot), so it can learn "this model got worse", and also "this new model is good on code
prompts".

Choosing (Thompson sampling, with propensities):
* Only eligible candidates (the policy's hard constraints already applied) are considered.
* Each candidate's quality is uncertain: the predictor's spread (`p_good_std`, trusted less
  as the bandit collects its own evidence on that model) plus the correction's posterior.
* Exploration set: candidates whose optimistic utility (mean + `z_explore` std) reaches the
  best mean utility minus `utility_margin`. Others are never explored.
* Thompson probabilities over that set come from `draws` Monte Carlo draws; the action is
  then sampled from exactly that vector, so the logged propensity is the probability with
  which the logged action was drawn.
* Budget: exploring models the predictor knows and exploring a model it has never seen (until
  `new_model_observations` rewards have come in) have separate caps on their expected share
  of traffic: the first learns little, as the predictor is calibrated for those models, and
  costs about 0.06 quality points per 1 % of traffic; the second is how a new model gets the
  traffic it is good for, and a few unlucky rewards must not write it off. A model over its
  class's cap leaves the exploration set. While the expected extra spend of exploring
  (over the greedy choice's cost) exceeds its cap, the bandit plays its greedy
  choice (propensity 1).
* Every budget holds over the recent `budget_horizon` decisions, not since start: the counts
  and spends it compares decay by 1 − 1/horizon per decision, so budget left unspent for a
  long time (no model worth exploring) cannot come out in a burst larger than about
  share × horizon when one appears.
* Realised prices: each model's predicted cost is scaled by its realised / predicted cost
  over its recent answered calls (`observe_cost`), in the utility and in every spend account.
* Total spend: exploring and *refining* (exploiting small corrections of models the
  predictor knows) may together spend at most `total_cost_share` more than the reference
  policy: the predictor's own choice, told only what the bandit learned about models that
  are news to it (a detected change, a model the predictor has never seen). Reacting to
  news is priced by the willingness to pay alone; refinement competes for the budget
  through a shadow price on spend (a Lagrange multiplier, raised while the discounted
  overspend is positive), so the refinements worth most per dollar are the ones kept.

Updates are O(d²) per observation under a lock; a per-model CUSUM on residuals detects an
abrupt change (a model degraded) and resets that model's correction so it re-learns fast
instead of averaging over its whole history.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from typing import Sequence

import numpy as np

from router.types import Candidate, Decision

SPEND_CAP_WHY = "the total-spend cap charges refinement's extra spend"  # in a refinement's reason: that cap binds


@dataclass(frozen=True)
class BanditSettings:
    explore_share: float = 0.02  # cap on the expected share of requests exploring models the predictor knows
    new_model_explore_share: float = 0.05  # the same cap for models the predictor has never seen
    new_model_observations: float = 100.0  # rewards after which a new model is known (intercept std ~0.05)
    extra_cost_share: float = 0.04  # cap on the expected extra spend of exploring, share of greedy spend
    budget_horizon: float = 1000.0  # decisions over which the budgets hold (accounts decay by 1 - 1/horizon); inf: since start
    utility_margin: float = 0.02  # explore models whose optimistic utility is this close to the best
    z_explore: float = 0.5  # optimism, in posterior standard deviations, for the exploration set
    draws: int = 2000  # Monte Carlo draws per decision for the Thompson probabilities
    context_dim: int = 16  # components of the embedding in the context, beside an intercept
    region_bits: int = 2  # one-hot region from the signs of the first components (2**bits regions)
    prior_var: float = 0.005  # prior variance of each correction weight
    shrink_z: float = 0.5  # corrections are soft-thresholded at this many posterior std
    noise_var: float = 0.25  # Bernoulli reward noise (at most 0.25)
    forgetting: float = 0.999  # per-observation discount: slow drift fades old evidence
    trust_after: float = 20.0  # observations after which the predictor's spread counts half
    cusum_slack: float = 0.15  # residual shift tolerated per observation
    cusum_threshold: float = 8.0  # accumulated shift that means the model changed
    reset_var: float = 0.1  # prior variance of a model's correction after a detected change
    total_cost_share: float | None = 0.04  # cap on extra spend over the reference policy
    price_step: float = 0.01  # shadow price (quality per average request's cost) per request's worth of overspend
    remember: int = 100_000  # pending decisions kept for delayed feedback
    cost_memory: float = 0.99  # per-call discount of a model's realised / predicted cost (~100 calls)
    cost_prior_calls: float = 5.0  # calls at "cost as predicted" behind each model's cost ratio
    seed: int = 0


@dataclass
class _Arm:
    A: np.ndarray  # posterior precision
    b: np.ndarray
    mean: np.ndarray
    cov: np.ndarray
    prior_var: float = 0.005
    n_eff: float = 0.0
    cusum_pos: float = 0.0
    cusum_neg: float = 0.0
    resets: int = 0
    unseen: bool = False  # the predictor had no training data for this model


@dataclass(frozen=True)
class BanditChoice:
    model: str
    propensity: float
    greedy: str
    probabilities: dict[str, float]  # over eligible models; sums to 1
    explored: bool
    why: str = ""  # what moved the greedy choice off the predictor's own, in words ("" where nothing did)


@dataclass(frozen=True)
class _Pending:
    model: str
    context: np.ndarray
    predicted: float  # the predictor's P(good), before correction
    p_std: float  # the predictor's spread for it: sets the prior of an arm a replica has not met yet


@dataclass(frozen=True)
class Observation:
    """One reward for one decision: what `update` learns from, and what replicas share."""

    model: str
    context: np.ndarray
    reward: float
    predicted: float  # the predictor's P(good), before correction
    p_std: float = 0.0  # the predictor's spread for that model (wide for a model it has never seen)


@dataclass
class ContextualBandit:
    """`basis` = (mean, projection) of the embedding, e.g. the predictor's PCA: the context
    is the centred, unit-length embedding projected on its first `context_dim` columns.
    Without one, a seeded random projection (centred on nothing) stands in."""

    settings: BanditSettings = field(default_factory=BanditSettings)
    embed_dim: int = 384
    basis: tuple[np.ndarray, np.ndarray] | None = None

    def __post_init__(self):
        self._context_dim = self.settings.context_dim  # as asked for: a narrower basis narrows it
        self._set_basis()
        s = self.settings
        if not s.budget_horizon >= 1:
            raise ValueError(f"budget_horizon is a number of decisions, at least 1, got {s.budget_horizon!r}")
        self._rng = np.random.default_rng(s.seed + 1)
        self._arms: dict[str, _Arm] = {}
        self._pending: OrderedDict[str, _Pending] = OrderedDict()
        self._lock = threading.Lock()
        self.decisions = 0
        self.explore_mass = 0.0  # expected requests given a non-greedy model the predictor knows
        self.new_model_explore_mass = 0.0  # expected requests given a non-greedy new model
        self.greedy_spend = 0.0  # spend of the greedy (corrected) choices
        self.extra_spend = 0.0  # expected spend of exploring, over the greedy choice
        self.spend = 0.0  # expected spend of the bandit's choices
        self.reference_spend = 0.0  # spend of the reference policy's choices
        self.overspend = 0.0  # discounted spend over (1 + total_cost_share) x the reference's
        # The same accounts over the recent `budget_horizon` decisions, which the caps compare:
        # decisions, explore mass, new-model explore mass, greedy spend, extra spend, reference spend.
        self._recent = np.zeros(6)
        self._cost_seen: dict[str, np.ndarray] = {}  # per model: discounted realised $, predicted $, calls

    def rebase(self, basis: tuple[np.ndarray, np.ndarray] | None) -> None:
        """A new router is serving: what was learnt corrects the old predictor's predictions (in
        its basis), and the new one may have learnt it already from the same feedback. The arms
        and the realised-price ratios start again; the spend accounts carry on."""
        with self._lock:
            self.settings = replace(self.settings, context_dim=self._context_dim)
            self.basis = basis
            self._set_basis()
            self._arms.clear()
            self._pending.clear()
            self._cost_seen.clear()

    def _set_basis(self) -> None:
        s = self.settings
        rng = np.random.default_rng(s.seed)
        if self.basis is not None:
            mean, proj = self.basis
            self._center = np.asarray(mean, dtype=np.float64).reshape(-1)
            self._proj = np.asarray(proj, dtype=np.float64)[:, : s.context_dim]
            if self._proj.shape[1] < max(s.region_bits, 1):
                raise ValueError(f"basis has {self._proj.shape[1]} columns, the bandit needs at least {max(s.region_bits, 1)}")
            if self._proj.shape[1] < s.context_dim:
                # A router trained with fewer embedding dimensions (`train --pca-dim 8`, or few
                # prompts): the context is as wide as its basis.
                s = self.settings = replace(s, context_dim=self._proj.shape[1])
        else:
            self._center = np.zeros(self.embed_dim)
            self._proj = rng.normal(size=(self.embed_dim, s.context_dim)) / np.sqrt(s.context_dim)

    # ---- context and posterior ------------------------------------------------------
    @property
    def dim(self) -> int:
        return 1 + self.settings.context_dim + (1 << self.settings.region_bits if self.settings.region_bits else 0)

    def context(self, embedding: np.ndarray | None) -> np.ndarray:
        """[intercept | projected embedding | one-hot region]. The region (signs of the first
        `region_bits` components) lets a correction differ by kind of prompt even where a
        linear function of the components cannot express it (a model good at code only)."""
        s = self.settings
        z = np.zeros(self.dim)
        z[0] = 1.0
        if embedding is not None:
            e = np.asarray(embedding, dtype=np.float64).reshape(-1)[: len(self._center)] - self._center
            norm = np.linalg.norm(e)
            if norm > 0:
                proj = (e / norm) @ self._proj[: len(e)]
                z[1: 1 + s.context_dim] = proj
                if s.region_bits:
                    region = int(sum(1 << b for b in range(s.region_bits) if proj[b] > 0))
                    z[1 + s.context_dim + region] = 1.0
        return z

    def _prior(self, prior_var: float) -> _Arm:
        d = self.dim
        A = np.eye(d) / prior_var
        return _Arm(A=A, b=np.zeros(d), mean=np.zeros(d), cov=np.linalg.inv(A), prior_var=prior_var)

    def _arm(self, model: str, p_std: float = 0.0) -> _Arm:
        arm = self._arms.get(model)
        if arm is None:
            # The correction may be as large as the predictor is unsure: tight for models
            # the predictor knows, wide for one it has never seen (its prior std is large).
            arm = self._arms[model] = self._prior(max(self.settings.prior_var, float(p_std) ** 2))
            arm.unseen = arm.prior_var >= self.settings.reset_var
        return arm

    def _posterior(self, models: Sequence[str], z: np.ndarray,
                   p_std: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Per model: correction mean, total quality std for context z, whether the correction
        is news (a detected change, or a model the predictor does not know), and whether the
        model is new (unseen by the predictor, fewer than `new_model_observations` rewards).
        The caller holds the lock."""
        arms = [self._arm(m, sd) for m, sd in zip(models, np.asarray(p_std).reshape(-1))]
        corr = np.array([z @ a.mean for a in arms])
        corr_var = np.array([z @ a.cov @ z for a in arms])
        trust = np.array([self.settings.trust_after / (self.settings.trust_after + a.n_eff) for a in arms])
        # News: a detected change, or a model the predictor has never seen. Learning news is
        # what the bandit is for; the rest is refinement.
        news = np.array([a.resets > 0 or a.unseen for a in arms])
        new = np.array([a.unseen and a.n_eff < self.settings.new_model_observations for a in arms])
        # A correction steers only where it is clearly non-zero: noise in a few dozen
        # rewards must not override a calibrated predictor, a real shift survives this.
        corr = np.sign(corr) * np.maximum(np.abs(corr) - self.settings.shrink_z * np.sqrt(corr_var), 0.0)
        return corr, np.sqrt(np.asarray(p_std) ** 2 * trust + corr_var), news, new

    # ---- choosing -------------------------------------------------------------------
    def choose(self, models: Sequence[str], p_good: np.ndarray, p_good_std: np.ndarray, penalty: np.ndarray,
               cost: np.ndarray, embedding: np.ndarray | None = None, request_id: str | None = None,
               rng: np.random.Generator | None = None, willingness_to_pay: float | None = None) -> BanditChoice:
        """Pick among `models` (all eligible: filter hard constraints first).

        `penalty` is what the policy subtracts from P(good) to get utility (cost and latency
        terms), so the bandit ranks exactly as the policy does once corrections are zero.
        With `willingness_to_pay` (the policy's knob), the cost term is corrected to the prices
        calls turned out to have (`observe_cost`); spend is accounted at those prices either way.
        """
        if len(models) == 0:
            raise ValueError("no eligible model to choose from")
        s = self.settings
        if rng is None:
            with self._lock:  # a Generator is not thread-safe: each call draws from its own child
                rng = np.random.default_rng(int(self._rng.integers(2**63)))
        p_good, penalty, cost = (np.asarray(a, dtype=np.float64) for a in (p_good, penalty, cost))
        # The predictor's output lengths err, most with little training data: caps on predicted
        # spend let refinement drift to models whose answers cost more than predicted.
        ratios = self.cost_ratios(models)
        realised = cost * ratios
        priced = (realised - cost) / willingness_to_pay if willingness_to_pay else np.zeros(len(models))
        cost = realised
        with self._lock:
            # One view of the basis for the context and the arms: a hot reload (`rebase`) in
            # between would leave them different widths.
            z = self.context(embedding)
            corr, std, news, new = self._posterior(models, z, p_good_std)
        q = np.clip(p_good + corr, 0.0, 1.0)
        ref = int(np.argmax(np.clip(p_good + corr * news, 0.0, 1.0) - penalty - priced))
        # Refinement pays for its extra spend once over the total-spend cap: price-adjusted utility.
        charged = self._spend_price() * cost * ~news
        why = _why(models, p_good, penalty, {"feedback": corr, "prices": priced, "spend cap": charged}, ratios)
        penalty = penalty + priced + charged
        util = q - penalty
        g = int(np.argmax(util))
        with self._lock:
            n, known_mass, new_mass, greedy_spend, extra_spend, _ = self._recent
            known_ok = known_mass < s.explore_share * max(n, 1)  # strictly: with <=, a cap of 0 let the first decision explore
            new_ok = new_mass < s.new_model_explore_share * max(n, 1)
            spend_ok = s.extra_cost_share > 0 and extra_spend <= s.extra_cost_share * greedy_spend
        probs = np.zeros(len(models))
        probs[g] = 1.0
        if spend_ok and (known_ok or new_ok):  # out of budget the corrected greedy choice is played, propensity 1
            explore = (util + s.z_explore * std >= util[g] - s.utility_margin) & np.where(new, new_ok, known_ok)
            explore[g] = True
            if explore.sum() > 1:
                idx = np.flatnonzero(explore)
                draws = q[idx] + std[idx] * rng.standard_normal((s.draws, len(idx)))
                wins = np.argmax(np.clip(draws, 0.0, 1.0) - penalty[idx], axis=1)
                probs[:] = 0.0
                probs[idx] = np.bincount(wins, minlength=len(idx)) / s.draws
        a = int(rng.choice(len(models), p=probs))
        with self._lock:
            self.decisions += 1
            off = probs.copy()
            off[g] = 0.0
            self.explore_mass += float(off[~new].sum())
            self.new_model_explore_mass += float(off[new].sum())
            self.greedy_spend += float(cost[g])
            self.extra_spend += float(probs @ cost - cost[g])
            self.spend += float(probs @ cost)
            self.reference_spend += float(cost[ref])
            keep = 1.0 - 1.0 / s.budget_horizon
            self._recent = keep * self._recent + (1.0, float(off[~new].sum()), float(off[new].sum()), float(cost[g]),
                                                  float(probs @ cost - cost[g]), float(cost[ref]))
            if s.total_cost_share is not None:
                # Only choices of non-news models count (news is outside the cap). Discounted
                # like the other budgets, so slack saved long ago cannot fund a splurge now.
                self.overspend = keep * self.overspend + float(
                    probs[~news] @ (cost[~news] - (1 + s.total_cost_share) * cost[ref]))
            if request_id is not None and len(z) == self.dim:  # not one decided before a rebase
                self._pending[request_id] = _Pending(models[a], z, float(p_good[a]), float(p_good_std[a]))
                while len(self._pending) > s.remember:
                    self._pending.popitem(last=False)
        return BanditChoice(
            model=models[a],
            propensity=float(probs[a]),
            greedy=models[g],
            probabilities={m: float(p) for m, p in zip(models, probs)},
            explored=a != g,
            why=why,
        )

    def choose_for(self, decision: Decision, embedding: np.ndarray | None = None,
                   request_id: str | None = None, rng: np.random.Generator | None = None) -> Decision:
        """Re-decide a policy `Decision` with exploration; the result logs its propensity."""
        eligible = [c for c in decision.candidates if c.excluded is None]
        if len(eligible) <= 1:
            return replace(decision, propensity=1.0)
        embedding = embedding if embedding is not None else decision.embedding
        choice = self.choose(**candidate_arrays(eligible), embedding=embedding, request_id=request_id, rng=rng,
                             willingness_to_pay=decision.knob)
        if choice.model == decision.model:
            return replace(decision, propensity=choice.propensity)
        chosen = next(c for c in eligible if c.model == choice.model)
        rest = tuple(c for c in decision.candidates if c.model != choice.model)
        if choice.model == choice.greedy:  # what the bandit learnt moved the ranking: not a trial
            reason = f"bandit refinement: {choice.model} instead of {decision.model} ({choice.why}); {decision.reason}"
        else:
            reason = (f"bandit exploration: {choice.model} (p={choice.propensity:.2f}) instead of "
                      f"{choice.greedy}; {decision.reason}")
        return replace(decision, model=choice.model, candidates=(chosen, *rest), reason=reason,
                       propensity=choice.propensity)

    def _spend_price(self) -> float:
        """Quality points per USD charged on top of the policy's cost penalty: the step times
        the discounted overspend, both measured in average reference requests, so it does not
        depend on the price level of the catalog; zero while within the total-spend cap."""
        s = self.settings
        with self._lock:
            n, reference_spend = self._recent[0], self._recent[5]
            if s.total_cost_share is None or self.overspend <= 0 or reference_spend <= 0:
                return 0.0
            mean_cost = reference_spend / n
            return s.price_step * (self.overspend / mean_cost) / mean_cost

    def cost_ratios(self, models: Sequence[str]) -> np.ndarray:
        """Per model, realised / predicted cost of its recent calls, shrunk towards 1 while it has
        few (half weight at `cost_prior_calls`); 1 for a model not yet observed."""
        with self._lock:
            return np.array([self._cost_ratio(self._cost_seen.get(m)) for m in models])

    def _cost_ratio(self, seen: np.ndarray | None) -> float:
        prior = self.settings.cost_prior_calls
        return 1.0 if seen is None else float((seen[2] * seen[0] / seen[1] + prior) / (seen[2] + prior))

    # ---- learning -------------------------------------------------------------------
    def observe_cost(self, model: str, predicted_usd: float, realised_usd: float) -> None:
        """One answered call's realised cost beside the cost predicted for it."""
        if not (predicted_usd > 0 and realised_usd >= 0):
            return
        with self._lock:
            seen = self._cost_seen.setdefault(model, np.zeros(3))
            seen *= self.settings.cost_memory
            seen += (realised_usd, predicted_usd, 1.0)

    def update(self, model: str, z: np.ndarray, reward: float, predicted_p_good: float, p_std: float = 0.0) -> None:
        """One observed reward in [0, 1] for `model` on context z.

        `predicted_p_good` is the predictor's own P(good) (without correction): the arm
        regresses the residual of the predictor, not of itself. `p_std` is the predictor's
        spread for the model: a replica that first meets a model through another replica's
        reward must give it the same prior (a model new to the predictor gets a wide one).
        """
        reward = checked_reward(reward)
        s = self.settings
        with self._lock:
            if len(z) != self.dim:  # a context from before a rebase to another basis width: not this basis's
                return
            arm = self._arm(model, p_std)
            expected = float(np.clip(predicted_p_good + z @ arm.mean, 0.0, 1.0))
            err = float(reward) - expected
            arm.cusum_pos = max(0.0, arm.cusum_pos + err - s.cusum_slack)
            arm.cusum_neg = max(0.0, arm.cusum_neg - err - s.cusum_slack)
            if max(arm.cusum_pos, arm.cusum_neg) > s.cusum_threshold:
                # The model changed: forget its history and widen the prior, so the new
                # level is learned from a few rewards (and does not trip the alarm again).
                fresh = self._prior(max(arm.prior_var, s.reset_var))
                fresh.resets, fresh.unseen = arm.resets + 1, arm.unseen
                arm = self._arms[model] = fresh
            prior_A = np.eye(len(z)) / arm.prior_var
            arm.A = s.forgetting * arm.A + (1 - s.forgetting) * prior_A + np.outer(z, z) / s.noise_var
            arm.b = s.forgetting * arm.b + z * (float(reward) - predicted_p_good) / s.noise_var
            arm.cov = np.linalg.inv(arm.A)
            arm.mean = arm.cov @ arm.b
            arm.n_eff = s.forgetting * arm.n_eff + 1.0

    def resolve(self, request_id: str, reward: float) -> Observation | None:
        """Learn from a delayed reward for the decision made with `request_id`; the observation
        learnt from, or None if this bandit did not make that decision (or forgot it)."""
        reward = checked_reward(reward)  # before the decision is taken off the pending list
        with self._lock:
            pending = self._pending.pop(request_id, None)
        if pending is None:
            return None
        self.update(pending.model, pending.context, reward, pending.predicted, pending.p_std)
        return Observation(pending.model, pending.context, float(reward), pending.predicted, pending.p_std)

    def forget(self, request_id: str) -> None:
        """Drop the decision made with `request_id`: another model answered it, no reward is about the one chosen."""
        with self._lock:
            self._pending.pop(request_id, None)

    def feedback(self, request_id: str, reward: float) -> bool:
        """Delayed reward for a decision made with `request_id`; False if it is unknown."""
        return self.resolve(request_id, reward) is not None

    def _recent_stats(self) -> dict:
        n, known_mass, new_mass, greedy_spend, extra_spend, _ = (float(v) for v in self._recent)
        return {"decisions": n, "explore_share": _share(known_mass, n),
                "new_model_explore_share": _share(new_mass, n), "extra_cost_share": _share(extra_spend, greedy_spend)}

    def stats(self) -> dict:
        price = self._spend_price()
        with self._lock:
            return {
                "decisions": self.decisions,
                "explore_share": self.explore_mass / max(self.decisions, 1),  # known models only, as its cap counts
                "new_model_explore_share": self.new_model_explore_mass / max(self.decisions, 1),
                "extra_cost_share": self.extra_spend / self.greedy_spend if self.greedy_spend else 0.0,
                "total_cost_share": self.spend / self.reference_spend - 1.0 if self.reference_spend else 0.0,
                "spend_price_per_usd": price,
                "recent": self._recent_stats(),  # the accounts the caps compare (`budget_horizon`)
                "arms": {m: {"n_eff": a.n_eff, "intercept": float(a.mean[0]), "resets": a.resets} for m, a in self._arms.items()},
                # realised / predicted cost scaling each model's cost (`observe_cost`), over its discounted calls
                "cost_ratios": {m: {"ratio": self._cost_ratio(v), "calls": float(v[2])} for m, v in self._cost_seen.items()},
            }


def _why(models: Sequence[str], p_good: np.ndarray, penalty: np.ndarray, terms: dict[str, np.ndarray],
         ratios: np.ndarray) -> str:
    """What moved the best model off the predictor's own, in words: the terms without which the choice would differ
    (all in play where each alone would do); "" where it did not move. Not "feedback" where prices moved it."""
    def best(drop: str = "") -> int:
        on = {k: 0.0 if k == drop else v for k, v in terms.items()}
        return int(np.argmax(np.clip(p_good + on["feedback"], 0.0, 1.0) - penalty - on["prices"] - on["spend cap"]))

    g, own = best(), int(np.argmax(p_good - penalty))
    if g == own:  # most decisions: nothing to word
        return ""
    active, a, b, corr = [k for k, v in terms.items() if np.any(v != 0)], models[g], models[own], terms["feedback"]
    said = {"feedback": f"feedback corrected P(good): {a} {corr[g]:+.2f}, {b} {corr[own]:+.2f}",
            "prices": f"realised prices: {b} costs {ratios[own]:.2f}x its predicted cost, {a} {ratios[g]:.2f}x",
            "spend cap": SPEND_CAP_WHY}
    return "; ".join(said[k] for k in [k for k in active if best(k) != g] or active)


def _share(part: float, whole: float) -> float:
    return part / whole if whole else 0.0


def checked_reward(reward: float) -> float:
    """A reward as the bandit learns it: a number in [0, 1]. One NaN would leave its model's
    correction NaN for good (and NaN wins every argmax), one 50 would swamp a hundred rewards."""
    value = float(reward)
    if not 0.0 <= value <= 1.0:  # NaN fails this too
        raise ValueError(f"a reward is a number in [0, 1], got {reward!r}")
    return value


def candidate_arrays(candidates: Sequence[Candidate]) -> dict[str, np.ndarray]:
    """Eligible candidates of a decision as the arrays `ContextualBandit.choose` takes."""
    eligible = [c for c in candidates if c.excluded is None]
    return {
        "models": [c.model for c in eligible],
        "p_good": np.array([c.p_good for c in eligible]),
        "p_good_std": np.array([c.p_good_std for c in eligible]),
        "penalty": np.array([c.p_good - c.utility for c in eligible]),
        "cost": np.array([c.cost_usd for c in eligible]),
    }
