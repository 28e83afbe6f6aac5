"""The response cache itself (router/cache): keys and contexts, TTL, eviction, persistence,
tenant isolation, concurrent writers and a corrupted file on start. Real SQLite, real FAISS,
the shipped verifier and the real MiniLM embedder."""
from __future__ import annotations

import sqlite3
import threading

import numpy as np
import pytest

from router.cache.cache import ResponseCache
from router.cache.keys import request_keys
from router.cache.semantic import SemanticIndex
from router.cache.store import DB_NAME
from router.cache.verifier import Verifier
from router.embedding import shared_embedder


class Clock:
    def __init__(self, now: float = 1_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def verifier():
    return Verifier.load()


@pytest.fixture(scope="module")
def embed():
    memo: dict[str, np.ndarray] = {}

    def f(text: str) -> np.ndarray:
        if text not in memo:
            memo[text] = shared_embedder().encode_one(text)
        return memo[text]

    return f


def body(question: str, system: str | None = None, history: list[tuple[str, str]] = (), **params) -> dict:
    messages = [{"role": "system", "content": system}] if system else []
    for q, a in history:
        messages += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
    messages.append({"role": "user", "content": question})
    return {"model": "auto", "messages": messages, **params}


def answer(text: str) -> dict:
    return {"id": "x", "object": "chat.completion", "model": "m1",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]}


def put(cache, embed, b: dict, text: str, tenant: str = "t1", route: str = "auto", cost: float = 0.01):
    keys = request_keys(b, route, tenant)
    return cache.put(keys, tenant=tenant, route=route, response=answer(text), model="m1", cost_usd=cost, vector=embed(keys.text))


def get(cache, embed, b: dict, tenant: str = "t1", route: str = "auto"):
    keys = request_keys(b, route, tenant)
    return cache.lookup(keys, embed(keys.text) if keys.text else None)


def new_cache(verifier, path=None, **kw) -> ResponseCache:
    return ResponseCache(path, verifier=verifier, **kw)


def test_exact_hit_ignores_blank_ends_and_non_generation_fields(verifier, embed):
    cache = new_cache(verifier)
    put(cache, embed, body("What is the capital of France?"), "Paris.")
    hit = get(cache, embed, {**body("\n \nWhat is the capital of France? \r\n"), "stream": True, "user": "u9"})
    assert hit is not None and hit.kind == "hit" and hit.response["choices"][0]["message"]["content"] == "Paris."
    # Spacing inside the text is kept in the exact key: prose that differs only so still matches
    # semantically, code does not ("'a  b'.split(' ')" returns another list).
    assert get(cache, embed, body("What is the   capital of France?")).kind == "semantic-hit"
    put(cache, embed, body("What does 'a  b'.split(' ') return in Python?"), "['a', '', 'b']")
    assert get(cache, embed, body("What does 'a b'.split(' ') return in Python?")) is None
    put(cache, embed, body("Split this on tabs: a\tb\tc"), "a | b | c")
    assert get(cache, embed, body("Split this on tabs: a b c")) is None


@pytest.mark.parametrize("cached, asked", [
    # what the rules for symbols and units must not refuse: a name's case, prose marks, a quote
    ("What is GDP?", "What is gdp?"),
    ("How do I upload a video to YouTube?", "How do I upload a video to Youtube?"),
    ("Is a PhD worth it?", "Is a Phd worth it?"),
    ("Life - what is it all about?", "Life, what is it all about?"),
    ("What does  \"carpe diem\" mean?", "What does \"carpe diem\" mean?"),
    ("Who wrote Hamlet (the play)?", "Who wrote Hamlet (the play)"),
    # an addition that joins on no new thing asks nothing more
    ("What is inflation?", "What is inflation and why?"),
    ("What should I eat?", "What should I eat, and when?"),
])
def test_the_same_question_written_a_little_differently_is_no_hard_refusal(cached, asked):
    from router.cache.features import hard_mismatch

    assert not hard_mismatch(cached, asked) and not hard_mismatch(asked, cached)


def test_equal_numbers_written_differently_are_one_key():
    zero, zero_point = {**body("Hi?"), "temperature": 0}, {**body("Hi?"), "temperature": 0.0}
    assert request_keys(zero, "auto", "t1") == request_keys(zero_point, "auto", "t1")
    assert request_keys({**zero, "temperature": 0.5}, "auto", "t1").exact != request_keys(zero, "auto", "t1").exact


