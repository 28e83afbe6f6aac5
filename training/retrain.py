"""`openclaw-router retrain`: retrain from the outcome log, promote only if OPE says better.

1. Read the outcome log and its feedback (`training.offpolicy.load_traffic`); split the
   usable logged requests by time: the older `1 - eval_share` join the base data as
   training rows, the most recent `eval_share` are held out to judge the result (a
   candidate judged on the rewards it was trained on would look better than it is). Fewer
   held out than `--min-requests`: refused here, before any training.
2. Fit a candidate router (same predictor and artifact format as `openclaw-router train`)
   on base data + older logs; log the run, its parameters and the OPE results to MLflow,
   tagged with the verdict (`promoted`, `verdict_reason`, `passed_vs_*`).
3. Off-policy evaluation on the held-out traffic of the candidate against what the gateway served
   (the logged policy) and against the serving router's own greedy choices: IPS, SNIPS and DR
   values and paired differences with 95 % intervals, for utility (quality − cost / willingness
   to pay), quality and cost, and whether the log supports the candidate's choices at all
   (`router.ope.support`: the mean importance weight, 1 with full support).
4. Promote only when the log supports the candidate and the chosen estimator's utility
   difference is above zero beyond its interval (lower bound > 0) in both comparisons
   (`promotion`): register the model version in MLflow, point the registered model's `live`
   alias at it and, with `--gateway` (checked before training: reachable, takes the master key),
   hot-reload it there through `POST /admin/router/reload` (no restart). Otherwise print why not.
"""
from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from router.store_errors import redact_url
from training.offpolicy import logged_routers
from training.outputs import non_negative_int
from training.support_advice import GENERIC, unsupported
from training.texts import TEXT_COLUMN_DEFAULT

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Verdict:
    promote: bool
    reason: str
    span: str = ""  # the estimate behind a verdict on the numbers, as the reason words it
    refused: dict | None = None  # the estimate the support check refused to decide on


# The two baselines a candidate must beat, as the verdicts name them.
SERVED = "what the gateway served (exploration included)"
LIVE_ROUTER = "the serving router's own choices (without exploration)"


def judge(comparison: dict, estimator: str, min_requests: int, against: str = SERVED, advice: str = GENERIC) -> Verdict:
    """The verdict of one comparison (`against` names its baseline): supported by the log, and
    the `estimator`'s utility difference above 0 beyond its 95 % interval; `advice`: what would
    let a log that does not support the candidate judge it (training/support_advice.py)."""
    n = comparison["n"]
    if n == 0 or "utility" not in comparison:
        return Verdict(False, "no logged request with a reward is held out for evaluation: nothing to judge the candidate on")
    if n < min_requests:
        return Verdict(False, f"only {n} usable logged requests with rewards held out for evaluation; need {min_requests}")
    d = comparison["utility"]["difference"].get(estimator)
    if d is None:
        return Verdict(False, f"estimator {estimator!r} is unavailable on this log")
    why = unsupported(comparison.get("support"), estimator, {"": d}, advice)
    if why:
        return Verdict(False, why, refused=d)
    if not np.isfinite(d["value"]):
        hint = "; --estimator dr also uses the reward model" if estimator != "dr" else ""
        return Verdict(False, f"{estimator.upper()} has no estimate against {against} on this log: the candidate never "
                              f"takes the logged action (overlap {comparison['overlap']:.0%} of n={n}){hint}")
    span = (f"{d['value']:+.4f} (95 % interval {d['lo']:+.4f} .. {d['hi']:+.4f}, {estimator.upper()}, n={n}; "
            f"the candidate takes the logged action on {comparison['overlap']:.0%} of them)")
    if d["lo"] > 0:
        return Verdict(True, f"candidate utility is better than {against} by {span}", span)
    if d["hi"] < 0:
        return Verdict(False, f"candidate is worse than {against}: utility difference {span}", span)
    return Verdict(False, f"candidate is not better than {against} beyond the interval: utility difference {span}", span)


