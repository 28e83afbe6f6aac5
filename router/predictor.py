"""Outcome predictors: P(good answer), output tokens, cost and latency per (prompt, model).

Quality: LightGBM with the cross-entropy objective (accepts 0/1 and soft labels in [0, 1])
on [PCA of the MiniLM embedding | cheap text features], trained K times on K-fold splits.
The out-of-fold predictions fit one isotonic calibrator per model; serving averages the K
boosters' raw probabilities and calibrates them; the spread of the K calibrated
probabilities is the uncertainty (`p_good_std`) the bandit explores with. The served P(good)
blends that calibrated mean with a kNN estimate (`router.neighbours.NeighbourQuality`: the mean
label of the nearest training prompts), with the weight of the lowest out-of-fold Brier score.

Two layouts, measured against each other in docs/ROUTER.md: `shared` (one booster over
(prompt, model) pairs with the model as a categorical feature: models share what makes a
prompt hard) and `per_model` (one booster per model).

Output tokens: one LightGBM regressor of log1p(tokens) with the model as a feature; cost is
tokens x price; latency is ttft + tokens / throughput until real latencies are logged.

Unseen models (a catalog entry whose `predictor_name` the artifact never saw) get a prior:
P(good) = the pooled mean quality of the training labels, std = `UNSEEN_STD` (0.5, the
largest a [0, 1] outcome can have, so an exploring bandit tries the model), output tokens =
per prompt, the median of what the artifact's models are predicted to write for it.
"""
from __future__ import annotations

import logging
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

from router.features import FEATURE_NAMES
from router.neighbours import NeighbourQuality, blend_weight, out_of_fold

if TYPE_CHECKING:
    from training.data import OutcomeTable

log = logging.getLogger(__name__)

UNSEEN_STD = 0.5
DEFAULT_TTFT_S = 0.5
DEFAULT_THROUGHPUT_TPS = 50.0

QUALITY_PARAMS = {
    "objective": "cross_entropy",
    "learning_rate": 0.08,
    "num_leaves": 7,
    "min_data_in_leaf": 50,
    "feature_fraction": 0.7,
    "bagging_fraction": 0.8,
    "bagging_freq": 1,
    "lambda_l2": 1.0,
    "verbose": -1,
    "num_threads": 1,
    "seed": 7,
}
TOKEN_PARAMS = {**QUALITY_PARAMS, "objective": "regression", "learning_rate": 0.1}


@dataclass(frozen=True)
class Predictions:
    """Predicted outcomes of N requests on M models."""

    models: list[str]
    p_good: np.ndarray  # (N, M) calibrated P(answer is good); expected quality for soft labels
    p_good_std: np.ndarray  # (N, M) spread across the K fold boosters
    output_tokens: np.ndarray  # (N, M)
    cost_usd: np.ndarray  # (N, M)
    latency_s: np.ndarray  # (N, M)

    def column(self, model: str) -> int:
        return self.models.index(model)


@dataclass
class Calibrator:
    """Isotonic map from raw to calibrated probability, stored as its breakpoints."""

    x: np.ndarray
    y: np.ndarray

    def __call__(self, p: np.ndarray) -> np.ndarray:
        return np.interp(p, self.x, self.y)

    @classmethod
    def fit(cls, raw: np.ndarray, label: np.ndarray) -> "Calibrator":
        from sklearn.isotonic import IsotonicRegression

        iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(raw, label)
        return cls(np.asarray(iso.X_thresholds_, dtype=np.float64), np.asarray(iso.y_thresholds_, dtype=np.float64))


