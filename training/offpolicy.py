"""Logged traffic as off-policy evaluation data: what the live router did, and what another
router would have done on the same requests.

A logged request is usable when the router decided it (ranked candidates, a propensity),
its embedding and live feature row were stored (`server.prompt_storage: hash` or `full`; rows
logged before feature rows were stored need the prompt, i.e. `full`), and it has a reward:
the latest feedback score (explicit over implicit), or 0 when every upstream call failed.
The reward evaluated is *utility in quality points*: quality − actual cost / willingness to
pay (the decision's knob), the same trade-off the policy optimises.

A router's action on a logged request is its argmax utility over the candidates that were
eligible then, with the logged predicted cost and latency terms (`p_good − utility` of each
logged candidate), so two routers differ only in what they predict about quality.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from router import ope


@dataclass
class Traffic:
    request_ids: list[str]
    texts: list[str]  # the prompt, or its hash where only the hash was stored (a grouping key)
    input_tokens: np.ndarray  # (n,)
    embeddings: np.ndarray  # (n, 384)
    features: np.ndarray  # (n, F) the cheap features the live router computed
    models: list[str]  # union of candidate models; columns below
    eligible: np.ndarray  # (n, K) bool
    p_logged: np.ndarray  # (n, K) the live router's P(good) at decision time
    penalty: np.ndarray  # (n, K) cost + latency terms of the logged utility
    action: np.ndarray  # (n,) column of the chosen model
    propensity: np.ndarray  # (n,)
    quality: np.ndarray  # (n,) reward in [0, 1]
    cost: np.ndarray  # (n,) actual USD
    knob: np.ndarray  # (n,) willingness to pay
    ts: np.ndarray  # (n,)
    task: list[str | None]  # feedback label, e.g. the task, when given
    latency: np.ndarray  # (n,) seconds, NaN when unknown
    output_tokens: np.ndarray  # (n,) NaN when unknown

    def __len__(self) -> int:
        return len(self.request_ids)

    def rows(self, idx: np.ndarray) -> "Traffic":
        idx = np.asarray(idx)
        return Traffic(
            [self.request_ids[i] for i in idx], [self.texts[i] for i in idx], self.input_tokens[idx], self.embeddings[idx],
            self.features[idx],
            list(self.models), self.eligible[idx], self.p_logged[idx], self.penalty[idx], self.action[idx],
            self.propensity[idx], self.quality[idx], self.cost[idx], self.knob[idx], self.ts[idx], [self.task[i] for i in idx],
            self.latency[idx], self.output_tokens[idx])

    @property
    def utility(self) -> np.ndarray:
        return self.quality - self.cost / self.knob


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value))


def _stored_features(row) -> list[float] | None:
    """The feature row logged with the request, in this router's feature set. Rows logged before
    `log_input_tokens` was dropped hold it first, then today's features in order: they lose it.
    A row of any other width is left out (recomputed from the prompt where one is kept): the
    stored prompt holds the system prompt too, which the features never read, so it is the
    last resort."""
    from router.features import FEATURE_NAMES

    extras = row.extras if isinstance(row.extras, dict) else {}
    stored = extras.get("features")
    if isinstance(stored, list) and len(stored) == len(FEATURE_NAMES) + 1:
        return stored[1:]
    return stored if isinstance(stored, list) and len(stored) == len(FEATURE_NAMES) else None


def _feature_rows(keep: list) -> np.ndarray:
    """The live feature rows; recomputed from the prompt for rows logged without them."""
    from router.features import FEATURE_NAMES, request_features
    from router.types import RoutingRequest

    out = np.zeros((len(keep), len(FEATURE_NAMES)), dtype=np.float32)
    for i, (row, _) in enumerate(keep):
        stored = _stored_features(row)
        out[i] = stored if stored is not None else request_features([RoutingRequest(text=row.prompt)])[0]
    return out


def load_traffic(db: str) -> Traffic:
    """Usable logged requests of the outcome log at `db`, oldest first."""
    from router.embedding import DIM
    from router.feedback_log import latest_rewards, read_feedback
    from router.outcome_log import failed_by_its_models, judges_chosen_model, read_outcomes

    df = read_outcomes(db)
    feedback = read_feedback(db)
    rewards = latest_rewards(feedback)
    labels = {r["request_id"]: r["label"] for r in feedback if r.get("label")}
    keep = []
    for row in df.itertuples(index=False):
        if not row.candidates or _missing(row.propensity) or not row.chosen_model or _missing(row.embedding):
            continue
        if row.cache_status not in ("miss", "bypass") or (_missing(row.prompt) and not _stored_features(row)):
            continue
        if row.request_id in rewards:
            reward = rewards[row.request_id]
        elif failed_by_its_models(row.status, row.attempts):
            reward = 0.0
        else:
            continue
        if not judges_chosen_model(row.status, row.chosen_model, row.answered_model, row.attempts):
            continue  # a fallback answered, or the chosen model was never called: the reward is not its
        keep.append((row, reward))
    models = sorted({c["model"] for row, _ in keep for c in row.candidates})
    col = {m: j for j, m in enumerate(models)}
    n, k = len(keep), len(models)
    eligible = np.zeros((n, k), dtype=bool)
    p_logged = np.zeros((n, k))
    penalty = np.zeros((n, k))
    for i, (row, _) in enumerate(keep):
        for c in row.candidates:
            j = col[c["model"]]
            eligible[i, j] = c.get("excluded") is None
            p_logged[i, j] = c["p_good"]
            penalty[i, j] = c["p_good"] - c["utility"]
    input_tokens = np.array([1 if _missing(r.input_tokens_est) else max(r.input_tokens_est, 1) for r, _ in keep], dtype=np.float64)
    return Traffic(
        request_ids=[r.request_id for r, _ in keep],
        texts=[r.prompt if not _missing(r.prompt) else r.prompt_hash for r, _ in keep],
        input_tokens=input_tokens,
        embeddings=np.array([np.frombuffer(r.embedding, dtype=np.float32) for r, _ in keep]).reshape(n, DIM),
        features=_feature_rows(keep),
        models=models, eligible=eligible, p_logged=p_logged, penalty=penalty,
        action=np.array([col[r.chosen_model] for r, _ in keep], dtype=int),
        propensity=np.array([float(r.propensity) for r, _ in keep]),
        quality=np.array([q for _, q in keep], dtype=np.float64),
        cost=np.array([0.0 if _missing(r.cost_usd) else float(r.cost_usd) for r, _ in keep]),
        knob=np.array([1.0 if _missing(r.knob) else float(r.knob) for r, _ in keep]),
        ts=np.array([0.0 if _missing(r.ts) else float(r.ts) for r, _ in keep]),
        task=[labels.get(r.request_id) for r, _ in keep],
        latency=np.array([np.nan if _missing(r.latency_s) else float(r.latency_s) for r, _ in keep]),
        output_tokens=np.array([np.nan if _missing(r.output_tokens) else float(r.output_tokens) for r, _ in keep]),
    )


def router_p_good(router, traffic: Traffic) -> np.ndarray:
    """A `LearnedRouter`'s P(good) for every (logged request, candidate model)."""
    X = np.hstack([traffic.embeddings, traffic.features])
    return router.predictor.predict(X, traffic.input_tokens, models=traffic.models).p_good


