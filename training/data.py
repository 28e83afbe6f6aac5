"""Outcome tables: which model answered which prompt how well, at what cost.

Two layouts feed the predictors:

* **wide** (the shared datasets): one row per prompt, a text column and, per model,
  `quality__<model>`, `cost_usd__<model>` and optionally `latency_s__<model>`,
  `output_tokens__<model>`, `response__<model>`; a `*_responses.parquet` beside the file
  (joined on `uid`) supplies answer texts, hence output lengths.
* **long** (the router's own outcome log): one row per request, for the one model that
  answered it. `long_to_outcomes` pivots it into the same `OutcomeTable`, with NaN where a
  model did not see a request; the predictors train only on observed cells.

Every validation problem is a `ValueError` that names the file and the column.
"""
from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np

from router.request_view import estimate_tokens
from training.columns import cost_column, numeric, quality_column, unit_interval
from training.texts import is_missing, table_texts

log = logging.getLogger(__name__)


def datasets_dir() -> Path:
    """The shared routing data, used by path and never copied into the repository."""
    default = Path(__file__).resolve().parent.parent.parent / "shared" / "datasets"
    return Path(os.environ.get("OPENCLAW_DATASETS", default))

TASK_COLUMNS = ("task", "task_name", "eval_name")
# Columns that hold the full prompt as sent (in-context exemplars included): they set the
# input-token count, hence the cost, while the text column is what gets embedded.
FULL_PROMPT_COLUMNS = ("prompt_full",)
INPUT_TOKEN_COLUMNS = ("input_tokens", "est_input_tokens")
# Output length assumed when a table has neither answers, token counts nor costs to
# derive it from (the nim9 / RouterDC tables): a short multiple-choice-or-reasoning answer.
DEFAULT_OUTPUT_TOKENS = 200.0
# USD per 1M input and output tokens for every model of a table with neither costs nor prices
# (RouterDC's self-hosted 7-8B models; bench/bench_generalisation.py prices them so too).
FLAT_PRICE_PER_1M = 0.2


@dataclass(frozen=True)
class ModelPrice:
    input_per_1m: float
    output_per_1m: float

    def cost(self, input_tokens, output_tokens):
        return (np.asarray(input_tokens) * self.input_per_1m + np.asarray(output_tokens) * self.output_per_1m) / 1e6


@dataclass(frozen=True)
class OutcomeTable:
    """Per-prompt outcomes of M models; arrays are (N, M) with NaN where unobserved."""

    path: str
    texts: list[str]
    models: list[str]
    quality: np.ndarray  # (N, M) in [0, 1]
    cost: np.ndarray | None  # (N, M) USD per call
    output_tokens: np.ndarray | None  # (N, M)
    input_tokens: np.ndarray  # (N,)
    task: np.ndarray | None = None  # (N,) task name per prompt when the file has one
    latency: np.ndarray | None = None  # (N, M) seconds
    prices: dict[str, ModelPrice] = field(default_factory=dict)
    ids: np.ndarray | None = None  # (N,) uid / request_id

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, rows: np.ndarray) -> "OutcomeTable":
        rows = np.asarray(rows)
        pick = lambda a: None if a is None else a[rows]  # noqa: E731
        return OutcomeTable(
            path=self.path,
            texts=[self.texts[i] for i in rows],
            models=list(self.models),
            quality=self.quality[rows],
            cost=pick(self.cost),
            output_tokens=pick(self.output_tokens),
            input_tokens=self.input_tokens[rows],
            task=pick(self.task),
            latency=pick(self.latency),
            prices=dict(self.prices),
            ids=pick(self.ids),
        )

    def restrict_models(self, models: Sequence[str]) -> "OutcomeTable":
        missing = [m for m in models if m not in self.models]
        if missing:
            raise ValueError(f"{self.path}: models {missing} are not in the table; it has {self.models}")
        idx = [self.models.index(m) for m in models]
        pick = lambda a: None if a is None else a[:, idx]  # noqa: E731
        return OutcomeTable(
            path=self.path, texts=self.texts, models=list(models), quality=self.quality[:, idx],
            cost=pick(self.cost), output_tokens=pick(self.output_tokens), input_tokens=self.input_tokens,
            task=self.task, latency=pick(self.latency),
            prices={m: p for m, p in self.prices.items() if m in models}, ids=self.ids,
        )


