"""The same question written differently: another final mark, another case, a contraction.

The verifier was trained on Quora question pairs, which never differ by so little, and doubts
such pairs: "What is 17 * 23?" / "what is 17 * 23?" scored 0.19 (the cross-encoder reads short
arithmetic as a likely non-duplicate) and "What is the capital of France?" / "what is the capital
of france" 0.33 (a capitalised name on one side only), against a threshold of 0.87. Two questions
with the same `plain_form` are one question, unless a hard rule (router/cache/features.py) says
the difference matters ("Mercury" / "mercury", a text handed over to be punctuated) or two
careful askers capitalised a word differently ("Boolean" / "boolean"): the cache asks that of
both texts with their contractions written out (`written_out`, `same_words_differ`), so that
the rules which compare the same words (their case, their symbols) read them.
"""
from __future__ import annotations

import re

from router.cache.features import hands_over, hard_mismatch
from router.cache.names import careful_case_differs
from router.cache.tokens import memo_short

# Contractions with one reading. "'s" only after the words where it is "is" ("John's car" owns),
# "'d" never (would or had), and "can't" / "cannot" / "can not" are one.
_IS = frozenset("what who where when why how it that there here he she".split())
_ARE = frozenset("we you they what who where how there".split())
_HAVE = frozenset("i we you they who what would could should might must".split())
_WILL = frozenset("i we you they he she it that there who what".split())
_NOT = frozenset("do does did is are was were has have had would could should must need".split())
_WHOLE = {"can't": "can not", "cannot": "can not", "won't": "will not", "shan't": "shall not", "let's": "let us", "i'm": "i am"}
_SUFFIX = {"s": (_IS, " is"), "re": (_ARE, " are"), "ve": (_HAVE, " have"), "ll": (_WILL, " will")}
# A contraction is written out only where it is used, not talked about ("Can I use can't in an
# essay?"): starting a sentence, or after a question word or a subject.
_USED_AFTER = frozenset("what who where when why how which i you we they he she it this that there".split())
_CONTRACTION = re.compile(r"(?<![A-Za-z0-9'\u2019])(?:[A-Za-z]+['\u2019][A-Za-z]+|[Cc]annot)(?![A-Za-z0-9'\u2019])")
_WORD_BEFORE = re.compile(r"([A-Za-z]+)\s+\Z")
_TOKEN = re.compile(r"[A-Za-z0-9]+")
_WITH_CAPITAL = re.compile(r"(?<![A-Za-z0-9])[A-Za-z0-9]*[A-Z][A-Za-z0-9]*")
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


def _expansion(word: str) -> str | None:
    """`word` written out, in its own case ("What's" = "What is"), or None for no contraction."""
    low = word.lower().replace("\u2019", "'")
    out = _WHOLE.get(low)
    if out is None:
        head, _, tail = low.partition("'")
        if tail == "t" and head.endswith("n") and head[:-1] in _NOT:
            out = f"{head[:-1]} not"
        elif tail in _SUFFIX and head in _SUFFIX[tail][0]:
            out = head + _SUFFIX[tail][1]
        else:
            return None
    return out[0].upper() + out[1:] if word[0].isupper() else out


def _case_matters(text: str, m: re.Match) -> bool:
    """Whether a token's capitals can be its meaning: all but "I" and a capitalised word that
    starts a sentence or has three letters or more ("Is", "France"). "IT" / "it", "Mb" / "mb",
    "A" / "a" past a sentence's start (a letter talked about), "iPhone", "Hunter2" keep theirs."""
    token = m.group(0)
    if token == "I" or not token.isalpha() or not (len(token) == 1 or token[1:].islower()):
        return token != "I"
    if len(token) >= 3:
        return False
    i = m.start() - 1
    while i >= 0 and text[i].isspace():
        i -= 1
    return i >= 0 and text[i] not in ".?!"


def _used(text: str, start: int) -> bool:
    before = text[:start]
    if not before.strip() or before.rstrip()[-1] in ".?!":
        return True
    word = _WORD_BEFORE.search(before)
    return word is not None and word.group(1).lower() in _USED_AFTER


def written_out(text: str) -> str:
    """`text` with its unambiguous contractions written out where they are used, its case and
    marks kept. Not one in a text handed over to be worked on ("Count the letters: don't"), nor
    one talked about ("Can I use can't in an essay?", "How many letters are in can't?"), nor one
    in capitals. A text with none to write out is returned as it is."""
    if ("'" not in text and "\u2019" not in text and "annot" not in text) or hands_over(text):
        return text
    tokens = list(_TOKEN.finditer(text))
    last = tokens[-1].end() if tokens else 0
    out, pos = [], 0
    for m in _CONTRACTION.finditer(text):
        word = m.group(0)
        if m.end() >= last or (word.isupper() and len(word) > 2) or not _used(text, m.start()):
            continue
        full = _expansion(word)
        if full is not None:
            out += [text[pos:m.start()], full]
            pos = m.end()
    return "".join(out) + text[pos:] if out else text


def same_words_differ(a: str, b: str) -> bool:
    """For two texts of one plain form: a hard rule refuses them, as written or with their
    contractions written out (`written_out`: only then do the rules that compare the same words
    read them), or a word past a sentence's start differs in case while both sides are careful
    about case ("Can a Boolean be null in Java?" / "... a boolean ...": yes and no). Either
    leaves the pair to the verifier."""
    if hard_mismatch(a, b):
        return True
    wa, wb = written_out(a), written_out(b)
    if (wa, wb) != (a, b) and hard_mismatch(wa, wb):
        return True
    return careful_case_differs(wa, wb)


@memo_short
def plain_form(text: str) -> str:
    """`written_out(without_end_mark(text))` in ASCII lower case but for the tokens whose case
    matters (`_case_matters`). Every other character (digits, symbols, spacing) stays as it is."""
    text = written_out(without_end_mark(text))
    # On ASCII text str.lower() changes A-Z alone, keeping every position, and is faster than the table.
    lowered = text.lower() if text.isascii() else text.translate(_ASCII_LOWER)
    if lowered == text:
        return text
    # Most questions capitalise their first letter alone: one token to look at, not a scan.
    found = [_WITH_CAPITAL.match(text)] if lowered[1:] == text[1:] else _WITH_CAPITAL.finditer(text)
    kept = [m for m in found if _case_matters(text, m)]
    if not kept:
        return lowered
    parts, pos = [], 0
    for m in kept:  # lower-casing keeps every position, so the kept tokens go back where they were
        parts += [lowered[pos:m.start()], m.group(0)]
        pos = m.end()
    return "".join(parts) + lowered[pos:]