def test_paraphrase_is_a_semantic_hit(verifier, embed):
    cache = new_cache(verifier)
    put(cache, embed, body("How can I improve my English speaking skills?"), "Practice daily.")
    hit = get(cache, embed, body("What is the best way to improve my English speaking skills?"))
    assert hit is not None and hit.kind == "semantic-hit"
    assert 0.0 < hit.similarity < 1.0 and hit.probability >= verifier.threshold


@pytest.mark.parametrize("cached, asked", [
    ("How do I convert Celsius to Fahrenheit?", "How do I convert Fahrenheit to Celsius?"),
    ("How many calories are in 2 eggs?", "How many calories are in 3 eggs?"),
    ("Is it safe to drink coffee during pregnancy?", "Is it not safe to drink coffee during pregnancy?"),
    ("What is the capital of France?", "What is the capital of Germany?"),
    ("Is coffee good for you?", "Is coffee bad for you?"),
    ("What are the advantages of remote work?", "What are the disadvantages of remote work?"),
    ("How do I convert dollars to rupees?", "How do I convert rupees to dollars?"),
    # what `words` cannot see: inner capitals, symbols, a name one side adds (a review found each served)
    ("How many bits are in 1 MB?", "How many bits are in 1 Mb?"),
    ("In Python regex, what does \\W match?", "In Python regex, what does \\w match?"),
    ("What does ls -r do?", "What does ls -R do?"),
    ("Is C++ better than C#?", "Is C# better than C++?"),
    ("What time zone is New York in?", "What time zone is York in?"),
    ("Is this valid Prolog: foo(X) :- bar(X).", "Is this valid Prolog: foo(X) :- bar(X)"),
    ("What is 2 + 2?", "What is 2 - 2?"),
    # A final mark after a blank is a word of the question: dropped with the blank, these were hits
    # with probability 1, past the verifier and the hard rules.
    ("What is the ASCII code of ?", "What is the ASCII code of ."),
    ("What does git add .", "What does git add?"),
    ("Explain grep -r TODO .", "Explain grep -r TODO"),
    ("Copy the file here with cp report.txt .", "Copy the file here with cp report.txt"),
])
def test_different_questions_miss(verifier, embed, cached, asked):
    cache = new_cache(verifier)
    put(cache, embed, body(cached), "cached answer")
    assert get(cache, embed, body(asked)) is None


@pytest.mark.parametrize("change", [
    {"system": "You are a pirate. Answer in pirate speak."},
    {"history": [("Let's talk about Python the snake.", "Sure.")]},
    {"temperature": 0.0},
    {"tools": [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]},
    {"response_format": {"type": "json_object"}},
])
def test_same_question_in_another_context_misses(verifier, embed, change):
    cache = new_cache(verifier)
    question = "How can I improve my English speaking skills?"
    put(cache, embed, body(question, system="You are a helpful assistant."), "Practice daily.")
    assert get(cache, embed, body(question, system="You are a helpful assistant.")) is not None
    other = dict(change)
    kwargs = {"system": other.pop("system", "You are a helpful assistant."), "history": other.pop("history", ())}
    assert get(cache, embed, body(question, **kwargs, **other)) is None
    paraphrase = "What is the best way to improve my English speaking skills?"
    assert get(cache, embed, body(paraphrase, **kwargs, **other)) is None


def test_may_hit_tells_when_no_lookup_or_embedding_is_needed(verifier, embed):
    cache = new_cache(verifier, max_entries=1)
    question, paraphrase = "How can I improve my English speaking skills?", "What is the best way to improve my English speaking skills?"
    keys = request_keys(body(question, system="S1"), "auto", "t1")
    assert cache.may_hit(keys) == (False, False)
    put(cache, embed, body(question, system="S1"), "Practice daily.")
    assert cache.may_hit(keys) == (True, True)
    assert cache.may_hit(request_keys(body(paraphrase, system="S1"), "auto", "t1")) == (False, True)
    for other in (body(question, system="S2"), body(question, system="S1", history=[("hi", "hello")])):
        assert cache.may_hit(request_keys(other, "auto", "t1")) == (False, False)
        assert get(cache, embed, other) is None
    put(cache, embed, body("Something else", system="S3"), "x")  # evicts the only S1 entry
    assert cache.may_hit(keys) == (False, False)


