"""The values of outcome and pair tables' columns, whatever the file format made of them.

A 0/1 label or a quality may come as a number, a boolean (JSON's true, parquet's bool) or a word
(CSV's and a parquet string column's "True"); all read alike, in every format. Every problem is a
`ValueError` that names the file, the column and the first offending row (0-based, as eval's
decisions count rows) with its value.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from training.texts import is_blank

# A quality this little outside [0, 1] is floating-point rounding (a normalised probability that
# sums to 1 + 1e-12), not another scale: it is clipped; one further out is an error.
UNIT_TOLERANCE = 1e-6

_LABEL_WORDS = {"0": 0.0, "1": 1.0, "0.0": 0.0, "1.0": 1.0, "false": 0.0, "true": 1.0, "no": 0.0, "yes": 1.0}


def label_word(value) -> float | None:
    """1.0 / 0.0 for a boolean or a true/false, yes/no, 1/0 word (any case); None for anything else."""
    if isinstance(value, (bool, np.bool_)):
        return float(value)
    if isinstance(value, str):
        return _LABEL_WORDS.get(value.strip().lower())
    return None


def binary_labels(column, path) -> np.ndarray:
    """A pair table's 0/1 `label` column as floats, NaN where a row has none (CSV's "True", JSON's
    true, parquet's 1.0). Anything else is an error naming the row."""
    import pandas as pd

    out = np.full(len(column), np.nan)
    for i, v in enumerate(column):
        if isinstance(v, (list, tuple, dict, set, np.ndarray)):  # a JSON Lines cell may hold one
            raise ValueError(f"{path}: column 'label' must be 0 or 1 (or true/false), got {v!r} at row {i}")
        if is_blank(v):  # pd.NA too: a nullable Int64 / boolean column's empty cell
            continue
        word = label_word(v)
        if word is not None:
            out[i] = word
        elif not isinstance(v, str) and not pd.isna(v) and float(v) in (0.0, 1.0):
            out[i] = float(v)
        else:
            raise ValueError(f"{path}: column 'label' must be 0 or 1 (or true/false), got {v!r} at row {i}")
    return out


def numeric(df, column: str, path: Path, words: bool = False) -> np.ndarray:
    """The column as floats, NaN where a cell is empty; with `words`, true/false words count as 1/0."""
    import pandas as pd

    raw = df[column]
    values = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan, copy=True)
    bad = np.isnan(values) & raw.notna().to_numpy()
    if words:
        for i in np.flatnonzero(bad):
            word = label_word(raw.iat[i])
            if word is not None:
                values[i], bad[i] = word, False
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(f"{path}: column {column!r} has non-numeric values (first at row {i}: {raw.iat[i]!r})")
    # No cost, quality, latency or count is infinite: an `inf` cost had priced a model at infinity in a
    # trained artifact (manifest.json then no strict JSON) and sent a replay's bandit elsewhere for good.
    if np.isinf(values).any():
        i = int(np.argmax(np.isinf(values)))
        raise ValueError(f"{path}: column {column!r} has an infinite value (first at row {i}: {float(values[i])!r})")
    return values


def unit_interval(values: np.ndarray, path, column: str) -> np.ndarray:
    """`values` (NaN where unobserved) clipped to [0, 1] when off by rounding only."""
    off = (values < -UNIT_TOLERANCE) | (values > 1 + UNIT_TOLERANCE)
    if off.any():
        i = int(np.argmax(off))
        raise ValueError(f"{path}: column {column!r} must lie in [0, 1] (first outside at row {i}: {float(values[i])!r})")
    return np.clip(values, 0.0, 1.0)


def quality_column(df, column: str, path: Path) -> np.ndarray:
    """A wide table's quality column: a number in [0, 1] (or a true/false word) in every row."""
    values = numeric(df, column, path, words=True)
    if np.isnan(values).any():
        raise ValueError(f"{path}: column {column!r} has NaN labels (first at row {int(np.argmax(np.isnan(values)))})")
    return unit_interval(values, path, column)


def cost_column(df, column: str, path: Path) -> np.ndarray:
    """A wide table's cost column: a number ≥ 0 (USD per call) in every row."""
    values = numeric(df, column, path)
    if np.isnan(values).any():
        raise ValueError(f"{path}: column {column!r} has NaN costs (first at row {int(np.argmax(np.isnan(values)))})")
    if (values < 0).any():
        raise ValueError(f"{path}: column {column!r} has a negative cost (first at row {int(np.argmax(values < 0))})")
    return values
