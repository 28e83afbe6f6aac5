"""Pair features for the semantic-cache verifier: is question b answered by question a's answer?

One cosine threshold cannot tell "how do I convert Celsius to Fahrenheit" from its reversal,
or "2 eggs" from "3 eggs" (GPTCache #694, LiteLLM #12234). These features give a learned
verifier what cosine misses: lexical overlap, numbers, negations, question type, length,
and the embedding interactions |a-b| and a*b.
"""
from __future__ import annotations

import re
from typing import Sequence

import numpy as np

_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
NEGATIONS = frozenset(
    "not no never none nothing nobody neither nor without cannot can't don't doesn't didn't isn't aren't wasn't "
    "weren't won't wouldn't shouldn't couldn't hasn't haven't hadn't mustn't cant dont doesnt didnt isnt arent "
    "wasnt werent wouldnt shouldnt couldnt hasnt havent".split()
)
STOPWORDS = frozenset(
    "a an the of to in on for and or is are was were be been do does did i you he she it we they my your "
    "his her its our their me what how why when where which who whom whose can could should would will shall "
    "may might must that this these those there with from by at as about into than then so if".split()
)
# Question openers whose difference usually means a different question ("why is x" vs "how is x").
OPENERS = ("what", "how", "why", "when", "where", "which", "who", "is", "are", "can", "do", "does", "should")
_NUMBER_WORDS = {
    w: str(i)
    for i, w in enumerate("zero one two three four five six seven eight nine ten eleven twelve".split())
}

SCALAR_NAMES = (
    "cosine",
    "jaccard",
    "content_jaccard",
    "overlap_min",
    "overlap_max",
    "len_ratio_chars",
    "len_ratio_words",
    "len_min_words",
    "len_diff_words",
    "numbers_differ",
    "numbers_any",
    "negation_mismatch",
    "opener_same",
    "first_word_same",
    "last_word_same",
    "bigram_jaccard",
)


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower().replace("’", "'"))


def numbers(text: str) -> frozenset[str]:
    """Numbers as digits, with small number words mapped to digits ("two" == "2")."""
    found = {n.replace(",", "") for n in _NUMBER.findall(text)}
    found.update(_NUMBER_WORDS[w] for w in words(text) if w in _NUMBER_WORDS)
    return frozenset(found)


def negated(text: str) -> bool:
    """Odd number of negations: "not not" reads as affirmative, which is rare but cheap to respect."""
    ws = words(text)
    count = sum(1 for w in ws if w in NEGATIONS or w.endswith("n't"))
    return count % 2 == 1


def _opener(ws: list[str]) -> str:
    return next((w for w in ws if w in OPENERS), "")


def _jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


def scalar_features(a: str, b: str, cosine: float) -> list[float]:
    wa, wb = words(a), words(b)
    sa, sb = set(wa), set(wb)
    ca, cb = sa - STOPWORDS, sb - STOPWORDS
    inter = len(sa & sb)
    ba = set(zip(wa, wa[1:]))
    bb = set(zip(wb, wb[1:]))
    na, nb = numbers(a), numbers(b)
    la, lb = max(len(wa), 1), max(len(wb), 1)
    return [
        cosine,
        _jaccard(sa, sb),
        _jaccard(ca, cb),
        inter / max(min(len(sa), len(sb)), 1),
        inter / max(max(len(sa), len(sb)), 1),
        min(len(a), len(b)) / max(len(a), len(b), 1),
        min(la, lb) / max(la, lb),
        float(min(la, lb)),
        float(abs(la - lb)),
        float(na != nb),
        float(bool(na or nb)),
        float(negated(a) != negated(b)),
        float(_opener(wa) == _opener(wb)),
        float(bool(wa) and bool(wb) and wa[0] == wb[0]),
        float(bool(wa) and bool(wb) and wa[-1] == wb[-1]),
        _jaccard(ba, bb),
    ]


def hard_mismatch(a: str, b: str) -> bool:
    """Differences that always mean another question, whatever the model says: numbers and negation."""
    return numbers(a) != numbers(b) or negated(a) != negated(b)


def pair_features(texts_a: Sequence[str], texts_b: Sequence[str], emb_a: np.ndarray, emb_b: np.ndarray) -> np.ndarray:
    """Feature matrix: scalar features, then |a-b| and a*b over the (unit) embeddings."""
    emb_a = np.asarray(emb_a, dtype=np.float32).reshape(len(texts_a), -1)
    emb_b = np.asarray(emb_b, dtype=np.float32).reshape(len(texts_b), -1)
    cos = np.einsum("ij,ij->i", emb_a, emb_b)
    scal = np.array([scalar_features(a, b, float(c)) for a, b, c in zip(texts_a, texts_b, cos)], dtype=np.float32)
    return np.hstack([scal, np.abs(emb_a - emb_b), emb_a * emb_b]).astype(np.float32)
