"""Routing decisions as the running gateway makes them, through the real `openai` SDK: what a
request asks for (several choices, a long conversation, a large output limit) and an agent's
tool loop keeping its model; `/v1/route` refusing what chat refuses, in chat's words."""
from __future__ import annotations

import httpx
import openai
import pytest

from tests.fake_upstream import error, not_found, rate_limit, server_error
from tests.gateway_harness import MSG, ask


def test_auto_with_a_conversation_longer_than_every_window_says_so_as_openai_does(start_gateway, upstream):
    # Agent clients compact the conversation on OpenAI's code and wording; "no eligible model" they
    # take for a hard failure.
    gw = start_gateway(models=[{"name": "m1", "context_window": 8000}, {"name": "m2", "context_window": 16000},
                       {"name": "m3", "context_window": 100000, "tags": ["local"]}])
    long = [{"role": "user", "content": "word " * 60000}]
    with pytest.raises(openai.BadRequestError) as info:
        gw.client().chat.completions.create(model="auto", messages=long, extra_body={"router": {"excluded_models": ["m3"]}})
    body = info.value.body
    assert body["code"] == "context_length_exceeded" and body["param"] == "messages"
    assert "maximum context length is 16000 tokens" in body["message"]
    # Short messages with an output limit no window takes: compacting would not help.
    with pytest.raises(openai.BadRequestError) as info:
        gw.client().chat.completions.create(model="auto", messages=MSG, max_tokens=200_000)
    assert info.value.body["code"] == "invalid_value" and info.value.body["param"] == "max_tokens"
    with pytest.raises(openai.BadRequestError) as info:  # the field the client sent, as OpenClaw sends it
        gw.client().chat.completions.create(model="auto", messages=MSG, max_completion_tokens=200_000)
    assert info.value.body["param"] == "max_completion_tokens"
    with pytest.raises(openai.BadRequestError) as info:  # both sent: the smaller is the limit the answer keeps to
        gw.client().chat.completions.create(model="auto", messages=MSG, max_tokens=200_000, max_completion_tokens=300_000)
    assert info.value.body["param"] == "max_tokens"
    # Another reason among the exclusions (a cost cap) is not the conversation's length alone.
    with pytest.raises(openai.BadRequestError) as info:
        gw.client().chat.completions.create(model="auto", messages=long, extra_body={"router": {"max_cost_usd": 1e-12}})
    assert info.value.body["code"] == "no_eligible_model"


def test_a_request_for_several_choices_goes_to_a_model_that_answers_them(start_gateway, upstream):
    # Anthropic's and Gemini's APIs answer one choice (their models get max_choices 1 by default):
    # `n: 2` routed there would silently get one.
    gw = start_gateway(models=[{"name": "m1", "context_window": 100000, "max_choices": 1},
                       {"name": "m2", "context_window": 100000, "fallbacks": ["m1"]}])
    _, headers = ask(gw, n=2)
    assert headers["x-router-model"] == "m2"
    m1 = next(c for c in gw.outcome(headers["x-request-id"])["candidates"] if c["model"] == "m1")
    assert m1["excluded"] == "answers at most 1 choice(s), n=2 asked"
    assert ask(gw)[1]["x-router-model"] == "m1"  # one choice asked: the best model again
    with pytest.raises(openai.BadRequestError) as info:
        ask(gw, model="m1", n=2)
    assert info.value.body["param"] == "n" and "at most 1 choice" in info.value.body["message"]
    # a named model's fallbacks are held to the same rule
    upstream.script("m2", server_error(), server_error(), server_error())
    m1_calls = len(upstream.requests_for("m1"))
    with pytest.raises(openai.APIStatusError) as info:
        ask(gw, model="m2", n=2)
    assert info.value.status_code == 502 and len(upstream.requests_for("m1")) == m1_calls