_READERS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".csv.gz": "csv", ".tsv": "tsv",
            ".tsv.gz": "tsv", ".jsonl": "jsonl", ".jsonl.gz": "jsonl", ".ndjson": "jsonl", ".json": "json", ".json.gz": "json"}


def _first_char(path: Path) -> str:
    """The first character of a (possibly gzipped) text file past any white space or BOM."""
    import gzip

    with (gzip.open if path.suffix.lower() == ".gz" else open)(path, "rt", encoding="utf-8-sig", errors="replace") as f:
        while chunk := f.read(4096):
            if chunk.strip():
                return chunk.strip()[0]
    return ""


def _read_json(pd, path: Path, kind: str):
    """What the file holds, more than its name, says how to read it: an array is one document even
    named .jsonl; a .json file that is not one document (trailing data) is records one per line."""
    if _first_char(path) == "[":
        return pd.read_json(path, dtype=False)
    if kind == "jsonl":
        return pd.read_json(path, lines=True, dtype=False)
    try:
        return pd.read_json(path, dtype=False)  # one object: pandas' own orients (columns, index, ...)
    except ValueError:
        return pd.read_json(path, lines=True, dtype=False)


def read_frame(path: str | Path, text_only: bool = False):
    """Read a parquet, CSV/TSV or JSON (Lines) file into a DataFrame; errors name the file.

    Only an empty cell is missing: a prompt that reads "NA", "null" or "None" is text. With
    `text_only` every CSV column stays a string (a question that reads "123" is not a number)."""
    import pandas as pd

    path = Path(path)
    suffix = ("".join(path.suffixes[-2:]) if path.suffix.lower() == ".gz" else path.suffix).lower()
    kind = _READERS.get(suffix)
    if path.is_dir():
        raise ValueError(f"{path}: is a folder; give a file")
    if kind is None:
        raise ValueError(f"{path}: unsupported file type {suffix or '(none)'}; "
                         "use .parquet, .csv, .tsv, .jsonl or .json")
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        if kind == "parquet":
            df = pd.read_parquet(path)
        elif kind in ("csv", "tsv"):
            df = pd.read_csv(path, sep="\t" if kind == "tsv" else ",", dtype=str if text_only else None,
                             keep_default_na=False, na_values=[""])
        else:
            df = _read_json(pd, path, kind)
    except Exception as exc:  # pyarrow / pandas parser errors: say which file, not a traceback
        raise ValueError(f"{path}: cannot read file: {exc}") from None
    if len(df) == 0:
        raise ValueError(f"{path}: the file is empty (no rows)")
    # A JSON layout other than records (pandas' index or values orient) numbers its columns: as
    # names they meet the column checks' clear errors, not a traceback.
    df.columns = [str(c) for c in df.columns]
    return df


def load_prices(path: str | Path) -> dict[str, ModelPrice]:
    """Per-model prices from JSON: `{model: {input_per_1m, output_per_1m}}`.

    The shared datasets' models.json spellings (`implied_usd_per_1M_input_tokens`,
    `input_price_usd_per_1M`) are accepted too, so their files can be passed as they are.
    """
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except OSError as exc:
        raise FileNotFoundError(f"{path}: cannot read prices: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: prices are not valid JSON: {exc}") from None
    if not isinstance(raw, Mapping):
        raise ValueError(f"{path}: prices must be a JSON object {{model: {{input_per_1m, output_per_1m}}}}")
    keys_in = ("input_per_1m", "implied_usd_per_1M_input_tokens", "input_price_usd_per_1M")
    keys_out = ("output_per_1m", "implied_usd_per_1M_output_tokens", "output_price_usd_per_1M")
    prices = {}
    for model, entry in raw.items():
        entry = entry if isinstance(entry, Mapping) else {}
        p_in = next((entry[k] for k in keys_in if k in entry), None)
        p_out = next((entry[k] for k in keys_out if k in entry), None)
        if p_in is None or p_out is None:
            raise ValueError(f"{path}: model {model!r} needs input_per_1m and output_per_1m")
        try:
            price_in, price_out = float(p_in), float(p_out)
        except (TypeError, ValueError):
            price_in = price_out = float("nan")
        if isinstance(p_in, bool) or isinstance(p_out, bool) or not (math.isfinite(price_in) and math.isfinite(price_out)
                                                                     and price_in >= 0 and price_out >= 0):
            raise ValueError(f"{path}: model {model!r}: prices must be numbers ≥ 0 (USD per 1M tokens), got {p_in!r} / {p_out!r}")
        prices[str(model)] = ModelPrice(price_in, price_out)
    return prices


