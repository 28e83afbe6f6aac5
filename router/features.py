"""Cheap text features that sit beside the embedding.

They describe the *shape* of a request (how long, code or maths, a question, a multiple-choice
item, how many turns, tools), which tells "how hard / how long an answer" across tasks better
than topic does: the embedding knows what a prompt is about, these say what kind of work it
asks for. All are substring counts over at most `MAX_SCAN_CHARS` characters, so a
2,000-token prompt costs tens of microseconds.

Length is the routed text's, never the whole request's: an agent turn carries a 25-48 KB system
prompt and its history (~9,000 tokens), far beyond any prompt in the outcome tables, and a tree
model reads such a value as "like the longest training prompts", which moved P(good) by 0.06
on average and up to 0.37. The request's size still sets cost and the context-window check, through `input_tokens`.
"""
from __future__ import annotations

import math
import re
from typing import Sequence

import numpy as np

from router.types import RoutingRequest

MAX_SCAN_CHARS = 2000  # the head of a long prompt says what it is; scanning all of it is waste

FEATURE_NAMES = (
    "log_text_chars",
    "n_lines",
    "code_markers",
    "math_markers",
    "digit_share",
    "non_ascii_share",
    "cjk_share",
    "question_form",
    "choice_options",
    "instruction_words",
    "n_turns",
    "has_tools",
    "needs_json",
)

# Substring counts over the lower-cased head: `str.count` runs in C, where a regex
# alternation of ten words costs ~1 ms per 2,000 characters in Python's engine.
_CODE = ("```", "def ", "class ", "import ", "return", "function", "#include", "=>", ";\n", "{\n", "python", " code")
_MATH = ("\\frac", "\\sqrt", "$", "solve", "equation", "calculate", "how many", "probability", "%", "=", "^", "sum of")
_INSTRUCTION = ("write", "explain", "implement", "prove", "derive", "summar", "translate", "compare", "analy", "step by step")
_WH = ("what", "why", "how", "which", "who", "when", "where", "is ", "are ", "does", "do ", "can ", "should")
# An option line ("a) ...", "(b) ..."): its own blank indent only, not blank lines before it, which
# `^\s*` scanned again from every line start (seconds on 40,000 newlines); the count is the same.
_CHOICE = re.compile(r"^[^\S\n]*\(?[a-e][).:]\s+\S", re.M)
_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af]")


def _count(text: str, needles: Sequence[str]) -> int:
    return sum(text.count(n) for n in needles)


def text_features(text: str, n_turns: int = 1, has_tools: bool = False, needs_json: bool = False) -> list[float]:
    head = text[:MAX_SCAN_CHARS].lower()
    n = max(len(head), 1)
    non_ascii = len(head) - len(head.encode("ascii", "ignore"))
    stripped = head.strip()
    question = stripped.endswith(("?", "？")) or stripped.startswith(_WH) or "?\n" in head
    return [
        math.log1p(len(text)),
        float(min(head.count("\n"), 200)),
        float(min(_count(head, _CODE), 50)),
        float(min(_count(head, _MATH), 50)),
        _count(head, "0123456789") / n,
        non_ascii / n,
        len(_CJK.findall(head)) / n if non_ascii else 0.0,
        float(question),
        float(min(len(_CHOICE.findall(head)), 10)),
        float(min(_count(head, _INSTRUCTION), 20)),
        float(n_turns),
        float(has_tools),
        float(needs_json),
    ]


def request_features(requests: Sequence[RoutingRequest]) -> np.ndarray:
    """(N, len(FEATURE_NAMES)) float32 matrix for routing requests."""
    rows = [
        text_features(r.text, r.n_turns, r.has_tools, "json" in r.needs)
        for r in requests
    ]
    return np.asarray(rows, dtype=np.float32).reshape(len(rows), len(FEATURE_NAMES))
