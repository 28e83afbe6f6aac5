"""The cache inside the running gateway, through the real `openai` SDK: miss then hit,
semantic hits with their similarity, SSE for streamed hits, Cache-Control, what is never
stored, saved cost in the outcome log and metrics, and persistence across a gateway restart."""
from __future__ import annotations

import httpx
import openai
import pytest

from router.config import CacheSection
from service.hooks.cache_hook import CacheHook
from tests.fake_upstream import cut_stream, ok, server_error
from tests.gateway_harness import DEFAULT_QUALITY, QualityRouter, Running, fake_config

Q = "How can I improve my English speaking skills?"
PARAPHRASE = "What is the best way to improve my English speaking skills?"


def msgs(text: str, system: str | None = None) -> list[dict]:
    return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": text}]


def start(upstream, tmp_path, **cache) -> Running:
    config = fake_config(upstream.base_url, f"sqlite:///{tmp_path}/outcomes.sqlite")
    config = config.model_copy(update={"cache": CacheSection(enabled=True, path=str(tmp_path / "cache"), **cache)})
    return Running(config, router=QualityRouter(DEFAULT_QUALITY))


@pytest.fixture
def gw(upstream, tmp_path):
    upstream.reset()
    running = start(upstream, tmp_path)
    yield running
    running.stop()


def cache_of(gw) -> CacheHook:
    return next(h for h in gw.gateway.pipeline.hooks if isinstance(h, CacheHook))


def stored(gw, n: int) -> None:
    """Wait until the post-hooks (background) stored `n` entries."""
    import time

    deadline = time.monotonic() + 10
    while len(cache_of(gw).cache) < n and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(cache_of(gw).cache) == n


def test_miss_then_exact_hit_with_zero_usage_and_saved_cost(gw, upstream):
    client = gw.client()
    first = client.chat.completions.with_raw_response.create(model="auto", messages=msgs(Q))
    assert first.headers["x-cache"] == "miss"
    stored(gw, 1)
    second = client.chat.completions.with_raw_response.create(model="auto", messages=msgs(Q))
    assert second.headers["x-cache"] == "hit"
    answer = second.parse()
    assert answer.choices[0].message.content == first.parse().choices[0].message.content
    assert answer.usage.prompt_tokens == 0 and answer.usage.completion_tokens == 0
    assert answer.id != first.parse().id
    assert len(upstream.requests) == 1
    original = gw.outcome(first.headers["x-request-id"])
    row = gw.outcome(second.headers["x-request-id"])
    assert row["status"] == "cache_hit" and row["cache_status"] == "hit"
    assert row["saved_cost_usd"] == pytest.approx(original["cost_usd"]) and original["cost_usd"] > 0
    metrics = httpx.get(f"{gw.url}/metrics").text
    assert 'openclaw_cache_results_total{result="hit"} 1.0' in metrics
    assert f"openclaw_saved_cost_usd_total {original['cost_usd']}" in metrics


def test_semantic_hit_streams_as_sse_through_the_sdk(gw, upstream):
    client = gw.client()
    client.chat.completions.create(model="auto", messages=msgs(Q))
    stored(gw, 1)
    raw = client.chat.completions.with_raw_response.create(
        model="auto", messages=msgs(PARAPHRASE), stream=True, stream_options={"include_usage": True}
    )
    assert raw.headers["content-type"].startswith("text/event-stream")
    tag, similarity = raw.headers["x-cache"].split("; ")
    assert tag == "semantic-hit" and 0.5 < float(similarity.removeprefix("similarity=")) < 1.0
    chunks = list(raw.parse())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello from m1."
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == 0
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert len(upstream.requests) == 1


def test_other_system_prompt_goes_upstream(gw, upstream):
    client = gw.client()
    client.chat.completions.create(model="auto", messages=msgs(Q, system="You are terse."))
    stored(gw, 1)
    raw = client.chat.completions.with_raw_response.create(model="auto", messages=msgs(Q, system="You are a pirate."))
    assert raw.headers["x-cache"] == "miss" and len(upstream.requests) == 2