def test_a_question_longer_than_the_embedder_reads_is_cached_exactly_only(verifier, embed):
    # Two documents alike in their first 256 wordpieces look identical to the embedder, and the
    # verifier's cost grows with the square of their words (under the cache's lock).
    cache = new_cache(verifier)
    head = "Please review the following contract clause by clause and list every risk you find. " * 12
    asked = head + "The tenant pays all repairs. " * 200
    put(cache, embed, body(asked), "Risks: ...")
    assert not request_keys(body(asked), "auto", "t1").semantic_ok
    assert cache.may_hit(request_keys(body(head + "The landlord pays all repairs. " * 200), "auto", "t1")) == (False, False)
    assert get(cache, embed, body(head + "The landlord pays all repairs. " * 200)) is None
    assert get(cache, embed, body(asked)).kind == "hit"


def test_routes_and_tenants_are_isolated(verifier, embed):
    cache = new_cache(verifier)
    put(cache, embed, body("What is the capital of France?"), "Paris.", tenant="alice")
    assert get(cache, embed, body("What is the capital of France?"), tenant="bob") is None
    assert get(cache, embed, body("What's the capital of France?"), tenant="bob") is None
    assert get(cache, embed, body("What is the capital of France?"), tenant="alice", route="auto:cheap") is None
    assert get(cache, embed, body("What is the capital of France?"), tenant="alice") is not None


def test_ttl_expiry_default_and_per_route(verifier, embed):
    clock = Clock()
    cache = new_cache(verifier, ttl_s=100.0, route_ttl_s={"auto:cheap": 10.0}, clock=clock)
    put(cache, embed, body("What is the capital of France?"), "Paris.")
    put(cache, embed, body("What is the capital of France?"), "Paris.", route="auto:cheap")
    clock.now += 11
    assert get(cache, embed, body("What is the capital of France?"), route="auto:cheap") is None
    assert get(cache, embed, body("What is the capital of France?")) is not None
    clock.now += 90
    assert get(cache, embed, body("What is the capital of France?")) is None
    assert get(cache, embed, body("What's the capital of France?")) is None
    assert len(cache) == 0


def test_eviction_drops_least_recently_used(embed):
    cache = ResponseCache(None, semantic=False, max_entries=2)  # exact only: what is found is exactly what was kept
    put(cache, embed, body("What is the capital of France?"), "Paris.")
    put(cache, embed, body("What is the capital of Spain?"), "Madrid.")
    assert get(cache, embed, body("What is the capital of France?")) is not None  # France is now the most recent
    put(cache, embed, body("What is the capital of Italy?"), "Rome.")
    assert len(cache) == 2
    assert get(cache, embed, body("What is the capital of Spain?")) is None
    assert get(cache, embed, body("What is the capital of France?")) is not None
    assert get(cache, embed, body("What is the capital of Italy?")) is not None


def test_entries_survive_a_restart(verifier, embed, tmp_path):
    clock = Clock()
    cache = new_cache(verifier, tmp_path, clock=clock, ttl_s=50.0)
    put(cache, embed, body("How can I improve my English speaking skills?"), "Practice daily.", cost=0.02)
    put(cache, embed, body("What is the capital of France?"), "Paris.")
    cache.close()
    reopened = new_cache(verifier, tmp_path, clock=clock, ttl_s=50.0)
    assert len(reopened) == 2
    hit = get(reopened, embed, body("What is the best way to improve my English speaking skills?"))
    assert hit is not None and hit.kind == "semantic-hit" and hit.entry.cost_usd == 0.02
    reopened.close()
    clock.now += 60  # expired while the gateway was down
    assert len(new_cache(verifier, tmp_path, clock=clock)) == 0


def test_an_unclosed_cache_is_still_readable(verifier, embed, tmp_path):
    """No close(): what a killed process leaves behind (WAL not checkpointed)."""
    cache = new_cache(verifier, tmp_path)
    put(cache, embed, body("What is the capital of France?"), "Paris.")
    reopened = new_cache(verifier, tmp_path)
    assert get(reopened, embed, body("What is the capital of France?")) is not None


def test_corrupted_file_on_start_is_moved_aside(verifier, embed, tmp_path):
    (tmp_path / DB_NAME).write_bytes(b"this is not an SQLite database" * 100)
    cache = new_cache(verifier, tmp_path)
    assert len(cache) == 0
    assert [p.name for p in tmp_path.iterdir() if ".corrupt-" in p.name]
    put(cache, embed, body("What is the capital of France?"), "Paris.")
    cache.close()
    assert len(new_cache(verifier, tmp_path)) == 1


