"""A name and the common noun it spells, written alike but for the case of that word ("How do I fix
Rust?" / "How do I fix rust?"): every model reads lower-cased text, so the shipped verifier served
one's answer for the other. Careless case is no refusal. The shipped verifier and the real MiniLM
embedder."""
from __future__ import annotations

import pytest

from router.cache.features import hard_mismatch
from tests.test_cache_core import body, embed, get, new_cache, put, verifier  # noqa: F401 (fixtures)


@pytest.mark.parametrize("cached, asked", [
    ("How do I fix Rust?", "How do I fix rust?"),
    ("What is Rust used for?", "What is rust used for?"),
    ("How do I fix Rust", "How do I fix rust?"),  # a final mark is no difference: the name still is
    ("How do I clean Windows?", "How do I clean windows?"),
    ("What is Swift used for?", "What is swift used for?"),
])
def test_a_name_against_the_noun_it_spells_in_lower_case_is_refused(verifier, embed, cached, asked):  # noqa: F811
    assert hard_mismatch(cached, asked) and hard_mismatch(asked, cached)
    for first, second in ((cached, asked), (asked, cached)):
        cache = new_cache(verifier)
        put(cache, embed, body(first), "cached answer")
        assert get(cache, embed, body(second)) is None


@pytest.mark.parametrize("cached, asked", [
    ("How do I learn Python?", "how do I learn python?"),  # careless about case throughout
    ("How do i fix Rust?", "How do i fix rust?"),  # "i": careless about case
    ("How To Fix Rust", "How to fix rust"),  # title case says nothing by its capitals
    ("How do I fix RUST?", "How do I fix rust?"),  # shouting
    ("Rust is slow. Why?", "rust is slow. Why?"),  # a sentence's first word
    # QQP's own questions asked again in another case, all meaning the same: names that are no
    # common noun, and common nouns capitalised for no reason.
    ("How do I post a question in Quora?", "How do I post a question in quora?"),
    ("How can I improve my communication skills in English?", "How can I improve my communication skills in english?"),
    ("What are the best Car technology gadgets?", "What are the best car technology gadgets?"),
    ("If Trump becomes President, how will it affect India?", "If Trump becomes president, how will it affect India?"),
])
def test_careless_case_is_no_refusal(cached, asked):
    assert not hard_mismatch(cached, asked) and not hard_mismatch(asked, cached)
