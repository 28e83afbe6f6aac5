"""`openclaw-router train`: fit the outcome predictors, cross-validate, track in MLflow.

Stages (one progress bar each): load and validate the tables, embed the text column
(memoised on disk), K-fold fit of the quality boosters (their out-of-fold predictions give
the CV metrics and fit the calibrators), the kNN estimate and its blend weight, output-token
model, artifact, MLflow run with params, metrics, the reliability plot and a registered
pyfunc model version.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import logging
import os
import re
import time
from pathlib import Path

import numpy as np

from training.outputs import non_negative_int
from training.texts import TEXT_COLUMN_DEFAULT

log = logging.getLogger(__name__)
EXPERIMENT = "openclaw-router"
REGISTERED_MODEL = "openclaw-router"
LEARNED_LITTLE_AUC = 0.55  # a cross-validated mean AUC below this is close to chance


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", action="append", required=True, metavar="FILE",
                        help="wide outcome table: parquet, CSV, TSV, JSON Lines or a JSON array of records (CSV, TSV "
                        "and JSON Lines may be .gz); repeat to train on several")
    parser.add_argument("--out", required=True, help="artifact folder to write, e.g. models/NAME")
    parser.add_argument("--text-column", default=None, help=f"column to embed (default: {TEXT_COLUMN_DEFAULT})")
    parser.add_argument("--prices", default=None, metavar="FILE",
                        help="JSON {model: {input_per_1m, output_per_1m}} for tables without cost columns")
    parser.add_argument("--folds", type=int, default=5, help="cross-validation folds = bagged boosters served (default: %(default)s)")
    parser.add_argument("--mode", choices=("shared", "per_model"), default="shared",
                        help="one booster with a model feature, or one booster per model (default: %(default)s)")
    parser.add_argument("--pca-dim", type=int, default=32, help="embedding dimensions kept, 0 = all 384 (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=100, help="boosting rounds per quality booster (default: %(default)s)")
    parser.add_argument("--seed", type=non_negative_int, default=7,
                        help="seed of the cross-validation folds and the boosters (default: %(default)s)")
    parser.add_argument("--experiment", default=EXPERIMENT, help="MLflow experiment name (default: %(default)s)")
    parser.add_argument("--registered-name", default=REGISTERED_MODEL, help="MLflow registered model name (default: %(default)s)")
    parser.add_argument("--tracking-uri", default=None,
                        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite under ./.openclaw)")


def file_digest(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def expected_calibration_error(p: np.ndarray, y: np.ndarray, bins: int = 10) -> float:
    """Mean |predicted - observed| over equal-width probability bins, weighted by bin size."""
    edges = np.minimum((p * bins).astype(int), bins - 1)
    err = 0.0
    for b in range(bins):
        m = edges == b
        if m.any():
            err += m.mean() * abs(p[m].mean() - y[m].mean())
    return float(err)


def reliability_curve(p: np.ndarray, y: np.ndarray, bins: int = 10) -> list[dict]:
    edges = np.minimum((p * bins).astype(int), bins - 1)
    return [
        {"bin": b, "predicted": float(p[edges == b].mean()), "observed": float(y[edges == b].mean()), "n": int((edges == b).sum())}
        for b in range(bins) if (edges == b).any()
    ]


def quality_metrics(quality: np.ndarray, oof: np.ndarray, oof_raw: np.ndarray, models: list[str]) -> dict:
    """Out-of-fold AUC / Brier / log-loss / ECE per model and pooled, beside the base-rate predictor.

    AUC needs two classes: a model's scores are binarised at 0.5 for it (a single fractional
    feedback score would otherwise drop the model from the mean AUC, which would then average
    another set of models); `auc_binarised` names the models with fractional scores, `auc_left_out`
    those with one class only (every score on one side of 0.5), which have no AUC."""
    from sklearn.metrics import roc_auc_score

    out: dict = {"per_model": {}, "auc_binarised": [], "auc_left_out": []}
    all_p, all_y, all_base = [], [], []
    for j, m in enumerate(models):
        ok = ~np.isnan(quality[:, j]) & ~np.isnan(oof[:, j])
        y, p = quality[ok, j], np.clip(oof[ok, j], 1e-6, 1 - 1e-6)
        if not len(y):
            continue
        base = np.full_like(y, y.mean())
        good = y >= 0.5
        two_classes = 0 < good.mean() < 1
        if not np.isin(y, (0.0, 1.0)).all():
            out["auc_binarised"].append(m)
        if not two_classes:
            out["auc_left_out"].append(m)
        out["per_model"][m] = {
            "auc": float(roc_auc_score(good, oof_raw[ok, j])) if two_classes else None,
            "brier": float(np.mean((p - y) ** 2)),
            "brier_base_rate": float(np.mean((base - y) ** 2)),
            "log_loss": float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))),
            "ece": expected_calibration_error(p, y),
            "n": int(len(y)),
        }
        all_p.append(p), all_y.append(y), all_base.append(base)
    p, y, base = np.concatenate(all_p), np.concatenate(all_y), np.concatenate(all_base)
    aucs = [v["auc"] for v in out["per_model"].values() if v["auc"] is not None]
    out["mean_auc"] = float(np.mean(aucs)) if aucs else None
    out["auc_models"] = len(aucs)
    out["brier"] = float(np.mean((p - y) ** 2))
    out["brier_base_rate"] = float(np.mean((base - y) ** 2))
    out["log_loss"] = float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))
    out["ece"] = expected_calibration_error(p, y)
    out["reliability"] = reliability_curve(p, y)
    return out


def tracking_uri(explicit: str | None) -> str:
    if explicit:
        return explicit
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    root = Path.cwd() / ".openclaw"
    root.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{root / 'mlflow.db'}"


def check_job_options(args) -> None:
    """What would fail only after minutes of training: the fold count, the names MLflow refuses,
    a data file that is not there."""
    if args.folds < 2:
        raise ValueError(f"--folds must be at least 2 (cross-validation and bagging), got {args.folds}")
    if getattr(args, "rounds", None) is not None and args.rounds < 1:
        raise ValueError(f"--rounds must be at least 1, got {args.rounds}")
    if getattr(args, "pca_dim", 0) < 0:
        raise ValueError(f"--pca-dim must be ≥ 0 (0 keeps all 384 dimensions), got {args.pca_dim}")
    if not args.experiment.strip():
        raise ValueError("--experiment must not be empty")
    if not args.registered_name.strip() or any(c in args.registered_name for c in "/:"):
        raise ValueError(f"--registered-name {args.registered_name!r}: MLflow model names cannot be empty or contain '/' or ':'")
    for flag, paths in (("--data", getattr(args, "data", None)), ("--base-data", getattr(args, "base_data", None))):
        missing = [p for p in paths or () if not Path(p).exists()]
        if missing:
            raise FileNotFoundError(f"{flag} {missing[0]}: no such file")


def check_tracking_store(args) -> None:
    """A tracking store MLflow cannot open (e.g. a file store, refused by default since MLflow 3)
    fails here, before minutes of training. Opening it creates its SQLite file, so this runs once
    the inputs are known good: a typo in a path or a refused table leaves nothing behind."""
    import mlflow
    from mlflow.exceptions import MlflowException

    uri = tracking_uri(args.tracking_uri)
    try:
        mlflow.MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
    except MlflowException as exc:
        raise ValueError(f"MLflow tracking URI {uri!r} cannot be used: {exc.message}") from None


def _experiment_id(mlflow, name: str, uri: str) -> str:
    exp = mlflow.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = None
    if uri.startswith("sqlite:"):
        # A SQLite store would otherwise put artifacts in ./mlruns: keep them beside the database.
        location = (Path(uri[len("sqlite:///"):]).parent / "mlartifacts").resolve().as_uri()
    return mlflow.create_experiment(name, artifact_location=location)


class _DropMessages(logging.Filter):
    def __init__(self, *fragments: str):
        super().__init__()
        self.fragments = fragments

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(f in record.getMessage() for f in self.fragments)


@contextlib.contextmanager
def quiet_mlflow():
    """MLflow's notices that every run repeats and that say nothing about this one: the advice to
    type-hint `predict` and to log models from code (the pyfunc wrapper is ours, built here, never
    loaded from a stranger's file), and the progress bars of its own local artifact copies. Only
    these: its other warnings and its errors still show."""
    import warnings

    bar = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    set_bar = bar not in os.environ  # an explicit setting is the user's to keep
    drop = _DropMessages("serialized using CloudPickle")
    pyfunc_log = logging.getLogger("mlflow.pyfunc")
    shown = warnings.showwarning

    # Not a warnings filter: MLflow wraps the check in its own catch_warnings("once"), which
    # takes precedence over any filter set out here.
    def showwarning(message, category, *args, **kwargs):
        if not (issubclass(category, UserWarning) and "Add type hints to the `predict` method" in str(message)):
            shown(message, category, *args, **kwargs)

    if set_bar:
        os.environ[bar] = "false"
    pyfunc_log.addFilter(drop)
    warnings.showwarning = showwarning
    try:
        yield
    finally:
        warnings.showwarning = shown
        pyfunc_log.removeFilter(drop)
        if set_bar:
            os.environ.pop(bar, None)


def register_version(mlflow, model_uri: str, name: str) -> str:
    """Register `model_uri` as a new version of `name`, without MLflow's "Successfully registered
    model" / "already exists. Creating a new version" notices: the caller says which version it made.
    MLflow prints them straight to its logging stream, which no logging filter sees, so that stream
    is muted for the call, and with it any line MLflow's loggers write meanwhile; a failure still
    raises."""
    from mlflow.utils.logging_utils import MLFLOW_LOGGING_STREAM

    was = MLFLOW_LOGGING_STREAM.enabled
    MLFLOW_LOGGING_STREAM.enabled = False
    try:
        with quiet_mlflow():
            return str(mlflow.register_model(model_uri, name).version)
    finally:
        MLFLOW_LOGGING_STREAM.enabled = was


def log_to_mlflow(args, router_dir: Path, params: dict, metrics: dict, plot: Path) -> tuple[str, str]:
    """One run: params, flat metrics, plot, artifact folder, and a registered pyfunc version."""
    import mlflow
    import mlflow.pyfunc

    uri = tracking_uri(args.tracking_uri)
    mlflow.set_tracking_uri(uri)
    exp_id = _experiment_id(mlflow, args.experiment, uri)

    with quiet_mlflow():  # MLflow warns when the class is defined, not when it is logged
        class RouterModel(mlflow.pyfunc.PythonModel):
            """DataFrame with a `text` column in, calibrated P(good) per model out."""

            def load_context(self, context):
                from router.engine import LearnedRouter

                self.router = LearnedRouter.load(context.artifacts["router"])

            def predict(self, context, model_input, params=None):
                import pandas as pd
                from router.request_view import view_prompt

                reqs = [view_prompt(str(t)) for t in model_input["text"]]
                pred = self.router.predict(reqs)
                return pd.DataFrame(pred.p_good, columns=pred.models)

    with mlflow.start_run(experiment_id=exp_id) as run:
        mlflow.log_params(params)
        flat = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and v is not None}
        for m, vals in metrics["per_model"].items():
            for k, v in vals.items():
                if v is not None and k != "n":
                    flat[f"{k}.{m}"] = v
        # MLflow allows only [A-Za-z0-9_ -.:/] in a name; model names may hold "+", "@", "(", ...
        mlflow.log_metrics({re.sub(r"[^\w\-. :/]", "_", k): float(v) for k, v in flat.items()})
        mlflow.log_artifact(str(plot))
        with quiet_mlflow():
            info = mlflow.pyfunc.log_model(
                name="router",
                python_model=RouterModel(),
                artifacts={"router": str(router_dir)},
                pip_requirements=["openclaw-router", "lightgbm", "onnxruntime", "tokenizers", "numpy", "pandas"],
            )
        version = register_version(mlflow, info.model_uri, args.registered_name) if args.registered_name else None
        return run.info.run_id, str(version)


def build_manifest(table, metrics: dict, sources: list[dict], text_column: str | None = None) -> dict:
    """The artifact's manifest (the predictor adds its own part on save); retraining reuses it."""
    from router.embedding import DIM, _weights_digest, variant
    from router.engine import FORMAT_VERSION
    from router.features import FEATURE_NAMES
    from training.texts import TEXT_COLUMNS

    return {
        "format_version": FORMAT_VERSION,
        "models": table.models,
        "features": {
            "embedding": {"model": "all-MiniLM-L6-v2", "dim": DIM, "weights_digest": _weights_digest(), "runtime": "onnx",
                          "variant": variant()},
            "cheap": list(FEATURE_NAMES),
            "text_column": text_column or "|".join(TEXT_COLUMNS),
        },
        "data": sources,
        "prices_seen": {m: [p.input_per_1m, p.output_per_1m] for m, p in table.prices.items()},
        "metrics": {k: v for k, v in metrics.items() if k != "reliability"},
        "reliability": metrics["reliability"],
        "trained_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from router.engine import LearnedRouter
    from router.features import request_features
    from router.predictor import OutcomePredictor
    from router.types import RoutingRequest
    from training.data import concat_outcomes, load_outcomes, load_prices
    from training.embed_progress import encode_with_progress
    from training.outputs import check_output_dir
    from training.plots import save_reliability_plot

    check_job_options(args)
    t0 = time.time()
    prices = load_prices(args.prices) if args.prices else None
    # The bar is closed (its line ended) even when a file is refused: the error gets a line of its own.
    with tqdm(args.data, desc="load", unit="file") as files:
        tables = [load_outcomes(p, text_column=args.text_column, prices=prices, flat_price=True) for p in files]
    table = concat_outcomes(tables)
    check_tracking_store(args)
    check_output_dir(args.out, "--out")  # after the tables are read, before minutes of embedding and fitting
    log.info("%d prompts x %d models from %s", len(table), len(table.models), ", ".join(args.data))

    # Per table, so each table's embeddings stay memoised whatever it is combined with.
    emb = np.vstack([encode_with_progress(t.texts, desc=f"embed {Path(t.path).name}") for t in tables])
    requests = [RoutingRequest(text=t, input_tokens=int(n)) for t, n in zip(table.texts, table.input_tokens)]
    X = np.hstack([emb, request_features(requests)])

    predictor = OutcomePredictor(folds=args.folds, mode=args.mode, pca_dim=args.pca_dim, num_rounds=args.rounds, seed=args.seed)
    with tqdm(total=args.folds + 3, desc="fit", unit="stage") as bar:  # folds, calibration, neighbours, tokens
        def progress(msg: str) -> None:
            bar.set_postfix_str(msg)
            bar.update()

        predictor.fit(X, table, progress=progress, groups=np.asarray(table.texts, dtype=object))
    metrics = quality_metrics(table.quality, predictor.oof, predictor.oof_raw, table.models)
    metrics["train_seconds"] = round(time.time() - t0, 1)
    metrics["knn_weight"] = predictor.neighbour_weight
    metrics["knn_k"] = predictor.neighbours.k
    log.info("CV (%d folds): mean AUC %s, Brier %.4f (base rate %.4f), ECE %.4f; kNN weight %.1f (k = %d)", args.folds,
             auc_summary(metrics), metrics["brier"], metrics["brier_base_rate"], metrics["ece"], metrics["knn_weight"],
             metrics["knn_k"])
    if metrics["mean_auc"] is not None and metrics["mean_auc"] < LEARNED_LITTLE_AUC:
        # Not an error: a small or noisy table still makes a valid artifact, but the user should
        # not take the router for one that read the prompts.
        log.warning("CV mean AUC %.4f on %d rows: the predictors learned little from this data (0.5 is chance), so a "
                    "router trained on it routes on the models' priors and cost, hardly on the prompt",
                    metrics["mean_auc"], len(table))

    out = Path(args.out)
    sources = [{"path": str(p), "sha256_16": file_digest(p), "rows": len(t)} for p, t in zip(args.data, tables)]
    manifest = build_manifest(table, metrics, sources, text_column=args.text_column)
    with tqdm(total=2, desc="save", unit="step") as bar:
        LearnedRouter(predictor, manifest).save(out)
        plot = save_reliability_plot(metrics, out / "reliability.png")
        bar.update()
        params = {"data": ",".join(args.data), "folds": args.folds, "mode": args.mode, "pca_dim": args.pca_dim,
                  "rounds": args.rounds, "seed": args.seed, "rows": len(table), "models": len(table.models)}
        run_id, version = log_to_mlflow(args, out, params, metrics, plot)
        bar.update()
    print(f"wrote {out} (MLflow run {run_id}, {args.registered_name} version {version}); "
          f"CV mean AUC {auc_summary(metrics)}, Brier {metrics['brier']:.4f} vs base rate {metrics['brier_base_rate']:.4f}")
    return 0


def auc_summary(metrics: dict) -> str:
    """The mean AUC and which models it is over (`quality_metrics`)."""
    auc = "n/a" if metrics["mean_auc"] is None else f"{metrics['mean_auc']:.4f}"
    text = f"{auc} over {metrics.get('auc_models', 0)} of {len(metrics['per_model'])} models"
    notes = []
    if metrics.get("auc_binarised"):
        notes.append(f"scores of {', '.join(metrics['auc_binarised'])} binarised at 0.5")
    if metrics.get("auc_left_out"):
        notes.append(f"{', '.join(metrics['auc_left_out'])} left out: one class only")
    return f"{text} ({'; '.join(notes)})" if notes else text