def test_anthropic_and_gemini_models_answer_one_choice_unless_configured():
    from router.config import parse_config

    text = """
providers:
  a: {kind: anthropic, base_url: "http://127.0.0.1:1"}
  g: {kind: gemini, base_url: "http://127.0.0.1:1"}
  o: {kind: openai, base_url: "http://127.0.0.1:1"}
models:
  - {name: claude, provider: a, price: {input_per_1m: 1, output_per_1m: 1}}
  - {name: gem, provider: g, price: {input_per_1m: 1, output_per_1m: 1}, max_choices: 4}
  - {name: gpt, provider: o, price: {input_per_1m: 1, output_per_1m: 1}}
  - {name: claude-empty, provider: a, price: {input_per_1m: 1, output_per_1m: 1}, max_choices: }
"""
    config = parse_config(text, "choices.yaml")
    # A key left empty is its default: for claude-empty that had read as "no limit", so a request
    # for n=2 silently got one choice.
    assert [config.model(n).max_choices for n in ("claude", "gem", "gpt", "claude-empty")] == [1, 4, None, 1]


def test_a_tool_loop_stays_on_the_model_its_turn_began_on(start_gateway, upstream):
    # m1 is best for the short first step; once a long tool result is in the history, its price per
    # input token puts m2 first. The loop must not switch model half-way through the task.
    gw = start_gateway(models=[{"name": "m1", "in": 5.0, "context_window": 100000, "capabilities": ["tools"]},
                       {"name": "m2", "in": 1.0, "context_window": 100000, "capabilities": ["tools"]}],
               quality={"m1": 0.8, "m2": 0.7})
    client = gw.client()
    tools = [{"type": "function", "function": {"name": "read_file", "parameters": {"type": "object", "properties": {}}}}]
    turn = [{"role": "system", "content": "You are a coding agent."}, {"role": "user", "content": "Find the bug in parser.py"}]
    first = client.chat.completions.with_raw_response.create(model="auto", messages=turn, tools=tools)
    assert first.headers["x-router-model"] == "m1"
    call = {"id": "call_1", "type": "function", "function": {"name": "read_file", "arguments": "{}"}}
    loop = turn + [{"role": "assistant", "content": None, "tool_calls": [call]},
                   {"role": "tool", "tool_call_id": "call_1", "content": "def parse(): ...\n" * 150}]
    ranked = httpx.post(f"{gw.url}/v1/route", json={"model": "auto", "messages": loop, "tools": tools}).json()
    assert ranked["model"] == "m2"  # what the ranking alone would do now
    step = client.chat.completions.with_raw_response.create(model="auto", messages=loop, tools=tools)
    assert step.headers["x-router-model"] == "m1" and "tool loop" in step.headers["x-router-reason"]
    # A new user turn after the loop is routed afresh.
    after = loop + [{"role": "assistant", "content": "Found it."}, {"role": "user", "content": "Now write the fix."}]
    assert client.chat.completions.with_raw_response.create(model="auto", messages=after, tools=tools).headers["x-router-model"] == "m2"
    # A model that cannot take the step any more (here: excluded by the request) still moves it.
    moved = client.chat.completions.with_raw_response.create(
        model="auto", messages=loop, tools=tools, extra_body={"router": {"excluded_models": ["m1"]}})
    assert moved.headers["x-router-model"] == "m2"


