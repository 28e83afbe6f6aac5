"""What the cache keeps per entry, as behaviour: a context of one entry is matched without a FAISS
index, and one left with one entry goes back to that; the first question after earlier turns is
kept for exact hits only until its context is asked again; answers kept packed in memory come
back as they were stored; `max_bytes` bounds what the entries hold. Real FAISS, the shipped
verifier and the real MiniLM embedder."""
from __future__ import annotations

import numpy as np

from router.cache.cache import ResponseCache
from router.cache.keys import request_keys
from tests import test_cache_core as core
from tests.test_cache_core import answer, body, get, new_cache, put

verifier, embed = core.verifier, core.embed  # the module's fixtures, shared

SYSTEM = "You are a helpful assistant."
Q = "How can I improve my English speaking skills?"
PARAPHRASE = "What is the best way to improve my English speaking skills?"
HISTORY = [("I have a job interview in English next month.", "Good luck! How can I help you prepare?")]


def content(hit) -> str:
    return hit.response["choices"][0]["message"]["content"]


def test_a_context_of_one_entry_hits_and_misses_as_a_bigger_one(verifier, embed):
    cache = new_cache(verifier)
    english = put(cache, embed, body(Q, system=SYSTEM), "Practise daily.")
    assert get(cache, embed, body(Q, system=SYSTEM)).kind == "hit"
    hit = get(cache, embed, body(PARAPHRASE, system=SYSTEM))
    assert hit.kind == "semantic-hit" and content(hit) == "Practise daily." and 0.5 < hit.similarity < 1.0
    assert get(cache, embed, body("What is the capital of France?", system=SYSTEM)) is None
    assert get(cache, embed, body(PARAPHRASE, system="You are a pirate.")) is None

    put(cache, embed, body("What is the capital of France?", system=SYSTEM), "Paris.")  # two: an index now
    assert content(get(cache, embed, body(PARAPHRASE, system=SYSTEM))) == "Practise daily."
    assert content(get(cache, embed, body("What's the capital of France?", system=SYSTEM))) == "Paris."

    assert cache.forget(english.id, english.created)  # one left: no index again
    assert get(cache, embed, body(PARAPHRASE, system=SYSTEM)) is None
    assert content(get(cache, embed, body("What's the capital of France?", system=SYSTEM))) == "Paris."
    assert cache.may_hit(request_keys(body(PARAPHRASE, system=SYSTEM), "auto", "t1")) == (False, True)


def test_a_conversations_first_question_hits_exactly_and_its_context_from_the_second_question(verifier, embed, tmp_path):
    cache = new_cache(verifier, tmp_path)
    first = body(Q, system=SYSTEM, history=HISTORY)
    # The gateway embeds an answered question to store it only where its vector would be kept.
    assert not cache.stores_vector(request_keys(first, "auto", "t1"))
    assert cache.stores_vector(request_keys(body(Q, system=SYSTEM), "auto", "t1"))
    put(cache, embed, first, "Practise daily.")
    assert get(cache, embed, first).kind == "hit"  # an SDK retry or a regeneration sends the same request
    # Another question at the same point of the conversation: the context is known, the first
    # question's vector was not kept.
    edited = body(PARAPHRASE, system=SYSTEM, history=HISTORY)
    assert cache.may_hit(request_keys(edited, "auto", "t1")) == (False, False)  # nothing there to match by meaning yet
    assert get(cache, embed, edited) is None
    assert cache.stores_vector(request_keys(edited, "auto", "t1"))
    put(cache, embed, edited, "Speak every day.")
    hit = get(cache, embed, body("How do I improve my spoken English?", system=SYSTEM, history=HISTORY))
    assert hit.kind == "semantic-hit" and content(hit) == "Speak every day."
    # Without earlier turns the first question is matched at once, as before.
    put(cache, embed, body(Q, system=SYSTEM), "Read aloud.")
    assert content(get(cache, embed, body(PARAPHRASE, system=SYSTEM))) == "Read aloud."
    cache.close()
    reopened = new_cache(verifier, tmp_path)
    assert content(get(reopened, embed, first)) == "Practise daily."
    assert get(reopened, embed, edited).kind == "hit"


def test_a_context_counts_as_asked_while_any_entry_of_it_lives(verifier, embed):
    cache = new_cache(verifier)
    first = put(cache, embed, body(Q, system=SYSTEM, history=HISTORY), "Practise daily.")
    edited = body(PARAPHRASE, system=SYSTEM, history=HISTORY)
    second = put(cache, embed, edited, "Speak every day.")
    assert cache.may_hit(request_keys(edited, "auto", "t1")) == (True, True)
    # The second question stored again (two identical requests that both missed): the context was
    # asked all along, so its vector is kept and it is still matched by meaning.
    again = put(cache, embed, edited, "Speak every day.")
    hit = get(cache, embed, body("How do I improve my spoken English?", system=SYSTEM, history=HISTORY))
    assert hit.kind == "semantic-hit" and content(hit) == "Speak every day."
    # Once every entry of the context is gone, its next question starts over: exact hits only.
    assert cache.forget(first.id, first.created) and cache.forget(again.id, again.created)
    assert not cache.forget(second.id, second.created)  # replaced by `again`
    assert cache.may_hit(request_keys(edited, "auto", "t1")) == (False, False)
    put(cache, embed, edited, "Speak every day.")
    assert get(cache, embed, body("How do I improve my spoken English?", system=SYSTEM, history=HISTORY)) is None


def test_answers_come_back_from_memory_as_they_were_stored(verifier, embed):
    cache = new_cache(verifier)
    long_answer = "Übung macht den Meister — 練習は完璧を作る. " * 400 + "\n```python\nprint('ok')\n```"
    stored = {**answer(long_answer), "usage": {"prompt_tokens": 12, "completion_tokens": 3400, "total_tokens": 3412},
              "system_fingerprint": None}
    keys = request_keys(body(Q), "auto", "t1")
    cache.put(keys, tenant="t1", route="auto", response=stored, model="m1", cost_usd=0.01, vector=embed(Q))
    assert get(cache, embed, body(Q)).response == stored
    assert get(cache, embed, body(PARAPHRASE)).response == stored
    short = answer("Yes.")
    cache.put(keys, tenant="t1", route="auto", response=short, model="m1", cost_usd=0.01, vector=embed(Q))
    assert get(cache, embed, body(Q)).response == short
    assert len(cache) == 1 and cache._store.count() == 1  # the replaced answer is not kept beside it


def test_past_max_bytes_the_least_recently_used_answers_go_and_on_disk_answers_do_not_count(embed, tmp_path):
    rng = np.random.default_rng(0)
    answers = [" ".join(str(x) for x in rng.integers(0, 10**9, 2000)) for _ in range(10)]  # ~9 KB packed each
    memory = ResponseCache(None, semantic=False, max_bytes=40_000)
    disk = ResponseCache(tmp_path, semantic=False, max_bytes=40_000)
    for cache in (memory, disk):
        for i in range(10):
            put(cache, embed, body(f"question {i}"), answers[i])
    kept = [i for i in range(10) if get(memory, embed, body(f"question {i}")) is not None]
    assert 2 <= len(kept) <= 4 and kept == list(range(10 - len(kept), 10))
    assert memory.bytes_held <= 40_000
    assert len(disk) == 10 and disk.bytes_held < 40_000  # only keys and questions are in memory
    assert get(disk, embed, body("question 0")).response["choices"][0]["message"]["content"] == answers[0]
