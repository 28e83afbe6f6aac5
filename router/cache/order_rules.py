"""Hard rules on word order for the cache verifier (router/cache/features.py `hard_mismatch`):
the same words in another order around a directional word, a direction read at its markers,
two content words trading roles, the same joined numbers in another order, and one side that is
the other with something joined on. Embeddings and bag-of-words features see none of these:
"dollars to rupees" and "rupees to dollars" hold the same words, and "before the war" is most of
"before and after the war"."""
from __future__ import annotations

import re

from router.cache.tokens import NUMBER, STOPWORDS, memo_short, words

# Words that give a question a direction: with them, the same words in another order ask
# another question ("convert Celsius to Fahrenheit" / "convert Fahrenheit to Celsius").
_DIRECTIONAL = frozenset("to into from than vs versus over per".split())
# Words that join two things symmetrically: "Java and Python" asks what "Python and Java" asks.
_COORDINATING = frozenset("and or vs versus".split())
_ALTERNATIVE = 6  # words one alternative may hold: a long text is not searched whole


def reversed_order(wa: tuple[str, ...], wb: tuple[str, ...]) -> bool:
    """The same words, a directional one among them, with the content words in another order,
    unless two alternatives joined by "or" / "and" are all that trade places."""
    if not (_DIRECTIONAL & set(wa)) or sorted(wa) != sorted(wb):
        return False
    if [w for w in wa if w not in STOPWORDS] == [w for w in wb if w not in STOPWORDS]:
        return False
    return not _alternatives_traded(wa, wb)


def _alternatives_traded(wa: tuple[str, ...], wb: tuple[str, ...]) -> bool:
    """wb is wa with "X or Y" written "Y or X" and nothing else moved: "is it better to rent or buy a
    house" / "... to buy or rent a house", "a flat or a house" / "a house or a flat". An alternative
    holding a directional word is not one ("dollars to rupees or euros" / "euros or dollars to
    rupees": another direction)."""
    differ = [k for k, (x, y) in enumerate(zip(wa, wb)) if x != y]
    first, last = differ[0], differ[-1]
    for k in range(first, last + 1):
        if wa[k] not in ("or", "and"):
            continue
        for s in range(max(k - _ALTERNATIVE, 0), min(first, k - 1) + 1):  # common words may belong to one
            for e in range(max(last + 1, k + 2), min(k + 1 + _ALTERNATIVE, len(wa)) + 1):
                x, y = wa[s:k], wa[k + 1:e]
                if wb[s:e] == (*y, wa[k], *x) and _DIRECTIONAL.isdisjoint(x + y):
                    return True
    return False


_JOINS = frozenset({"and", "or"})
_ADDED_MOST = 8  # words an addition may hold: past that, two texts unlike enough for the models to judge


def asks_more(wa: tuple[str, ...], wb: tuple[str, ...]) -> bool:
    """One side is the other with one run of words added that joins another thing or question on
    ("life before and after the war" / "life before the war", "the pros and cons of X" / "the
    cons of X", "How does a trebuchet work and how is it built?" / "How does a trebuchet work?"):
    the shorter question's answer answers part of the longer one. The addition holds "and" / "or"
    and a content word the shorter side lacks; "What is X and why?" adds none. Of the 40,394 QQP
    pairs it refuses 152, two thirds labelled duplicates (QQP counts a question asking a little
    more as the same), and 12 that were hits: ten training pairs labelled duplicates, and the
    validation and the test pair among them, both labelled not duplicate."""
    if len(wa) == len(wb):
        return False
    short, longer = (wa, wb) if len(wa) < len(wb) else (wb, wa)
    if _JOINS.isdisjoint(longer):
        return False
    start = 0
    while start < len(short) and short[start] == longer[start]:
        start += 1
    end = 0  # words shared at the end, not reaching back into the shared start
    while end < len(short) - start and short[-1 - end] == longer[-1 - end]:
        end += 1
    if start + end != len(short):
        return False
    added = longer[start:len(longer) - end]
    return len(added) <= _ADDED_MOST and not _JOINS.isdisjoint(added) and any(
        w not in STOPWORDS and w not in short for w in added)


