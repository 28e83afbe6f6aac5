"""Quora Question Pairs for the semantic-cache verifier: loading, embedding, and the split.

The split is by connected question groups (two pairs that share a question land in the
same part), so no question of the held-out part was seen in training or tuning:
70 % train, 15 % validation (early stopping and threshold), 15 % test (reported, never tuned on).
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from training.columns import binary_labels
from training.data import datasets_dir, read_frame

SPLITS = (("train", 70), ("val", 15), ("test", 15))


def default_pairs() -> Path:
    return datasets_dir() / "qqp_pairs" / "qqp_pairs_train.parquet"


# QQP's own column names (Kaggle's and GLUE's files), read where the canonical ones are absent.
QQP_COLUMNS = {"question1": "text_a", "question2": "text_b", "is_duplicate": "label"}


def load_pairs(path: str | Path):
    df = read_frame(path, text_only=True)
    df = df.rename(columns={a: c for a, c in QQP_COLUMNS.items() if a in df.columns and c not in df.columns})
    missing = {"text_a", "text_b"} - set(df.columns)
    if missing:
        raise ValueError(f"{path}: missing column(s) {sorted(missing)}; need text_a, text_b (and label to score), "
                         "or QQP's question1, question2 (and is_duplicate)")
    df = df.reset_index(drop=True)
    df["text_a"] = df["text_a"].fillna("").astype(str)
    df["text_b"] = df["text_b"].fillna("").astype(str)
    if "label" in df.columns:
        df["label"] = binary_labels(df["label"], path)
    return df


def labelled(df, path) -> "np.ndarray":
    """The labels as 0/1 integers, for training: every row must have one."""
    missing = np.isnan(df["label"].to_numpy())
    if missing.any():
        raise ValueError(f"{path}: column 'label' is empty at row {int(np.argmax(missing))}; training needs every label")
    return df["label"].to_numpy().astype(int)


def embed_pairs(df) -> tuple[np.ndarray, np.ndarray]:
    """Unit embeddings of text_a and text_b, through the disk-memoised dataset encoder."""
    from router.embedding import encode_cached

    texts = sorted(set(df["text_a"]) | set(df["text_b"]))
    vecs = encode_cached(texts)
    pos = {t: i for i, t in enumerate(texts)}
    return vecs[[pos[t] for t in df["text_a"]]], vecs[[pos[t] for t in df["text_b"]]]


def group_split(df) -> np.ndarray:
    """'train' / 'val' / 'test' per row, by connected question group, stable across runs."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in zip(df["text_a"], df["text_b"]):
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)  # the smallest text names the group: independent of row order
    out = np.empty(len(df), dtype=object)
    for i, a in enumerate(df["text_a"]):
        bucket = int(hashlib.sha256(find(a).encode("utf-8")).hexdigest()[:8], 16) % 100
        edge = 0
        for name, share in SPLITS:
            edge += share
            if bucket < edge:
                out[i] = name
                break
    return out


def precision_recall(hit: np.ndarray, label: np.ndarray) -> tuple[float, float]:
    hit, label = np.asarray(hit, dtype=bool), np.asarray(label, dtype=bool)
    tp = int((hit & label).sum())
    precision = tp / int(hit.sum()) if hit.any() else float("nan")
    recall = tp / int(label.sum()) if label.any() else float("nan")
    return precision, recall