def promotion(vs_served: dict, vs_live: dict, estimator: str, min_requests: int,
              advice: str = GENERIC) -> tuple[Verdict, dict]:
    """Promote only a candidate that beats both what the gateway served and the serving router's
    own greedy choices, each by `judge`'s rule, on the same held-out log. The first alone passed the
    serving router itself, judged as a candidate, on a log with exploration share 0.6 (+0.076,
    +0.039 .. +0.113): exploration lowers the logged policy, and the log may be an older router's.
    The second alone leans on a guess wherever the log does not show the serving router's choice
    (`compare_with_router`). Returns the verdict and each comparison's."""
    served = judge(vs_served, estimator, min_requests, SERVED, advice)
    if vs_live.get("agreement") == 1.0:
        live = Verdict(False, f"the candidate chooses as the serving router does on all {vs_live['n']} held-out requests: "
                              f"it cannot be better than {LIVE_ROUTER}")
    else:
        live = judge(vs_live, estimator, min_requests, LIVE_ROUTER, advice)
    each = {"vs_served": {"passed": served.promote, "reason": served.reason},
            "vs_live_router": {"passed": live.promote, "reason": live.reason}}
    if served.promote and live.promote:
        return Verdict(True, f"{served.reason}; and {live.reason}"), each
    if served.promote:  # what the old rule would have promoted on, said beside why it does not
        return Verdict(False, f"{live.reason}; only better than {SERVED}, by {served.span}"), each
    if served.refused is not None and live.refused is not None:  # one log and candidate, one support: said once
        return Verdict(False, unsupported(vs_served["support"], estimator, {SERVED: served.refused, LIVE_ROUTER: live.refused},
                                          advice)), each
    reasons = [served.reason] if live.promote or live.reason == served.reason else [served.reason, live.reason]
    return Verdict(False, "; and ".join(reasons)), each


def fit_router(table, X: np.ndarray, *, folds: int = 5, rounds: int | None = None, seed: int = 7,
               sources: list[str] | None = None):
    """A `LearnedRouter` fitted on an outcome table with feature rows X (as `train` builds);
    `rounds` None keeps the predictor's tuned default."""
    from router.engine import LearnedRouter
    from router.predictor import OutcomePredictor
    from training.train import build_manifest, quality_metrics

    predictor = OutcomePredictor(folds=folds, seed=seed, **({"num_rounds": rounds} if rounds else {}))
    predictor.fit(X, table, groups=np.asarray(table.texts, dtype=object))
    metrics = quality_metrics(table.quality, predictor.oof, predictor.oof_raw, table.models)
    manifest = build_manifest(table, metrics, [{"path": s} for s in (sources or [])])
    return LearnedRouter(predictor, manifest), metrics


def features(texts: list[str], input_tokens: np.ndarray, embeddings: np.ndarray | None = None) -> np.ndarray:
    from router.embedding import encode_cached
    from router.features import request_features
    from router.types import RoutingRequest

    emb = embeddings if embeddings is not None else encode_cached(texts)
    reqs = [RoutingRequest(text=t, input_tokens=int(n)) for t, n in zip(texts, input_tokens)]
    return np.hstack([np.asarray(emb, dtype=np.float32), request_features(reqs)])


NOTHING_TO_TRAIN = "nothing to train on: no --base-data and no logged requests with rewards"


def training_set(base_paths: list[str], traffic, text_column: str | None = None, prices=None):
    """Base tables plus logged outcomes (one observed cell per logged request)."""
    import pandas as pd

    from training.data import concat_outcomes, load_outcomes, long_to_outcomes

    tables, parts = [], []
    for path in base_paths:
        t = load_outcomes(path, text_column=text_column, prices=prices)
        tables.append(t)
        parts.append(features(t.texts, t.input_tokens))
    if len(traffic):
        long = pd.DataFrame({
            "request_id": traffic.request_ids, "text": traffic.texts,
            "model": [traffic.models[a] for a in traffic.action], "quality": traffic.quality,
            "cost_usd": traffic.cost, "latency_s": traffic.latency, "output_tokens": traffic.output_tokens,
            "input_tokens": traffic.input_tokens})
        tables.append(long_to_outcomes(long))
        parts.append(np.hstack([traffic.embeddings, traffic.features]))
    if not tables:
        raise ValueError(NOTHING_TO_TRAIN)
    return concat_outcomes(tables), np.vstack(parts)


