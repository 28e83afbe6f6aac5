"""Reference routers for the evaluation: single models, random, Zero, kNN, oracle.

All of them, and the learned router, are swept over the same kind of knob: willingness to
pay `w` in USD per quality point, choosing per row the model that maximises q̂ − ĉ / w
(q̂, ĉ: predicted quality and cost). `knob_sweep` builds the grid of `w` from the rows' own
switch points, so that the sweep covers the whole range, from "every row on its cheapest
model" to "every row on its best predicted model", whatever the pool and the price scale.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

KNN_KS = (5, 10, 20, 40, 80)


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


# Similarities computed per block of test rows: the full test x train matrix (and its group mask)
# grows quadratically with the table (5.5 GB at 22k rows); a block of 16M entries stays under 0.3 GB.
KNN_BLOCK = 1 << 24


def nearest(train_emb, test_emb, k: int, train_groups=None, test_groups=None) -> tuple[np.ndarray, int]:
    """Each test row's k nearest training rows (cosine similarity), nearest first, never a
    training row of the test row's own group; and the fewest rows any test row may draw from.

    Rows of a test row's group sort last (similarity −inf), so the first `fewest` are eligible."""
    train = np.asarray(train_emb, np.float32)
    test = np.asarray(test_emb, np.float32)
    k = max(1, min(k, len(train)))
    nn = np.empty((len(test), k), dtype=np.intp)
    fewest = len(train)
    if train_groups is not None:
        train_groups, test_groups = np.asarray(train_groups), np.asarray(test_groups)
    step = max(1, KNN_BLOCK // max(1, len(train)))
    for s in range(0, len(test), step):
        far = test[s : s + step] @ train.T
        far *= -1  # negated similarity: argpartition takes the smallest
        if train_groups is not None:
            far[test_groups[s : s + step, None] == train_groups[None, :]] = np.inf
        fewest = min(fewest, int(np.isfinite(far).sum(axis=1).min()))
        part = np.argpartition(far, k - 1, axis=1)[:, :k]
        nn[s : s + step] = np.take_along_axis(part, np.argsort(np.take_along_axis(far, part, 1), axis=1), 1)
    return nn, fewest


def neighbour_means(values: np.ndarray, nn: np.ndarray, ks) -> dict[int, np.ndarray]:
    """Mean of `values` over each row's first k neighbours, for every k in `ks`, in one pass."""
    total = np.zeros((len(nn), *values.shape[1:]))
    out = {}
    for j in range(max(ks)):
        total += values[nn[:, j]]
        if j + 1 in ks:
            out[j + 1] = total / (j + 1)
    return out


def knn_predict(train_emb, train_q, train_c, test_emb, k: int, train_groups=None, test_groups=None):
    """Mean quality and cost of each test row's k nearest training rows (cosine similarity),
    never counting a training row of the test row's own group (its copies, or itself)."""
    nn, fewest = nearest(train_emb, test_emb, k, train_groups, test_groups)
    k = max(1, min(k, fewest))
    return neighbour_means(train_q, nn, {k})[k], neighbour_means(train_c, nn, {k})[k]


def pick_k(emb, quality, groups=None, ks=KNN_KS) -> int:
    """k with the lowest leave-one-out squared error of predicted quality on the training rows
    (leave one group out: a prompt's duplicates would make any k look perfect)."""
    groups = np.arange(len(emb)) if groups is None else np.asarray(groups)
    tried = list(itertools.takewhile(lambda k: k < len(emb), ks))
    if not tried:
        return ks[0]
    # One neighbour list, of the largest k, serves every k: the similarities are computed once.
    nn, fewest = nearest(emb, emb, max(tried), groups, groups)
    used = {k: max(1, min(k, fewest)) for k in tried}  # as knn_predict caps k
    q_hat = neighbour_means(quality, nn, set(used.values()))
    best_k, best_err = ks[0], np.inf
    for k in tried:
        err = float(((q_hat[used[k]] - quality) ** 2).mean())
        if err < best_err:
            best_k, best_err = k, err
    return best_k


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
