"""The words and numbers of a question, as the cache verifier's features and hard rules read them:
lower-cased letters and digits, small number words as digits, negations counted. Memoised per
text, since one lookup reads the same texts for every rule and feature."""
from __future__ import annotations

import re
from functools import lru_cache, wraps

_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")
NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
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
_NUMBER_WORDS = {
    w: str(i)
    for i, w in enumerate("zero one two three four five six seven eight nine ten eleven twelve".split())
}


# A lookup scores one new question against up to 4 candidates, and the hard rules, the scalar
# and the word features all split the same texts: memoising the per-text parts keeps that to once.
# Only for texts of question size: an agent's pasted 50 kB document, memoised 4,096 times with its
# word list, would hold gigabytes.
_MEMO_CHARS = 2000


def memo_short(fn):
    cached = lru_cache(maxsize=4096)(fn)

    @wraps(fn)
    def call(text: str):
        return cached(text) if len(text) <= _MEMO_CHARS else fn(text)

    call.cache_info = cached.cache_info
    return call


@memo_short
def words(text: str) -> tuple[str, ...]:
    return tuple(_WORD.findall(text.lower().replace("’", "'")))


@memo_short
def numbers(text: str) -> frozenset[str]:
    """Numbers as digits, with small number words mapped to digits ("two" == "2")."""
    found = {n.replace(",", "") for n in NUMBER.findall(text)}
    found.update(_NUMBER_WORDS[w] for w in words(text) if w in _NUMBER_WORDS)
    return frozenset(found)


@memo_short
def negated(text: str) -> bool:
    """Odd number of negations: "not not" reads as affirmative, which is rare but cheap to respect."""
    ws = words(text)
    count = sum(1 for w in ws if w in NEGATIONS or w.endswith("n't"))
    return count % 2 == 1