def test_auto_sends_files_audio_and_logprobs_only_to_models_that_take_them(start_gateway, upstream):
    # An adapter that cannot carry a PDF or audio drops or refuses it; a model without logprobs
    # answers logprobs: null. `auto` must pick a model that takes what the request carries.
    gw = start_gateway(models=[{"name": "m1", "context_window": 100000},
                               {"name": "m2", "context_window": 100000, "capabilities": ["files", "logprobs"]},
                               {"name": "m3", "context_window": 100000, "capabilities": ["files", "audio"]}],
                       quality={"m1": 0.9, "m2": 0.8, "m3": 0.7})
    client = gw.client()
    pdf = {"type": "file", "file": {"filename": "a.pdf", "file_data": "data:application/pdf;base64,JVBERi0xLjQK"}}
    wav = {"type": "input_audio", "input_audio": {"data": "UklGRiQAAABXQVZF", "format": "wav"}}

    def model(messages, **extra):
        return client.chat.completions.with_raw_response.create(model="auto", messages=messages, **extra).headers["x-router-model"]

    assert model(MSG) == "m1"
    assert model([{"role": "user", "content": [{"type": "text", "text": "Summarise this."}, pdf]}]) == "m2"
    assert model([{"role": "user", "content": [{"type": "text", "text": "Transcribe this."}, wav]}]) == "m3"
    assert model(MSG, logprobs=True, top_logprobs=2) == "m2"
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="auto", messages=[{"role": "user", "content": [wav]}], logprobs=True)
    assert "audio" in info.value.body["message"] or "logprobs" in info.value.body["message"]


def test_a_catalog_declaring_no_files_audio_or_logprobs_routes_such_requests_as_before(start_gateway, upstream):
    # A config written before these capabilities existed must not start refusing PDFs or logprobs.
    gw = start_gateway(models=[{"name": "m1", "context_window": 100000, "capabilities": ["tools"]},
                               {"name": "m2", "context_window": 100000, "capabilities": ["tools", "vision"]}],
                       quality={"m1": 0.9, "m2": 0.8})
    pdf = {"type": "file", "file": {"filename": "a.pdf", "file_data": "data:application/pdf;base64,JVBERi0xLjQK"}}
    wav = {"type": "input_audio", "input_audio": {"data": "UklGRiQAAABXQVZF", "format": "wav"}}
    asked = [{"role": "user", "content": [{"type": "text", "text": "What is in these?"}, pdf, wav]}]
    answer = gw.client().chat.completions.with_raw_response.create(model="auto", messages=asked, logprobs=True)
    assert answer.headers["x-router-model"] == "m1"
    assert upstream.requests_for("m1")[-1].body["messages"][0]["content"][1:] == [pdf, wav]
    routed = httpx.post(f"{gw.url}/v1/route", json={"messages": asked, "logprobs": True}).json()
    assert routed["model"] == "m1"


def route_and_chat(gw, **body):
    """(the /v1/route answer, chat's error body and headers) for the same request."""
    routed = httpx.post(f"{gw.url}/v1/route", json={"model": "auto", "messages": MSG, **body})
    with pytest.raises(openai.APIStatusError) as chat:
        gw.client().chat.completions.create(model="auto", messages=MSG, **body)
    assert routed.status_code == chat.value.status_code
    return routed, chat.value.body, chat.value.response.headers


def test_route_names_the_output_limit_field_the_body_used_as_chat_does(start_gateway, upstream):
    gw = start_gateway()
    routed, chat, _ = route_and_chat(gw, max_completion_tokens=200_000)  # as OpenClaw sends it
    assert routed.status_code == 400 and routed.json()["error"] == chat
    assert chat["param"] == "max_completion_tokens" and chat["message"].endswith("Lower max_completion_tokens.")


def test_route_with_every_model_waiting_out_its_retry_after_is_chats_429(start_gateway, upstream):
    # Not a 503 "retry in 1 s": the client is told the time left, as chat tells it.
    gw = start_gateway()
    for m in ("m1", "m2", "m3"):
        upstream.default(m, rate_limit(retry_after=20))
    with pytest.raises(openai.RateLimitError):  # the 429s that put every model on hold
        gw.client().chat.completions.create(model="auto", messages=MSG)
    routed, chat, headers = route_and_chat(gw)
    assert routed.status_code == 429 and routed.json()["error"]["code"] == chat["code"] == "rate_limit_exceeded"
    assert 18 <= int(routed.headers["retry-after"]) <= 20 and abs(int(routed.headers["retry-after"]) - int(headers["retry-after"])) <= 1


