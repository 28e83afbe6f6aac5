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

import json
from array import array
from collections import namedtuple
from dataclasses import dataclass, field

import numpy as np

from router import ope
from router.outcome_log import failed_by_its_models, from_row, judges_chosen_model, scan_outcomes


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
    # The models the live router predicted through another's name (`router_model`), as logged.
    predicted_as: dict[str, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.request_ids)

    def rows(self, idx: np.ndarray) -> "Traffic":
        idx = np.asarray(idx)
        return Traffic(
            [self.request_ids[i] for i in idx], [self.texts[i] for i in idx], self.input_tokens[idx], self.embeddings[idx],
            self.features[idx],
            list(self.models), self.eligible[idx], self.p_logged[idx], self.penalty[idx], self.action[idx],
            self.propensity[idx], self.quality[idx], self.cost[idx], self.knob[idx], self.ts[idx], [self.task[i] for i in idx],
            self.latency[idx], self.output_tokens[idx], dict(self.predicted_as))

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


# What load_traffic reads of each logged request, in this order.
_Logged = namedtuple("_Logged", "request_id ts prompt prompt_hash embedding input_tokens_est candidates knob chosen_model "
                                "propensity answered_model attempts latency_s output_tokens cost_usd status cache_status extras")
# The part of the usability rule (`_reward`) SQL can check, so the rows it would leave out (cache
# hits, requests logged without a decision, an embedding or any feedback) are never read: it only
# drops a row the rule drops (NULL where the rule needs a value; a reward needs feedback or an
# error). NaN propensities, empty candidate lists, which error and which answer are left to the rule.
_USABLE_SQL = ("candidates IS NOT NULL AND propensity IS NOT NULL AND chosen_model IS NOT NULL AND chosen_model <> '' "
               "AND embedding IS NOT NULL AND cache_status IN ('miss', 'bypass') AND (prompt IS NOT NULL OR extras IS NOT NULL) "
               "AND (status = 'error' OR request_id IN (SELECT request_id FROM feedback))")


def _decoded(raw) -> _Logged:
    return _Logged(**from_row(dict(zip(_Logged._fields, raw))))  # the JSON columns decoded as every reader does


def _reward(row: _Logged, rewards: dict[str, float]) -> float | None:
    """The reward of a usable logged request; None for one left out."""
    if not row.candidates or _missing(row.propensity) or not row.chosen_model or _missing(row.embedding):
        return None
    if row.cache_status not in ("miss", "bypass") or (_missing(row.prompt) and not _stored_features(row)):
        return None
    if row.request_id in rewards:
        reward = rewards[row.request_id]
    elif failed_by_its_models(row.status, row.attempts):
        reward = 0.0
    else:
        return None
    if not judges_chosen_model(row.status, row.chosen_model, row.answered_model, row.attempts):
        return None  # a fallback answered, or the chosen model was never called: the reward is not its
    return reward


class _Kept:
    """What a Traffic needs of each usable row, packed as it is read: every row of the log as a
    DataFrame row with its JSON decoded made `retrain` hold ~31 KB per logged row."""

    SCALARS = ("input_tokens", "propensity", "quality", "cost", "knob", "ts", "latency", "output_tokens")

    def __init__(self, labels: dict[str, str]):
        self.labels = labels
        self.request_ids: list[str] = []
        self.texts: list[str] = []
        self.chosen: list[str] = []
        self.scalars = {k: array("d") for k in self.SCALARS}
        self.embeddings, self.features = bytearray(), bytearray()
        self.model_ids: dict[str, int] = {}
        # One entry per (row, candidate model): row, model id, eligible, P(good), cost + latency terms.
        self.cand_row, self.cand_model, self.cand_ok = array("q"), array("q"), array("b")
        self.cand_p, self.cand_penalty = array("d"), array("d")
        self.predicted_as: dict[str, str] = {}

    def add(self, row: _Logged, reward: float) -> None:
        from router.embedding import DIM
        from router.features import request_features
        from router.types import RoutingRequest

        if len(row.embedding) != DIM * 4:
            raise ValueError(f"logged request {row.request_id}: its embedding holds {len(row.embedding)} bytes, "
                             f"not {DIM} float32")
        try:
            propensity = float(row.propensity)
        except (TypeError, ValueError):
            propensity = float("nan")
        if not 0.0 < propensity <= 1.0:  # found here, before a candidate is trained, not by the estimators
            raise ValueError(f"logged request {row.request_id}: its propensity {row.propensity!r} is no number in (0, 1]")
        i = len(self.request_ids)
        self.request_ids.append(row.request_id)
        self.texts.append(row.prompt if not _missing(row.prompt) else row.prompt_hash)
        self.chosen.append(row.chosen_model)
        values = (1 if _missing(row.input_tokens_est) else max(row.input_tokens_est, 1), float(row.propensity), reward,
                  0.0 if _missing(row.cost_usd) else float(row.cost_usd), 1.0 if _missing(row.knob) else float(row.knob),
                  0.0 if _missing(row.ts) else float(row.ts), np.nan if _missing(row.latency_s) else float(row.latency_s),
                  np.nan if _missing(row.output_tokens) else float(row.output_tokens))
        for k, v in zip(self.SCALARS, values):
            self.scalars[k].append(v)
        self.embeddings += row.embedding
        stored = _stored_features(row)
        # Recomputed from the prompt for rows logged without a feature row.
        live = stored if stored is not None else request_features([RoutingRequest(text=row.prompt)])[0]
        self.features += np.asarray(live, dtype=np.float32).tobytes()
        proxies = (row.extras or {}).get("predicted_as") if isinstance(row.extras, dict) else None
        if isinstance(proxies, dict):  # rows are read oldest first: the latest mapping of each model stands
            self.predicted_as.update({k: v for k, v in proxies.items() if isinstance(k, str) and isinstance(v, str)})
        last = {c["model"]: c for c in row.candidates}  # a model listed twice: its last entry, as always
        self.cand_row.extend([i] * len(last))
        self.cand_model.extend([self.model_ids.setdefault(m, len(self.model_ids)) for m in last])
        self.cand_ok.extend([c.get("excluded") is None for c in last.values()])
        self.cand_p.extend([c["p_good"] for c in last.values()])
        self.cand_penalty.extend([c["p_good"] - c["utility"] for c in last.values()])

    def traffic(self) -> Traffic:
        from router.embedding import DIM
        from router.features import FEATURE_NAMES

        n = len(self.request_ids)
        models = sorted(self.model_ids)
        col = {m: j for j, m in enumerate(models)}
        by_id = np.array([col[m] for m in sorted(self.model_ids, key=self.model_ids.get)], dtype=int)
        rows, cols = np.asarray(self.cand_row, dtype=int), by_id[np.asarray(self.cand_model, dtype=int)]
        eligible = np.zeros((n, len(models)), dtype=bool)
        p_logged, penalty = np.zeros((n, len(models))), np.zeros((n, len(models)))
        eligible[rows, cols] = np.asarray(self.cand_ok, dtype=bool)
        p_logged[rows, cols] = np.asarray(self.cand_p)
        penalty[rows, cols] = np.asarray(self.cand_penalty)
        s = {k: np.asarray(v, dtype=np.float64) for k, v in self.scalars.items()}
        return Traffic(
            request_ids=self.request_ids, texts=self.texts, input_tokens=s["input_tokens"],
            embeddings=np.frombuffer(self.embeddings, dtype=np.float32).reshape(n, DIM),
            features=np.frombuffer(self.features, dtype=np.float32).reshape(n, len(FEATURE_NAMES)),
            models=models, eligible=eligible, p_logged=p_logged, penalty=penalty,
            action=np.array([col[m] for m in self.chosen], dtype=int),
            propensity=s["propensity"], quality=s["quality"], cost=s["cost"], knob=s["knob"], ts=s["ts"],
            task=[self.labels.get(r) for r in self.request_ids], latency=s["latency"], output_tokens=s["output_tokens"],
            predicted_as=dict(self.predicted_as))


def _feedback(db: str) -> tuple[dict[str, float], dict[str, str]]:
    """Each request's reward and task label from the feedback log."""
    from router.feedback_log import latest_rewards, read_feedback

    feedback = read_feedback(db)
    return latest_rewards(feedback), {r["request_id"]: r["label"] for r in feedback if r.get("label")}


def load_traffic(db: str) -> Traffic:
    """Usable logged requests of the outcome log at `db`, oldest first."""
    rewards, labels = _feedback(db)
    kept = _Kept(labels)
    for raw in scan_outcomes(db, _Logged._fields, where=_USABLE_SQL):
        row = _decoded(raw)
        reward = _reward(row, rewards)
        if reward is not None:
            kept.add(row, reward)
    return kept.traffic()


def logged_routers(db: str) -> tuple[str | None, dict[str, int]]:
    """(the router artifact that made the latest logged decision, how many each one made), from
    the folder the gateway records with every routed request."""
    latest, counts = None, {}
    # No LIKE in the SQL: psycopg reads a `%` in a query as a placeholder.
    for (extras,) in scan_outcomes(db, ["extras"], "extras IS NOT NULL"):
        if isinstance(extras, str) and '"router"' not in extras:
            continue  # most rows of a log with named-model traffic: not decoded
        path = (json.loads(extras) if isinstance(extras, str) else extras or {}).get("router")
        if isinstance(path, str):
            latest, counts[path] = path, counts.get(path, 0) + 1
    return latest, counts


def router_p_good(router, traffic: Traffic) -> np.ndarray:
    """A `LearnedRouter`'s P(good) for every (logged request, candidate model): a model it has
    not learned through the name it was predicted as when logged, as `LearnedRouter.artifact_name`
    picks it at serving time."""
    X = np.hstack([traffic.embeddings, traffic.features])
    known = set(router.models)
    names = [m if m in known else traffic.predicted_as.get(m, m) for m in traffic.models]
    return router.predictor.predict(X, traffic.input_tokens, models=names, names=traffic.models).p_good


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


def prompt_clusters(traffic: Traffic) -> np.ndarray:
    # One cluster per prompt (system prompt and user turn, or their hash): the gateway's bandit
    # draws once per user turn for every step of a tool loop, so those requests share their noise.
    keys = [f"p:{t}" if not _missing(t) else f"r:{rid}" for t, rid in zip(traffic.texts, traffic.request_ids)]
    return np.unique(np.array(keys, dtype=object), return_inverse=True)[1].reshape(-1)


def logged_data(traffic: Traffic, reward: np.ndarray, q_hat: np.ndarray, clusters: np.ndarray) -> ope.LoggedData:
    return ope.LoggedData(actions=traffic.action, rewards=reward, propensities=traffic.propensity, q_hat=q_hat,
                          clusters=clusters)


def compare_routers(traffic: Traffic, p_live: np.ndarray, p_candidate: np.ndarray, seed: int = 0) -> dict:
    """OPE of the candidate router's greedy policy against what the live gateway served: the
    logged policy, the live router with its bandit's refinements and exploration when that is
    on (the live router's plain argmax would have no support where a refinement chose another
    model with probability 1). The live router's predictions are the DR reward model: fixed
    before these rewards were seen, so not fitted to them. Beating the logged policy is not
    beating the router serving now: exploration lowers it, and the log may have been served by
    an older router; `compare_with_router` is that second comparison."""
    return compare_policies(traffic, None, greedy_probs(p_candidate, traffic), p_live, seed)


def compare_with_router(traffic: Traffic, p_model: np.ndarray, p_router: np.ndarray, p_candidate: np.ndarray,
                        seed: int = 0) -> dict:
    """OPE of the candidate's greedy policy against another router's greedy policy on the same log
    (the serving router's own choices, without its bandit): a candidate identical to it differs by
    exactly 0. `support_baseline` says how far the log supports that router's choices: where a
    bandit refinement logged another model with probability 1 it does not, and the estimators
    guess its reward there (IPS: 0, which favours the candidate), so this comparison alone is not
    enough either: `compare_routers`, whose baseline is observed on every request, stays
    required. `p_model` is the DR reward model's P(good)."""
    router = greedy_probs(p_router, traffic)
    out = compare_policies(traffic, router, greedy_probs(p_candidate, traffic), p_model, seed)
    data = logged_data(traffic, traffic.utility, p_model - traffic.penalty, prompt_clusters(traffic))
    out["support_baseline"] = ope.support(data, router).to_dict()
    return out


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
    clusters = prompt_clusters(traffic)
    logs = {name: logged_data(traffic, reward, q_hat, clusters) for name, (reward, q_hat) in metrics.items()}
    # Whether the log can judge the candidate at all: its mean importance weight, 1 with full support.
    out["support"] = ope.support(logs["utility"], cand).to_dict()
    # Every SNIPS interval below resamples the same groups with the same seed: one draw for all.
    boot = ope.shared_bootstrap(list(logs.values()), cand, live, seed=seed)
    for name, data in logs.items():
        out[name] = {
            "live": {k: e.to_dict() for k, e in ope.evaluate(data, live, seed=seed, boot=boot).items()},
            "candidate": {k: e.to_dict() for k, e in ope.evaluate(data, cand, seed=seed, boot=boot).items()},
            "difference": {k: e.to_dict() for k, e in ope.compare(data, cand, live, seed=seed, boot=boot).items()},
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