def test_malformed_rows_are_dropped_on_start(verifier, embed, tmp_path):
    cache = new_cache(verifier, tmp_path)
    put(cache, embed, body("What is the capital of France?"), "Paris.")
    put(cache, embed, body("What is the capital of Spain?"), "Madrid.")
    cache.close()
    db = sqlite3.connect(tmp_path / DB_NAME)
    db.execute("UPDATE entries SET vector = x'0102' WHERE text LIKE '%France%'")
    db.execute("UPDATE entries SET response = '{not json' WHERE text LIKE '%Spain%'")
    db.commit()
    db.close()
    reopened = new_cache(verifier, tmp_path)
    assert len(reopened) == 1
    assert get(reopened, embed, body("What is the capital of Spain?")) is None
    assert len(reopened) == 0


@pytest.mark.parametrize("damage", ["[1]", "{}", '{"choices": [7]}', '{"choices": []}'])
def test_a_response_that_parses_but_is_no_completion_is_dropped_not_served(verifier, embed, tmp_path, damage):
    # it was served: a 500 on every retry for "[1]", a hit with no answer for "{}"
    cache = new_cache(verifier, tmp_path)
    put(cache, embed, body("What is the capital of Italy?"), "Rome.")
    cache.close()
    db = sqlite3.connect(tmp_path / DB_NAME)
    db.execute("UPDATE entries SET response = ?", (damage,))
    db.commit()
    db.close()
    reopened = new_cache(verifier, tmp_path)
    assert get(reopened, embed, body("What is the capital of Italy?")) is None and len(reopened) == 0


def test_concurrent_writers_and_readers(verifier, embed, tmp_path):
    cache = new_cache(verifier, tmp_path, max_entries=1000)
    questions = [f"What is item number {i} in the catalogue?" for i in range(40)]
    vectors = {q: embed(q) for q in questions}
    errors: list[BaseException] = []

    def writer(part: list[str]) -> None:
        try:
            for q in part:
                keys = request_keys(body(q), "auto", "t1")
                cache.put(keys, tenant="t1", route="auto", response=answer(q), model="m1", cost_usd=0.0, vector=vectors[q])
                assert cache.lookup(keys, vectors[q]) is not None
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(questions[i::4],)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(cache) == 40
    cache.close()
    reopened = new_cache(verifier, tmp_path)
    for q in questions:
        hit = get(reopened, embed, body(q))
        assert hit is not None and hit.kind == "hit" and hit.response["choices"][0]["message"]["content"] == answer(q)["choices"][0]["message"]["content"]