def prices_for_file(columns: Iterable, trained: Mapping[str, Sequence[float]],
                    given: Mapping[str, ModelPrice] | str | Path | None = None,
                    keep: Callable[[str], bool] | None = None) -> Mapping[str, ModelPrice] | None:
    """The prices to load a wide outcome file (its `columns`) with, for `eval` and `simulate` with a
    router: `given` (--prices) always wins. Otherwise a file that records costs (a `cost_usd__<model>`
    column of a model `keep` accepts; the others are dropped before loading) gets none: a model
    without its column is then an error (or --prices), as tokens x price beside recorded costs
    would put it at another scale. A file without any (a sealed test set may lack them) is priced
    at `trained`, the prices the router was trained with (model -> (input, output) USD per 1M
    tokens); None where that is empty, which leaves the loader its own fallbacks (a models.json
    beside the file, a flat price)."""
    if given is not None:
        return given if isinstance(given, Mapping) else load_prices(given)
    if any(str(c).startswith("cost_usd__") and (keep is None or keep(str(c)[len("cost_usd__"):])) for c in columns):
        return None
    return {m: ModelPrice(*p) for m, p in trained.items()} or None


def _pick_column(df, candidates: Sequence[str], path: Path, what: str, required: bool = True) -> str | None:
    for c in candidates:
        if c in df.columns:
            return c
    if required:
        raise ValueError(f"{path}: no {what} column: expected one of {list(candidates)}; columns are {list(df.columns)[:20]}")
    return None


def _join_responses(df, path: Path):
    """Add `response__*` columns from `<stem>_responses.parquet` when it sits beside the file."""
    sibling = path.with_name(path.name.split(".")[0] + "_responses.parquet")
    if not sibling.exists() or "uid" not in df.columns or any(c.startswith("response__") for c in df.columns):
        return df
    responses = read_frame(sibling)
    if "uid" not in responses.columns:
        raise ValueError(f"{sibling}: no 'uid' column to join the responses on")
    # One response row per uid: a uid repeated there must not repeat the file's rows (and shift
    # every 0-based `row` after it).
    responses = responses.drop_duplicates("uid", keep="first")
    return df.merge(responses, on="uid", how="left", validate="many_to_one")


