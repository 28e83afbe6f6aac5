"""`openclaw-router eval`: a router against the baselines over the whole knob range.

The router decides from its predictions only; what a decision realises (cost, quality) is read
from the file's recorded `cost_usd__<model>` / `quality__<model>` columns. Every method — the
router, kNN, the oracle — is swept over willingness to pay (see `training.baselines`), and
judged by the metrics of `training.metrics` on the same rows and the same candidate models.

Candidates are the models both the file and the router know (and, with `--models`, only those
named); any model left out is listed in the summary and logged. kNN is fit on `--knn-train`
when given (the router's training data, say), otherwise cross-fitted on the evaluated file
itself (5 folds: each row predicted by a kNN that never saw it).
"""
from __future__ import annotations

import argparse
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from training import baselines as bl
from training.metrics import aiq, apgr, cost_to_reach, cpt, quality_at_budget, same_cost
from training.outputs import non_negative_int
from training.texts import TEXT_COLUMN_DEFAULT

log = logging.getLogger(__name__)

BUDGET_FRACTIONS = (0.1, 0.25, 0.5, 1.0)  # of the best single model's mean cost
CPT_FRACTIONS = (0.5, 0.8)
RANDOM_AIQ_NOTE = (
    "uniform random routing has no knob: one operating point, whose hull counts 0 below its mean cost and its "
    "quality from there to the dearest model's cost, so this AIQ mostly says where its cost falls in the range. "
    "RouterBench defines no such router; its random-mixing baseline is the Zero router ('zero'); compare "
    "quality_at_random_cost instead")


@dataclass
class Evaluation:
    summary: dict
    decisions: "object"  # pandas DataFrame: row, knob, model


def _hint(unusable: Sequence[str], candidates: Sequence[str]) -> str:
    """"; did you mean ..." for the requested names a usable model's name is close to."""
    from training.model_names import close_models

    meant = [f"{close[0]!r} for {m!r}" for m in unusable if (close := close_models(m, list(candidates), n=1))]
    return f"; did you mean {', '.join(meant)}?" if meant else ""


def resolve_candidates(file_models: Sequence[str], router_models: Sequence[str],
                       requested: Sequence[str] | None, path: str) -> tuple[list[str], dict]:
    """Models to route between: the file's ∩ the router's (∩ the requested ones), in file order.

    A requested name the file lacks (or the router does not know) is left out, logged and listed
    (`requested_not_in_file`, `requested_not_in_router`) while two usable ones remain; with fewer,
    it is an error, as the list meant is then unclear. One candidate is a degenerate pool, not an
    error: every row goes to it, and the baselines say what it scores."""
    notes = {
        "not_in_router": [m for m in file_models if m not in router_models],
        "not_in_file": [m for m in router_models if m not in file_models],
    }
    candidates = [m for m in file_models if m in router_models]
    if requested:
        unusable = list(dict.fromkeys(m for m in requested if m not in candidates))
        if unusable and len([m for m in candidates if m in requested]) < 2:
            raise ValueError(
                f"{path}: --models {unusable} not usable: the file has {list(file_models)}, "
                f"the router knows {list(router_models)}; name two or more models of both{_hint(unusable, candidates)}"
            )
        if unusable:
            notes["requested_not_in_file"] = [m for m in unusable if m not in file_models]
            notes["requested_not_in_router"] = [m for m in unusable if m in file_models]
            log.warning("%s: --models left out: %s%s", path, ", ".join(
                f"{m!r} ({'not in the file' if m in notes['requested_not_in_file'] else 'unknown to the router'})"
                for m in unusable), _hint(unusable, candidates))
        notes["not_requested"] = [m for m in candidates if m not in requested]
        candidates = [m for m in candidates if m in requested]
    if not candidates:
        raise ValueError(
            f"{path}: no model is both in the file ({list(file_models)}) and known to the router ({list(router_models)})"
        )
    if notes["not_in_router"]:
        log.warning("models in %s that the router does not know, left out: %s", path, notes["not_in_router"])
    return candidates, notes