def log_run(args, out: Path, params: dict, metrics: dict, comparisons: dict[str, dict], verdict: Verdict, each: dict) -> str:
    """One MLflow run (params, CV metrics, both OPE comparisons as `ope_vs_served_*` and
    `ope_vs_live_router_*`, the support check, artifact) without registering it yet, tagged with
    the verdict: `promoted` (true/false), `verdict_reason`, and whether each comparison passed."""
    import mlflow

    from training.plots import save_reliability_plot
    from training.train import _experiment_id, log_to_mlflow, tracking_uri

    plot = save_reliability_plot(metrics, out / "reliability.png")
    flat = dict(metrics)
    for name, comparison in comparisons.items():
        for metric in ("utility", "quality", "cost_usd"):
            for est, e in comparison.get(metric, {}).get("difference", {}).items():
                flat.update({f"ope_{name}_{metric}_{est}_diff{k}": e[v] for k, v in (("", "value"), ("_lo", "lo"), ("_hi", "hi"))})
    support, baseline = comparisons["vs_served"].get("support"), comparisons["vs_live_router"].get("support_baseline")
    for prefix, s in (("ope_support", support), ("ope_vs_live_router_baseline_support", baseline)):
        if s:
            flat.update({f"{prefix}_weight_mean{'' if k == 'value' else '_' + k}": s["weight_mean"][k] for k in ("value", "lo", "hi")})
            flat.update({f"{prefix}_overlap": s["overlap"], f"{prefix}_ess": s["ess"], f"{prefix}_unsupported_known": s["unsupported_known"]})
    flat = {k: v for k, v in flat.items() if not isinstance(v, float) or np.isfinite(v)}
    run_args = _Args(args.tracking_uri, args.experiment, None)
    run_id, _ = log_to_mlflow(run_args, out, params, flat, plot)
    mlflow.set_tracking_uri(tracking_uri(args.tracking_uri))
    _experiment_id(mlflow, args.experiment, tracking_uri(args.tracking_uri))
    with mlflow.start_run(run_id=run_id):
        mlflow.log_dict(comparisons, "ope.json")
        mlflow.set_tags({"promoted": str(verdict.promote).lower(), "verdict_reason": verdict.reason[:5000],
                         **{f"passed_{k}": str(v["passed"]).lower() for k, v in each.items()},
                         **({"support": support["verdict"]} if support else {})})
    return run_id


@dataclass
class _Args:
    tracking_uri: str | None
    experiment: str
    registered_name: str | None


# 1 and 2 already mean that retrain failed or was misused (main's handlers); a rejected candidate is neither.
NOT_PROMOTED_EXIT = 3
LIVE_ALIAS = "live"  # the registered version retrain last promoted (and, with --gateway, hot-reloaded)


def register(args, run_id: str) -> str:
    import mlflow

    from training.train import register_version, tracking_uri

    mlflow.set_tracking_uri(tracking_uri(args.tracking_uri))
    return register_version(mlflow, f"runs:/{run_id}/router", args.registered_name)


def mark_live(args, version: str) -> None:
    """Point the registered model's `live` alias at the promoted version: `train` registers every
    model it fits under the same name, so being registered says nothing about being promoted."""
    import mlflow

    from training.train import tracking_uri

    client = mlflow.MlflowClient(tracking_uri=tracking_uri(args.tracking_uri))
    client.set_registered_model_alias(args.registered_name, LIVE_ALIAS, version)


def _admin_headers() -> dict:
    # As the gateway reads it: a key mounted from a file ends in a line break, no header may.
    key = (os.environ.get("OPENCLAW_MASTER_KEY") or "").strip()
    return {"authorization": f"Bearer {key}"} if key else {}