def test_cache_control_headers(gw, upstream):
    client = gw.client()
    raw = client.chat.completions.with_raw_response.create(model="auto", messages=msgs(Q), extra_headers={"Cache-Control": "no-store"})
    assert raw.headers["x-cache"] == "miss"
    client.chat.completions.create(model="auto", messages=msgs("Where is the Eiffel Tower?"))
    stored(gw, 1)  # the no-store answer was not kept
    raw = client.chat.completions.with_raw_response.create(
        model="auto", messages=msgs("Where is the Eiffel Tower?"), extra_headers={"Cache-Control": "no-cache"}
    )
    assert raw.headers["x-cache"] == "miss" and len(upstream.requests) == 3
    # The repeat rejected the answer it bypassed (dropped at once); its own answer is stored by
    # a post-hook, after the client has it: the outcome row, the last post-hook, says it is done.
    gw.outcomes(3)
    assert client.chat.completions.with_raw_response.create(model="auto", messages=msgs("Where is the Eiffel Tower?")).headers["x-cache"] == "hit"


def test_errors_truncated_streams_tool_calls_and_temperature_are_not_stored(gw, upstream):
    client = gw.client()
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object", "properties": {}}}}]
    upstream.script("m1", ok(tool_calls=[{"name": "lookup", "arguments": "{}"}]))
    assert client.chat.completions.create(model="auto", messages=msgs("first question"), tools=tools).choices[0].message.tool_calls
    client.chat.completions.create(model="auto", messages=msgs("second question"), temperature=0.7)
    client.chat.completions.create(model="auto", messages=msgs("third question"), temperature=0)
    upstream.script("m1", cut_stream(after_chunks=2))
    with pytest.raises(openai.APIError):
        list(client.chat.completions.create(model="auto", messages=msgs("fourth question"), stream=True))
    for model in ("m1", "m2", "m3"):
        upstream.script(model, server_error(), server_error())
    with pytest.raises(openai.APIError):
        client.chat.completions.create(model="auto", messages=msgs("fifth question"))
    assert [r["status"] for r in gw.outcomes(5)] == ["ok", "ok", "ok", "truncated", "error"]
    stored(gw, 1)
    assert [e.text for e in cache_of(gw).cache._entries.values()] == ["third question"]


def test_cache_survives_a_gateway_restart(upstream, tmp_path):
    upstream.reset()
    first = start(upstream, tmp_path)
    first.client().chat.completions.create(model="auto", messages=msgs(Q))
    stored(first, 1)
    first.stop()
    # shutdown closed the cache: the WAL was checkpointed and removed with the last connection
    assert (tmp_path / "cache" / "cache.sqlite").exists() and not (tmp_path / "cache" / "cache.sqlite-wal").exists()
    second = start(upstream, tmp_path)
    try:
        raw = second.client().chat.completions.with_raw_response.create(model="auto", messages=msgs(PARAPHRASE))
        assert raw.headers["x-cache"].startswith("semantic-hit") and len(upstream.requests) == 1
    finally:
        second.stop()


def test_a_cached_answer_respects_the_requests_own_limits(gw, upstream):
    client = gw.client()
    first = client.chat.completions.with_raw_response.create(model="auto", messages=msgs(Q))
    answered = first.headers["x-router-model"]
    stored(gw, 1)
    # Another end user (the same user asking again would reject the first answer as a regeneration).
    again = client.chat.completions.with_raw_response.create(model="auto", messages=msgs(Q), user="another-user",
                                                             extra_body={"router": {"excluded_models": [answered]}})
    assert again.headers["x-cache"] == "miss" and again.headers["x-router-model"] != answered
    assert len(upstream.requests) == 2
    # Its answer is not stored: under the same key it would replace the first one, and every
    # request without limits would be served the answer of the model these limits forced.
    gw.outcomes(2)  # the outcome row is written by the last post-hook, after the cache's
    assert [e.model for e in cache_of(gw).cache._entries.values()] == [answered]
    plain = client.chat.completions.with_raw_response.create(model="auto", messages=msgs(Q))
    assert plain.headers["x-cache"] == "hit" and plain.headers["x-router-model"] == answered
    allowed = client.chat.completions.with_raw_response.create(
        model="auto", messages=msgs(Q), extra_body={"router": {"allowed_models": [answered]}})
    assert allowed.headers["x-cache"] == "hit" and len(upstream.requests) == 2



def test_an_answer_given_under_the_requests_own_limits_is_never_stored(gw, upstream):
    client = gw.client()
    limited = client.chat.completions.with_raw_response.create(
        model="auto", messages=msgs(Q), extra_body={"router": {"allowed_models": ["m2"]}})
    assert limited.headers["x-cache"] == "miss" and limited.headers["x-router-model"] == "m2"
    gw.outcomes(1)  # written by the last post-hook, after the cache's
    assert len(cache_of(gw).cache) == 0  # else plain `auto` would be served the answer m2 was forced to give
    plain = client.chat.completions.with_raw_response.create(model="auto", messages=msgs(Q), user="another-user")
    assert plain.headers["x-cache"] == "miss"
    stored(gw, 1)
    assert len(upstream.requests) == 2