def training_overlap(path: str | Path, manifest: dict) -> dict:
    """Whether the evaluated file is one the router was trained on: its bytes' digest among the
    manifest's `data` (`train` records each file's sha256_16, not its prompts, so only a whole
    file is recognised). Such an evaluation is in-sample: every row was seen in training."""
    from training.train import file_digest

    sources = [s for s in manifest.get("data") or () if s.get("sha256_16")]
    digest = file_digest(path) if sources else None
    same = next((s for s in sources if s["sha256_16"] == digest), None)
    if same is None:
        return {"in_sample": False}
    return {"in_sample": True, "share_seen_in_training": 1.0, "training_file": same.get("path")}


def _method(points_c, points_q, knobs, ctx: dict) -> dict:
    c_min, c_max = ctx["cost_range"]
    out = {
        "points": [[float(c), float(q)] + ([float(k)] if k is not None else []) for c, q, k in zip(points_c, points_q, knobs)],
        "aiq": aiq(points_c, points_q, c_min, c_max) if ctx["cost_spread"] else None,
        "quality_at_budget": {f"{b:.6g}": _num(quality_at_budget(points_c, points_q, b)) for b in ctx["budgets"]},
        "quality_at_best_cost_fraction": {
            str(f): _num(quality_at_budget(points_c, points_q, f * ctx["best_cost"])) for f in BUDGET_FRACTIONS
        },
        "quality_at_random_cost": _num(quality_at_budget(points_c, points_q, ctx["random_cost"])),
    }
    reach = cost_to_reach(points_c, points_q, ctx["best_quality"])
    out["cost_to_reach_best"] = _num(reach)
    out["cost_to_reach_best_ratio"] = _num(reach / ctx["best_cost"]) if ctx["best_cost"] > 0 else None
    return out


def _num(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None  # JSON has no NaN/inf: null means "not reached"


def _two_model(choices: Sequence[np.ndarray], quality_means, strong: int, weak_q: float, strong_q: float) -> dict:
    share = np.array([float((c == strong).mean()) for c in choices])
    q = np.asarray(quality_means, dtype=float)
    # The all-weak and all-strong settings exist for every router (RouteLLM's thresholds 1 and 0).
    share, q = np.concatenate(([0.0], share, [1.0])), np.concatenate(([weak_q], q, [strong_q]))
    out = {"apgr": apgr(share, q, weak_q, strong_q), "strong_share": share.tolist()}
    for f in CPT_FRACTIONS:
        out[f"cpt_{int(f * 100)}"] = _num(cpt(share, q, weak_q, strong_q, f))
    return out


def evaluate_arrays(quality, cost, models, router_q, router_c, router_choose, embeddings,
                    knn_train=None, n_knobs: int = 48, budgets: Sequence[float] = (),
                    knn_folds: int = 5, seed: int = 0, texts=None) -> tuple[dict, list[bl.Operating]]:
    """Everything but I/O. `router_choose(wtp) -> (N,) index into models`; `router_q/_c` are the
    router's predicted quality and cost (used only to place the knob grid); `texts` group the
    rows for kNN's cross-fitting (copies of a prompt share a fold); `knn_train` is
    (embeddings, quality, cost[, texts])."""
    single_c, single_q = bl.single_model_points(quality, cost)
    best = int(np.lexsort((single_c, -single_q))[0])
    rnd_c, rnd_q = bl.random_point(quality, cost)
    ctx = {
        "cost_range": (float(single_c.min()), float(single_c.max())),
        "best_quality": float(single_q[best]),
        "best_cost": float(single_c[best]),
        "random_cost": rnd_c,
        # Every model at one cost: no range to average quality over (AIQ null, docs/EVALUATION.md).
        "cost_spread": not same_cost(float(single_c.min()), float(single_c.max())),
    }
    ctx["budgets"] = sorted({*(f * ctx["best_cost"] for f in BUDGET_FRACTIONS), *budgets})

    router_ops = [
        bl.Operating(float(w), ch, *bl.realise(ch, quality, cost))
        for w in bl.knob_sweep(router_q, router_c, n_knobs)
        for ch in [np.asarray(router_choose(float(w)))]
    ]
    knn_ops, knn_missing = None, None
    if knn_train is not None:
        q_hat, c_hat, k = bl.knn_fit_predict(*knn_train[:3], embeddings, *knn_train[3:])
        knn_info = {"fit": "on --knn-train", "k": [k]}
    else:
        try:
            q_hat, c_hat, ks = bl.knn_crossfit(embeddings, quality, cost, folds=knn_folds, seed=seed, groups=texts)
            knn_info = {"fit": f"{knn_folds}-fold cross-fitting on the evaluated file", "k": ks}
        except bl.TooFewPrompts as exc:
            # A small file still gets every other method; kNN alone needs prompts to learn from.
            knn_missing = str(exc)
            log.warning("kNN left out: %s", exc)
    if knn_missing is None:
        knn_ops = bl.sweep(q_hat, c_hat, quality, cost, bl.knob_sweep(q_hat, c_hat, n_knobs))
    oracle_ops = bl.oracle_sweep(quality, cost, n_knobs)

    def from_ops(ops):
        return _method([o.mean_cost for o in ops], [o.mean_quality for o in ops], [o.knob for o in ops], ctx)

    methods = {
        "router": from_ops(router_ops),
        **({"knn": {**from_ops(knn_ops), **knn_info}} if knn_ops is not None else {}),
        "zero": _method(single_c, single_q, [None] * len(models), ctx),
        "oracle": from_ops(oracle_ops),
        "random": {"mean_cost": rnd_c, "mean_quality": rnd_q, **_method([rnd_c], [rnd_q], [None], ctx)},
    }
    if methods["random"]["aiq"] is not None:
        methods["random"]["aiq_note"] = RANDOM_AIQ_NOTE
    summary = {
        "n_rows": int(len(quality)),
        "models": list(models),
        "cost_range": list(ctx["cost_range"]),
        "single_models": {m: {"mean_cost": float(c), "mean_quality": float(q)} for m, c, q in zip(models, single_c, single_q)},
        "best_single_model": {"model": models[best], "mean_cost": ctx["best_cost"], "mean_quality": ctx["best_quality"]},
        "methods": methods,
        **({"knn_left_out": knn_missing} if knn_missing else {}),
    }
    if len(models) == 2:
        methods_ops = {"router": router_ops, "knn": knn_ops, "oracle": oracle_ops}
        summary["two_model"] = _pair(models, single_c, single_q, methods_ops)
    return summary, router_ops


def _pair(models, single_c, single_q, methods_ops: dict) -> dict:
    """RouteLLM's strong/weak comparison. Strong is the pricier model: the metrics measure how much
    of its extra quality a router keeps while calling it less, which means nothing when both cost
    the same or the pricier one is no better (always calling the cheaper model is then best, and a
    router doing so would read as random-level). Then the metrics are null and `note` says why."""
    strong = int(np.argmax(single_c))
    weak = 1 - strong
    sq, wq = float(single_q[strong]), float(single_q[weak])
    pair = {"strong": models[strong], "weak": models[weak]}
    if same_cost(float(single_c[0]), float(single_c[1])):
        pair.update(strong=None, weak=None, note=(
            f"{models[0]} and {models[1]} cost the same (mean ${single_c[0]:.6g} per prompt): there is no cheap and "
            "dear model to trade between, so APGR and CPT are undefined; compare quality_at_random_cost instead"))
    elif sq <= wq:
        pair["note"] = (
            f"the pricier {models[strong]} (mean ${single_c[strong]:.6g}) is no better than the cheaper {models[weak]} "
            f"(quality {sq:.4f} vs {wq:.4f}): always calling the cheaper one is best, so APGR and CPT are undefined; "
            "compare quality_at_random_cost and AIQ instead")
    if "note" in pair:
        for name, ops in methods_ops.items():
            if ops is not None:
                pair[name] = {"apgr": None, **{f"cpt_{int(f * 100)}": None for f in CPT_FRACTIONS}}
        return pair
    # Random mixing, and the Zero router (the hull of two points is their mixing line): a share x of
    # strong calls recovers x of the quality gap, so CPT(x) is x.
    pair["random"] = pair["zero"] = {"apgr": 0.5, **{f"cpt_{int(f * 100)}": f for f in CPT_FRACTIONS}}
    for name, ops in methods_ops.items():
        if ops is not None:
            pair[name] = _two_model([o.choice for o in ops], [o.mean_quality for o in ops], strong, wq, sq)
    return pair


def evaluate_table(table, embeddings: np.ndarray, router, models: Sequence[str] | None = None,
                   knn_train=None, n_knobs: int = 48, budgets: Sequence[float] = (),
                   knn_folds: int = 5, seed: int = 0) -> Evaluation:
    """Evaluate `router` (a `router.engine.LearnedRouter`) on an `OutcomeTable`."""
    import pandas as pd

    from router.policy import choose_batch
    from router.types import RoutingRequest

    if table.cost is None or np.isnan(table.cost).any():
        raise ValueError(f"{table.path}: realised costs are needed: every cost_usd__<model> cell (or a --prices entry)")
    candidates, notes = resolve_candidates(table.models, router.models, models, table.path)
    if len(candidates) == 1:
        log.warning("%s: one candidate model, %s: every row is routed to it, so the router, kNN and the oracle "
                    "all read as that model; name two or more models to compare routing", table.path, candidates[0])
    sub = table.restrict_models(candidates)
    requests = [RoutingRequest(text=t, input_tokens=int(n)) for t, n in zip(sub.texts, sub.input_tokens)]
    pred = router.predict(requests, embeddings=embeddings)
    col = [pred.models.index(m) for m in candidates]
    allowed = frozenset(candidates)

    to_candidate = np.full(len(pred.models), -1)
    to_candidate[col] = np.arange(len(col))

    def router_choose(wtp: float) -> np.ndarray:
        return to_candidate[np.asarray(choose_batch(pred, wtp, allowed=allowed))]

    knn = None
    if knn_train is not None:
        t, e = knn_train
        missing = [m for m in candidates if m not in t.models]
        if missing:
            raise ValueError(f"{t.path}: --knn-train lacks models {missing}")
        kt = t.restrict_models(candidates)
        knn = (e, kt.quality, kt.cost, np.asarray(kt.texts, dtype=object))
    summary, router_ops = evaluate_arrays(
        sub.quality, sub.cost, candidates, pred.p_good[:, col], pred.cost_usd[:, col], router_choose,
        embeddings, knn_train=knn, n_knobs=n_knobs, budgets=budgets, knn_folds=knn_folds, seed=seed,
        texts=np.asarray(sub.texts, dtype=object),
    )
    summary = {"data": table.path, "models_left_out": notes, **summary}
    names = np.array(candidates, dtype=object)
    decisions = pd.DataFrame({
        "row": np.tile(np.arange(len(sub), dtype=np.int64), len(router_ops)),
        "knob": np.repeat([o.knob for o in router_ops], len(sub)),
        "model": np.concatenate([names[o.choice] for o in router_ops]),
    })
    return Evaluation(summary, decisions)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="wide outcome table to evaluate on: parquet, CSV, TSV, JSON Lines or a "
                        "JSON array of records (CSV, TSV and JSON Lines may be .gz)")
    parser.add_argument("--router", required=True, help="router artifact folder, e.g. models/default")
    parser.add_argument("--models", help="comma-separated candidate models (default: all the file and router share); "
                        "a name the file or the router lacks is left out while two others remain")
    parser.add_argument("--text-column", help=f"column holding the prompt text (default: {TEXT_COLUMN_DEFAULT})")
    parser.add_argument("--prices", help="JSON prices {model: {input_per_1m, output_per_1m}} for models without a cost_usd__ column "
                        "(default: a file with no cost columns at all is priced at the prices the router was trained "
                        "with; in a file with some, a model without one is an error)")
    parser.add_argument("--decisions-out", required=True, help="parquet file for the decisions (row, knob, model)")
    parser.add_argument("--report-dir", required=True, help="folder for summary.json and cost_quality.png")
    parser.add_argument("--knn-train", help="outcome table to fit the kNN baseline on (default: cross-fit on --data)")
    parser.add_argument("--knob-points", type=int, default=48, help="knob values swept, plus the two extremes (default: %(default)s)")
    parser.add_argument("--budgets", help="extra comma-separated USD budgets per prompt for quality-at-budget")
    parser.add_argument("--seed", type=non_negative_int, default=0, help="seed of kNN's cross-fitting folds (default: %(default)s)")


def _budgets(text: str | None) -> list[float]:
    budgets = []
    for part in (text or "").split(","):
        if part.strip():
            try:
                budgets.append(float(part))
            except ValueError:
                raise ValueError(f"--budgets: {part.strip()!r} is not a number of USD") from None
            if not (math.isfinite(budgets[-1]) and budgets[-1] > 0):
                raise ValueError(f"--budgets: {part.strip()!r} is not a budget (USD > 0)")
    return budgets


def run(args: argparse.Namespace) -> int:
    from training.outputs import removed_if_left_empty

    with removed_if_left_empty(args.report_dir, Path(args.decisions_out).parent):
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    from router.engine import LearnedRouter, find_router_option
    from training.data import load_outcomes, prices_for_file, read_frame
    from training.embed_progress import encode_with_progress
    from training.outputs import check_output_dir, check_output_file
    from training.plots import save_cost_quality_plot

    router_path = find_router_option(args.router)
    if args.knob_points < 0:
        raise ValueError(f"--knob-points is how many knob values to sweep besides the two extremes, ≥ 0; got {args.knob_points}")
    budgets = _budgets(args.budgets)
    check_output_dir(args.report_dir, "--report-dir")
    check_output_file(args.decisions_out, "--decisions-out")
    router = LearnedRouter.load(router_path)
    frame = read_frame(args.data)
    column_order = [str(c) for c in frame.columns]
    columns = set(column_order)

    def prices_for(file_columns):
        # A file without cost columns for the models evaluated is priced at the prices the router
        # was trained with, unless --prices (an empty one is none) says otherwise.
        return prices_for_file(file_columns, router.predictor.prices, args.prices or None, keep=keep)

    models = [m.strip() for m in args.models.split(",") if m.strip()] if args.models else None
    # Resolved against the whole file, and every other model dropped before the file is checked: a
    # sealed file's extra model without a cost column must not stop the evaluation of the others.
    # A file without quality columns is load_outcomes' error to name.
    in_file = [c[len("quality__"):] for c in column_order if c.startswith("quality__")]
    candidates, left_out = resolve_candidates(in_file, router.models, models, args.data) if in_file else (router.models, {})
    keep = set(candidates).__contains__
    table = load_outcomes(args.data, text_column=args.text_column, prices=prices_for(columns), keep=keep, frame=frame)
    knn_train = None
    if args.knn_train:
        kt_frame = read_frame(args.knn_train)
        kt = load_outcomes(args.knn_train, text_column=args.text_column, prices=prices_for(kt_frame.columns), keep=keep,
                           frame=kt_frame)
        knn_train = (kt, encode_with_progress(kt.texts, desc="embed kNN's table"))
    result = evaluate_table(table, encode_with_progress(table.texts), router, knn_train=knn_train,
                            n_knobs=args.knob_points, budgets=budgets, seed=args.seed)
    result.summary["router"] = str(router_path)
    overlap = training_overlap(args.data, router.manifest)
    if overlap["in_sample"]:
        log.warning("%s is the file %s was trained on (%s in its manifest): all rows were seen in training, so these "
                    "numbers are in-sample; held-out ones come from train's cross-validation folds (docs/BENCHMARKS.md)",
                    args.data, router_path, overlap["training_file"])
    result.summary.update(overlap)
    result.summary["models_left_out"] = left_out
    estimated = [m for m in result.summary["models"] if f"cost_usd__{m}" not in columns]
    if estimated:
        log.warning("no cost_usd__ column for %s in %s: cost = tokens x price", estimated, args.data)
    result.summary["cost_estimated_from_prices"] = estimated
    out = Path(args.report_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(result.summary, indent=1))
    # The results before the picture: a plot that fails must not lose them.
    Path(args.decisions_out).parent.mkdir(parents=True, exist_ok=True)
    result.decisions.to_parquet(args.decisions_out, index=False)
    save_cost_quality_plot(result.summary, out / "cost_quality.png")
    print(format_table(result.summary))
    print(f"wrote {out / 'summary.json'}, {out / 'cost_quality.png'} and {args.decisions_out}")
    return 0