def test_bucket_switches_to_hnsw_and_keeps_finding_entries():
    rng = np.random.default_rng(0)
    vecs = rng.normal(size=(300, 384)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    index = SemanticIndex(384, hnsw_from=100)
    # Under the index's lock, as the cache calls it: the switch to HNSW (and the rebuild that the
    # 75th removal starts) runs in the background and must not interleave with these changes.
    with index._lock:
        for i, v in enumerate(vecs):
            index.add("ctx", i, v)
    assert index.wait_for_rebuilds(60)
    bucket = index.buckets["ctx"]
    assert bucket.hnsw
    with index._lock:
        for i in range(0, 300, 2):
            index.remove("ctx", i)
    assert index.wait_for_rebuilds(60)
    assert index.buckets["ctx"] is bucket and bucket.hnsw
    assert len(bucket) == 150
    for i in range(1, 300, 38):
        found = bucket.search(vecs[i], 1)
        assert found[0][0] == i and found[0][1] == pytest.approx(1.0, abs=1e-4)
    assert all(j % 2 == 1 for j, _ in bucket.search(vecs[0], 5))


def _fill_hnsw(verifier, embed, path, clock, n: int = 40):
    """A context big enough for HNSW (hnsw_from=16): the questions of `test_concurrent_writers...` style."""
    cache = new_cache(verifier, path, hnsw_from=16, clock=clock, ttl_s=100.0)
    questions = [f"What is the population of city number {i} in the atlas?" for i in range(n)]
    for q in questions:
        put(cache, embed, body(q), q)
    assert cache._index.wait_for_rebuilds(60)  # the switch to HNSW is built in the background
    return cache, questions


def _hits(cache, embed, questions):
    return [(h.kind, h.response["choices"][0]["message"]["content"]) if (h := get(cache, embed, body(q))) else None
            for q in questions]


def test_a_clean_restart_reads_the_index_snapshot_instead_of_rebuilding(verifier, embed, tmp_path, caplog):
    clock = Clock()
    cache, questions = _fill_hnsw(verifier, embed, tmp_path, clock)
    paraphrases = [q.replace("What is the population of", "How many people live in") for q in questions[:6]]
    before = _hits(cache, embed, questions + paraphrases)
    cache.close()
    assert (tmp_path / "index" / "manifest.json").exists()
    # While the gateway is down: one entry expires early, one is added by another process.
    db = sqlite3.connect(tmp_path / DB_NAME)
    db.execute("UPDATE entries SET expires = 0 WHERE text = ?", (questions[0],))
    db.commit()
    db.close()
    with caplog.at_level("INFO", logger="router.cache.cache"):
        reopened = new_cache(verifier, tmp_path, hnsw_from=16, clock=clock, ttl_s=100.0)
    assert "1 of 1 indexes from the shutdown snapshot" in caplog.text
    assert not (tmp_path / "index").exists()  # consumed: a crash from here on means a rebuild
    after = _hits(reopened, embed, questions + paraphrases)
    # The expired entry is gone (and so is any paraphrase's hit on it); nothing else changed.
    assert after == [None if hit and hit[1] == questions[0] else hit for hit in before]
    assert after[0] is None and sum(hit is not None for hit in after[len(questions):]) >= 3
    put(reopened, embed, body("Which river flows through the capital?"), "The Thames.")
    assert get(reopened, embed, body("Which river flows through the capital?")).kind == "hit"


def test_a_snapshot_that_disagrees_with_the_rows_is_not_used(verifier, embed, tmp_path, caplog):
    clock = Clock()
    cache, questions = _fill_hnsw(verifier, embed, tmp_path, clock)
    cache.close()
    # The row's vector changed under the snapshot (a row id reused by another process, say):
    # the stale vector must not answer for it.
    db = sqlite3.connect(tmp_path / DB_NAME)
    db.execute("UPDATE entries SET vector = ? WHERE text = ?", (embed("Best pizza in Naples?").tobytes(), questions[3]))
    db.commit()
    db.close()
    with caplog.at_level("INFO", logger="router.cache.cache"):
        reopened = new_cache(verifier, tmp_path, hnsw_from=16, clock=clock, ttl_s=100.0)
    assert "0 of 1 indexes from the shutdown snapshot" in caplog.text
    assert reopened._index.wait_for_rebuilds(60)  # rebuilt in the background; the index is searched under the cache's lock
    found = reopened._index.search(request_keys(body(questions[3]), "auto", "t1").fingerprint, embed("Best pizza in Naples?"), 1)
    assert found and found[0][1] == pytest.approx(1.0, abs=1e-4)  # the rebuilt index holds the row's vector


def test_a_damaged_snapshot_means_a_rebuild_not_a_crash(verifier, embed, tmp_path, caplog):
    clock = Clock()
    cache, questions = _fill_hnsw(verifier, embed, tmp_path, clock)
    cache.close()
    for f in (tmp_path / "index").glob("*.faiss"):
        f.write_bytes(f.read_bytes()[:1000])
    with caplog.at_level("WARNING"):
        reopened = new_cache(verifier, tmp_path, hnsw_from=16, clock=clock, ttl_s=100.0)
    assert "unreadable" in caplog.text
    assert all(h is not None and h[0] == "hit" for h in _hits(reopened, embed, questions))


def test_line_breaks_and_indentation_are_part_of_the_question(verifier, embed):
    a = "What does this print?\nfor i in range(3):\n    pass\n    print(i)"
    b = "What does this print?\nfor i in range(3):\n    pass\nprint(i)"
    assert request_keys(body(a), "auto", "t1").exact != request_keys(body(b), "auto", "t1").exact
    cache = new_cache(verifier)
    put(cache, embed, body(a), "0 1 2")
    assert get(cache, embed, body(b)) is None  # same words, another program: no semantic hit either
    assert get(cache, embed, body(a + "  \n")).kind == "hit"  # trailing blanks are not a difference
    # nor is the first line's indentation dropped: YAML indented otherwise is another document
    assert request_keys(body("    x: 1\n    y: 2"), "auto", "t1").exact != request_keys(body("x: 1\n    y: 2"), "auto", "t1").exact


def _after_call(name: str) -> dict:
    return {"model": "auto", "messages": [{"role": "assistant", "content": None, "function_call": {"name": name, "arguments": "{}"}},
                                          {"role": "user", "content": "What is the capital of France?"}]}


@pytest.mark.parametrize("base, other", [
    (body("What is the capital of France?"), {**body("What is the capital of France?"), "top_k": 5}),
    (body("What is the capital of France?"), {**body("What is the capital of France?"), "min_p": 0.1}),
    (body("What is the capital of France?"), {**body("What is the capital of France?"), "function_call": {"name": "f"}}),
    (_after_call("f"), _after_call("g")),  # a legacy function call earlier in the conversation
])
def test_every_field_that_reaches_the_model_is_keyed(base, other):
    assert request_keys(other, "auto", "t1").exact != request_keys(base, "auto", "t1").exact
    assert request_keys({**base, "user": "u1", "stream": True, "metadata": {"a": 1}}, "auto", "t1") == request_keys(base, "auto", "t1")


def test_who_asks_is_part_of_the_context():
    alice = {"model": "auto", "messages": [{"role": "user", "name": "alice", "content": "Which pull requests are mine?"}]}
    bob = {"model": "auto", "messages": [{"role": "user", "name": "bob", "content": "Which pull requests are mine?"}]}
    assert request_keys(alice, "auto", "t1").fingerprint != request_keys(bob, "auto", "t1").fingerprint


def test_only_finished_non_empty_answers_are_stored():
    from router.cache.policy import cache_control, response_cacheable

    def resp(finish, content="Paris.", **message):
        return {"choices": [{"index": 0, "finish_reason": finish, "message": {"role": "assistant", "content": content, **message}}]}

    assert response_cacheable(resp("stop"), "ok", False) is None
    # a client that gave up waiting left a whole answer: its SDK's retry should find it
    assert response_cacheable(resp("stop"), "client_closed", False) is None
    assert response_cacheable(resp(None, "The capital of"), "client_closed", False) == "finish_reason None"  # left mid-stream
    assert response_cacheable(resp("stop"), "truncated", False) == "status truncated"
    assert response_cacheable(resp("error", "The capital of Austral"), "ok", False) == "finish_reason error"
    assert response_cacheable(resp("stop", "  "), "ok", False) == "empty answer"
    assert response_cacheable(resp("stop", None, refusal="I can't help with that."), "ok", False) is None
    calls = resp("tool_calls", None, tool_calls=[{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}])
    assert response_cacheable(calls, "ok", False) == "tool call" and response_cacheable(calls, "ok", True) is None
    from starlette.datastructures import Headers

    two_lines = Headers(raw=[(b"cache-control", b"max-age=0"), (b"cache-control", b"no-store")])
    assert cache_control(two_lines).write is False


def test_a_request_for_logprobs_is_not_cached():
    from router.cache.policy import request_cacheable

    assert request_cacheable(body("Hi?"), False) is None
    assert request_cacheable({**body("Hi?"), "logprobs": True}, False) == "logprobs"
    assert request_cacheable({**body("Hi?"), "logprobs": False, "top_logprobs": 3}, False) == "logprobs"


def test_a_question_without_its_final_mark_is_the_same_question(verifier, embed):
    cache = new_cache(verifier)
    put(cache, embed, body("How do I reset my password?"), "Settings > Security.")
    hit = get(cache, embed, body("How do I reset my password"))
    assert hit is not None and hit.kind == "semantic-hit" and hit.probability == 1.0
    assert get(cache, embed, body("How do I reset my email?")) is None  # one word more than a mark
    # A final mark that is part of the question is not dropped: to the verifier, which refuses these.
    put(cache, embed, body("What is 5!"), "120")
    assert get(cache, embed, body("What is 5?")) is None
    put(cache, embed, body("Escape this regex character: ."), r"\.")
    assert get(cache, embed, body("Escape this regex character: ?")) is None
    put(cache, embed, body("Who wrote Hamlet (the play)?"), "Shakespeare.")  # after a bracket, "?" goes; "." stays
    assert get(cache, embed, body("Who wrote Hamlet (the play)")).probability == 1.0