def wide_to_outcomes(df, path: str | Path, text_column: str | None = None,
                     prices: Mapping[str, ModelPrice] | None = None, flat_price: bool = False) -> OutcomeTable:
    """Validate a wide outcome frame and turn it into an `OutcomeTable`. With `flat_price`, a frame
    with neither costs nor prices prices every model at `FLAT_PRICE_PER_1M` (and warns) instead of
    being an error."""
    path = Path(path)
    texts, chat_tokens = table_texts(df, text_column, path)
    models = [c[len("quality__"):] for c in df.columns if c.startswith("quality__")]
    if not models:
        raise ValueError(f"{path}: no quality__<model> columns: nothing to learn from")
    quality = np.column_stack([quality_column(df, f"quality__{m}", path) for m in models])

    full_col = _pick_column(df, FULL_PROMPT_COLUMNS, path, "full prompt", required=False)
    tok_col = _pick_column(df, INPUT_TOKEN_COLUMNS, path, "input tokens", required=False)
    if full_col is not None:
        # A row without its full prompt is estimated from the routed text, as a missing count is.
        full = df[full_col].fillna("").astype(str)
        input_tokens = np.array([estimate_tokens(f if f.strip() else t) for f, t in zip(full, texts)], dtype=np.float64)
    elif tok_col is not None:
        counted = numeric(df, tok_col, path)
        # A row without a count is estimated from its text.
        input_tokens = np.array([estimate_tokens(t) if np.isnan(c) else c for t, c in zip(texts, counted)], dtype=np.float64)
    else:
        input_tokens = np.array([estimate_tokens(t) if n is None else n for t, n in zip(texts, chat_tokens)], dtype=np.float64)
    input_tokens = np.ceil(np.maximum(input_tokens, 1.0))

    output_tokens = np.full((len(df), len(models)), np.nan)
    for j, m in enumerate(models):
        if f"output_tokens__{m}" in df.columns:
            output_tokens[:, j] = numeric(df, f"output_tokens__{m}", path)
        elif f"response__{m}" in df.columns:
            output_tokens[:, j] = [estimate_tokens(t) for t in df[f"response__{m}"].fillna("").astype(str)]

    cost_cols = [f"cost_usd__{m}" for m in models]
    present = [c for c in cost_cols if c in df.columns]
    prices = dict(prices or {})
    if present:
        missing = [c for c in cost_cols if c not in df.columns and c[len("cost_usd__"):] not in prices]
        if missing:
            raise ValueError(f"{path}: model has no cost: column {missing[0]!r} is missing (or give its price with --prices)")
        cost = np.full((len(df), len(models)), np.nan)
        for j, m in enumerate(models):
            c = f"cost_usd__{m}"
            if c in df.columns:
                cost[:, j] = cost_column(df, c, path)
        # Where answers are missing, invert cost = in*p_in + out*p_out for the output length.
        for j, m in enumerate(models):
            if m in prices and np.isnan(output_tokens[:, j]).all() and prices[m].output_per_1m > 0 and f"cost_usd__{m}" in df.columns:
                implied = (cost[:, j] * 1e6 - input_tokens * prices[m].input_per_1m) / prices[m].output_per_1m
                output_tokens[:, j] = np.maximum(implied, 1.0)
    else:
        unpriced = [m for m in models if m not in prices]
        # Some models priced: one flat price beside them would be a made-up scale.
        if unpriced and (prices or not flat_price):
            given = f"; the prices given name {sorted(prices)[:5]}" if prices else ""
            raise ValueError(
                f"{path}: no cost_usd__<model> columns and no price for {unpriced[0]!r} "
                f"(column 'cost_usd__{unpriced[0]}' missing{given}): pass --prices FILE.json pricing every model"
            )
        if unpriced:
            prices = {m: ModelPrice(FLAT_PRICE_PER_1M, FLAT_PRICE_PER_1M) for m in models}
            _warn_flat_price(path, bool(np.isnan(output_tokens).all()))
        cost = None
    out_for_cost = np.where(np.isnan(output_tokens), DEFAULT_OUTPUT_TOKENS, output_tokens)
    for j, m in enumerate(models):
        if m in prices and (cost is None or np.isnan(cost[:, j]).all()):
            cost = cost if cost is not None else np.full((len(df), len(models)), np.nan)
            cost[:, j] = prices[m].cost(input_tokens, out_for_cost[:, j])
    if cost is not None:
        prices = {**_implied_prices(cost, input_tokens, output_tokens, models), **prices}

    latency = None
    if any(f"latency_s__{m}" in df.columns for m in models):
        latency = np.column_stack([
            numeric(df, f"latency_s__{m}", path) if f"latency_s__{m}" in df.columns else np.full(len(df), np.nan)
            for m in models
        ])
    task_col = _pick_column(df, TASK_COLUMNS, path, "task", required=False)
    id_col = "uid" if "uid" in df.columns else ("request_id" if "request_id" in df.columns else None)
    return OutcomeTable(
        path=str(path),
        texts=texts,
        models=models,
        quality=quality,
        cost=cost,
        output_tokens=None if np.isnan(output_tokens).all() else output_tokens,
        input_tokens=input_tokens,
        task=df[task_col].astype(str).to_numpy() if task_col else None,
        latency=latency,
        prices=prices,
        ids=df[id_col].astype(str).to_numpy() if id_col else None,
    )


