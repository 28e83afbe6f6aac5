"""Case the cache's word features cannot see: a name and the common noun it spells.

The embedder, the cross-encoder and the word features read lower-cased text, so "How do I fix
Rust?" (the language) and "How do I fix rust?" (oxidation) look identical to every model. A
case-only difference is usually carelessness, though: in QQP, 16 questions recur in another case,
all meaning the same ("in Quora" / "in quora", "in English" / "in english", "becomes President" /
"becomes president"). A rule reading any word's case would refuse 7 QQP pairs that no other rule
refuses (6 labelled duplicates) and 11 of those 16 repeats; narrowed to one word standing alone
with the rest of the case unchanged, 3 pairs (2 duplicates: "keyword in java" / "in Java",
"elected President" / "president") and 5 of the 16. So only listed names are read: ones whose
lower-case spelling is a common noun, the name of a language, program or company that a
question may mean either way. They refuse none of QQP's 40,394 pairs nor of the 16 repeats.
"""
from __future__ import annotations

import re

# Names askers do write in lower case ("learning python"), so they are read only where the two
# texts have the same words and differ in nothing else but this word's case (`case_only_name`).
NAMED_NOUNS = frozenset(
    "rust python ruby swift dart crystal elixir scheme pandas spring flask express spark hive shell "
    "windows word office access outlook teams chrome edge safari opera slack zoom notion signal unity "
    "blender eclipse atom apple oracle visa target subway jaguar tesla mercury".split()
)
_WORD_CASED = re.compile(r"[A-Za-z]+")
_OPENING = " \t\"'“‘(["


def title_case(tokens: list[str]) -> bool:
    """A side written in title case ("How To Polish Shoes") says nothing by its capitals. The
    first word is left out, which is capitalised anyway: "What is Python?" is no title."""
    capitals = sum(t[0].isupper() for t in tokens[1:])
    return capitals >= 2 and capitals * 2 > len(tokens) - 1


def _cased_words(text: str) -> list[tuple[str, bool]]:
    """Each word with whether it starts a sentence (first, or after ".", "?", "!", ":" or a line
    break, opening quotes and brackets aside), where a capital says nothing."""
    out = []
    for m in _WORD_CASED.finditer(text):
        before = text[:m.start()].rstrip(_OPENING)
        out.append((m.group(0), not before or before[-1] in ".?!:\n"))
    return out


def _named(name: tuple[str, bool], noun: str) -> bool:
    word, starts = name
    return not starts and word.lower() == noun and word[0].isupper() and word[1:].islower() and noun in NAMED_NOUNS


def _careless(words: list[tuple[str, bool]]) -> bool:
    """Capitals that say nothing: a sentence begun in lower case, "i", or title case."""
    return any(w == "i" or (starts and w.islower()) for w, starts in words) or title_case([w for w, _ in words])


def case_only_name(a: str, b: str) -> bool:
    """For two texts of the same words: a listed name written as a name past a sentence's start
    on one side and in lower case on the other, with no other difference of case ("What is Rust
    used for?" / "What is rust used for?"). A side that differs in other capitals too ("how do I
    fix rust"), begins a sentence in lower case, writes "i" or is in title case says nothing by
    its capitals."""
    ca, cb = _cased_words(a), _cased_words(b)
    if len(ca) != len(cb) or _careless(ca) or _careless(cb):
        return False
    named = False
    for x, y in zip(ca, cb):
        if x[0] == y[0]:
            continue
        if not (_named(x, y[0]) or _named(y, x[0])):
            return False
        named = True
    return named


def careful_case_differs(a: str, b: str) -> bool:
    """For two texts of the same words: a word past a sentence's start in other capitals on the two
    sides, neither of which is careless about case ("Can a Boolean be null in Java?" / "... a
    boolean ..."). Not a refusal: what the cache reads to decide that case alone cannot make the
    two one question, and leaves them to the verifier."""
    ca, cb = _cased_words(a), _cased_words(b)
    if len(ca) != len(cb) or _careless(ca) or _careless(cb):
        return False
    return any(x[0] != y[0] and not (x[1] and y[1]) for x, y in zip(ca, cb))