def test_an_answer_feedback_rejects_is_never_served_from_the_cache_again(gw, upstream):
    client = gw.client()
    first = client.chat.completions.with_raw_response.create(model="auto", messages=msgs(Q))
    stored(gw, 1)
    hit = client.chat.completions.with_raw_response.create(model="auto", messages=msgs(PARAPHRASE))
    assert hit.headers["x-cache"].startswith("semantic-hit")
    # Thumbs down on the answer the cache served: the entry goes, for everyone who would get it.
    r = httpx.post(f"{gw.url}/v1/feedback", json={"request_id": hit.headers["x-request-id"], "thumbs": "down"})
    assert r.status_code == 200
    calls = len(upstream.requests_for("m1"))
    again = client.chat.completions.with_raw_response.create(model="auto", messages=msgs(Q))
    assert again.headers["x-cache"] == "miss" and len(upstream.requests_for("m1")) == calls + 1
    stored(gw, 1)  # the fresh answer is cached in its place
    # A good score keeps an answer; a bad one on the request that stored it drops it too.
    httpx.post(f"{gw.url}/v1/feedback", json={"request_id": again.headers["x-request-id"], "score": 0.9}).raise_for_status()
    assert client.chat.completions.with_raw_response.create(model="auto", messages=msgs(Q)).headers["x-cache"] == "hit"
    httpx.post(f"{gw.url}/v1/feedback", json={"request_id": again.headers["x-request-id"], "score": 0.1}).raise_for_status()
    assert len(cache_of(gw).cache) == 0
    assert first.headers["x-request-id"] != again.headers["x-request-id"]


def test_a_rejection_reaches_the_answer_after_a_restart_and_never_a_newer_one(upstream, tmp_path):
    upstream.reset()
    first = start(upstream, tmp_path)
    old = first.client().chat.completions.with_raw_response.create(model="auto", messages=msgs(Q)).headers["x-request-id"]
    stored(first, 1)
    first.stop()
    second = start(upstream, tmp_path)
    try:
        # The request-to-entry map of the first run is gone; the outcome log still knows the entry.
        httpx.post(f"{second.url}/v1/feedback", json={"request_id": old, "thumbs": "down"}).raise_for_status()
        client = second.client()
        fresh = client.chat.completions.with_raw_response.create(model="auto", messages=msgs(Q))
        assert fresh.headers["x-cache"] == "miss"
        stored(second, 1)
        # Rejecting the old answer again must not drop the fresh one nobody rejected.
        httpx.post(f"{second.url}/v1/feedback", json={"request_id": old, "score": 0.0}).raise_for_status()
        assert client.chat.completions.with_raw_response.create(model="auto", messages=msgs(Q)).headers["x-cache"] == "hit"
    finally:
        second.stop()


def test_an_agent_turn_is_a_hit_when_sent_again_and_its_context_matches_from_the_second_question(gw, upstream):
    client = gw.client()
    history = [{"role": "system", "content": "You are a coding agent."}, {"role": "user", "content": "Open the repository."},
               {"role": "assistant", "content": "Done: 42 files."}]
    first = client.chat.completions.with_raw_response.create(model="auto", messages=history + msgs(Q))
    assert first.headers["x-cache"] == "miss"
    stored(gw, 1)
    # What an SDK retry sends after a timeout: the same request, answered from the cache.
    retry = client.chat.completions.with_raw_response.create(model="auto", messages=history + msgs(Q))
    assert retry.headers["x-cache"] == "hit" and len(upstream.requests) == 1
    # The first question after earlier turns is kept for exact hits only: another question at
    # that point goes upstream; from it on the context is matched semantically.
    edited = client.chat.completions.with_raw_response.create(model="auto", messages=history + msgs(PARAPHRASE))
    assert edited.headers["x-cache"] == "miss" and len(upstream.requests) == 2
    stored(gw, 2)
    again = client.chat.completions.with_raw_response.create(model="auto", messages=history + msgs("How do I improve my spoken English?"))
    assert again.headers["x-cache"].startswith("semantic-hit") and len(upstream.requests) == 2


