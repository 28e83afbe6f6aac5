"""Pair features for the semantic-cache verifier: is question b answered by question a's answer?

One cosine threshold cannot tell "how do I convert Celsius to Fahrenheit" from its reversal,
or "2 eggs" from "3 eggs" (GPTCache #694, LiteLLM #12234). These features give a learned
verifier what cosine misses: lexical overlap, numbers, negations, question type, length,
word-level alignment (the content words only one side has, IDF-weighted, and how close each
comes to a word of the other side in MiniLM's static input embeddings), word order, named
entities, and the embedding interactions |a-b| and a*b.
"""
from __future__ import annotations

import math
import re
from typing import Sequence

import numpy as np

from router.cache.names import case_only_name, title_case
from router.cache.order_rules import asks_more, directions_reversed, reversed_order, runs_reordered, swapped_roles
from router.cache.tokens import STOPWORDS, memo_short, negated, numbers, words

# Question openers whose difference usually means a different question ("why is x" vs "how is x").
OPENERS = ("what", "how", "why", "when", "where", "which", "who", "is", "are", "can", "do", "does", "should")

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


def _opener(ws: tuple[str, ...]) -> str:
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


# Opposites that embeddings (contextual and static alike) place close together, so a learned
# verifier cannot be trusted to separate "is coffee good for you" from "is coffee bad for you".
_ANTONYM_PAIRS = (
    "good bad", "best worst", "better worse", "increase decrease", "increase reduce", "rise fall", "up down",
    "buy sell", "before after", "high low", "higher lower", "highest lowest", "more less", "most least",
    "hot cold", "cheap expensive", "fast slow", "faster slower", "advantages disadvantages", "pros cons",
    "positive negative", "true false", "right wrong", "love hate", "like dislike", "start stop", "begin end",
    "win lose", "open close", "import export", "male female", "men women", "man woman", "boy girl",
    "healthy unhealthy", "safe dangerous", "safe unsafe", "easy hard", "easy difficult", "legal illegal",
    "possible impossible", "strong weak", "rich poor", "young old", "big small", "large small", "long short",
    "early late", "first last", "maximum minimum", "max min", "add remove", "enable disable",
    "encrypt decrypt", "upload download", "input output", "push pull", "accept reject", "include exclude",
    "inside outside", "north south", "east west", "left right", "light dark", "heavy light",
    "success failure", "succeed fail", "pass fail", "gain lose", "gain loss", "profit loss", "happy sad",
    "agree disagree", "above below", "over under", "entry exit", "borrow lend", "send receive", "ask answer",
    "attack defend", "allow forbid", "benefits risks", "strengths weaknesses", "friend enemy", "teacher student",
    "employer employee", "buyer seller", "parent child", "asleep awake", "wet dry", "full empty", "alive dead",
    # Comparatives and superlatives, which a question asks in far more often than the plain word
    # ("the fastest animal" / "the slowest animal": cosine 0.89, the verifier's score 0.73 against 0.87).
    "bigger smaller", "biggest smallest", "larger smaller", "largest smallest", "taller shorter", "tallest shortest",
    "longer shorter", "longest shortest", "older younger", "oldest youngest", "older newer", "oldest newest", "new old",
    "hotter colder", "hottest coldest", "warm cold", "warmer colder", "warmest coldest", "deep shallow", "deeper shallower",
    "deepest shallowest", "richer poorer", "richest poorest", "heavier lighter", "heaviest lightest",
    "fastest slowest", "stronger weaker", "strongest weakest", "easier harder", "easiest hardest", "earlier later",
    "earliest latest", "wide narrow", "wider narrower", "widest narrowest", "thick thin", "thicker thinner",
    "thickest thinnest", "bright dark", "brighter darker", "brightest darkest", "loud quiet", "louder quieter",
    "loudest quietest", "near far", "nearer farther", "nearest farthest", "closest farthest", "happier sadder",
    "happiest saddest", "cheaper dearer", "cheaper expensive", "cheapest expensive",  # "more / most expensive"
    # Verbs and their undoing: "install Python" / "uninstall Python".
    "start end", "start finish", "raise lower", "increase lower", "install uninstall", "connect disconnect",
    "lock unlock", "mount unmount", "subscribe unsubscribe", "follow unfollow", "block unblock", "load unload",
    "pack unpack", "hide unhide", "arrive depart", "arrival departure",  # not zip, freeze, delete: nouns, or undone otherwise
    # What comes first against what comes next: "Which language should I learn first?" / "... next?".
    "first next", "last next", "previous next",
    # Ordinals: "the first man on the moon" / "the second man on the moon" (0.77 against 0.87).
    *(f"{x} {y}" for i, x in enumerate(("first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth",
                                        "ninth", "tenth")) for y in ("second", "third", "fourth", "fifth", "sixth",
                                                                      "seventh", "eighth", "ninth", "tenth")[i:]),
)