class MergedForest:
    """Several LightGBM boosters over the same input, evaluated as one.

    A decision needs six boosters (five quality folds, output tokens); each `predict` call has
    a fixed cost of ~0.1 ms on a quiet core and several times that on a loaded one. Their
    trees are concatenated into one model; one `pred_leaf` call and a table lookup give every
    booster's raw score (tests check equality with the boosters' own predictions).
    """

    def __init__(self, boosters: Sequence):
        import lightgbm as lgb

        texts = [b.model_to_string() for b in boosters]
        # tree_sizes only lets LightGBM parse trees in parallel; without it they parse in order.
        head = "\n".join(line for line in texts[0].split("\nTree=0\n", 1)[0].split("\n") if not line.startswith("tree_sizes="))
        blocks, counts = [], []
        for text in texts:
            body = text.split("\nTree=0\n", 1)[1].split("\nend of trees", 1)[0]
            trees = re.split(r"^Tree=\d+\n", "Tree=0\n" + body, flags=re.M)[1:]
            counts.append(len(trees))
            blocks.extend(trees)
        merged = head + "\n" + "".join(f"Tree={i}\n{t}" for i, t in enumerate(blocks)) + "\nend of trees" + texts[0].split("\nend of trees", 1)[1]
        self.booster = lgb.Booster(model_str=merged)
        info = self.booster.dump_model()["tree_info"]
        self.values = np.zeros((len(info), max(t["num_leaves"] for t in info)))
        for i, tree in enumerate(info):
            stack = [tree["tree_structure"]]
            while stack:
                node = stack.pop()
                if "leaf_value" in node:
                    self.values[i, node.get("leaf_index", 0)] = node["leaf_value"]
                else:
                    stack += [node["left_child"], node["right_child"]]
        self.starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        # Flat table: tree t's leaf l sits at offsets[t] + l, one gather instead of a 2-d one.
        self._flat = self.values.ravel()
        self._offsets = np.arange(len(info), dtype=np.intp) * self.values.shape[1]

    def raw(self, X: np.ndarray, chunk: int = 4096) -> np.ndarray:
        """(N, number of boosters) raw scores; chunked so that batch scoring stays small in memory."""
        out = np.empty((len(X), len(self.starts)))
        for i in range(0, len(X), chunk):
            leaves = self.booster.predict(X[i : i + chunk], pred_leaf=True, num_threads=1).astype(np.intp)
            leaves = leaves.reshape(len(leaves), -1)
            leaves += self._offsets
            out[i : i + chunk] = np.add.reduceat(self._flat[leaves], self.starts, axis=1)
        return out


def _pca_fit(emb: np.ndarray, dim: int) -> tuple[np.ndarray, np.ndarray]:
    mean = emb.mean(axis=0)
    _, _, vt = np.linalg.svd(emb - mean, full_matrices=False)
    return mean.astype(np.float32), vt[:dim].T.astype(np.float32)


def _fold_ids(n: int, folds: int, seed: int, groups: np.ndarray | None = None) -> np.ndarray:
    """Fold per row; rows of one group (same prompt text) share a fold so no prompt leaks."""
    rng = np.random.default_rng(seed)
    if groups is None:
        return rng.permutation(np.arange(n) % folds)
    uniq, inv = np.unique(groups, return_inverse=True)
    return rng.permutation(np.arange(len(uniq)) % folds)[inv]