def test_a_question_about_the_moment_of_asking_is_never_cached(gw, upstream):
    client = gw.client()
    for _ in range(2):
        raw = client.chat.completions.with_raw_response.create(model="auto", messages=msgs("What time is it right now?"))
        assert raw.headers["x-cache"] == "miss"
    assert len(upstream.requests) == 2
    assert gw.outcomes(2)[-1]["cache_status"] == "bypass" and len(cache_of(gw).cache) == 0


def test_a_named_models_cached_answer_is_served_under_a_cost_cap_but_not_under_local_only(upstream, tmp_path):
    # A free cached answer breaks no cost cap; one from a model the request's own limits rule out is
    # neither served nor replaced by a call: the request is refused before any upstream sees it.
    upstream.reset()
    gw = start(upstream, tmp_path)
    try:
        c = gw.client()
        assert c.chat.completions.with_raw_response.create(model="m1", messages=msgs(Q)).headers["x-cache"] == "miss"
        stored(gw, 1)
        capped = c.chat.completions.with_raw_response.create(model="m1", messages=msgs(Q),
                                                             extra_body={"router": {"max_cost_usd": 1e-12}})
        assert capped.headers["x-cache"] == "hit"
        with pytest.raises(openai.BadRequestError) as refused:
            c.chat.completions.create(model="m1", messages=msgs(Q), extra_body={"router": {"local_only": True}})
        assert refused.value.body["code"] == "model_not_allowed"
        assert len(upstream.requests_for("m1")) == 1
    finally:
        gw.stop()


def test_an_answer_of_a_model_taken_out_of_the_catalog_is_not_served(upstream, tmp_path):
    upstream.reset()
    first = start(upstream, tmp_path)
    assert first.client().chat.completions.create(model="auto", messages=msgs(Q)).model == "m1"
    stored(first, 1)
    first.stop()
    config = fake_config(upstream.base_url, f"sqlite:///{tmp_path}/outcomes.sqlite", models=[{"name": "m2"}, {"name": "m3"}])
    config = config.model_copy(update={"cache": CacheSection(enabled=True, path=str(tmp_path / "cache"))})
    second = Running(config, router=QualityRouter(DEFAULT_QUALITY))
    try:  # m1's answer had been served, with x-router-model m1, by a gateway that 404s a request naming m1
        raw = second.client().chat.completions.with_raw_response.create(model="auto", messages=msgs(Q))
        assert raw.headers["x-cache"] == "miss" and raw.parse().model == "m2"
    finally:
        second.stop()


def test_a_refresh_under_a_keys_ceiling_is_stored_where_the_next_request_finds_it(upstream, tmp_path):
    """The key's ceiling caps max_tokens in the body after the cache looked: the refresh had been
    stored under the capped body, which no request sends."""
    from service.governance.runtime import Governance, GovernanceSettings

    upstream.reset()
    master = "mk-cache-" + "3" * 24
    config = fake_config(upstream.base_url, f"sqlite:///{tmp_path}/outcomes.sqlite",
                         models=[{"name": "m1", "max_output_tokens": 4096}, {"name": "m2"}])
    config = config.model_copy(update={"cache": CacheSection(enabled=True, path=str(tmp_path / "cache"))})
    gov = Governance(config, GovernanceSettings(db_url=f"sqlite:///{tmp_path}/gov.sqlite", master_key=master))
    gw = Running(config, router=QualityRouter(DEFAULT_QUALITY), governance=gov)
    try:
        admin = httpx.Client(base_url=gw.url, headers={"authorization": f"Bearer {master}"}, timeout=10)
        secret = admin.post("/admin/keys", json={"name": "ceiling", "max_request_usd": 1.0}).json()["secret"]
        admin.close()
        client = openai.OpenAI(base_url=gw.base_url, api_key=secret, max_retries=0)
        client.chat.completions.create(model="m1", messages=msgs(Q))
        stored(gw, 1)
        refreshed = client.chat.completions.with_raw_response.create(model="m1", messages=msgs(Q),
                                                                     extra_headers={"Cache-Control": "no-cache"})
        assert refreshed.headers["x-cache"] == "miss" and upstream.requests[-1].body["max_tokens"] == 4096
        stored(gw, 1)  # the refresh replaced the first answer under the same key
        again = client.chat.completions.with_raw_response.create(model="m1", messages=msgs(Q))
        assert again.headers["x-cache"] == "hit" and len(upstream.requests) == 2
    finally:
        gw.stop()
