"""Reference routers for the evaluation: single models, random, Zero, kNN, oracle.

All of them, and the learned router, are swept over the same kind of knob: willingness to
pay `w` in USD per quality point, choosing per row the model that maximises q̂ − ĉ / w
(q̂, ĉ: predicted quality and cost). `knob_sweep` builds the grid of `w` from the rows' own
switch points, so that the sweep covers the whole range, from "every row on its cheapest
model" to "every row on its best predicted model", whatever the pool and the price scale.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# The kNN pieces live beside the predictor, which blends a kNN estimate into its P(good); their
# block size is router.neighbours.KNN_BLOCK (set it there).
from router.neighbours import KNN_KS, nearest, neighbour_means, pick_k  # noqa: F401


@dataclass(frozen=True)
class Operating:
    """One operating point: the models chosen per row and the realised means."""

    knob: float
    choice: np.ndarray  # (N,) model index per row
    mean_cost: float
    mean_quality: float


def realise(choice: np.ndarray, quality: np.ndarray, cost: np.ndarray) -> tuple[float, float]:
    """Mean realised cost and quality of a per-row choice, from the recorded outcomes."""
    rows = np.arange(len(choice))
    return float(cost[rows, choice].mean()), float(quality[rows, choice].mean())


def choose(pred_q: np.ndarray, pred_c: np.ndarray, wtp: float) -> np.ndarray:
    """Per row, argmax q̂ − ĉ / wtp; exact ties go to the cheaper model."""
    utility = pred_q - pred_c / wtp
    best = utility.max(axis=1, keepdims=True)
    tied = np.isclose(utility, best, rtol=0.0, atol=1e-12)
    return np.where(tied, pred_c, np.inf).argmin(axis=1)


def switch_points(pred_q: np.ndarray, pred_c: np.ndarray) -> np.ndarray:
    """Every willingness to pay at which some row's choice changes (the upper envelope's kinks).

    Walks each row's envelope from its cheapest model: the next model taken is the one with
    the smallest extra cost per extra quality point among the better, dearer ones.
    """
    n, m = pred_q.shape
    rows = np.arange(n)
    order = np.lexsort((-pred_q, pred_c), axis=-1) if n else np.zeros((0, m), int)
    current = order[:, 0] if n else np.zeros(0, int)
    alive = np.ones(n, dtype=bool)
    points: list[np.ndarray] = []
    for _ in range(m):
        dq = pred_q - pred_q[rows, current][:, None]
        dc = pred_c - pred_c[rows, current][:, None]
        ok = (dq > 0) & (dc > 0) & alive[:, None]
        ratio = np.where(ok, dc / np.where(ok, dq, 1.0), np.inf)
        nxt = ratio.argmin(axis=1)
        step = ratio[rows, nxt]
        alive &= np.isfinite(step)
        if not alive.any():
            break
        points.append(step[alive])
        current = np.where(alive, nxt, current)
    return np.concatenate(points) if points else np.zeros(0)


def knob_sweep(pred_q: np.ndarray, pred_c: np.ndarray, n: int = 48) -> np.ndarray:
    """`n` willingness-to-pay values spread (in log scale) over the rows' switch points,
    plus one below all of them and one above all of them."""
    sw = switch_points(pred_q, pred_c)
    sw = sw[np.isfinite(sw) & (sw > 0)]
    if sw.size == 0:
        # Every row has one dominant model: a single knob value describes the router.
        return np.array([1.0])
    logs = np.log(sw)
    inner = np.exp(np.quantile(logs, (np.arange(n) + 0.5) / n))
    grid = np.concatenate(([sw.min() / 2], inner, [sw.max() * 2]))
    return np.unique(grid)


def sweep(pred_q, pred_c, quality, cost, knobs) -> list[Operating]:
    out = []
    for w in knobs:
        ch = choose(pred_q, pred_c, float(w))
        c, q = realise(ch, quality, cost)
        out.append(Operating(float(w), ch, c, q))
    return out


def single_model_points(quality: np.ndarray, cost: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean cost, mean quality) of always calling each model. Their hull is the Zero router."""
    return cost.mean(axis=0), quality.mean(axis=0)


def random_point(quality: np.ndarray, cost: np.ndarray) -> tuple[float, float]:
    """Expected outcome of picking a model uniformly at random per row (exact, no sampling)."""
    return float(cost.mean()), float(quality.mean())


def oracle_sweep(quality: np.ndarray, cost: np.ndarray, n: int = 48) -> list[Operating]:
    """The router that knows the outcomes: the upper bound of any curve on this data."""
    return sweep(quality, cost, quality, cost, knob_sweep(quality, cost, n))


# ---- kNN router (RouterBench's KNNRouter: mean outcome of the k nearest training prompts) ----


def knn_predict(train_emb, train_q, train_c, test_emb, k: int, train_groups=None, test_groups=None):
    """Mean quality and cost of each test row's k nearest training rows (cosine similarity),
    never counting a training row of the test row's own group (its copies, or itself)."""
    nn, fewest = nearest(train_emb, test_emb, k, train_groups, test_groups)
    k = max(1, min(k, fewest))
    return neighbour_means(train_q, nn, {k})[k], neighbour_means(train_c, nn, {k})[k]


def knn_fit_predict(train_emb, train_q, train_c, test_emb, train_groups=None) -> tuple[np.ndarray, np.ndarray, int]:
    k = pick_k(train_emb, train_q, train_groups)
    q_hat, c_hat = knn_predict(train_emb, train_q, train_c, test_emb, k)
    return q_hat, c_hat, k


class TooFewPrompts(ValueError):
    """A file too small for kNN's cross-fitting."""


def knn_crossfit(emb, quality, cost, folds: int = 5, seed: int = 0, groups=None) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Out-of-fold kNN predictions for a file evaluated on its own: each row is predicted by a
    kNN fit on the other folds, so no row ever sees its own outcome. Folds are drawn per group
    (per distinct prompt text): a duplicated prompt must not be predicted from its copy."""
    n = len(emb)
    groups = np.arange(n) if groups is None else np.asarray(groups)
    _, inv = np.unique(groups, return_inverse=True)
    n_groups = int(inv.max()) + 1 if n else 0
    if n_groups < 2 * folds:
        raise TooFewPrompts(f"kNN cross-fitting needs at least {2 * folds} distinct prompts, got {n_groups}; "
                         "fit it on another file with --knn-train")
    fold = (np.random.default_rng(seed).permutation(n_groups) % folds)[inv]
    q_hat = np.empty_like(quality, dtype=float)
    c_hat = np.empty_like(cost, dtype=float)
    ks = []
    for f in range(folds):
        te, tr = fold == f, fold != f
        q_hat[te], c_hat[te], k = knn_fit_predict(emb[tr], quality[tr], cost[tr], emb[te], inv[tr])
        ks.append(k)
    return q_hat, c_hat, ks
