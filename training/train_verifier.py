"""Train the semantic-cache verifier on Quora Question Pairs.

    python -m training.train_verifier [--pairs FILE] [--out DIR | --overwrite] [--reuse-model] [--no-second-stage]

`--out` defaults to models/cache_verifier, the verifier the gateway serves; writing there needs
`--overwrite`, so that a check of the threshold never silently changes what is served.

Split by question group (training/qqp.py): LightGBM fits on `train`, stops early on `val`.
The second stage, the cross-encoder in `--out` (trained and exported beforehand by
training/train_cross_encoder.py), multiplies LightGBM's probability by its own; the
threshold on that score is picked on `val` (the loosest threshold whose validation precision
over the pairs it accepts is >= target + margin, 0.95 + 0, accepting >= 150 pairs), and
`test` is scored for the report, never tuned on. The IDF table shipped with the verifier
counts wordpieces over the distinct questions of `train` only. Pairs below the cosine floor
are left out of training (the model never sees them at serving time); pairs the hard rules
refuse are kept, as more near-miss negatives to learn from, and refused when scoring.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
from pathlib import Path

import numpy as np

from router.cache.features import SCALAR_NAMES, WORD_NAMES, Lexicon, hard_mismatch, pair_features
from training.qqp import default_pairs, embed_pairs, group_split, labelled, load_pairs, precision_recall

log = logging.getLogger(__name__)
CROSS_ENCODER_RECORD = "cross_encoder.json"  # how the cross-encoder was trained (training/train_cross_encoder.py)
SHIPPED = Path(__file__).resolve().parent.parent / "models" / "cache_verifier"  # what the gateway serves
MIN_COSINE = 0.6  # below this, validation duplicates are rare and never pass the threshold
PARAMS = {
    "objective": "binary",
    "learning_rate": 0.05,
    "num_leaves": 31,
    "min_data_in_leaf": 40,
    "feature_fraction": 0.3,
    "bagging_fraction": 0.8,
    "bagging_freq": 1,
    "lambda_l2": 1.0,
    "verbose": -1,
    "num_threads": 2,
    "seed": 7,
}


def choose_threshold(prob: np.ndarray, label: np.ndarray, precision: float, min_accepted: int = 150) -> float:
    """Loosest threshold whose precision over the pairs it accepts is >= `precision`, among the
    thresholds that accept at least `min_accepted` pairs (fewer is noise: QQP labels are not clean).
    The verifier's validation precision is flat (0.94-0.955) over its top ~400 pairs, where most
    "false" hits are true duplicates labelled 0, so requiring it at every stricter threshold as
    well would refuse every threshold without making the accepted ones more precise."""
    order = np.argsort(-prob)
    p, y = prob[order], label[order].astype(bool)
    prec = np.cumsum(y) / np.arange(1, len(y) + 1)
    start = min(min_accepted - 1, len(prec) - 1)
    # a threshold accepts every pair tied with it: only the last position of a run of ties counts
    last_of_tie = np.r_[p[1:] != p[:-1], True]
    ok = np.nonzero((prec[start:] >= precision) & last_of_tie[start:])[0]
    if len(ok) == 0:
        raise ValueError(f"no threshold reaches precision {precision} on validation (best from {start + 1} accepted: {prec[start:].max():.4f})")
    return float(p[start + ok[-1]])


def build_lexicon(questions: list[str]) -> Lexicon:
    """Smoothed IDF per wordpiece over `questions`; pieces never seen get the rarest weight."""
    lexicon = Lexicon()
    counts = np.zeros(lexicon.tokenizer.get_vocab_size(), dtype=np.float64)
    for q in questions:
        counts[lexicon.content_ids(q)] += 1
    lexicon.idf = (np.log((len(questions) + 1) / (counts + 1)) + 1).astype(np.float16).astype(np.float32)
    return lexicon


def _fit(X: np.ndarray, y: np.ndarray, fit: np.ndarray, stop: np.ndarray, names: list[str], rounds: int):
    import lightgbm as lgb

    dtrain = lgb.Dataset(X[fit], y[fit], feature_name=names)
    dval = lgb.Dataset(X[stop], y[stop], reference=dtrain)
    booster = lgb.train(PARAMS, dtrain, rounds, valid_sets=[dval], callbacks=[lgb.early_stopping(100, verbose=False)])
    return lgb.Booster(model_str=booster.model_to_string(num_iteration=booster.best_iteration))


def _second_stage(cross_encoder, df, prob: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """LightGBM probability x cross-encoder sigmoid for `rows` (a boolean mask)."""
    from router.cache.verifier import combined_score

    return combined_score(prob[rows], cross_encoder.logits(df["text_a"][rows].tolist(), df["text_b"][rows].tolist()))


def val_curve(score: np.ndarray, label: np.ndarray, thresholds: list[float]) -> list[dict]:
    """Accepted pairs, precision and recall per threshold (for the docs' table)."""
    rows = []
    for t in thresholds:
        hit = score >= t
        p, r = precision_recall(hit, label)
        rows.append({"threshold": t, "accepted": int(hit.sum()), "precision": round(p, 4), "recall": round(r, 4)})
    return rows


def train(pairs: Path, out: Path, target_precision: float = 0.95, margin: float = 0.0, min_accepted: int = 150,
          rounds: int = 2000, reuse_model: bool = False, second_stage: bool = True) -> dict:
    import lightgbm as lgb

    from router.cache.cross_encoder import DELTA_FILE, CrossEncoder, onnx_for
    from router.cache.verifier import MODEL_FILE, SECOND_STAGE_CANDIDATES, Verifier
    from router.embedding import variant

    df = load_pairs(pairs)
    if "label" not in df.columns:
        raise ValueError(f"{pairs}: training needs a label column")
    split = group_split(df)
    ea, eb = embed_pairs(df)
    y = labelled(df, pairs)
    tr = split == "train"
    lexicon = build_lexicon(sorted(set(df["text_a"][tr]) | set(df["text_b"][tr])))
    X = pair_features(df["text_a"].tolist(), df["text_b"].tolist(), ea, eb, lexicon)
    cos = X[:, 0]
    low = cos < MIN_COSINE
    gated = np.array([hard_mismatch(a, b) for a, b in zip(df["text_a"], df["text_b"])]) | low
    scalar_names = list(SCALAR_NAMES) + list(WORD_NAMES)
    names = scalar_names + [f"absdiff_{i}" for i in range(ea.shape[1])] + [f"prod_{i}" for i in range(ea.shape[1])]
    if reuse_model:
        booster = lgb.Booster(model_file=str(out / MODEL_FILE))
    else:
        booster = _fit(X, y, tr & ~low, (split == "val") & ~low, names, rounds)
        out.mkdir(parents=True, exist_ok=True)
        booster.save_model(str(out / MODEL_FILE))  # kept even if no threshold qualifies: rerun with --reuse-model
    prob = np.where(gated, 0.0, booster.predict(X, num_threads=2))
    val = split == "val"
    score = prob.copy()
    cross_encoder = None
    if second_stage:
        if not (out / DELTA_FILE).exists():
            raise ValueError(f"{out / DELTA_FILE} is missing: run training.train_cross_encoder first, or pass --no-second-stage")
        cross_encoder = CrossEncoder(onnx_for(out))
        score[val & (prob > 0)] = _second_stage(cross_encoder, df, prob, val & (prob > 0))
    threshold = choose_threshold(score[val], y[val], target_precision + margin, min_accepted)
    if cross_encoder is not None:
        # the product never exceeds LightGBM's probability: below the threshold, nothing to score
        rest = ~val & (prob >= threshold)
        score[rest] = _second_stage(cross_encoder, df, prob, rest)
    report = {"threshold": threshold, "iterations": int(booster.current_iteration())}
    for part in ("train", "val", "test"):
        m = split == part
        p, r = precision_recall(score[m] >= threshold, y[m])
        cp, cr = precision_recall(cos[m] >= 0.95, y[m])
        report[part] = {"pairs": int(m.sum()), "precision": round(p, 4), "recall": round(r, 4),
                        "cosine_0.95_precision": round(cp, 4), "cosine_0.95_recall": round(cr, 4)}
    report["val_curve"] = val_curve(score[val], y[val], sorted({threshold, *np.round(np.arange(0.5, 0.96, 0.05), 2)}))
    digest = hashlib.sha256(Path(pairs).read_bytes()).hexdigest()[:16]
    meta = {
        "trained_on": f"{Path(pairs).name} (sha256 {digest}), split by question group 70/15/15 (training/qqp.py)",
        "threshold_rule": f"loosest threshold with validation precision >= {target_precision + margin} over the >= {min_accepted} pairs it accepts",
        "features": scalar_names + ["|a-b| (384)", "a*b (384)"],
        "embedding_variant": variant(),
        "metrics": report,
    }
    if cross_encoder is not None:
        record = out / CROSS_ENCODER_RECORD
        meta["second_stage"] = {
            "model": DELTA_FILE,
            "score": "lightgbm_probability * sigmoid(cross_encoder_logit)",
            "candidates": SECOND_STAGE_CANDIDATES,
            "cross_encoder": json.loads(record.read_text()) if record.exists() else None,
        }
    Verifier(booster=booster, threshold=threshold, min_cosine=MIN_COSINE, meta=meta, lexicon=lexicon).save(out)
    return report


def _refusal(out: Path, overwrite: bool, reuse_model: bool, second_stage: bool) -> str | None:
    """Why the job must not start, checked before minutes of embedding and training."""
    from router.cache.cross_encoder import DELTA_FILE
    from router.cache.verifier import MODEL_FILE

    if out.resolve() == SHIPPED and not overwrite:
        return (f"--out {out} is the shipped verifier that the gateway serves, and this job rewrites it"
                f" (its threshold, and without --reuse-model its booster). Pass --out DIR to write elsewhere"
                f" (for --reuse-model, first copy the shipped folder: cp -r {SHIPPED} DIR), or --overwrite to replace it")
    if reuse_model and not (out / MODEL_FILE).exists():
        return f"--reuse-model re-picks the threshold of {out / MODEL_FILE}, which does not exist: copy the shipped folder there first (cp -r {SHIPPED} {out})"
    if second_stage and not (out / DELTA_FILE).exists():
        return f"{out / DELTA_FILE} is missing: run training.train_cross_encoder export into {out} first, copy the shipped folder there, or pass --no-second-stage"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="train the semantic-cache verifier on QQP pairs")
    parser.add_argument("--pairs", type=Path, default=default_pairs())
    parser.add_argument("--out", type=Path, default=SHIPPED, help="default: the shipped models/cache_verifier (needs --overwrite)")
    parser.add_argument("--overwrite", action="store_true", help="allow writing the shipped verifier the gateway serves")
    parser.add_argument("--target-precision", type=float, default=0.95)
    parser.add_argument("--margin", type=float, default=0.0, help="extra validation precision required above the target")
    parser.add_argument("--min-accepted", type=int, default=150, help="validation pairs a threshold must accept before its precision counts")
    parser.add_argument("--reuse-model", action="store_true", help="re-pick the threshold of the model already in --out")
    parser.add_argument("--no-second-stage", action="store_true", help="LightGBM alone, without the cross-encoder in --out")
    args = parser.parse_args(argv)
    refusal = _refusal(args.out, args.overwrite, args.reuse_model, not args.no_second_stage)
    if refusal:
        parser.error(refusal)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    report = train(args.pairs, args.out, args.target_precision, args.margin, args.min_accepted, reuse_model=args.reuse_model,
                   second_stage=not args.no_second_stage)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