def calibrated_reward_model(p_fit: np.ndarray, fit: Traffic, p_apply: np.ndarray, min_rows: int = 50) -> np.ndarray:
    """The DR reward model: the live router's P(good) mapped through an isotonic fit to the
    rewards logged on `fit` (its chosen actions), applied to `p_apply`. A predictor that reads
    5-6 points optimistic on live traffic would otherwise lend DR its optimism. With fewer than
    `min_rows` logged rewards to fit on, the predictions as they are."""
    if len(fit) < min_rows:
        return p_apply
    from sklearn.isotonic import IsotonicRegression

    chosen = p_fit[np.arange(len(fit)), fit.action]
    iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(chosen, fit.quality)
    return iso.predict(p_apply.reshape(-1)).reshape(p_apply.shape)


def greedy_probs(p_good: np.ndarray, traffic: Traffic) -> np.ndarray:
    """One-hot probabilities of the argmax-utility policy over the logged eligible candidates."""
    u = np.where(traffic.eligible, p_good - traffic.penalty, -np.inf)
    return ope.deterministic_probs(np.argmax(u, axis=1), len(traffic.models))


def logged_data(traffic: Traffic, reward: np.ndarray, q_hat: np.ndarray) -> ope.LoggedData:
    # One cluster per prompt (system prompt and user turn, or their hash): the gateway's bandit
    # draws once per user turn for every step of a tool loop, so those requests share their noise.
    keys = [f"p:{t}" if not _missing(t) else f"r:{rid}" for t, rid in zip(traffic.texts, traffic.request_ids)]
    clusters = np.unique(np.array(keys, dtype=object), return_inverse=True)[1]
    return ope.LoggedData(actions=traffic.action, rewards=reward, propensities=traffic.propensity, q_hat=q_hat,
                          clusters=clusters.reshape(-1))


def compare_routers(traffic: Traffic, p_live: np.ndarray, p_candidate: np.ndarray, seed: int = 0) -> dict:
    """OPE of the candidate router's greedy policy against what the live gateway served: the
    logged policy, the live router with its bandit's refinements and exploration when that is
    on (the live router's plain argmax would have no support where a refinement chose another
    model with probability 1). The live router's predictions are the DR reward model: fixed
    before these rewards were seen, so not fitted to them."""
    return compare_policies(traffic, None, greedy_probs(p_candidate, traffic), p_live, seed)


def compare_policies(traffic: Traffic, live: np.ndarray | None, cand: np.ndarray, p_model: np.ndarray, seed: int = 0) -> dict:
    """Values and paired differences (candidate − live) for utility (the promotion
    criterion), quality and cost; `live` None: the logged policy; `p_model` is the DR reward
    model's P(good)."""
    pred_cost = traffic.penalty  # predicted cost (and latency) terms, in quality points
    live_choice = traffic.action if live is None else live.argmax(1)
    out = {"n": len(traffic), "agreement": float(np.mean(live_choice == cand.argmax(1))) if len(traffic) else None,
           # Where the candidate never takes the logged action IPS sees no reward for it and
           # DR leans on its reward model: low overlap means the estimates say little.
           "overlap": float(np.mean(cand[np.arange(len(traffic)), traffic.action] > 0)) if len(traffic) else None}
    metrics = {
        "utility": (traffic.utility, p_model - pred_cost),
        "quality": (traffic.quality, p_model),
        "cost_usd": (traffic.cost, pred_cost * traffic.knob[:, None]),
    }
    for name, (reward, q_hat) in metrics.items():
        data = logged_data(traffic, reward, q_hat)
        out[name] = {
            "live": {k: e.to_dict() for k, e in ope.evaluate(data, live, seed=seed).items()},
            "candidate": {k: e.to_dict() for k, e in ope.evaluate(data, cand, seed=seed).items()},
            "difference": {k: e.to_dict() for k, e in ope.compare(data, cand, live, seed=seed).items()},
        }
    out["logged"] = {"utility": float(traffic.utility.mean()), "quality": float(traffic.quality.mean()),
                     "cost_usd": float(traffic.cost.mean())}
    return out


def finite(obj):
    """`obj` with NaN and infinities as None, so the JSON written is valid everywhere."""
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj
