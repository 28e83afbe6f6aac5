"""`openclaw-router simulate`: replay an outcome table as a request stream, static vs bandit.

Prompts of a wide outcome table (every prompt answered by every model) become a stream of
requests. Both routers decide on the same learned predictions; the world answers from the
table: reward = the recorded quality of the chosen model, cost = its recorded cost,
latency = ttft + recorded answer tokens / throughput (no latency is recorded). Drift
changes the world, not the predictions:

* `degrade:MODEL:FRACTION@K` — from request K on, that share (0.4 or 40%) of MODEL's answers are wrong;
* `add:MODEL@K` — MODEL is unavailable before request K.

The static router is the learned policy (argmax utility). The bandit router is the same
policy wrapped in `router.bandit.ContextualBandit`, updated with each reward it observes.
Unless `--router` is given, the router is trained here on a split of the table and the
stream replays the other split only, so no prompt the predictors were trained on is
replayed; an added model is left out of that training (it is new: the predictor gives it
the unseen-model prior, and only the bandit can learn where it is good).
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from training.outputs import non_negative_int
from training.texts import TEXT_COLUMN_DEFAULT

log = logging.getLogger(__name__)

ADAPTATION = 1000  # requests a router is given to adapt to a drift before its recovery is measured


def measured_from(start: int, n: int) -> int:
    """First request of a drift's measured stretch: `ADAPTATION` requests after it starts, but
    never past halfway through the `n - start` requests after it (`n` or more: none is left)."""
    # Keeping start + ADAPTATION where fewer than 2 x ADAPTATION requests follow would measure
    # over what is left, down to one request (a share of a handful is noise) or none at all.
    # Halving measures at least half of them, after the other half to adapt in, and meets
    # start + ADAPTATION at 2 x ADAPTATION, so the stretch grows with the run and never jumps.
    return start + min(ADAPTATION, max(n - start, 0) // 2)


@dataclass(frozen=True)
class Drift:
    kind: str  # degrade | add
    model: str
    start: int
    fraction: float = 0.0


def parse_drift(spec: str) -> Drift:
    """`degrade:MODEL:FRACTION@K` or `add:MODEL@K` (model names may contain ':')."""
    body, at, start = spec.rpartition("@")
    if not at or not start.strip().isdigit():
        raise ValueError(f"drift {spec!r}: expected degrade:MODEL:FRACTION@K or add:MODEL@K")
    kind, _, rest = body.partition(":")
    if kind == "add" and rest:
        return Drift("add", rest, int(start))
    if kind == "degrade":
        model, _, frac = rest.rpartition(":")
        frac = frac.strip()
        try:  # 0.4 or 40%, as calibrate's --share
            fraction = float(frac[:-1]) / 100 if frac.endswith("%") else float(frac)
        except ValueError:
            fraction = -1.0
        if model and 0.0 <= fraction <= 1.0:
            return Drift("degrade", model, int(start), fraction)
    raise ValueError(f"drift {spec!r}: expected degrade:MODEL:FRACTION@K (FRACTION in [0, 1] or 0%-100%) or add:MODEL@K")


def _added_summary(j: int, stream: Stream, static: np.ndarray, bandit: np.ndarray, start: int) -> dict:
    """Where the added model got traffic, and whether it deserved it on those requests."""
    n = len(stream.rows)
    idx = np.arange(start, n)
    picked = idx[bandit[idx] == j]
    switched = picked[static[picked] != j]  # the bandit chose it, the static router did not
    later = np.arange(min(measured_from(start, n), n), n)
    by_task = {}
    if stream.task is not None and len(later):
        for t in np.unique(stream.task[later]):
            rows = later[stream.task[later] == t]
            by_task[str(t)] = {"bandit_share": float(np.mean(bandit[rows] == j)), "static_share": float(np.mean(static[rows] == j)),
                               "quality_of_added_model": float(stream.quality[rows, j].mean())}
    return {
        "first_routed_at": int(picked[0]) if len(picked) else None,
        # None: no request is left when it arrives, so it has no share (0 would read as "never chosen").
        "bandit_share_first_1000": float(np.mean(bandit[start:start + 1000] == j)) if start < n else None,
        "by_task_from": by_task,
        "by_task_from_request": int(later[0]) if len(later) else None,
        "where_only_bandit_chose_it": {
            "requests": int(len(switched)),
            "added_model_quality": float(stream.quality[switched, j].mean()) if len(switched) else None,
            "static_choice_quality": float(stream.quality[switched, static[switched]].mean()) if len(switched) else None,
        },
    }


@dataclass
class Stream:
    """The replayed world: per request i and model j, what would happen."""

    rows: np.ndarray  # (N,) row of the replay table per request
    quality: np.ndarray  # (N, M) after drift
    cost: np.ndarray  # (N, M)
    latency: np.ndarray  # (N, M)
    available: np.ndarray  # (N, M) bool
    task: np.ndarray | None = None


def build_stream(table, n_requests: int, drifts: list[Drift], seed: int, ttft_s: float, tps: float,
                 apply_drift: bool = True) -> Stream:
    rng = np.random.default_rng(seed)
    n = len(table)
    order = np.concatenate([rng.permutation(n) for _ in range(-(-n_requests // n))])[:n_requests]
    flip = np.random.default_rng(seed + 1).random((n_requests, len(table.models)))
    quality = table.quality[order].copy()
    available = np.ones_like(quality, dtype=bool)
    for d in drifts:
        j = table.models.index(d.model)  # `simulate` checked the names before training
        if d.kind == "add":
            available[: d.start, j] = False
        elif apply_drift:
            wrong = flip[:, j] < d.fraction
            wrong[: d.start] = False
            quality[wrong, j] = 0.0
    tokens = table.output_tokens[order] if table.output_tokens is not None else np.full(quality.shape, 200.0)
    modelled = ttft_s + np.where(np.isnan(tokens), 200.0, tokens) / tps
    # A table that records latencies is replayed with them; only the cells it lacks are modelled.
    latency = modelled if table.latency is None else np.where(np.isnan(table.latency[order]), modelled, table.latency[order])
    return Stream(order, quality, table.cost[order], latency, available, table.task[order] if table.task is not None else None)


def static_choices(pred, stream: Stream, wtp: float, latency_weight: float) -> np.ndarray:
    from router.policy import utility

    u = utility(pred.p_good[stream.rows], pred.cost_usd[stream.rows], pred.latency_s[stream.rows], wtp, latency_weight)
    u = np.where(stream.available, u, -np.inf)
    return np.argmax(u, axis=1)


def informed_choices(pred, stream: Stream, drifts: list[Drift], wtp: float, latency_weight: float) -> np.ndarray:
    """A static router told the truth about every degradation the moment it starts: the
    best a router without exploration could do after the drift (the recoverable ceiling)."""
    from router.policy import utility

    p = pred.p_good[stream.rows].copy()
    # The world draws one random number per request and model for all its degradations, so on
    # one model the largest fraction in force is what is lost (they do not compound).
    lost = np.zeros_like(p)
    for d in drifts:
        if d.kind == "degrade":
            j = pred.models.index(d.model)
            lost[d.start:, j] = np.maximum(lost[d.start:, j], d.fraction)
    p *= 1.0 - lost
    u = utility(p, pred.cost_usd[stream.rows], pred.latency_s[stream.rows], wtp, latency_weight)
    return np.argmax(np.where(stream.available, u, -np.inf), axis=1)


def bandit_choices(pred, embeddings: np.ndarray, stream: Stream, wtp: float, latency_weight: float,
                   settings, feedback_rate: float, seed: int, basis=None) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """Sequential bandit run: choices, their propensities, whether each explored, final stats."""
    from router.bandit import ContextualBandit
    from router.policy import utility

    bandit = ContextualBandit(settings, embed_dim=embeddings.shape[1], basis=basis)
    rng = np.random.default_rng(seed + 2)
    n = len(stream.rows)
    chosen = np.zeros(n, dtype=int)
    prop = np.zeros(n)
    explored = np.zeros(n, dtype=bool)
    models = np.array(pred.models)
    for i, r in enumerate(stream.rows):
        ok = np.flatnonzero(stream.available[i])
        p = pred.p_good[r, ok]
        penalty = p - utility(p, pred.cost_usd[r, ok], pred.latency_s[r, ok], wtp, latency_weight)
        choice = bandit.choose(list(models[ok]), p, pred.p_good_std[r, ok], penalty, pred.cost_usd[r, ok],
                               embedding=embeddings[r], rng=rng, willingness_to_pay=wtp)
        j = int(ok[list(models[ok]).index(choice.model)])
        chosen[i], prop[i], explored[i] = j, choice.propensity, choice.explored
        bandit.observe_cost(choice.model, float(pred.cost_usd[r, j]), float(stream.cost[i, j]))
        if rng.random() < feedback_rate:
            bandit.update(choice.model, bandit.context(embeddings[r]), float(stream.quality[i, j]), float(pred.p_good[r, j]),
                          float(pred.p_good_std[r, j]))
    return chosen, prop, explored, bandit.stats()


def means(stream: Stream, chosen: np.ndarray, sl: slice) -> dict:
    idx = np.arange(len(stream.rows))[sl]
    c = chosen[sl]
    return {
        "quality": float(stream.quality[idx, c].mean()),
        "cost": float(stream.cost[idx, c].mean()),
        "latency_s": float(stream.latency[idx, c].mean()),
    }


def random_means(stream: Stream, sl: slice) -> dict:
    """Uniform random routing over the models available at each request (exact expectation)."""
    avail = stream.available[sl]

    def mean(x: np.ndarray) -> float:
        return float((np.where(avail, x[sl], 0.0).sum(axis=1) / avail.sum(axis=1)).mean())

    return {"quality": mean(stream.quality), "cost": mean(stream.cost), "latency_s": mean(stream.latency)}


def by_task(models: list[str], stream: Stream, static: np.ndarray, bandit: np.ndarray, start: int) -> dict:
    """Per task, from `start` on: both routers and random routing, and where each sent traffic."""
    idx = np.arange(start, len(stream.rows))
    out = {}
    for t in np.unique(stream.task[idx]):
        rows = idx[stream.task[idx] == t]
        mask = np.zeros(len(stream.rows), dtype=bool)
        mask[rows] = True
        out[str(t)] = {"requests": int(len(rows)), "static": means(stream, static, mask),
                       "bandit": means(stream, bandit, mask), "random": random_means(stream, mask),
                       "traffic": {"static": _shares(models, static[rows]), "bandit": _shares(models, bandit[rows])}}
    return out


def _shares(models: list[str], chosen: np.ndarray) -> dict[str, float]:
    counts = np.bincount(chosen, minlength=len(models)) / max(len(chosen), 1)
    return {m: round(float(s), 4) for m, s in zip(models, counts) if s > 0}


MIN_LOSS = 0.01  # quality the static router must lose to a degradation before recovery is a share of it
MAX_REPLAYS = 3.0  # requests per distinct prompt above which the report warns of memorised prompts


def report(models: list[str], stream: Stream, static: np.ndarray, bandit: np.ndarray, propensity: np.ndarray,
           explored: np.ndarray, nodrift: Stream, reference: np.ndarray, drifts: list[Drift], window: int,
           informed: np.ndarray | None = None, bandit_without_drift: np.ndarray | None = None) -> dict:
    """Per-window and total means; `reference` is the static router on the `nodrift` world, and
    `bandit_without_drift` the bandit's choices there."""
    n = len(stream.rows)
    windows = []
    for k0 in range(0, n, window):
        sl = slice(k0, min(k0 + window, n))
        w = {"start": k0, "end": sl.stop, "static": means(stream, static, sl), "bandit": means(stream, bandit, sl),
             "static_without_drift": means(nodrift, reference, sl)}
        w["bandit"]["explore_share"] = float(explored[sl].mean())
        w["traffic"] = {"static": _shares(models, static[sl]), "bandit": _shares(models, bandit[sl])}
        lost = w["static_without_drift"]["quality"] - w["static"]["quality"]
        if lost > MIN_LOSS:
            w["recovered_share"] = (w["bandit"]["quality"] - w["static"]["quality"]) / lost
        if stream.task is not None:
            w["added_model_traffic_by_task"] = {  # tasks of this window only: a mean over none is NaN, not JSON
                d.model: {t: round(float(np.mean(bandit[sl][stream.task[sl] == t] == models.index(d.model))), 4)
                          for t in np.unique(stream.task[sl])}
                for d in drifts if d.kind == "add"
            }
        windows.append(w)
    totals = {"static": means(stream, static, slice(None)), "bandit": means(stream, bandit, slice(None)),
              "static_without_drift": means(nodrift, reference, slice(None)),
              "random": random_means(stream, slice(None))}
    s, b = totals["static"], totals["bandit"]
    totals["bandit_extra_cost_pct"] = 100.0 * (b["cost"] / s["cost"] - 1.0) if s["cost"] > 0 else 0.0
    totals["bandit_quality_delta_points"] = 100.0 * (b["quality"] - s["quality"])
    totals["bandit_explore_share"] = float(explored.mean())
    totals["min_propensity"] = float(propensity.min())
    out = {"windows": windows, "totals": totals, "drift": [d.__dict__ for d in drifts]}
    if stream.task is not None:
        # The second half: where the bandit has had time to learn (prompts of tasks the
        # router was not trained on, a model added part-way).
        out["by_task_second_half"] = by_task(models, stream, static, bandit, n // 2)
    for d in drifts:
        if d.kind == "add" and d.start > 0:  # one added at request 0 is there from the start, trained on like any other
            out.setdefault("added", {})[d.model] = _added_summary(models.index(d.model), stream, static, bandit, d.start)
    degrades = [d for d in drifts if d.kind == "degrade"]
    # One degradation: its model's entry, measured from `measured_from(its start)`. Several
    # cannot be told apart in one run (the routers meet all of them at once): one entry, "all",
    # measured from `measured_from(the last one's start)`, against the world without any.
    if degrades:
        after = slice(min(measured_from(max(d.start for d in degrades), n), n), n)
        if after.start < n:
            lost = means(nodrift, reference, after)["quality"] - means(stream, static, after)["quality"]
            gain = means(stream, bandit, after)["quality"] - means(stream, static, after)["quality"]
            # Under a point lost (a degraded model the static router seldom chose), a share of it
            # is noise over noise: none is reported.
            rec = out.setdefault("recovery", {})[degrades[0].model if len(degrades) == 1 else "all"] = {
                "from_request": after.start, "static_lost": lost, "bandit_regained": gain,
                "recovered_share": gain / lost if lost > MIN_LOSS else None}
            if bandit_without_drift is not None:
                # What the bandit gains over the static router anyway is not recovery from the drift.
                gap = means(nodrift, bandit_without_drift, after)["quality"] - means(nodrift, reference, after)["quality"]
                rec["bandit_gap_without_drift"] = gap
                rec["recovered_share_net"] = (gain - gap) / lost if lost > MIN_LOSS else None
            if len(degrades) > 1:
                rec["drifts"] = [f"degrade:{d.model}:{d.fraction}@{d.start}" for d in degrades]
            if informed is not None:
                ceiling = means(stream, informed, after)["quality"] - means(stream, static, after)["quality"]
                rec["informed_static_regained"] = ceiling
                rec["recovered_share_of_recoverable"] = gain / ceiling if ceiling > 0 else None
    return out


def learned_predictions(table, router, train_share: float, seed: int, new_models: list[str]):
    """Predictions of a learned router for the replayed prompts, and the replay table.

    Without `router` (a loaded `LearnedRouter`), a router is trained on `train_share` of the
    prompts (without the `new_models`) and the rest is replayed; with it, it predicts every prompt.
    """
    from router.embedding import encode_cached
    from router.features import request_features
    from router.predictor import OutcomePredictor
    from router.types import RoutingRequest

    emb = np.asarray(encode_cached(table.texts), dtype=np.float32)
    requests = [RoutingRequest(text=t, input_tokens=int(n)) for t, n in zip(table.texts, table.input_tokens)]
    X = np.hstack([emb, request_features(requests)])
    unpriced = [m for m in table.models if m not in table.prices]
    if unpriced:
        raise ValueError(f"{table.path}: no price for {unpriced[0]!r}: too few rows to infer it from column "
                         f"'cost_usd__{unpriced[0]}'; pass --prices FILE.json")
    prices = [(table.prices[m].input_per_1m, table.prices[m].output_per_1m) for m in table.models]
    if router is not None:
        router_path = router.path
        predictor = router.predictor
        unseen = [m for m in table.models if m not in predictor.models]
        if len(unseen) == len(table.models):
            raise ValueError(f"{table.path}: no model is both in the file ({table.models}) and known to the router "
                             f"{router_path} ({predictor.models})")
        if unseen:
            log.warning("the router %s was not trained on %s: they get the unseen-model prior", router_path, unseen)
        replay = np.arange(len(table))
    else:
        rng = np.random.default_rng(seed)
        # Split by prompt text so a duplicated prompt cannot sit on both sides.
        uniq, inv = np.unique(np.asarray(table.texts, dtype=object), return_inverse=True)
        in_train = (rng.random(len(uniq)) < train_share)[inv]
        train, replay = np.flatnonzero(in_train), np.flatnonzero(~in_train)
        if not len(train) or not len(replay):
            raise ValueError(f"{table.path}: --train-share {train_share} leaves no prompt to "
                             f"{'train on' if not len(train) else 'replay'} ({len(uniq)} distinct prompts)")
        known = [m for m in table.models if m not in new_models]
        log.info("training the router on %d prompts (%d models); replaying %d held-out prompts", len(train), len(known), len(replay))
        predictor = OutcomePredictor(seed=seed).fit(X[train], table.subset(train).restrict_models(known),
                                                    groups=inv[train])
    pred = predictor.predict(X[replay], table.input_tokens[replay], models=table.models, prices=prices)
    basis = (predictor.pca_mean, predictor.pca_proj) if predictor.pca_proj is not None else None
    return pred, table.subset(replay), emb[replay], basis


def simulate(args) -> dict:
    from router.bandit import BanditSettings
    from router.predictor import DEFAULT_THROUGHPUT_TPS, DEFAULT_TTFT_S
    from training.data import load_outcomes, prices_for_file, read_frame

    drifts = [parse_drift(s) for s in args.drift or []]
    added = {}
    for d in (d for d in drifts if d.kind == "add"):
        if d.model in added:
            raise ValueError(f"--drift adds model {d.model!r} twice (@{added[d.model]} and @{d.start}): a model arrives once")
        added[d.model] = d.start
    router, frame, prices = None, None, args.prices
    if args.router:
        from router.engine import LearnedRouter, find_router_option

        router = LearnedRouter.load(find_router_option(args.router))
        frame = read_frame(args.data)  # read once: its columns here, its rows by load_outcomes
        # As `eval` does: a file without cost columns is priced at the prices the router was trained
        # with for the file's models (unless --prices says otherwise), before any flat price is assumed.
        in_file = {str(c)[len("quality__"):] for c in frame.columns if str(c).startswith("quality__")}
        prices = prices_for_file(frame.columns, {m: p for m, p in router.predictor.prices.items() if m in in_file}, prices)
        if args.prices is None and prices:
            log.info("%s: no cost_usd__ columns: priced at the prices the router %s was trained with", args.data, args.router)
    table = load_outcomes(args.data, text_column=args.text_column, prices=prices, flat_price=True, frame=frame)
    if table.cost is None:
        raise ValueError(f"{args.data}: simulate needs recorded costs (cost_usd__<model> columns)")
    unknown = [d.model for d in drifts if d.model not in table.models]
    if unknown:  # before the router is trained, not after
        from training.model_names import close_models

        close = close_models(unknown[0], table.models)
        hint = f"; did you mean {' or '.join(map(repr, close))}?" if close else ""
        raise ValueError(f"--drift names model {unknown[0]!r}, which is not in {args.data}: {table.models}{hint}")
    # Before any training, and alike with --router: a router given would find no model for the first
    # requests either, so suggesting it would not help.
    if set(table.models) <= set(added) and min(added.values()) > 0:
        raise ValueError(f"{args.data}: every model is added by a drift ({sorted(added)}); at least one must be there from "
                         f"request 0 (no add drift, or add:MODEL@0): no model could answer requests 0 to "
                         f"{min(added.values()) - 1}")
    # A model added at request 0 is there from the start, to train on like any other.
    pred, replay, emb, basis = learned_predictions(table, router, args.train_share, args.seed,
                                                   [m for m, k in added.items() if k > 0])
    stream = build_stream(replay, args.requests, drifts, args.seed, DEFAULT_TTFT_S, DEFAULT_THROUGHPUT_TPS)
    nodrift = build_stream(replay, args.requests, drifts, args.seed, DEFAULT_TTFT_S, DEFAULT_THROUGHPUT_TPS, apply_drift=False)
    static = static_choices(pred, stream, args.willingness_to_pay, args.latency_weight)
    reference = static_choices(pred, nodrift, args.willingness_to_pay, args.latency_weight)
    total = args.total_cost_share if args.total_cost_share is not None and np.isfinite(args.total_cost_share) else None  # inf: no cap
    settings = BanditSettings(explore_share=args.explore_share, new_model_explore_share=args.new_model_explore_share,
                              extra_cost_share=args.extra_cost_share, total_cost_share=total, seed=args.seed)
    bandit, prop, explored, stats = bandit_choices(pred, emb, stream, args.willingness_to_pay, args.latency_weight,
                                            settings, args.feedback_rate, args.seed, basis)
    informed = informed_choices(pred, stream, drifts, args.willingness_to_pay, args.latency_weight)
    unaffected = None
    if any(d.kind == "degrade" for d in drifts):
        unaffected = bandit_choices(pred, emb, nodrift, args.willingness_to_pay, args.latency_weight, settings,
                                    args.feedback_rate, args.seed, basis)[0]
    out = report(list(pred.models), stream, static, bandit, prop, explored, nodrift, reference, drifts, args.window, informed,
                 unaffected)
    out["bandit_state"] = stats
    distinct = len(set(replay.texts))
    out["setup"] = {
        "data": str(args.data), "requests": args.requests, "replayed_prompts": len(replay),
        "distinct_prompts": distinct, "replays_per_prompt": round(args.requests / distinct, 2),
        "router": str(router.path) if router is not None else f"trained here on {args.train_share:.0%} of the prompts (seed {args.seed})",
        "willingness_to_pay": args.willingness_to_pay, "latency_weight": args.latency_weight,
        "feedback_rate": args.feedback_rate, "seed": args.seed, "bandit": settings.__dict__,
    }
    if args.requests / distinct > MAX_REPLAYS:
        out["setup"]["note"] = (
            f"each of the {distinct} distinct prompts is replayed {args.requests / distinct:.1f} times on average: the "
            "bandit learns from a prompt's own earlier outcomes, so part of its lead over the static router is "
            "memorising repeated prompts, which live traffic rarely repeats; use fewer --requests or a larger file")
    return out


def configure(parser) -> None:
    from router.bandit import BanditSettings

    parser.add_argument("--data", required=True, help="wide outcome table: parquet, CSV, TSV, JSON Lines or a JSON array of records (CSV, TSV and JSON Lines may be .gz)")
    parser.add_argument("--requests", type=int, default=5000, help="length of the request stream (default: %(default)s)")
    parser.add_argument("--drift", action="append", metavar="SPEC",
                        help="degrade:MODEL:FRACTION@K (FRACTION 0.4 or 40%%) or add:MODEL@K; repeatable")
    parser.add_argument("--out", required=True, help="JSON report path")
    parser.add_argument("--seed", type=non_negative_int, default=0,
                        help="seeds the train/replay split and the router trained here, the request order, which answers a "
                             "degradation breaks and the bandit's draws (default: %(default)s)")
    parser.add_argument("--router", default=None,
                        help="router artifact to use (replays every prompt); default: train one on a split")
    parser.add_argument("--train-share", type=float, default=0.5,
                        help="share of prompts the router is trained on (default: %(default)s)")
    parser.add_argument("--text-column", default=None,
                        help=f"column holding the prompt text (default: {TEXT_COLUMN_DEFAULT})")
    parser.add_argument("--prices", default=None,
                        help="JSON of per-model prices, for tables without cost_usd__<model> columns (as train and eval take)")
    parser.add_argument("--willingness-to-pay", type=float, default=0.01,
                        help="USD per +1.0 quality, the knob (default: %(default)s)")
    parser.add_argument("--latency-weight", type=float, default=0.0,
                        help="quality given up per second of predicted latency in both routers' utility (default: "
                             "%(default)s, latency ignored)")
    parser.add_argument("--window", type=int, default=500, help="requests per reported window (default: %(default)s)")
    parser.add_argument("--feedback-rate", type=float, default=1.0,
                        help="share of requests whose reward the bandit sees (default: %(default)s)")
    parser.add_argument("--explore-share", type=float, default=BanditSettings.explore_share,
                        help="cap on the share of requests exploring models the predictor knows (default: %(default)s)")
    parser.add_argument("--new-model-explore-share", type=float, default=BanditSettings.new_model_explore_share,
                        help="cap on the share of requests exploring a model the router was not trained on (default: %(default)s)")
    parser.add_argument("--extra-cost-share", type=float, default=BanditSettings.extra_cost_share,
                        help="cap on the expected extra spend of exploring, as a share of the greedy choices' spend "
                             "(default: %(default)s)")
    parser.add_argument("--total-cost-share", type=float, default=BanditSettings.total_cost_share,
                        help="cap on the bandit's total extra predicted spend over the reference policy; inf: uncapped (default: %(default)s)")


def run(args) -> int:
    from training.offpolicy import finite
    from training.outputs import check_output_file, removed_if_left_empty
    from training.simulate_summary import print_summary

    if args.requests <= 0:
        raise ValueError("--requests must be positive")
    if args.window <= 0:
        raise ValueError("--window must be positive")
    if not 0.0 < args.train_share < 1.0:
        raise ValueError("--train-share must lie strictly between 0 and 1")
    for flag, value in (("--feedback-rate", args.feedback_rate), ("--explore-share", args.explore_share),
                        ("--new-model-explore-share", args.new_model_explore_share)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{flag} is a share of requests, between 0 and 1; got {value}")
    if not args.willingness_to_pay > 0.0:
        raise ValueError(f"--willingness-to-pay is USD per +1.0 quality, > 0; got {args.willingness_to_pay}")
    for flag, value in (("--latency-weight", args.latency_weight), ("--extra-cost-share", args.extra_cost_share),
                        ("--total-cost-share", args.total_cost_share)):
        if not value >= 0.0:
            raise ValueError(f"{flag} must be ≥ 0; got {value}")
    with removed_if_left_empty(Path(args.out).parent):
        check_output_file(args.out, "--out")
        out = simulate(args)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(finite(out), indent=1))
    print_summary(out, args.requests)
    print(f"wrote {args.out}")
    return 0
