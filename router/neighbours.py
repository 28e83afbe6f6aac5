"""k nearest neighbours of a prompt among the training prompts (cosine similarity of unit vectors).

The pieces RouterBench's KNNRouter is made of (`nearest`, `neighbour_means`, `pick_k`: the
evaluation's kNN baseline in `training.baselines`), and `NeighbourQuality`, the kNN estimate of
P(good) that the predictor blends with its boosters (docs/ROUTER.md "Predictors"): per model,
the mean label of the k nearest training prompts that have an outcome for that model.
"""
from __future__ import annotations

import itertools

import numpy as np

KNN_KS = (5, 10, 20, 40, 80)

# Similarities computed per block of test rows: the full test x train matrix (and its group mask)
# grows quadratically with the table (5.5 GB at 22k rows); a block of 16M entries stays under 0.3 GB.
KNN_BLOCK = 1 << 24
# Serving compares one prompt with every training row: a matrix-vector product, which OpenBLAS
# spreads over threads from ~460k entries on (15k rows x 32); on a loaded machine that took p90
# from 0.09 ms to 10 ms. Pieces of at most this many entries stay on the calling thread.
PIECE_ENTRIES = 1 << 17


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


def loo_errors(emb, quality, groups, ks) -> dict[int, float]:
    """Summed squared error of each k's leave-one-group-out prediction of `quality`, k capped (as
    `knn_predict` caps it) to the fewest rows outside a row's group."""
    nn, fewest = nearest(emb, emb, max(ks), groups, groups)
    used = {k: max(1, min(k, fewest)) for k in ks}
    # One neighbour list, of the largest k, serves every k: the similarities are computed once.
    q_hat = neighbour_means(quality, nn, set(used.values()))
    return {k: float(((q_hat[used[k]] - quality) ** 2).sum()) for k in ks}


def pick_k(emb, quality, groups=None, ks=KNN_KS) -> int:
    """k with the lowest leave-one-out squared error of predicted quality on the training rows
    (leave one group out: a prompt's duplicates would make any k look perfect)."""
    groups = np.arange(len(emb)) if groups is None else np.asarray(groups)
    tried = list(itertools.takewhile(lambda k: k < len(emb), ks))
    if not tried:
        return ks[0]
    errors = loo_errors(emb, quality, groups, tried)
    return min(tried, key=errors.get)  # the first of equal errors