@dataclass
class OutcomePredictor:
    """scikit-learn style: `fit(X, outcomes)` then `predict(X, input_tokens)`.

    `X` is [embedding (embed_dim columns) | cheap features]; the predictor owns the PCA of
    the embedding part so that training and serving apply the same projection.
    """

    folds: int = 5
    mode: str = "shared"  # or "per_model"
    pca_dim: int = 32
    embed_dim: int = 384
    num_rounds: int = 100
    token_rounds: int = 100
    seed: int = 7
    models: list[str] = field(default_factory=list)
    quality_boosters: list = field(default_factory=list)  # shared: K boosters; per_model: M lists of K
    token_booster: object = None
    calibrators: list[Calibrator] = field(default_factory=list)
    pca_mean: np.ndarray | None = None
    pca_proj: np.ndarray | None = None
    prior_quality: float = 0.5
    token_prior: np.ndarray | None = None  # (M,) median output tokens per model; served without a token booster
    prices: dict[str, tuple[float, float]] = field(default_factory=dict)  # model -> (in, out) USD per 1M
    oof_raw: np.ndarray | None = None  # (N, M) out-of-fold raw probabilities from fit()
    oof: np.ndarray | None = None  # (N, M) out-of-fold served probabilities (cross-fitted calibration, blended)
    neighbours: NeighbourQuality | None = field(default=None, repr=False)  # kNN estimate blended into P(good)
    neighbour_weight: float = 0.0  # its weight w: (1 − w) boosters + w kNN; 0 for artifacts without it
    _forest: MergedForest | None = field(default=None, init=False, repr=False)

    # ---- features -------------------------------------------------------------------
    @staticmethod
    def _checked(X: np.ndarray) -> np.ndarray:
        """X as scikit-learn would take it: rows × features, finite (LightGBM reads NaN as a missing
        value and predicts on, so a broken row would look like a sound one)."""
        X = np.asarray(X, dtype=np.float32)
        if X.ndim != 2:
            raise ValueError(f"X must be 2-D (rows x [embedding | cheap features]), got shape {X.shape}")
        if not np.isfinite(X).all():
            raise ValueError("X holds NaN or infinite values")
        return X

    def transform(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X, dtype=np.float32)
        if self.pca_proj is None or self.pca_dim <= 0:
            return X
        emb, rest = X[:, : self.embed_dim], X[:, self.embed_dim :]
        return np.hstack([(emb - self.pca_mean) @ self.pca_proj, rest])

    def _vectors(self, Z: np.ndarray) -> np.ndarray:
        """The embedding part of `transform`'s output (its PCA projection when there is one): what
        the kNN estimate searches."""
        return Z[:, : (self.pca_proj.shape[1] if self.pca_proj is not None and self.pca_dim > 0 else self.embed_dim)]

    def _pairs(self, Z: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        out = np.empty((len(rows), Z.shape[1] + 1), dtype=np.result_type(Z.dtype, np.float32))
        out[:, :-1] = Z[rows]
        out[:, -1] = cols
        return out

    # ---- training -------------------------------------------------------------------
    def fit(self, X: np.ndarray, outcomes: "OutcomeTable", progress: Callable[[str], None] | None = None,
            groups: np.ndarray | None = None) -> "OutcomePredictor":
        import lightgbm as lgb

        say = progress or (lambda _msg: None)
        q = np.asarray(outcomes.quality, dtype=np.float64)
        n, m = q.shape
        X = self._checked(X)
        if len(X) != n:
            raise ValueError(f"X has {len(X)} rows, the outcomes {n}: one row of features per outcome row")
        self.models = list(outcomes.models)
        self._forest = None
        if self.pca_dim > 0 and X.shape[1] > self.embed_dim:
            self.pca_mean, self.pca_proj = _pca_fit(np.asarray(X[:, : self.embed_dim], np.float32), self.pca_dim)
        Z = self.transform(X)
        observed = ~np.isnan(q)
        self.prior_quality = float(np.nanmean(q))
        fold = _fold_ids(n, self.folds, self.seed, groups)
        # LightGBM cannot fit one row (bagging leaves none): every fold needs two outcomes to learn
        # from, and one booster per model needs them per model.
        per_fold = [(observed & (fold != k)[:, None]).sum(axis=0) for k in range(self.folds)]
        distinct = len(np.unique(groups)) if groups is not None else n
        # A fold holding no prompt would train on everything and sit in the bagged ensemble, whose
        # spread is the uncertainty the bandit explores by.
        if self.folds > distinct or any((c.min() if self.mode != "shared" else c.sum()) < 2 for c in per_fold):
            fewest = int(np.argmin(np.min(per_fold, axis=0)))
            which = f" (model {self.models[fewest]!r} has {int(observed[:, fewest].sum())})" if self.mode != "shared" else ""
            raise ValueError(f"{getattr(outcomes, 'path', 'the data')}: cross-fitting {self.folds} folds needs outcomes for "
                             f"more distinct prompts (text column) than this: {distinct} prompt(s), "
                             f"{int(observed.sum())} outcome(s){which}")
        oof = np.full((n, m), np.nan)
        params = {**QUALITY_PARAMS, "seed": self.seed}
        self.quality_boosters = [] if self.mode == "shared" else [[] for _ in range(m)]
        for k in range(self.folds):
            say(f"quality fold {k + 1}/{self.folds}")
            train_rows, test_rows = fold != k, fold == k
            if self.mode == "shared":
                r, c = np.nonzero(observed & train_rows[:, None])
                ds = lgb.Dataset(self._pairs(Z, r, c), q[r, c], categorical_feature=[Z.shape[1]], free_raw_data=True)
                booster = lgb.train(params, ds, self.num_rounds)
                self.quality_boosters.append(booster)
                r, c = np.nonzero(observed & test_rows[:, None])
                if len(r):
                    oof[r, c] = booster.predict(self._pairs(Z, r, c), num_threads=1)
            else:
                for j in range(m):
                    rows = np.nonzero(observed[:, j] & train_rows)[0]
                    booster = lgb.train(params, lgb.Dataset(Z[rows], q[rows, j]), self.num_rounds)
                    self.quality_boosters[j].append(booster)
                    test = np.nonzero(observed[:, j] & test_rows)[0]
                    if len(test):
                        oof[test, j] = booster.predict(Z[test], num_threads=1)
        say("calibration")
        self.oof_raw = oof
        self.calibrators = [self._calibrator(oof[:, j], q[:, j]) for j in range(m)]
        # Honest out-of-fold calibrated predictions: fold k is calibrated by a map fitted on
        # the other folds (a map fitted on all of them would be perfectly calibrated in-sample).
        self.oof = np.full_like(oof, np.nan)
        for k in range(self.folds):
            rows = fold == k
            for j in range(m):
                ok = rows & ~np.isnan(oof[:, j])
                if ok.any():
                    self.oof[ok, j] = self._calibrator(np.where(rows, np.nan, oof[:, j]), q[:, j])(oof[ok, j])
        say("neighbours")
        # kNN out of fold on the boosters' folds; its weight is the one whose blend of the two
        # out-of-fold predictions has the lowest Brier score, and `oof` becomes what is served.
        V = self._vectors(Z)
        oof_knn = out_of_fold(V, q, fold, groups)
        self.neighbour_weight = w = blend_weight(self.oof, oof_knn, q)
        self.oof = (1 - w) * self.oof + w * oof_knn
        self.neighbours = NeighbourQuality.fit(V, q, groups)
        say("output tokens")
        self._fit_tokens(Z, outcomes)
        self.prices = {name: (p.input_per_1m, p.output_per_1m) for name, p in outcomes.prices.items() if name in self.models}
        return self

    @staticmethod
    def _calibrator(raw: np.ndarray, label: np.ndarray) -> Calibrator:
        ok = ~np.isnan(raw) & ~np.isnan(label)
        if ok.sum() < 10:
            return Calibrator(np.array([0.0, 1.0]), np.array([0.0, 1.0]))
        return Calibrator.fit(raw[ok], label[ok])

    def _fit_tokens(self, Z: np.ndarray, outcomes: "OutcomeTable") -> None:
        import lightgbm as lgb
        from training.data import DEFAULT_OUTPUT_TOKENS

        m = len(self.models)
        tok = outcomes.output_tokens
        if tok is None or np.isnan(tok).all():
            # Said here, where it bites: a sample written without its answers (the
            # *_responses.parquet beside RouterBench's file) trains a router blind to length.
            log.warning("no answer lengths to learn from (output_tokens__<model> or response__<model> columns, a "
                        "<name>_responses.parquet beside the file, or prices to infer them from the costs): every "
                        "answer is predicted at %g tokens, so predicted costs and latencies differ between models "
                        "by price and speed only", DEFAULT_OUTPUT_TOKENS)
            self.token_prior = np.full(m, DEFAULT_OUTPUT_TOKENS)
            self.token_booster = None
            return
        # A model without any length (a base table without them, stacked with logged requests that
        # have them) keeps the default.
        seen = ~np.isnan(tok).all(axis=0)
        self.token_prior = np.full(m, DEFAULT_OUTPUT_TOKENS)
        self.token_prior[seen] = np.nanmedian(tok[:, seen], axis=0)
        r, c = np.nonzero(~np.isnan(tok))
        # Line breaks say little of an answer's length, but in RouterBench every multi-line prompt is
        # multiple choice (ARC, Winogrande) and every coding one a single line: free to split on them,
        # the booster predicted ~5 output tokens for any prompt with a newline, a trailing one
        # included, so its predicted cost fell 10-60x and a cost cap let gpt-4 through. Held constant
        # here, the column is one no tree splits on; `choice_options` still marks multiple choice.
        lines = self._vectors(Z).shape[1] + FEATURE_NAMES.index("n_lines")
        if lines < Z.shape[1]:  # a predictor fitted on the embedding alone has no such column
            Z = Z.copy()
            Z[:, lines] = 0.0
        ds = lgb.Dataset(self._pairs(Z, r, c), np.log1p(np.maximum(tok[r, c], 0)), categorical_feature=[Z.shape[1]])
        self.token_booster = lgb.train({**TOKEN_PARAMS, "seed": self.seed}, ds, self.token_rounds)

    # ---- prediction -----------------------------------------------------------------
    def _raw_outputs(self, Z: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Per-fold raw P(good) (K, N, len(cols)) and log1p output tokens (N, len(cols)) or None, for
        the artifact's models `cols` only: an artifact trained on 27 models routes among a
        catalog's few without scoring the rest."""
        n, m = len(Z), len(cols)
        if self.mode != "shared":
            raw = np.stack([
                np.column_stack([self.quality_boosters[j][k].predict(Z, num_threads=1) for j in cols])
                for k in range(self.folds)
            ])
            tok = None if self.token_booster is None else self.token_booster.predict(
                self._pairs(Z, np.repeat(np.arange(n), m), np.tile(cols, n)), num_threads=1).reshape(n, m)
            return raw, tok
        if self._forest is None:
            self._forest = MergedForest(self.quality_boosters + ([self.token_booster] if self.token_booster is not None else []))
        scores = self._forest.raw(self._pairs(Z, np.repeat(np.arange(n), m), np.tile(cols, n)))
        # The cross-entropy objective's probability is the logistic of the raw score.
        raw = (1.0 / (1.0 + np.exp(-scores[:, : self.folds]))).T.reshape(self.folds, n, m)
        tok = scores[:, self.folds].reshape(n, m) if self.token_booster is not None else None
        return raw, tok

    def _calibrated(self, raw: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Calibrated mean of the K folds' probabilities, and the spread of the calibrated folds."""
        both = np.concatenate([raw, raw.mean(axis=0, keepdims=True)])
        cal = np.empty_like(both)
        for i, j in enumerate(cols):
            cal[:, :, i] = self.calibrators[j](both[:, :, i])
        return cal[-1], cal[:-1].std(axis=0)

    def _tokens(self, tok: np.ndarray | None, n: int, cols: np.ndarray) -> np.ndarray:
        if tok is None:
            return np.tile(self.token_prior[cols], (n, 1))
        return np.expm1(tok).clip(1.0, None)

    def _unseen_tokens(self, Z: np.ndarray) -> np.ndarray:
        """(N,) output tokens of a model the artifact never saw: per prompt, the median of its models'
        (one verbose model does not move it; all models, not the catalog's few, so the prior is the
        same whatever sits beside it). A constant, the median of the per-model medians (`token_prior`),
        was 1 token after RouterBench, where most answers are one letter: code looked nearly free."""
        n, m = len(Z), len(self.models)
        if self.token_booster is None:  # every model is predicted its `token_prior` then
            return np.full(n, float(statistics.median(self.token_prior.tolist())))
        raw = self.token_booster.predict(self._pairs(Z, np.repeat(np.arange(n), m), np.tile(np.arange(m), n)), num_threads=1)
        return np.median(self._tokens(raw.reshape(n, m), n, None), axis=1)

    def predict(self, X: np.ndarray, input_tokens: np.ndarray | None = None, models: Sequence[str] | None = None,
                prices: Sequence[tuple[float, float]] | None = None, ttft_s: Sequence[float] | None = None,
                throughput_tps: Sequence[float] | None = None, names: Sequence[str] | None = None,
                output_caps: np.ndarray | None = None, answers: np.ndarray | None = None) -> Predictions:
        """Predictions for `models` (artifact names, default all; unseen names get the prior).

        `prices`, `ttft_s`, `throughput_tps` are per requested model (the catalog's); without
        them the prices seen in training and default speeds are used. `names` relabels the
        output columns (catalog names when several entries share one artifact model).
        `output_caps` (N, M): the most output tokens each request lets each model write (its
        `max_tokens`); `answers` (N,): `n`, every answer's output billed.
        """
        if not self.models:
            raise ValueError("this predictor is not fitted: call fit(X, outcomes) or load an artifact")
        Z = self.transform(self._checked(X))
        n = len(Z)
        models = list(models) if models is not None else list(self.models)
        index = {name: k for k, name in enumerate(self.models)}
        cols = np.array([index.get(name, -1) for name in models], dtype=np.intp)
        seen = cols >= 0
        known, src = np.unique(cols[seen], return_inverse=True)  # each artifact model scored once
        if known.size:
            raw, tok_raw = self._raw_outputs(Z, known)
            p_known, std_known = self._calibrated(raw, known)
            if self.neighbours is not None and self.neighbour_weight > 0:  # std stays the boosters' spread
                w = self.neighbour_weight
                p_known = (1 - w) * p_known + w * self.neighbours.predict(self._vectors(Z), known)
            tok_known = self._tokens(tok_raw, n, known)
        else:  # only models the artifact never saw: the priors below
            p_known = std_known = tok_known = np.empty((n, 0))
        p = np.full((n, len(models)), self.prior_quality)
        std = np.full((n, len(models)), UNSEEN_STD)
        tok = np.empty((n, len(models)))
        if not seen.all():
            tok[:, ~seen] = self._unseen_tokens(Z)[:, None]
        p[:, seen], std[:, seen], tok[:, seen] = p_known[:, src], std_known[:, src], tok_known[:, src]
        if output_caps is not None:
            tok = np.minimum(tok, output_caps)  # a 5-token answer costs 5 tokens, whatever the model would say
        billed = tok if answers is None else tok * np.asarray(answers, dtype=np.float64)[:, None]
        in_tok = np.ones(n) if input_tokens is None else np.asarray(input_tokens, dtype=np.float64)
        price = np.array([
            prices[j] if prices is not None else self.prices.get(name, (0.0, 0.0)) for j, name in enumerate(models)
        ], dtype=np.float64).reshape(len(models), 2)
        cost = (in_tok[:, None] * price[None, :, 0] + billed * price[None, :, 1]) / 1e6
        ttft = np.asarray(ttft_s if ttft_s is not None else [DEFAULT_TTFT_S] * len(models), dtype=np.float64)
        tps = np.asarray(throughput_tps if throughput_tps is not None else [DEFAULT_THROUGHPUT_TPS] * len(models), dtype=np.float64)
        latency = ttft[None, :] + tok / tps[None, :]
        return Predictions(list(names) if names is not None else models, p, std, tok, cost, latency)

    # ---- persistence ----------------------------------------------------------------
    def save(self, folder: str | Path) -> dict:
        """Write boosters (LightGBM text), calibrators and projection; return the manifest part."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        files = []
        if self.mode == "shared":
            for k, b in enumerate(self.quality_boosters):
                name = f"quality_fold{k}.txt"
                b.save_model(str(folder / name))
                files.append(name)
        else:
            for j, per in enumerate(self.quality_boosters):
                for k, b in enumerate(per):
                    name = f"quality_m{j}_fold{k}.txt"
                    b.save_model(str(folder / name))
                    files.append(name)
        if self.token_booster is not None:
            self.token_booster.save_model(str(folder / "tokens.txt"))
        if self.pca_proj is not None:
            np.savez(folder / "projection.npz", mean=self.pca_mean, proj=self.pca_proj)
        knn = self.neighbours is not None and self.neighbour_weight > 0
        if knn:  # float16 unit vectors and labels (NaN: no outcome) of the training prompts
            self.neighbours.save(folder / "neighbours.npz")
        return {
            "mode": self.mode,
            "folds": self.folds,
            "pca_dim": self.pca_dim if self.pca_proj is not None else 0,
            "embed_dim": self.embed_dim,
            "models": self.models,
            "quality_files": files,
            "token_file": "tokens.txt" if self.token_booster is not None else None,
            "calibrators": [{"x": c.x.tolist(), "y": c.y.tolist()} for c in self.calibrators],
            "prior_quality": self.prior_quality,
            "token_prior": [float(t) for t in self.token_prior],
            "prices": {k: list(v) for k, v in self.prices.items()},
            "seed": self.seed,
            "neighbours": {"file": "neighbours.npz" if knn else None, "weight": self.neighbour_weight,
                           "k": self.neighbours.k if self.neighbours is not None else None},
        }

    @classmethod
    def load(cls, folder: str | Path, spec: dict) -> "OutcomePredictor":
        import lightgbm as lgb

        folder = Path(folder)
        self = cls(folds=spec["folds"], mode=spec["mode"], pca_dim=spec["pca_dim"], embed_dim=spec["embed_dim"], seed=spec.get("seed", 7))
        self.models = list(spec["models"])
        boosters = [lgb.Booster(model_file=str(folder / f)) for f in spec["quality_files"]]
        if self.mode == "shared":
            self.quality_boosters = boosters
        else:
            self.quality_boosters = [boosters[j * self.folds : (j + 1) * self.folds] for j in range(len(self.models))]
        self.token_booster = lgb.Booster(model_file=str(folder / spec["token_file"])) if spec.get("token_file") else None
        self.calibrators = [Calibrator(np.array(c["x"]), np.array(c["y"])) for c in spec["calibrators"]]
        self.prior_quality = float(spec["prior_quality"])
        self.token_prior = np.array(spec["token_prior"], dtype=np.float64)
        self.prices = {k: (float(v[0]), float(v[1])) for k, v in spec["prices"].items()}
        if self.pca_dim > 0:
            z = np.load(folder / "projection.npz")
            self.pca_mean, self.pca_proj = z["mean"], z["proj"]
        knn = spec.get("neighbours") or {}  # artifacts from before the blend serve the boosters alone
        if knn.get("file"):
            self.neighbours = NeighbourQuality.load(folder / knn["file"], knn["k"])
            self.neighbour_weight = float(knn["weight"])
        if self.mode == "shared":  # merge now, not on the first request
            self._forest = MergedForest(self.quality_boosters + ([self.token_booster] if self.token_booster is not None else []))
        return self