def _error_code(r) -> str | None:
    try:
        return r.json()["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return None


def check_gateway(gateway: str) -> dict | None:
    """Before minutes of training: the gateway answers and takes the master key, as the reload
    after promotion will need. GET /admin/router/bandit is the cheapest call behind the same guard
    (service/api_admin_router.py): past it, 200, or 404 `bandit_disabled` with the bandit off.
    Returns the bandit's state, what the advice of a refusal for support reads; None where it is off."""
    import httpx

    url = f"{gateway.rstrip('/')}/admin/router/bandit"
    try:
        r = httpx.get(url, headers=_admin_headers(), timeout=10)
    except httpx.HTTPError as exc:
        raise ValueError(f"--gateway {gateway} cannot be reached ({type(exc).__name__}: {exc}); start it or give its "
                         f"URL (the hot reload after a promotion needs it)") from None
    code = _error_code(r)
    if r.status_code == 200 or (r.status_code == 404 and code == "bandit_disabled"):
        return r.json() if r.status_code == 200 else None
    if r.status_code == 403 and code == "admin_disabled":
        raise ValueError(f"--gateway {gateway} has its admin API off (it runs without OPENCLAW_MASTER_KEY), so it cannot "
                         f"hot-reload; restart it with a master key, or leave out --gateway")
    if r.status_code == 401 and not os.environ.get("OPENCLAW_MASTER_KEY"):
        raise ValueError(f"--gateway {gateway} needs its master key for the hot reload: set OPENCLAW_MASTER_KEY")
    if r.status_code == 401:
        raise ValueError(f"--gateway {gateway} refused the master key in OPENCLAW_MASTER_KEY ({code or r.status_code}): "
                         f"set it to the key that gateway was started with")
    raise ValueError(f"--gateway {gateway} does not answer as an OpenClaw gateway: GET {url} answered {r.status_code}: "
                     f"{r.text[:200]}")


def hot_reload(gateway: str, path: Path) -> dict:
    import httpx

    try:
        r = httpx.post(f"{gateway.rstrip('/')}/admin/router/reload", json={"path": str(path.resolve())},
                       headers=_admin_headers(), timeout=60)
    except httpx.HTTPError as exc:
        raise ValueError(f"gateway {gateway} could not be reached for the reload: {exc}") from None
    if r.status_code != 200:
        raise ValueError(f"gateway {gateway} refused the reload ({r.status_code}): {r.text[:300]}")
    return r.json()


def live_router_path(args) -> Path:
    """--router, else the router that made the latest logged decisions (a promotion swapped in
    another than `models/default`), else, where the log records none, `models/default`. Said when
    the log holds decisions of several routers or --router is not the latest one; an error where
    the latest one's folder is not here (OPE against another router would judge the wrong one)."""
    from router.engine import MANIFEST, default_artifact, find_router_option

    latest, counts = logged_routers(args.db)
    if args.router:
        path = find_router_option(args.router)
        if latest is not None and os.path.abspath(path) != latest:
            log.warning("the latest logged decisions were made by %s, not by the live router given (%s)", latest,
                        os.path.abspath(path))
    elif latest is None:
        path = default_artifact()  # no routed request records its router (a log from before they did)
    elif (Path(latest) / MANIFEST).exists():
        path = Path(latest)
        log.info("live router: %s, which made the latest logged decisions", path)
    else:
        raise FileNotFoundError(
            f"the latest logged decisions were made by the router in {latest}, and that folder is not here (no "
            f"{MANIFEST}): retrain runs on another host than the gateway, or the folder was moved or removed; give "
            f"--router with that router's artifact (a copy of the folder), the baseline the candidate is judged against")
    if len(counts) > 1:
        log.warning("the log holds the decisions of %d routers (%s); each logged decision is judged as it was made, "
                    "and %s is the reward model", len(counts), ", ".join(f"{k}: {v}" for k, v in counts.items()), path)
    return path


def judge_candidate(live, candidate, logged_train, held_out, estimator: str, min_requests: int, seed: int, advise=None):
    """(the comparison with what the gateway served, the one with the live router's own choices,
    the verdict and each comparison's) on the held-out log. The live router's predictions, mapped
    through the rewards of the training half, are the DR reward model of both. `advise`: the
    candidate's choice on each held-out request -> what would let the log judge them, asked only
    where it does not."""
    from training.offpolicy import calibrated_reward_model, compare_routers, compare_with_router, greedy_probs, router_p_good

    vs_served = vs_live = {"n": 0}  # none held out (--min-requests 0): trained, never promoted
    advice = GENERIC
    if len(held_out):
        p_live = router_p_good(live, held_out)
        reward_model = calibrated_reward_model(router_p_good(live, logged_train), logged_train, p_live)
        p_candidate = router_p_good(candidate, held_out)
        vs_served = compare_routers(held_out, reward_model, p_candidate, seed=seed)
        vs_live = compare_with_router(held_out, reward_model, p_live, p_candidate, seed=seed)
        if advise is not None and not vs_served["support"]["ok"]:
            advice = advise(greedy_probs(p_candidate, held_out).argmax(axis=1))
    verdict, each = promotion(vs_served, vs_live, estimator, min_requests, advice)
    return vs_served, vs_live, verdict, each


def retrain(args) -> dict:
    from router.engine import LearnedRouter
    from training.data import load_prices
    from training.offpolicy import finite, load_traffic
    from training.support_advice import exploration_advice
    from training.train import check_tracking_store

    # Before minutes of training: the gateway must take the reload, and the live router must load
    # (`models/default` from any folder, as serve finds it).
    bandit = check_gateway(args.gateway) if args.gateway else None
    live_path = live_router_path(args)
    live = LearnedRouter.load(live_path)
    traffic = load_traffic(args.db)
    n_usable, n_eval = len(traffic), int(round(len(traffic) * args.eval_share))
    order = np.argsort(traffic.ts, kind="stable")
    train_rows, eval_rows = order[: len(traffic) - n_eval], order[len(traffic) - n_eval:]
    held_out, logged_train = traffic.rows(eval_rows), traffic.rows(train_rows)
    log.info("%d usable logged requests: %d join training, %d judge the candidate", len(traffic), len(train_rows), n_eval)
    del traffic  # its two halves hold every row: a third copy of each embedding is not needed
    if not n_usable and not args.base_data:
        raise ValueError(NOTHING_TO_TRAIN)
    if n_eval < args.min_requests:  # known now: minutes of training could not change the verdict
        reason = (f"only {n_eval} usable logged requests with rewards would be held out for evaluation (the latest "
                  f"{args.eval_share:.0%} of {n_usable}, --eval-share); need {args.min_requests} (--min-requests): "
                  f"no candidate trained; collect more feedback, or lower --min-requests")
        return {"candidate": None, "verdict": {"promote": False, "reason": reason}, "ope": {"n": n_eval}}
    prices = load_prices(args.prices) if args.prices else None
    table, X = training_set(args.base_data or [], logged_train, args.text_column, prices)
    check_tracking_store(args)  # it creates its file: once the log and the base data are known good, before training
    # What is kept (the manifest every replica gets, the report, MLflow's params) never holds
    # the outcome database's password.
    db = redact_url(args.db)
    candidate, metrics = fit_router(table, X, folds=args.folds, rounds=args.rounds, seed=args.seed,
                                    sources=[*(args.base_data or []), db])
    out = Path(args.out or f"models/candidate-{time.strftime('%Y%m%d-%H%M%S')}")
    candidate.save(out)
    warned = _untrained_models(candidate, [*held_out.models, *logged_train.models], bool(args.base_data))
    comparison, vs_live, verdict, each = judge_candidate(
        live, candidate, logged_train, held_out, args.estimator, args.min_requests, args.seed,
        lambda choices: exploration_advice(args.db, held_out, choices, bandit, args.gateway or ""))
    params = {"db": db, "base_data": ",".join(args.base_data or []), "live_router": str(live_path),
              "logged_train": len(train_rows), "logged_eval": n_eval, "rows": len(table), "folds": args.folds,
              "rounds": args.rounds, "seed": args.seed, "estimator": args.estimator}
    report = {"candidate": str(out), "verdict": {"promote": verdict.promote, "reason": verdict.reason, **each},
              "ope": comparison, "ope_vs_live_router": vs_live, "params": params,
              "cv": {k: v for k, v in metrics.items() if k != "reliability"}, "warnings": warned}
    report["mlflow_run_id"] = log_run(args, out, params, metrics, {"vs_served": comparison, "vs_live_router": vs_live},
                                      verdict, each)
    failed_reload = None
    if verdict.promote:
        report["registered_version"] = register(args, report["mlflow_run_id"])
        if args.gateway:
            try:
                report["reload"] = hot_reload(args.gateway, out)
            except ValueError as exc:
                report["reload"] = {"error": str(exc)}
                failed_reload = exc
        if failed_reload is None:  # the alias follows what serves (or, without --gateway, what is to serve)
            mark_live(args, report["registered_version"])
            report["alias"] = LIVE_ALIAS
    (out / "retrain_report.json").write_text(json.dumps(finite(report), indent=1, default=str))
    if failed_reload is not None:  # registered and reported; the gateway still runs the old router
        raise ValueError(f"{failed_reload} (the candidate is registered as version {report['registered_version']}, "
                         f"without the {LIVE_ALIAS!r} alias; reload it with POST /admin/router/reload)")
    return report


def _untrained_models(candidate, logged: list[str], base_data: bool) -> list[str]:
    """Warn about models the log holds (the gateway's candidates) that the candidate has no
    training row for (no --base-data covers them, no logged request in the training half chose
    them). Not the live router's other models: a gateway that does not serve them never asks."""
    missing = sorted(set(logged) - set(candidate.models))
    if not missing:
        return []
    base = "the --base-data given does not cover them" if base_data else "no --base-data covers them"
    advice = "give a --base-data table that covers them" if base_data else "give --base-data"
    message = (f"the candidate has no training rows for {', '.join(missing)}, candidates of the logged requests ({base} "
               f"and no logged request in the training half chose them): if it is promoted, the gateway treats them as "
               f"new models, with the unseen-model prior, explored at learning.bandit.new_model_explore_share (5 %) "
               f"with the bandit on; {advice} to keep them known")
    log.warning(message)
    return [message]


def summary(comparison: dict, estimator: str, against: str = "what the gateway served") -> str:
    """The OPE numbers behind the verdict, labelled; the support said is the candidate's, or, against
    the serving router, that router's (the candidate's is the same in both comparisons)."""
    n = comparison.get("n", 0)
    lines = [f"Utility difference, candidate − {against}, on {n} held-out logged requests (quality points, 95 % intervals):"]
    for k in ("ips", "snips", "dr"):
        d = comparison.get("utility", {}).get("difference", {}).get(k)
        if d is None:
            continue
        value = (f"{d['value']:+.4f} ({d['lo']:+.4f} .. {d['hi']:+.4f})" if np.isfinite(d["value"])
                 else "no estimate (the candidate never takes the logged action)")
        lines.append(f"  {k.upper():<6}{value}{'   <- --estimator' if k == estimator else ''}")
    whose, support = (("the serving router's own choices", comparison["support_baseline"]) if "support_baseline" in comparison
                      else ("the candidate's choices", comparison.get("support")))
    if support and support["verdict"] != "empty":
        lines.append(f"Support of {whose} in the log ({support['verdict']}): {support['summary']}")
    return "\n".join(lines)


def configure(parser) -> None:
    parser.add_argument("--db", default="sqlite:///.openclaw/outcomes.sqlite",
                        help="outcome log URL (with feedback): sqlite:///PATH or postgresql://... (default: %(default)s)")
    parser.add_argument("--base-data", action="append", metavar="FILE", help="wide outcome table to train on as well; repeatable")
    parser.add_argument("--router", default=None, help="live router artifact (default: the one that made the latest "
                        "logged decisions, as the gateway records it, an error where its folder is not here; "
                        "models/default where the log records none)")
    parser.add_argument("--out", default=None, help="candidate artifact folder (default: models/candidate-<time>)")
    parser.add_argument("--gateway", default=None, help="running gateway URL to hot-reload on promotion")
    parser.add_argument("--eval-share", type=float, default=0.5,
                        help="most recent share of logged requests held out for OPE (default: %(default)s)")
    parser.add_argument("--min-requests", type=non_negative_int, default=200, help="fewest held-out requests to promote on (default: %(default)s)")
    parser.add_argument("--estimator", choices=("dr", "snips", "ips"), default="dr",
                        help="estimator that decides promotion (default: %(default)s)")
    parser.add_argument("--text-column", default=None, help=f"text column of the --base-data tables (default: {TEXT_COLUMN_DEFAULT})")
    parser.add_argument("--prices", default=None, metavar="FILE",
                        help="JSON {model: {input_per_1m, output_per_1m}} for base tables without cost columns")
    parser.add_argument("--folds", type=int, default=5,
                        help="cross-validation folds = bagged boosters, as for train (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=None, help="boosting rounds (default: the predictor's)")
    parser.add_argument("--seed", type=non_negative_int, default=7,
                        help="seed of the cross-validation folds and the boosters (default: %(default)s)")
    parser.add_argument("--experiment", default="openclaw-router", help="MLflow experiment name (default: %(default)s)")
    parser.add_argument("--registered-name", default="openclaw-router", help="MLflow registered model name (default: %(default)s)")
    parser.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default as for train)")
    parser.add_argument("--exit-code", action="store_true",
                        help=f"exit {NOT_PROMOTED_EXIT} when the candidate is not promoted, as `git diff --exit-code` "
                        "does on a difference (default: exit 0 either way)")


def run(args) -> int:
    if not 0.0 < args.eval_share < 1.0:
        raise ValueError("--eval-share must lie strictly between 0 and 1")
    if args.out and Path(args.out).is_file():
        raise ValueError(f"--out {args.out}: {args.out} exists and is not a folder")
    if args.out and Path(args.out).is_dir() and any(Path(args.out).iterdir()):
        # It may be the router a gateway runs (an earlier promotion hot-reloaded it): a rejected
        # candidate written over it would be what that gateway loads on its next start.
        raise ValueError(f"--out {args.out} already holds an artifact; give a new folder (default: models/candidate-<time>)")
    from training.outputs import check_outcome_log
    from training.train import check_job_options

    check_outcome_log(args.db)
    check_job_options(args)
    if args.gateway and not args.gateway.startswith(("http://", "https://")):
        raise ValueError(f"--gateway {args.gateway}: give the gateway's URL, e.g. http://127.0.0.1:8080")
    report = retrain(args)
    if report["candidate"] is None:  # refused before training
        print(f"NOT PROMOTED: {report['verdict']['reason']}")
        return NOT_PROMOTED_EXIT if args.exit_code else 0
    if report["ope"]["n"]:  # none held out (--min-requests 0): no numbers to show
        print(summary(report["ope"], args.estimator))
        print(summary(report["ope_vs_live_router"], args.estimator, "the serving router's own choices (greedy)"))
    if report["verdict"]["promote"]:
        where = f"; hot-reloaded in {args.gateway}" if args.gateway else ""
        print(f"PROMOTED {report['candidate']} (MLflow {args.registered_name} version {report.get('registered_version')}, "
              f"alias {LIVE_ALIAS!r}){where}: {report['verdict']['reason']}")
        if not args.gateway:  # the alias moved; no running gateway did
            print(f"No gateway was reloaded (no --gateway): a running gateway serves its router until it gets POST "
                  f"/admin/router/reload {{\"path\": \"{Path(report['candidate']).resolve()}\"}} with the master key, or "
                  f"restarts with router.artifact set to that folder")
    else:
        print(f"NOT PROMOTED {report['candidate']}: {report['verdict']['reason']}")
        if args.exit_code:
            return NOT_PROMOTED_EXIT
    return 0