def swapped_roles(wa: tuple[str, ...], wb: tuple[str, ...]) -> bool:
    """Two content words trade places and nothing else moves: "do Indian women find Pakistani men
    attractive" / "do Pakistani women find Indian men attractive". Adjacent words ("muscle building"
    / "building muscle") and words joined by "and" / "or" ("real gas and ideal gas") may trade
    places without changing the question. Of the 40,394 QQP pairs it refuses 17, one of them
    labelled duplicate: "Is India better than Pakistan?" / "Is Pakistan better than India?"."""
    ca = [w for w in wa if w not in STOPWORDS]
    cb = [w for w in wb if w not in STOPWORDS]
    if len(ca) != len(cb) or ca == cb or sorted(ca) != sorted(cb):
        return False
    moved = [i for i, (x, y) in enumerate(zip(ca, cb)) if x != y]
    if len(moved) != 2 or moved[1] - moved[0] < 2:
        return False
    i, j = sorted((wa.index(ca[moved[0]]), wa.index(ca[moved[1]])))
    return not (_COORDINATING & set(wa[i + 1:j]))


# A direction read at its markers, so other words cannot hide a reversal ("a string to int" / "an int to string",
# "PDF to Word" / "a Word document to PDF"): "to" points from the last 3 content words before it (back to a marker,
# punctuation or a stopword but an article) to the first after it, "from" the other way; "than", "vs" order a comparison.
_TO, _COMPARE = frozenset("to into onto -> → =>".split()), frozenset("than vs versus".split())
_MARKERS = _TO | _COMPARE | {"from"}
_FRAME_END = _MARKERS | frozenset("and or , ; : ! ? ( ) .".split())
_DETERMINERS = frozenset("a an the my your his her its our their this these those some any each every another".split())
_SKIP, _STOP = STOPWORDS | _DETERMINERS, _FRAME_END | (STOPWORDS - _DETERMINERS)  # _STOP ends the words before
_DIR_TOKEN = re.compile(r"->|→|=>|\d+(?:[.,]\d+)*|[a-z0-9]+(?:'[a-z]+)?|[,;:!?()]|\.(?!\w)")
# A run starts where its first number does, never inside one ("12.5" at its "2" or its "5"): a
# match from there would start the same match earlier, so findall finds the same runs, and a
# 40,000-digit number is tried once, not from each of its digits (seconds, quadratic).
_NUMBER_RUN = re.compile(r"(?<!\d)(?<!\d[.,])\d+(?:[.,]\d+)*(?:\s*(?:->|[/:–—-]|\b(?:to|through)\b)\s*\d+(?:[.,]\d+)*)+")


@memo_short
def _directed(text: str) -> frozenset[tuple[str, str, bool]]:
    """(from, to, is-a-comparison) word pairs: "from X to Y", "Y from X", "X into Y", "X than Y"."""
    marked = not _MARKERS.isdisjoint(words(text)) or "→" in text or ">" in text  # most texts: no tokenizing
    toks = _DIR_TOKEN.findall(text.lower().replace("’", "'")) if marked else []
    out, start = set(), 0
    for i, marker in enumerate(toks):
        if marker not in _STOP:
            continue
        if marker in _MARKERS:
            before = [w for w in toks[start:i] if w not in _DETERMINERS][-3:]
            j = i + 1
            while j < len(toks) and toks[j] in _SKIP and toks[j] not in _FRAME_END:
                j += 1  # to the first content word after the marker, within its frame
            if j < len(toks) and toks[j] not in _FRAME_END:
                out.update((toks[j], w, False) if marker == "from" else (w, toks[j], marker in _COMPARE) for w in before)
        start = i + 1
    return frozenset(out)


def _same_word(x: str, y: str) -> bool:
    """Equal, or one a prefix of the other of 3 letters or more: "int" / "integer", "Postgres" / "PostgreSQL"."""
    return x == y or (min(len(x), len(y)) >= 3 and (x.startswith(y) or y.startswith(x)))


def directions_reversed(a: str, b: str) -> bool:
    da, db = _directed(a), _directed(b)
    return any(not _same_word(x, y) and any(c == cmp and _same_word(x, v) and _same_word(y, u) for u, v, c in other)
               and not any(c == cmp and _same_word(x, u) and _same_word(y, v) for u, v, c in other)
               for one, other in ((da, db), (db, da)) for x, y, cmp in one)


def runs_reordered(a: str, b: str) -> bool:
    """The same numbers joined (by "/", "-", ":", "to") in another order: "03/04/2024" / "04/03/2024", "3 to 5"."""
    ra, rb = ([tuple(n.replace(",", "") for n in NUMBER.findall(m)) for m in _NUMBER_RUN.findall(t.lower())]
              for t in (a, b))
    return any(r not in other and any(sorted(r) == sorted(s) for s in other) for one, other in ((ra, rb), (rb, ra))
               for r in one)