def _opposites(pairs: tuple[str, ...]) -> dict[str, frozenset[str]]:
    """Each word's opposites: a pair of texts is checked by one lookup per word only one side
    has, not by one per pair of such words."""
    out: dict[str, set[str]] = {}
    for x, y in (p.split() for p in pairs):
        out.setdefault(x, set()).add(y)
        out.setdefault(y, set()).add(x)
    return {w: frozenset(o) for w, o in out.items()}


OPPOSITES = _opposites(_ANTONYM_PAIRS)


def _opposed(only_a: set[str], only_b: set[str]) -> bool:
    return any(not OPPOSITES[x].isdisjoint(only_b) for x in only_a if x in OPPOSITES)


# Days and spans named from the day of asking: "the stock market yesterday" and "... today" ask
# about different days, however close their embeddings. Words that name the same span are one.
_TIME = re.compile(
    r"\b(?:the day (?:before yesterday|after tomorrow)|yesterday|today|tonight|tomorrow"
    r"|(?:last|this|next|past|previous|coming|current) (?:week|weekend|month|year|decade|century|quarter|semester"
    r"|night|morning|afternoon|evening|summer|winter|spring|autumn"
    r"|monday|tuesday|wednesday|thursday|friday|saturday|sunday))\b")
_SAME_FIRST = {"past": "last", "previous": "last", "coming": "next", "current": "this"}
_SAME_SPAN = {"tonight": "this night", "this evening": "this night"}


@memo_short
def times(text: str) -> frozenset[str]:
    """The time references named from the day of asking, one name each ("past year" = "last year")."""
    found = set()
    for m in _TIME.findall(" ".join(words(text))):
        first, _, rest = m.partition(" ")
        name = f"{_SAME_FIRST.get(first, first)} {rest}".strip()
        found.add(_SAME_SPAN.get(name, name))
    return frozenset(found)


def hard_mismatch(a: str, b: str) -> bool:
    """Differences that always mean another question, whatever the model says: different numbers
    on both sides ("2 eggs" vs "3 eggs") or joined in another order ("3/4" vs "4/3"), a time
    reference on each side that the other lacks ("yesterday" vs "today", "last week" vs "next week"), negation,
    opposites ("good" vs "bad"), a reversed direction ("a string to int" vs "an int to string"),
    swapped roles ("Croats like Turks" vs "Turks like Croats"), one side asking for more ("before"
    vs "before and after": `order_rules.asks_more`), the same words with other symbols
    or a unit's capitals ("1 MB" / "1 Mb", "\\W" / "\\w", "ls -r" / "ls -R", "C++ vs C#" swapped), a name one side
    adds to the other's words ("New York" vs "York", "MacBook Pro" vs "MacBook"), a name on one
    side that the other writes as a noun after "a" / "an" ("Python" vs "a python") or, in the same
    words, in lower case ("Rust" vs "rust": `names.case_only_name`), the same words
    laid out differently where layout can matter (line breaks, tabs, code, quotes), and the same
    words with other marks or case in the text a question hands over ("Reverse: hello" / "...
    hello."). A
    number on one side only ("... in 2016?") is left to the model: on validation a fifth of such
    pairs are labelled duplicates."""
    if a != b and a.split() == b.split() and _layout_matters(a, b):
        return True  # the same words laid out differently: in code or YAML, another question
    na, nb = numbers(a), numbers(b)
    if (na and nb and na != nb) or negated(a) != negated(b) or (na and runs_reordered(a, b)):
        return True
    ta, tb = times(a), times(b)
    if ta - tb and tb - ta:
        return True  # a time word one side adds may be the same question ("... today?" / "...?")
    wa, wb = words(a), words(b)
    if wa == wb:
        return a != b and (_marks(a, b) != _marks(b, a) or _capitonym(a, b) or case_only_name(a, b) or _data_differs(a, b))
    if _capitonym(a, b) or _name_as_noun(a, b, wa, wb):
        return True
    sa, sb = set(wa), set(wb)
    return (_opposed(sa - sb, sb - sa) or reversed_order(wa, wb) or directions_reversed(a, b)
            or swapped_roles(wa, wb) or asks_more(wa, wb) or _name_added(a, b, sa, sb))


