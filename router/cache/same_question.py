"""The same question written differently: another final mark, another case, a contraction.

The verifier was trained on Quora question pairs, which never differ by so little, and doubts
such pairs: "What is 17 * 23?" / "what is 17 * 23?" scored 0.19 (the cross-encoder reads short
arithmetic as a likely non-duplicate) and "What is the capital of France?" / "what is the capital
of france" 0.33 (a capitalised name on one side only), against a threshold of 0.87. Two questions
with the same `plain_form` are one question, unless a hard rule (router/cache/features.py) says
the difference matters ("Rust" / "rust", "1 MB" / "1 Mb", a text handed over to be punctuated).
"""
from __future__ import annotations

import re

from router.cache.tokens import memo_short

# Contractions with one reading. "'s" only after the words where it is "is" ("John's car" owns),
# "'d" never (would or had), and "can't" / "cannot" / "can not" are one.
_IS = frozenset("what who where when why how it that there here he she".split())
_ARE = frozenset("we you they what who where how there".split())
_HAVE = frozenset("i we you they who what would could should might must".split())
_WILL = frozenset("i we you they he she it that there who what".split())
_NOT = frozenset("do does did is are was were has have had would could should must need".split())
_WHOLE = {"can't": "can not", "cannot": "can not", "won't": "will not", "shan't": "shall not", "let's": "let us", "i'm": "i am"}
_SUFFIX = (("'s", _IS, " is"), ("'re", _ARE, " are"), ("'ve", _HAVE, " have"), ("'ll", _WILL, " will"))
_WORD = re.compile(r"[A-Za-z]+(?:'[A-Za-z]+)?")
_ACRONYM = re.compile(r"(?<![A-Za-z])[A-Z]{2,}(?![A-Za-z])")
_CANNOT = re.compile(r"(?<![A-Za-z])cannot(?![A-Za-z])")
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def without_end_mark(text: str) -> str:
    """The text without its final "?" / "." marks when they end a word, directly after it: "How
    do I reset my password?" and "... my password" ask the same. After anything else a final
    mark can be the question itself, and stays: "What is 5!" (a factorial) is not "What is 5?",
    nor "Escape this character: ." "... : ?", nor "What does git add ." "What does git add?" (a
    mark after a space is a word of its own); after a bracket only "?" goes (Prolog's
    "foo(X) :- bar(X)." is not the same program without its full stop); "!" is never dropped."""
    text = text.rstrip()
    stripped = text.rstrip(".?")
    if not stripped or len(stripped) == len(text):
        return text
    if stripped[-1].isalpha() or stripped[-1] in "\"'\u201d\u2019" or (stripped[-1] == ")" and "." not in text[len(stripped):]):
        return stripped
    return text


def _plain_word(match: re.Match) -> str:
    word = match.group(0)
    if len(word) > 1 and word.isupper() and "'" not in word:
        return word  # an acronym keeps its case: "IT" / "it", "US" / "us" go to the verifier
    low = word.lower()
    if low in _WHOLE:
        return _WHOLE[low]
    head, _, tail = low.partition("'")
    if tail == "t" and head.endswith("n") and head[:-1] in _NOT:
        return f"{head[:-1]} not"
    for suffix, heads, full in _SUFFIX:
        if f"'{tail}" == suffix and head in heads:
            return head + full
    return low


@memo_short
def plain_form(text: str) -> str:
    """`text` without its final mark (`without_end_mark`), in lower case but for acronyms, with
    its unambiguous contractions written out ("What's" = "what is", "don't" = "do not"). Every
    other character (digits, symbols, spacing, line breaks) stays as it is."""
    text = without_end_mark(text).replace("\u2019", "'")
    if "'" in text or _ACRONYM.search(text):
        return _WORD.sub(_plain_word, text)
    # Without an apostrophe or an acronym, what `_plain_word` does to each word is its ASCII lower
    # case, but for "cannot": the same text at a tenth of the cost (~16 µs a question word by word),
    # which counts at 100,000 cached questions, where each candidate of a lookup is a memo miss.
    text = text.translate(_ASCII_LOWER)
    return _CANNOT.sub("can not", text) if "cannot" in text else text
