"""The text an outcome table's rows are routed on.

The text column is named (`--text-column`) or the first of `TEXT_COLUMNS` that holds any text: a
sealed file may carry an empty `prompt` beside a full `query`. Unless named, it is so per row too: a
row without text there is routed on the next default column's text in that row. A cell holding a chat (a list of
{role, content} messages, or that list as JSON text, as a CSV holds it) stands for the request the
gateway would see: its last user turn is embedded (`router.request_view.view_chat_request`), its
whole history sets the input tokens.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from router.request_view import view_chat_request

log = logging.getLogger(__name__)

# `prompt_full` (the shared datasets' prompt with its in-context examples), `text` and `question`
# come last: a file that names its text so, and no other default, is still routed without a flag.
TEXT_COLUMNS = ("prompt", "query", "messages", "prompt_full", "text", "question")
TEXT_COLUMN_DEFAULT = f"per row, the first of {', '.join(TEXT_COLUMNS)} that holds text"


def is_missing(value) -> bool:
    """Whether a cell holds nothing: None, NaN, pd.NA or NaT (a list or a dict, even an empty one, is a value)."""
    import pandas as pd

    return bool(pd.api.types.is_scalar(value) and pd.isna(value))


def is_blank(value) -> bool:
    """Whether a cell holds no text: nothing, or a string of white space only."""
    return is_missing(value) or (isinstance(value, str) and not value.strip())


def _plain(value):
    """Parquet hands a list of chat messages over as numpy arrays of dicts: back to lists."""
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()]
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _chat_in_json(value):
    """The chat a cell's text holds as JSON (a CSV has no lists): parsed only when the whole text is
    a list of {role, content} objects; any other text, JSON or not, is a prompt as it is."""
    if not isinstance(value, str) or not value.lstrip().startswith("["):
        return value
    try:
        parsed = json.loads(value)
    except ValueError:
        return value
    chat = isinstance(parsed, list) and len(parsed) > 0 and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and ("content" in m or "tool_calls" in m) for m in parsed)
    return parsed if chat else value


def _cell_text(value) -> tuple[str, int | None]:
    """The text to embed from one cell, and a chat's input tokens (None for plain text).

    A chat (a list of {role, content} messages) is seen as the gateway sees the request: its last
    user turn is embedded, its whole history is billed."""
    value = _chat_in_json(_plain(value))
    if isinstance(value, list):
        if value and all(isinstance(m, Mapping) for m in value):
            view = view_chat_request({"messages": value})
            return view.text, view.input_tokens
        return "\n".join(str(v) for v in value), None
    if is_missing(value):
        return "", None
    return str(value), None


def table_texts(df, text_column: str | None, path: Path) -> tuple[list[str], list[int | None]]:
    """The texts of the text column (the first default one holding any text, unless one is named)
    and, for chats, their input tokens. Unless a column is named, a row without text there takes
    its text from the next default column that holds one in that row: a sealed file's `prompt`
    may be filled in for a few rows only, beside a full `query`."""
    column, texts, tokens = pick_text_column(df, text_column, path)
    if text_column is not None:
        return texts, tokens
    taken: dict[str, int] = {}
    for other in [c for c in TEXT_COLUMNS[TEXT_COLUMNS.index(column) + 1:] if c in df.columns]:
        blank = [i for i, t in enumerate(texts) if not t.strip()]
        if not blank:
            break
        other_texts, other_tokens = _column_texts(df, other)
        for i in blank:
            if other_texts[i].strip():
                texts[i], tokens[i] = other_texts[i], other_tokens[i]
                taken[other] = taken.get(other, 0) + 1
    if taken:
        log.warning("%s: %d of %d rows have no text in column %r: each is routed on its text in the next column "
                    "that has one (rows per column: %s; --text-column uses one column alone)",
                    path, sum(taken.values()), len(texts), column, taken)
    return texts, tokens


def pick_text_column(df, text_column: str | None, path: Path, candidates: Sequence[str] = TEXT_COLUMNS
                     ) -> tuple[str, list[str], list[int | None]]:
    """The column named, else the first of `candidates` holding any text; its texts and, for
    chats, their input tokens."""
    if text_column is not None:
        if text_column not in df.columns:
            raise ValueError(f"{path}: text column {text_column!r} not found; columns are {list(df.columns)[:20]}")
        return (text_column, *_column_texts(df, text_column))
    present = [c for c in candidates if c in df.columns]
    if not present:
        raise ValueError(f"{path}: no text column: expected one of {list(candidates)} or one named with --text-column; "
                         f"columns are {list(df.columns)[:20]}")
    read = {}
    for column in present:
        texts, tokens = read[column] = _column_texts(df, column)
        if any(t.strip() for t in texts):
            break
        log.warning("%s: column %r holds no text in any row; trying the next of %s", path, column, present)
    else:
        column, (texts, tokens) = present[0], read[present[0]]
        log.warning("%s: no text in any row of %s: every prompt is embedded alike", path, present)
    if len(present) > 1:
        log.info("%s: embedding column %r (of %s; --text-column picks another)", path, column, present)
    return column, texts, tokens


def _column_texts(df, column: str) -> tuple[list[str], list[int | None]]:
    cells = [_cell_text(v) for v in df[column].tolist()]
    return [t for t, _ in cells], [n for _, n in cells]