# Words whose capital changes what they mean and that askers seldom write in lower case for the
# name: "Polish grammar" / "polish my shoes", "Turkey" / "turkey". Names people do write in lower
# case are left out: in QQP "windows", "amazon", "china", "steve jobs", "gst bill" stand for the
# name in all 50 pairs such words would refuse, 18 of them labelled duplicates.
# Acronyms that spell a common word ("What is AIDS?" / "What is aids?", SAD, May) went through as
# the same question with a similarity of 1.000: the embedder and cross-encoder ignore case.
_CAPITONYMS = frozenset({"polish", "turkey", "march", "august", "jersey", "may", "aids", "sad"})
_WORD_CASED = re.compile(r"[A-Za-z]+")


def _capitonym(a: str, b: str) -> bool:
    """A listed word written as a name past a sentence's start on one side and in lower case on
    the other ("How do I say this in Polish?" / "... in polish?"). A side written in title case
    ("How To Polish Shoes") says nothing by its capitals."""
    lowered = f"{a}\n{b}".lower()
    if not any(w in lowered for w in _CAPITONYMS):
        return False  # nearly every pair: none of the words anywhere, so no regex over both texts

    def cased(text: str) -> tuple[set[str], set[str]]:
        tokens = _WORD_CASED.findall(text)
        names = set() if title_case(tokens) else {w.lower() for w in _CAPITALISED.findall(text)} & _CAPITONYMS
        lower = {w for w in tokens if w in _CAPITONYMS}
        return names, lower

    names_a, lower_a = cased(a)
    names_b, lower_b = cased(b)
    return bool((names_a & lower_b) - lower_a or (names_b & lower_a) - lower_b)


_ARTICLES = frozenset({"a", "an", "the"})
_ARTICLE_NOUN = re.compile(r"\b(?:[Aa]n?|[Tt]he) ([A-Za-z][A-Za-z0-9]*)\b")


@memo_short
def _names_and_nouns(text: str) -> tuple[frozenset[str], frozenset[str]]:
    """(the words written as a name, capitalised past a sentence's start with no article before
    them; the words in lower case after "a" / "an"), lower-cased. An acronym is no name here:
    "a cpu" is the CPU."""
    found = [(m.group(0)[0], m.group(1)) for m in _ARTICLE_NOUN.finditer(text)]
    after_article = {word for _, word in found}
    names = set() if title_case(_WORD_CASED.findall(text)) else {
        w.lower() for w in _CAPITALISED.findall(text) if not w.isupper() and w not in after_article}
    nouns = {word for first, word in found if first in "Aa" and word.islower()}
    return frozenset(names), frozenset(nouns)