def format_table(summary: dict) -> str:
    best = summary["best_single_model"]
    names = [n for n in ("router", "knn", "zero", "random", "oracle") if n in summary["methods"]]
    # (header, summary field, decimals); a column as wide as its header, and at least as a cost
    columns = [(h, field, digits, max(len(h), 9)) for h, field, digits in (
        ("AIQ", "aiq", 4), ("quality at random's cost", "quality_at_random_cost", 3),
        ("cost to reach best", "cost_to_reach_best", 6), ("÷ best's cost", "cost_to_reach_best_ratio", 2))]
    lines = [
        f"{summary['n_rows']} rows, {len(summary['models'])} model{'s' * (len(summary['models']) != 1)}; best single model {best['model']}: "
        f"quality {best['mean_quality']:.3f} at ${best['mean_cost']:.6f}",
        f"{'method':<8}" + "".join(f"  {h:>{width}}" for h, _, _, width in columns),
    ]

    def fmt(x, digits: int, width: int = 0) -> str:  # "—" (not reached, undefined) padded to the column like a number
        return f"{x:{width}.{digits}f}" if x is not None else f"{'—':>{width}}"

    for name in names:
        m = summary["methods"][name]
        lines.append(f"{name:<8}" + "".join(f"  {fmt(m[field], digits, width)}" for _, field, digits, width in columns))
    dashes = {field: {n for n in names if summary["methods"][n][field] is None} for _, field, _, _ in columns}
    notes = [
        (dashes["aiq"], "— AIQ: every model costs the same, so there is no cost range to take its area over"),
        (dashes["quality_at_random_cost"], "— quality at random's cost: none of the method's settings costs as little as random routing"),
        (dashes["cost_to_reach_best"], "— cost to reach best, ÷ best's cost: the method never reaches the best single model's "
                                       f"quality ({best['model']}, {best['mean_quality']:.3f})"),
        (dashes["cost_to_reach_best_ratio"] - dashes["cost_to_reach_best"], "— ÷ best's cost: the best single model costs nothing"),
    ]
    lines += [note for methods, note in notes if methods]
    if "two_model" in summary and "note" in summary["two_model"]:
        lines.append(f"two-model metrics: {summary['two_model']['note']}")
    elif "two_model" in summary:
        p = summary["two_model"]
        lines.append(f"strong (pricier) {p['strong']} / weak {p['weak']}:")
        for name in (n for n in ("router", "knn", "zero", "random", "oracle") if n in p):
            lines.append(f"  {name:<7} APGR {p[name]['apgr']:.3f}  CPT(50%) {fmt(p[name]['cpt_50'], 3)}  "
                         f"CPT(80%) {fmt(p[name]['cpt_80'], 3)}")
    return "\n".join(lines)