def _warn_flat_price(path: Path, no_lengths: bool) -> None:
    consequence = (
        "no answer lengths either (response__/output_tokens__ columns), so every model costs the same on a "
        "prompt: routing goes by predicted quality alone, and cost metrics (AIQ, quality at budget, the "
        "knob) say nothing" if no_lengths else
        "models then differ in cost only by their answers' lengths (response__/output_tokens__ columns), "
        "not by what they charge")
    log.warning("%s: no cost_usd__<model> columns and no prices (--prices, or a models.json beside the file): "
                "every model is priced alike at $%g per 1M input and output tokens; %s. Pass --prices FILE.json "
                "for real prices", path, FLAT_PRICE_PER_1M, consequence)


def _implied_prices(cost, input_tokens, output_tokens, models) -> dict[str, ModelPrice]:
    """Least-squares per-token prices from observed costs (for models the catalog does not price)."""
    prices = {}
    for j, m in enumerate(models):
        ok = ~np.isnan(cost[:, j])
        if output_tokens is not None and not np.isnan(output_tokens[:, j]).all():
            ok &= ~np.isnan(output_tokens[:, j])
        if ok.sum() < 2:
            continue
        if output_tokens is None or np.isnan(output_tokens[:, j]).all():
            # Without lengths input and output prices are not separable: one blended price.
            per_token = float(np.sum(cost[ok, j]) / max(np.sum(input_tokens[ok] + DEFAULT_OUTPUT_TOKENS), 1.0) * 1e6)
            prices[m] = ModelPrice(per_token, per_token)
            continue
        a = np.column_stack([input_tokens[ok], output_tokens[ok, j]])
        coef, *_ = np.linalg.lstsq(a, cost[ok, j] * 1e6, rcond=None)
        p_in, p_out = (max(float(c), 0.0) for c in coef)
        if p_in == 0.0 and p_out == 0.0:
            p_in = p_out = float(np.sum(cost[ok, j]) / np.sum(a) * 1e6)
        prices[m] = ModelPrice(p_in, p_out)
    return prices


MODEL_COLUMN_PREFIXES = ("quality__", "cost_usd__", "latency_s__", "output_tokens__", "response__")


def load_outcomes(path: str | Path, text_column: str | None = None,
                  prices: Mapping[str, ModelPrice] | str | Path | None = None,
                  keep: Callable[[str], bool] | None = None, flat_price: bool = False, frame=None) -> OutcomeTable:
    """Load a wide outcome table (parquet, CSV or JSONL).

    Without `prices`, a table lacking `cost_usd__<model>` columns takes its prices from a
    `models.json` beside it (the shared datasets ship one), and says so; without either, the
    missing cost is an error naming the column, or with `flat_price` one flat price for every
    model (`train` and `simulate` on RouterDC's layout; not `retrain`, which stacks the table
    with logged real costs). `keep(model)` False drops a model's columns
    before anything is checked (eval leaves out models its router does not know, whatever
    their columns hold). `frame`: the file as `read_frame` read it already (not read again)."""
    if isinstance(prices, (str, Path)):
        prices = load_prices(prices)
    path = Path(path)
    df = _join_responses(read_frame(path) if frame is None else frame, path)
    if keep is not None:
        df = df.drop(columns=[c for c in df.columns for pre in MODEL_COLUMN_PREFIXES
                              if c.startswith(pre) and not keep(c[len(pre):])])
    sibling = path.with_name("models.json")
    models = [c[len("quality__"):] for c in df.columns if c.startswith("quality__")]
    if sibling.exists() and any(f"cost_usd__{m}" not in df.columns and m not in (prices or {}) for m in models):
        # The table's own models.json fills in what --prices does not say (several tables may be
        # stacked, each priced its own way); an explicit price always wins.
        prices = {**load_prices(sibling), **(prices or {})}
        log.info("%s: prices of models without cost columns from %s", path, sibling)
    return wide_to_outcomes(df, path, text_column=text_column, prices=prices, flat_price=flat_price)