def _name_as_noun(a: str, b: str, wa: tuple[str, ...], wb: tuple[str, ...]) -> bool:
    """The same words but for articles, and a name on one side that the other writes in lower
    case after "a" / "an": "What is Python?" / "What is a python?" (the snake), "Oracle" / "an
    oracle", "What is Tesla worth?" / "What is a tesla worth?" (the unit). The verifier scores such
    pairs near 0.9: the embedder and the cross-encoder read no case, and an article is a stopword
    to the word features. A case-only difference is not this ("How do I learn Python?" / "how do
    I learn python?": the same question, often so in QQP)."""
    if [w for w in wa if w not in _ARTICLES] != [w for w in wb if w not in _ARTICLES]:
        return False
    names_a, nouns_a = _names_and_nouns(a)
    names_b, nouns_b = _names_and_nouns(b)
    return bool((names_a & nouns_b) - names_b or (names_b & nouns_a) - names_a)


# The text a question hands over to be worked on: after ": " or a line break, or inside quotes.
# There every mark and capital is part of the input ("Reverse this text: hello world" /
# "... hello world.", "Add the missing punctuation: how are you" / "... how are you?"), so the
# same words with other marks are another question when both sides hand the text over the same
# way. Quotes on one side only are emphasis ("What does "Quora" mean?" / "What does Quora mean?",
# labelled duplicates in QQP), and a final mark after a plain question ("What is the capital of
# France" / "...?") or after a closing quote is no difference.
_DATA_TAIL = re.compile(r"(?::\s|\n)(.*)\Z", re.S)
_DATA_QUOTED = re.compile(r"`[^`]*`|\"[^\"]*\"|“[^”]*”|(?<![A-Za-z0-9])'[^']*'(?![A-Za-z0-9])|‘[^’]*’")


def hands_over(text: str) -> bool:
    """Whether `text` hands over a text to work on: after ": " or a line break, or quoted."""
    return bool(_DATA_TAIL.search(text) or _DATA_QUOTED.search(text))


def _data_differs(a: str, b: str) -> bool:
    qa, qb = _DATA_QUOTED.findall(a), _DATA_QUOTED.findall(b)
    if qa and len(qa) == len(qb) and qa != qb:
        return True
    ta, tb = _DATA_TAIL.search(a), _DATA_TAIL.search(b)
    return ta is not None and tb is not None and ta.group(1).strip() != tb.group(1).strip()


# What `words` cannot see. Symbols inside a token (C++, C#, \\W, -r, 2 + 2, non-Latin script) and
# a unit's capitals after a number (1 MB, 5 mW) can be the whole question; a hyphen inside a word
# ("8-year-old"), marks at a token's ends, a dash or an ellipsis standing alone in prose, and the
# case of a name ("YouTube" / "Youtube", "GDP" / "gdp") are not.
_CODE = re.compile(r"[`=;{}]|\t")
_QUOTED = re.compile(r"`[^`]*`|\"[^\"]*\"|'[^']*'")
_SYMBOL = re.compile(r"[^\sA-Za-z0-9'’?.,!:;\"“”()\[\]]")
_INNER_HYPHEN = re.compile(r"(?<=[A-Za-z0-9])-(?=[A-Za-z0-9])")
_TOKEN_EDGES = "?.,!:;\"'“”‘’()[]…"
_PROSE_MARKS = frozenset("-–—…·•")
_NUMBER_TOKEN = re.compile(r"\d+(?:[.,]\d+)*")


def _layout_matters(a: str, b: str) -> bool:
    """Whether other spacing of the same words can be another question: line breaks (code, YAML),
    tabs, code characters, or spacing inside quotes ("'a  b'.split(' ')" is not "'a b'...")."""
    return "\n" in a or "\n" in b or bool(_CODE.search(a) or _CODE.search(b)) or _QUOTED.findall(a) != _QUOTED.findall(b)


def _marks(text: str, other: str) -> list[str]:
    """The tokens of `text` that carry symbols, units written after a number, and a last one of
    marks alone ("What does git add ." / "... add?": a word of the question), in order. A unit's
    case counts only when both texts use capitals at all: lower case says nothing by its case."""
    use_case = any(c.isupper() for c in text) and any(c.isupper() for c in other)
    has_digits = any(c.isdigit() for c in text)
    out, previous, parts = [], "", text.split()
    for i, raw in enumerate(parts):
        token = raw.strip(_TOKEN_EDGES)
        if token and set(token) <= _PROSE_MARKS and not has_digits:
            pass  # a dash or an ellipsis between words of prose
        elif _SYMBOL.search(_INNER_HYPHEN.sub("", token)) or (not token and 0 < i == len(parts) - 1):
            out.append(token or raw)
        elif use_case and _NUMBER_TOKEN.fullmatch(previous) and any(c.isupper() for c in token[1:]):
            out.append(token)
        previous = token
    return out