def similarities(queries: np.ndarray, train: np.ndarray) -> np.ndarray:
    """queries @ train.T, computed over pieces of `train` (PIECE_ENTRIES)."""
    out = np.empty((len(queries), len(train)), dtype=np.float32)
    rows = max(1, PIECE_ENTRIES // max(1, train.shape[1]))
    for a in range(0, len(train), rows):
        np.matmul(queries, train[a : a + rows].T, out=out[:, a : a + rows])
    return out


def unit_rows(vectors) -> np.ndarray:
    v = np.asarray(vectors, dtype=np.float32)
    norm = np.linalg.norm(v, axis=1, keepdims=True)
    return v / np.where(norm > 0, norm, 1.0)


class NeighbourQuality:
    """Per model, the mean label of the k nearest training prompts that have an outcome for it.

    Tables stacked for training rarely share models (a RouterBench prompt has no label for a
    nim9 model): models are grouped into blocks by their set of observed rows, and each block's
    neighbours come from those rows only, one similarity search per block. k is chosen once, by
    leave-one-group-out squared error pooled over the blocks' observed cells. Vectors and labels
    are kept as float16 (what an artifact stores), so a loaded estimator predicts what it did
    before it was saved.
    """

    def __init__(self, vectors: np.ndarray, labels: np.ndarray, k: int):
        self.vectors = np.asarray(vectors, dtype=np.float16)
        self.labels = np.asarray(labels, dtype=np.float16)
        self.k = int(k)
        self._v = self.vectors.astype(np.float32)
        observed = ~np.isnan(self.labels)
        first: dict[bytes, int] = {}  # observed rows (packed) -> its block (np.unique(axis=0) takes 0.1 s here)
        self.block_of = np.array([first.setdefault(np.packbits(c).tobytes(), len(first)) for c in observed.T], dtype=np.intp)
        masks = [observed[:, j] for j in [self.block_of.tolist().index(b) for b in range(len(first))]]
        self._pos = np.empty(len(self.block_of), dtype=np.intp)  # (M,) column within its block
        # Per block: its rows as [lo, hi) and, unless they are all of that range (stacked tables),
        # their offsets from lo; and its models' labels on those rows.
        self.blocks: list[tuple[int, int, np.ndarray | None, np.ndarray]] = []
        for b, mask in enumerate(masks):
            rows, cols = np.flatnonzero(mask), np.flatnonzero(self.block_of == b)
            self._pos[cols] = np.arange(len(cols))
            lo, hi = (int(rows[0]), int(rows[-1]) + 1) if len(rows) else (0, 0)
            self.blocks.append((lo, hi, None if hi - lo == len(rows) else rows - lo, self.labels[rows][:, cols].astype(np.float64)))
        # A model without any outcome gets the mean of all labels (there is nothing nearer to go on).
        self.fallback = float(np.nanmean(self.labels.astype(np.float64))) if observed.any() else 0.5

    @classmethod
    def fit(cls, vectors: np.ndarray, labels: np.ndarray, groups=None, ks=KNN_KS) -> "NeighbourQuality":
        """`groups`: one id per row (the prompt's text); rows of a group never predict one another
        when k is chosen."""
        self = cls(unit_rows(vectors), labels, ks[0])
        groups = np.arange(len(self._v)) if groups is None else np.unique(np.asarray(groups), return_inverse=True)[1]
        total, used = dict.fromkeys(ks, 0.0), False
        for lo, hi, sel, lab in self.blocks:
            rows = slice(lo, hi) if sel is None else sel + lo
            if lab.size and len(np.unique(groups[rows])) > 1:  # a row needs a neighbour outside its group
                for k, err in loo_errors(self._v[rows], lab, groups[rows], ks).items():
                    total[k] += err
                used = True
        if used:
            self.k = min(ks, key=total.get)
        return self

    def predict(self, vectors: np.ndarray, cols=None) -> np.ndarray:
        """(N, len(cols)) kNN estimates for the models `cols` (indices; default all)."""
        cols = np.arange(self.labels.shape[1]) if cols is None else np.asarray(cols, dtype=np.intp)
        q = unit_rows(vectors)
        np.negative(q, out=q)  # negated similarities: argpartition takes the smallest
        out = np.full((len(q), len(cols)), self.fallback)
        wanted: dict[int, list[int]] = {}
        for i, b in enumerate(self.block_of[cols].tolist()):
            if self.blocks[b][1] > self.blocks[b][0]:
                wanted.setdefault(b, []).append(i)
        if not wanted or not len(q):
            return out
        # One similarity matrix over the rows the requested blocks span (a catalog of one table's
        # models searches that table's rows only); each block reads its own columns of it.
        lo = min(self.blocks[b][0] for b in wanted)
        train = self._v[lo : max(self.blocks[b][1] for b in wanted)]
        step = max(1, KNN_BLOCK // len(train))
        for s in range(0, len(q), step):
            far = similarities(q[s : s + step], train)
            for b, want in wanted.items():
                start, stop, sel, lab = self.blocks[b]
                sub = far[:, start - lo : stop - lo] if sel is None else far[:, sel + (start - lo)]
                k = min(self.k, sub.shape[1])
                nn = np.argpartition(sub, k - 1, axis=1)[:, :k] if k < sub.shape[1] else np.arange(k)[None, :]
                out[s : s + step, want] = np.add.reduce(lab[nn], axis=1)[:, self._pos[cols[want]]] / k
        return out

    def save(self, path) -> None:
        np.savez_compressed(path, vectors=self.vectors, labels=self.labels)

    @classmethod
    def load(cls, path, k: int) -> "NeighbourQuality":
        with np.load(path) as z:
            return cls(z["vectors"], z["labels"], k)


BLEND_GRID = np.arange(11) / 10


def out_of_fold(vectors: np.ndarray, labels: np.ndarray, fold: np.ndarray, groups=None) -> np.ndarray:
    """Each fold's rows predicted by a `NeighbourQuality` fit (k included) on the other folds."""
    out = np.full(np.shape(labels), np.nan)
    for f in np.unique(fold):
        train, test = fold != f, fold == f
        nq = NeighbourQuality.fit(vectors[train], labels[train], None if groups is None else np.asarray(groups)[train])
        out[test] = nq.predict(vectors[test])
    return out


def blend_weight(p_model: np.ndarray, p_knn: np.ndarray, labels: np.ndarray, grid=BLEND_GRID) -> float:
    """The w of `grid` with the lowest Brier score of (1 − w) p_model + w p_knn over the labelled
    cells (out-of-fold predictions both); the smaller w on a tie, 0 without any cell."""
    ok = ~np.isnan(labels) & ~np.isnan(p_model) & ~np.isnan(p_knn)
    if not ok.any():
        return 0.0
    y, a, b = labels[ok], p_model[ok], p_knn[ok]
    brier = [float(np.mean(((1 - w) * a + w * b - y) ** 2)) for w in grid]
    return float(grid[int(np.argmin(brier))])