def test_route_with_every_models_key_refused_is_chats_502(start_gateway, upstream):
    gw = start_gateway()
    for m in ("m1", "m2", "m3"):
        upstream.default(m, error(401, "Incorrect API key provided", code="invalid_api_key", type="invalid_request_error"))
    with pytest.raises(openai.APIStatusError):  # the refusals that open the provider's key circuit
        gw.client().chat.completions.create(model="auto", messages=MSG)
    routed, chat, _ = route_and_chat(gw)
    assert routed.status_code == 502 and routed.json()["error"] == chat and chat["code"] == "upstream_auth_failed"
    assert routed.headers["x-should-retry"] == "false"


def _cheap_m1_gateway(start_gateway):
    """m1 cheap, m2 and m3 dear, circuits that stay open a minute once opened."""
    return start_gateway(models=[{"name": "m1", "in": 0.1, "out": 0.1, "context_window": 100000},
                                 {"name": "m2", "in": 100.0, "out": 100.0, "context_window": 100000},
                                 {"name": "m3", "in": 100.0, "out": 100.0, "context_window": 100000}],
                         cooldown_s=60)


def test_limits_that_rule_out_every_model_are_a_400_even_beside_an_open_circuit(start_gateway, upstream):
    # A 503 with retry-after: 1 had clients retry a request no retry can serve. m1 (cheap) has its
    # circuit opened; m2 and m3 are dear.
    gw = _cheap_m1_gateway(start_gateway)
    upstream.default("m1", server_error())
    for _ in range(2):  # a retry each: the breaker's 3 failures
        with pytest.raises(openai.APIStatusError):
            ask(gw, model="m1")
    assert httpx.get(f"{gw.url}/healthz").json()["models"]["m1"]["circuit"] == "open"

    def refused(cap):
        routed = httpx.post(f"{gw.url}/v1/route", json={"model": "auto", "messages": MSG, "router": {"max_cost_usd": cap}})
        with pytest.raises(openai.APIStatusError) as chat:
            ask(gw, extra_body={"router": {"max_cost_usd": cap}})
        assert routed.status_code == chat.value.status_code and routed.json()["error"] == chat.value.body
        return chat.value.status_code, chat.value.body, chat.value.response.headers

    # Under every model's cost: the request's own limit, whatever m1's health.
    status, chat, headers = refused(1e-9)
    assert status == 400 and chat["code"] == "no_eligible_model" and "retry-after" not in headers
    assert "m1: predicted cost" in chat["message"] and "unhealthy" not in chat["message"]
    # m1 alone fits the cap: it would answer but for its circuit, which a retry after its cooldown may outlast.
    status, chat, headers = refused(1e-4)
    assert status == 503 and chat["code"] == "no_model_available" and 50 <= int(headers["retry-after"]) <= 60
    assert "m1: unhealthy" in chat["message"] and "m2: predicted cost" in chat["message"]


def test_a_model_its_upstream_does_not_know_is_no_reason_to_retry(start_gateway, upstream):
    # OpenClaw reads a 503 as "overloaded" and probes again at once: a cap that only m1 fits, with
    # m1's circuit opened by its upstream's 404 model_not_found, had been a 503 with retry-after: 1
    # for as long as the name stayed wrong (and, under a budget, hid its 402).
    gw = _cheap_m1_gateway(start_gateway)
    upstream.default("m1", not_found())
    for _ in range(3):  # the breaker's 3 failures
        with pytest.raises(openai.NotFoundError):
            ask(gw, model="m1")
    assert httpx.get(f"{gw.url}/healthz").json()["models"]["m1"]["circuit"] == "open"
    with pytest.raises(openai.BadRequestError) as exc:
        ask(gw, extra_body={"router": {"max_cost_usd": 1e-4}})
    assert exc.value.body["code"] == "no_eligible_model" and "retry-after" not in exc.value.response.headers
    assert "m1: unknown upstream: its upstream answered 404 model_not_found" in exc.value.body["message"]
    answer, _ = ask(gw)  # auto without the cap: answered by another model, no call spent on m1
    assert answer.model in ("m2", "m3") and len(upstream.requests_for("m1")) == 3