def _name_added(a: str, b: str, sa: set[str], sb: set[str]) -> bool:
    """One side is the other's words plus a capitalised name: another entity, not a rewording."""
    if sb < sa:
        longer, extra = a, sa - sb
    elif sa < sb:
        longer, extra = b, sb - sa
    else:
        return False
    return bool(extra & {w.lower() for w in _CAPITALISED.findall(longer)})


WORD_NAMES = (
    "idf_jaccard",
    "idf_unmatched_max",
    "idf_unmatched_min",
    "idf_top_unmatched",
    "unmatched_max",
    "unmatched_min",
    "align_worst",
    "align_idf_mean",
    "align_loss_max",
    "align_loss_min",
    "bag_cosine",
    "entity_unmatched",
    "order_agreement",
)
_MEMO_WORDS = 200_000  # distinct words whose wordpieces are remembered (~40 MB at most)
_CAPITALISED = re.compile(r"(?<![.?!]\s)(?<!^)\b[A-Z][a-zA-Z0-9]+")


class Lexicon:
    """MiniLM's wordpiece tokenizer, its static input embeddings (read from the installed model
    package, never shipped) and an IDF table per wordpiece (shipped with the verifier): what a
    sentence embedding blurs away, the one content word that differs, stays visible here."""

    def __init__(self, idf: np.ndarray | None = None):
        from safetensors import safe_open
        from tokenizers import Tokenizer

        from router.embedding import model_dir

        folder = model_dir()
        self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self.tokenizer.no_truncation()
        self.tokenizer.no_padding()
        with safe_open(str(folder / "model.safetensors"), "numpy") as f:
            table = f.get_tensor("embeddings.word_embeddings.weight").astype(np.float32)
        self.norms = np.maximum(np.linalg.norm(table, axis=1), 1e-6)
        self.vectors = table / self.norms[:, None]
        size = self.tokenizer.get_vocab_size()
        self.idf = np.ones(size, dtype=np.float32) if idf is None else np.asarray(idf, dtype=np.float32)
        self.skip = np.zeros(size, dtype=bool)  # stopwords, punctuation, special tokens
        for piece, i in self.tokenizer.get_vocab().items():
            if piece in STOPWORDS or not any(c.isalnum() for c in piece) or piece.startswith("["):
                self.skip[i] = True
        self._pieces: dict[str, list[int]] = {}

    def raw_vectors(self, ids: np.ndarray) -> np.ndarray:
        """The package's word embeddings of `ids` as stored (the cross-encoder's input), rebuilt
        from the unit vectors so the 47 MB table is held once."""
        return self.vectors[ids] * self.norms[ids][..., None]

    def content_ids(self, text: str) -> list[int]:
        """Content wordpieces in reading order, first occurrence of each. Words are split by
        `words()` and each word's pieces memoised: the tokenizer call per text was most of the cost."""
        seen: dict[int, None] = {}
        memo = self._pieces
        for w in words(text):
            ids = memo.get(w)
            if ids is None:
                ids = [i for i in self.tokenizer.encode(w, add_special_tokens=False).ids if not self.skip[i]]
                if len(memo) < _MEMO_WORDS:
                    memo[w] = ids
            for i in ids:
                seen.setdefault(i)
        return list(seen)


def _entities(text: str) -> frozenset[str]:
    """Capitalised words past the first: names, places, products ("Java" vs "Python")."""
    return frozenset(w.lower() for w in _CAPITALISED.findall(text))