LONG_COLUMNS = ("request_id", "text", "model", "quality", "cost_usd", "latency_s", "output_tokens", "input_tokens")


def long_to_outcomes(df, path: str = "<outcome log>", models: Sequence[str] | None = None) -> OutcomeTable:
    """Pivot logged outcomes (one row per request and answering model) into an `OutcomeTable`.

    Rows without a quality label (no feedback yet) are dropped; a request answered by two
    models (failover, shadow) keeps both cells. Unobserved cells stay NaN.
    """
    missing = [c for c in LONG_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: column {missing[0]!r} is missing from the outcome log (needs {list(LONG_COLUMNS)})")
    # Checked before the unlabelled rows go, so that a row named in an error is the log's own.
    q = unit_interval(numeric(df, "quality", path, words=True), path, "quality")
    labelled = ~np.isnan(q)
    df, q = df[labelled], q[labelled]
    if len(df) == 0:
        raise ValueError(f"{path}: column 'quality' has no labelled rows")
    names = list(models) if models is not None else sorted(df["model"].astype(str).unique())
    requests = list(dict.fromkeys(df["request_id"].astype(str)))
    row_of = {r: i for i, r in enumerate(requests)}
    col_of = {m: j for j, m in enumerate(names)}
    shape = (len(requests), len(names))
    quality, cost, latency, out_tok = (np.full(shape, np.nan) for _ in range(4))
    texts = [""] * len(requests)
    in_tok = np.ones(len(requests))
    for rec, label in zip(df.itertuples(index=False), q):
        j = col_of.get(str(rec.model))
        if j is None:
            continue
        i = row_of[str(rec.request_id)]
        quality[i, j] = label
        cost[i, j] = rec.cost_usd
        latency[i, j] = rec.latency_s
        out_tok[i, j] = rec.output_tokens
        texts[i] = texts[i] or ("" if is_missing(rec.text) else str(rec.text))
        if not is_missing(rec.input_tokens):
            in_tok[i] = max(float(rec.input_tokens), 1.0)
    return OutcomeTable(
        path=path, texts=texts, models=names, quality=quality, cost=cost,
        output_tokens=None if np.isnan(out_tok).all() else out_tok, input_tokens=in_tok,
        latency=None if np.isnan(latency).all() else latency,
        prices=_implied_prices(cost, in_tok, None if np.isnan(out_tok).all() else out_tok, names),
        ids=np.array(requests, dtype=object),
    )


def concat_outcomes(tables: Sequence[OutcomeTable]) -> OutcomeTable:
    """Stack tables row-wise over the union of their models (NaN where a table lacks a model)."""
    if len(tables) == 1:
        return tables[0]
    models = list(dict.fromkeys(m for t in tables for m in t.models))

    def widen(t: OutcomeTable, arr: np.ndarray | None) -> np.ndarray:
        out = np.full((len(t), len(models)), np.nan)
        if arr is not None:
            for j, m in enumerate(t.models):
                out[:, models.index(m)] = arr[:, j]
        return out

    def stack(attr):
        arrs = [widen(t, getattr(t, attr)) for t in tables]
        full = np.vstack(arrs)
        return None if np.isnan(full).all() else full

    tasks = [t.task if t.task is not None else np.array([""] * len(t), dtype=object) for t in tables]
    prices: dict[str, ModelPrice] = {}
    for t in tables:
        prices.update(t.prices)
    return OutcomeTable(
        path="+".join(t.path for t in tables),
        texts=[x for t in tables for x in t.texts],
        models=models,
        quality=np.vstack([widen(t, t.quality) for t in tables]),
        cost=stack("cost"),
        output_tokens=stack("output_tokens"),
        input_tokens=np.concatenate([t.input_tokens for t in tables]),
        task=np.concatenate(tasks).astype(object),
        latency=stack("latency"),
        prices=prices,
        ids=np.concatenate([t.ids if t.ids is not None else np.arange(len(t)).astype(str) for t in tables]).astype(object),
    )