def _order_agreement(ia: list[int], ib: list[int]) -> float:
    """Share of shared-word pairs in the same order on both sides: "dollars to rupees" vs
    "rupees to dollars" shares every word and scores 0."""
    pos = {t: k for k, t in enumerate(ib)}
    seq = [pos[t] for t in ia if t in pos]
    pairs = [(x < y) for k, x in enumerate(seq) for y in seq[k + 1:]]
    return sum(pairs) / len(pairs) if pairs else 1.0


class _Side:
    """What one text contributes to every pair it is in: computed once per text, so a lookup
    that checks 4 candidates tokenizes and embeds the new question once."""

    __slots__ = ("bag", "entities", "idf", "ids", "idset", "vecs")

    def __init__(self, lex: Lexicon, text: str):
        self.ids = lex.content_ids(text)
        self.idset = frozenset(self.ids)
        # One index array for both lookups, and a scalar square root for the norm: on texts of a
        # few words numpy's per-call overhead, not the arithmetic, is the cost of a lookup.
        index = np.array(self.ids, dtype=np.intp)
        self.idf = lex.idf[index]
        self.vecs = lex.vectors[index]
        bag = self.idf @ self.vecs
        self.bag = bag / max(math.sqrt(float(bag @ bag)), 1e-6)
        self.entities = _entities(text)


def _pair_word_features(x: _Side, y: _Side) -> list[float]:
    ma = np.fromiter((t not in y.idset for t in x.ids), dtype=bool, count=len(x.ids))
    mb = np.fromiter((t not in x.idset for t in y.ids), dtype=bool, count=len(y.ids))
    wua, wub = x.idf[ma], y.idf[mb]
    ua_idf, ub_idf = float(wua.sum()), float(wub.sum())
    union = float(x.idf.sum()) + ub_idf
    if len(x.ids) and len(y.ids):
        cross = x.vecs @ y.vecs.T
        best_a, best_b = cross.max(axis=1)[ma], cross.max(axis=0)[mb]
    else:
        best_a, best_b = np.zeros(len(wua), np.float32), np.zeros(len(wub), np.float32)
    loss_a, loss_b = float(wua @ (1.0 - best_a)), float(wub @ (1.0 - best_b))
    if len(wua) + len(wub):
        al, wt = np.concatenate([best_a, best_b]), np.concatenate([wua, wub])
        worst, mean, top = float(al.min()), float(al @ wt) / max(float(wt.sum()), 1e-6), float(wt.max())
    else:
        worst, mean, top = 1.0, 1.0, 0.0
    return [
        (union - ua_idf - ub_idf) / union if union > 0 else 1.0,
        max(ua_idf, ub_idf),
        min(ua_idf, ub_idf),
        top,
        float(max(len(wua), len(wub))),
        float(min(len(wua), len(wub))),
        worst,
        mean,
        max(loss_a, loss_b),
        min(loss_a, loss_b),
        float(x.bag @ y.bag) if len(x.ids) and len(y.ids) else 0.0,
        float(len(x.entities ^ y.entities)),
        _order_agreement(x.ids, y.ids),
    ]


def pair_features(texts_a: Sequence[str], texts_b: Sequence[str], emb_a: np.ndarray, emb_b: np.ndarray,
                  lexicon: Lexicon) -> np.ndarray:
    """Feature matrix: scalar and word-alignment features, then |a-b| and a*b over the (unit) embeddings."""
    emb_a = np.asarray(emb_a, dtype=np.float32).reshape(len(texts_a), -1)
    emb_b = np.asarray(emb_b, dtype=np.float32).reshape(len(texts_b), -1)
    cos = np.einsum("ij,ij->i", emb_a, emb_b)
    sides: dict[str, _Side] = {}
    for t in (*texts_a, *texts_b):
        if t not in sides:
            sides[t] = _Side(lexicon, t)
    scal = np.array([scalar_features(a, b, float(c)) + _pair_word_features(sides[a], sides[b])
                     for a, b, c in zip(texts_a, texts_b, cos)], dtype=np.float32).reshape(len(texts_a), -1)
    return np.hstack([scal, np.abs(emb_a - emb_b), emb_a * emb_b]).astype(np.float32)
