"""The gateway's API through real clients: the `openai` SDK (sync and async, streaming and
not, tools), an OpenClaw-shaped agent request, per-request limits, info endpoints, bad input."""
from __future__ import annotations

import gzip
import json

import httpx
import openai
import pytest

from tests.fake_upstream import ok
from tests.gateway_harness import DEFAULT_QUALITY, QualityRouter, Running, fake_config

MSG = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture
def gw(upstream, tmp_path):
    upstream.reset()
    running = Running(fake_config(upstream.base_url, f"sqlite:///{tmp_path}/outcomes.sqlite"), router=QualityRouter(DEFAULT_QUALITY))
    yield running
    running.stop()


def test_sync_non_streaming_names_the_answering_model(gw):
    raw = gw.client().chat.completions.with_raw_response.create(model="auto", messages=MSG)
    answer = raw.parse()
    assert answer.model == "m1" and answer.choices[0].message.content == "Hello from m1."
    assert raw.headers["x-router-model"] == "m1" and raw.headers["x-router-profile"] == "auto"
    assert raw.headers["x-router-reason"].startswith("m1: best utility")
    row = gw.outcome(raw.headers["x-request-id"])
    assert row["chosen_model"] == "m1" and row["propensity"] == 1.0 and len(row["candidates"]) == 3
    # The client holds the request's id; the provider's own id is kept for its logs.
    assert answer.id == raw.headers["x-request-id"] and row["extras"]["upstream_id"] == "chatcmpl-fake"
    assert row["output_tokens"] == answer.usage.completion_tokens and row["cost_usd"] > 0
    # The client sees what the answer is billed (m1: $1 / $2 per 1M input / output tokens).
    assert answer.usage.model_extra["cost"] == pytest.approx(row["cost_usd"]) == pytest.approx(
        (answer.usage.prompt_tokens * 1.0 + answer.usage.completion_tokens * 2.0) / 1e6)
    assert row["prompt"].endswith(MSG[0]["content"]) and len(row["embedding"]) == 384 * 4


async def test_async_streaming_with_usage(gw):
    client = gw.async_client()
    stream = await client.chat.completions.create(model="auto", messages=MSG, stream=True, stream_options={"include_usage": True})
    chunks = [c async for c in stream]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello from m1."
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    assert {c.model for c in chunks} == {"m1"}
    row = gw.outcomes()[-1]
    assert row["cost_usd"] > 0 and chunks[-1].usage.model_extra["cost"] == pytest.approx(row["cost_usd"])
    assert {c.id for c in chunks} == {row["request_id"]} and row["extras"]["upstream_id"] == "chatcmpl-fake"
    assert row["stream"] and row["ttft_s"] > 0 and row["latency_s"] >= row["ttft_s"]
    assert 'openclaw_ttft_seconds_count{model="m1"} 1.0' in httpx.get(f"{gw.url}/metrics").text


def test_stream_without_include_usage_gets_no_usage_chunk(gw, upstream):
    chunks = list(gw.client().chat.completions.create(model="auto", messages=MSG, stream=True))
    assert all(c.choices for c in chunks) and all(c.usage is None for c in chunks)
    # ...while the gateway still asked for usage, to bill the answer.
    assert upstream.requests[-1].body["stream_options"] == {"include_usage": True}
    assert gw.outcomes()[-1]["output_tokens"] > 0


def test_profiles_and_per_request_limits(gw, upstream):
    client = gw.client()
    assert client.chat.completions.create(model="auto:best", messages=MSG).model == "m1"
    # extra_body limits reach the router and are stripped before the upstream call.
    answer = client.chat.completions.create(model="auto", messages=MSG, extra_body={"router": {"allowed_models": ["m2", "m3"]}})
    assert answer.model == "m2"
    assert "router" not in upstream.requests[-1].body
    answer = client.chat.completions.create(model="auto", messages=MSG, extra_headers={"x-router-local-only": "true"})
    assert answer.model == "m3"  # the only model tagged local
    answer = client.chat.completions.create(model="auto", messages=MSG, extra_headers={"x-router-excluded-models": "m1, m2"})
    assert answer.model == "m3"
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(model="auto", messages=MSG, extra_body={"router": {"max_cost_usd": 1e-12}})
    assert exc.value.body["code"] == "no_eligible_model"


def test_named_model_bypasses_routing(gw):
    router = gw.gateway.router.current
    before = len(router.calls)
    raw = gw.client().chat.completions.with_raw_response.create(model="m3", messages=MSG)
    assert raw.parse().model == "m3" and raw.headers["x-router-reason"] == "m3: requested by name"
    assert len(router.calls) == before
    row = gw.outcome(raw.headers["x-request-id"])
    assert row["profile"] is None and row["candidates"] is None and row["chosen_model"] == "m3"


def test_tool_call_round_trip_passes_through(gw, upstream):
    tools = [{"type": "function", "function": {"name": "get_weather", "description": "weather",
              "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
    upstream.script("m1", ok(tool_calls=[{"name": "get_weather", "arguments": {"city": "Paris"}}]), ok("It is sunny in Paris."))
    client = gw.client()
    first = client.chat.completions.create(model="auto", messages=MSG, tools=tools, tool_choice="auto")
    call = first.choices[0].message.tool_calls[0]
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Paris"}
    history = MSG + [first.choices[0].message.model_dump(exclude_none=True),
                     {"role": "tool", "tool_call_id": call.id, "content": '{"sky": "sunny"}'}]
    second = client.chat.completions.create(model="auto", messages=history, tools=tools)
    assert second.choices[0].message.content == "It is sunny in Paris."
    sent = upstream.requests[-1].body
    assert sent["messages"][1]["tool_calls"][0]["id"] == call.id
    assert sent["messages"][2] == {"role": "tool", "tool_call_id": call.id, "content": '{"sky": "sunny"}'}
    assert sent["tools"] == tools


def openclaw_request() -> dict:
    system = "You are OpenClaw, a personal agent. " + "Follow the workspace rules carefully. " * 1100
    tools = [
        {"type": "function", "function": {
            "name": f"tool_{i}", "description": f"Tool number {i}: " + "does things. " * 20,
            "parameters": {"type": "object", "properties": {"path": {"type": "string"}, "n": {"type": "integer"}}, "required": ["path"]}}}
        for i in range(12)
    ]
    return {"system": system, "tools": tools}


def test_openclaw_shaped_agent_request_passes_through_intact(gw, upstream):
    shape = openclaw_request()
    assert len(shape["system"]) > 40_000
    messages = [{"role": "system", "content": shape["system"]}, {"role": "user", "content": "Open README.md and summarise it."}]
    upstream.script("m1", ok(tool_calls=[{"name": "tool_3", "arguments": {"path": "README.md"}}]), ok("The README explains the router."))
    client = gw.client()
    stream = client.chat.completions.create(
        model="auto", messages=messages, tools=shape["tools"], stream=True,
        stream_options={"include_usage": True}, max_completion_tokens=2048,
    )
    chunks = list(stream)
    sent = upstream.requests[-1].body
    assert sent["messages"] == messages and sent["tools"] == shape["tools"]
    assert sent["max_completion_tokens"] == 2048 and sent["stream"] is True
    deltas = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    call_id = deltas[0].id
    arguments = "".join(d.function.arguments or "" for d in deltas)
    assert deltas[0].function.name == "tool_3" and json.loads(arguments) == {"path": "README.md"}
    assert chunks[-1].usage.prompt_tokens > 10_000
    messages += [
        {"role": "assistant", "content": None, "tool_calls": [{"id": call_id, "type": "function", "function": {"name": "tool_3", "arguments": arguments}}]},
        {"role": "tool", "tool_call_id": call_id, "content": "# OpenClaw Router\nAn ML-driven LLM router."},
    ]
    stream = client.chat.completions.create(model="auto", messages=messages, tools=shape["tools"], stream=True,
                                            stream_options={"include_usage": True}, max_completion_tokens=2048)
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == "The README explains the router."
    assert upstream.requests[-1].body["messages"] == messages
    # The router embedded the last user turn, not the 44 KB system prompt.
    assert gw.gateway.router.current.calls[-1].text == "Open README.md and summarise it."


def test_pre_hook_short_circuit_streams_as_sse(upstream, tmp_path):
    class Canned:
        name = "canned"

        async def pre(self, ctx):
            ctx.cache_status = "hit"
            return {"id": "chatcmpl-c", "object": "chat.completion", "created": 1, "model": "m2",
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": "cached answer"}, "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}}

        async def post(self, ctx):
            return None

    upstream.reset()
    gw = Running(fake_config(upstream.base_url, f"sqlite:///{tmp_path}/o.sqlite"), router=QualityRouter(DEFAULT_QUALITY), hooks=[Canned()])
    try:
        stream = gw.client().chat.completions.with_raw_response.create(model="auto", messages=MSG, stream=True)
        assert stream.headers["x-cache"] == "hit"
        text = "".join(c.choices[0].delta.content or "" for c in stream.parse() if c.choices)
        assert text == "cached answer" and not upstream.requests
        row = gw.outcome(stream.headers["x-request-id"])
        assert row["status"] == "cache_hit" and row["cache_status"] == "hit" and row["attempts"] == []
    finally:
        gw.stop()


def test_router_hot_swap_takes_effect_without_restart(gw):
    assert gw.client().chat.completions.create(model="auto", messages=MSG).model == "m1"
    old = gw.gateway.router.swap(QualityRouter({"m1": 0.1, "m2": 0.2, "m3": 0.95}))
    assert isinstance(old, QualityRouter)
    assert gw.client().chat.completions.create(model="auto", messages=MSG).model == "m3"


def test_an_empty_limit_header_is_no_limit(gw):
    # a templated client sending an unset variable: every other empty x-router-* header meant no limit
    d = httpx.post(f"{gw.url}/v1/route", json={"model": "auto", "messages": MSG}, headers={"x-router-allowed-models": ","})
    assert d.status_code == 200 and d.json()["model"] == "m1"


def test_models_route_health_and_metrics(gw):
    models = gw.client().models.list().data
    ids = [m.id for m in models]
    assert ids[:3] == ["auto", "auto:cheap", "auto:best"] and {"m1", "m2", "m3"} <= set(ids)
    m3 = next(m for m in models if m.id == "m3")
    assert m3.openclaw["tags"] == ["local"] and m3.openclaw["simulated"] is False
    assert gw.client().models.retrieve("auto:cheap").id == "auto:cheap"  # the SDK's models.retrieve
    assert gw.client().models.retrieve("m3").openclaw == m3.openclaw
    with pytest.raises(openai.NotFoundError) as missing:
        gw.client().models.retrieve("gpt-17")
    assert missing.value.body["code"] == "model_not_found"
    decision = httpx.post(f"{gw.url}/v1/route", json={"model": "auto", "messages": MSG, "router": {"allowed_models": ["m2", "m3"]}}).json()
    assert decision["model"] == "m2" and decision["fallbacks"] == ["m3"]
    assert {c["model"]: c["excluded"] for c in decision["candidates"]}["m1"] == "not in allowed models"
    assert all({"p_good", "cost_usd", "latency_s", "utility"} <= set(c) for c in decision["candidates"])
    assert decision["reason"].startswith("m2:")
    gw.client().chat.completions.create(model="auto", messages=MSG)
    health = httpx.get(f"{gw.url}/healthz").json()
    assert health["status"] == "ok" and health["router_loaded"] and health["models"]["m1"]["ewma_latency_s"] > 0
    assert httpx.head(f"{gw.url}/healthz").status_code == 200  # probes that read no body
    assert httpx.head(f"{gw.url}/metrics").status_code == 200
    assert httpx.head(f"{gw.base_url}/models").status_code == 200 and httpx.head(f"{gw.base_url}/models/m1").status_code == 200
    assert httpx.head(f"{gw.base_url}/models/nope").status_code == 404
    # a compressed body is refused as such, not called invalid JSON
    packed = httpx.post(f"{gw.base_url}/chat/completions", content=gzip.compress(json.dumps({"model": "auto", "messages": MSG}).encode()),
                        headers={"content-type": "application/json", "content-encoding": "gzip"})
    assert packed.status_code == 415 and packed.json()["error"]["code"] == "unsupported_content_encoding"
    metrics = httpx.get(f"{gw.url}/metrics").text
    for line in ('openclaw_requests_total{model="m1",profile="auto",status="ok"} 1.0',
                 'openclaw_routing_choices_total{model="m1",profile="auto"} 1.0',
                 'openclaw_request_latency_seconds_count{model="m1",stream="false"} 1.0',
                 'openclaw_tokens_total{kind="output",model="m1"}'):
        assert line in metrics


BAD = [
    (b"{not json", 400, "invalid_json"),
    (b"", 400, "invalid_json"),
    (b"[1, 2]", 400, "invalid_request"),
    (b'{"model": "auto"}', 400, "missing_required_parameter"),
    (b'{"model": "auto", "messages": []}', 400, "invalid_value"),
    (b'{"model": "auto", "messages": [{"role": "wizard", "content": "hi"}]}', 400, "invalid_value"),
    (b'{"model": "auto", "messages": [{"role": "user", "content": 42}]}', 400, "invalid_value"),
    (b'{"model": "auto", "messages": [{"role": "user", "content": "hi"}], "stream": "yes"}', 400, "invalid_value"),
    (b'{"model": "auto", "messages": [{"role": "user", "content": "hi"}], "max_tokens": "ten"}', 400, "invalid_value"),
    (b'{"model": 7, "messages": [{"role": "user", "content": "hi"}]}', 400, "invalid_value"),
    (b'{"model": "gpt-17", "messages": [{"role": "user", "content": "hi"}]}', 404, "model_not_found"),
    (b'{"model": "auto", "messages": [{"role": "user", "content": "hi"}], "router": {"allowed_models": ["nope"]}}', 400, "model_not_found"),
    (b'{"model": "auto", "messages": [{"role": "user", "content": "hi"}], "router": {"budget": 1}}', 400, "invalid_value"),
    # an empty list of allowed models would refuse every model: said so, not "no eligible model"
    (b'{"model": "auto", "messages": [{"role": "user", "content": "hi"}], "router": {"allowed_models": []}}', 400, "invalid_value"),
    # n answers are billed n times: a trillion overflowed the spend log's integers and went unrecorded
    (b'{"model": "auto", "messages": [{"role": "user", "content": "hi"}], "n": 1000000000000}', 400, "invalid_value"),
    # deeper than Python's JSON parser can recurse: was a 500
    (b'{"model": "auto", "messages": [{"role": "user", "content": "hi"}], "metadata": ' + b"[" * 5000 + b"]" * 5000 + b"}",
     400, "invalid_json"),
    # parsed, but too deep to walk for replacing a lone surrogate: was a 500
    (b'{"model": "auto", "messages": [{"role": "user", "content": "\\ud800"}], "metadata": ' + b"[" * 700 + b"]" * 700 + b"}",
     400, "invalid_json"),
]


@pytest.mark.parametrize("body,status,code", BAD)
def test_bad_input_gets_an_openai_style_error(gw, body, status, code):
    r = httpx.post(f"{gw.url}/v1/chat/completions", content=body, headers={"content-type": "application/json"})
    assert r.status_code == status
    error = r.json()["error"]
    assert error["code"] == code and error["message"] and error["type"] == ("invalid_request_error")
    assert "Traceback" not in r.text
    # Refused before routing, it still has its id and its outcome row, never its content.
    row = gw.outcome(r.headers["x-request-id"])
    assert row["status"] == "rejected" and row["error"] == error["message"] and row["prompt"] is None and row["prompt_hash"] is None
    assert row["chosen_model"] is None


@pytest.mark.parametrize("extra,code,param", [
    ({"tools": [{"type": "function"}]}, "missing_required_parameter", "tools[0].function"),
    ({"tools": [{"type": "function", "function": {"description": "no name"}}]}, "missing_required_parameter",
     "tools[0].function.name"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": "none"}}]}, "invalid_value",
     "tools[0].function.parameters"),
    ({"response_format": {"type": "xml"}}, "invalid_value", "response_format.type"),
    ({"response_format": {"type": "json_schema", "json_schema": {"schema": {}}}}, "missing_required_parameter",
     "response_format.json_schema.name"),
    ({"router": {"max_cost_usd": "abc"}}, "invalid_value", "router.max_cost_usd"),
    ({"messages": [*MSG, {"role": "tool", "content": "42"}]}, "missing_required_parameter", "messages[1].tool_call_id"),
    # a tool result answering no tool call: OpenAI's refusal (a history trimmed between call and result)
    ({"messages": [*MSG, {"role": "tool", "tool_call_id": "c1", "content": "42"}]}, "invalid_value", "messages[1].role"),
    ({"messages": [*MSG, {"role": "assistant", "content": "no calls"}, {"role": "tool", "tool_call_id": "c1", "content": "42"}]},
     "invalid_value", "messages[2].role"),
    # a content part must say what it is
    ({"messages": [{"role": "user", "content": [{"text": "hi"}]}]}, "missing_required_parameter", "messages[0].content[0].type"),
    ({"messages": [{"role": "user", "content": [{"type": 3, "text": "hi"}]}]}, "invalid_value", "messages[0].content[0].type"),
    # Anthropic and Gemini adapters translate image parts: OpenAI's shape, or a 400 (was a crash, a 500)
    ({"messages": [{"role": "user", "content": [{"type": "text", "text": "what is this?"},
                                                {"type": "image_url", "image_url": "https://example.com/a.png"}]}]},
     "missing_required_parameter", "messages[0].content[1].image_url.url"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": None}}]}]},
     "missing_required_parameter", "messages[0].content[0].image_url.url"),
    # a replayed tool call must be an object: a string was a 500 that also reset the connection
    ({"messages": [*MSG, {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function",
                                                                              "function": "read_file"}]}]},
     "invalid_value", "messages[1].tool_calls[0].function"),
    ({"messages": [*MSG, {"role": "assistant", "function_call": "read_file"}]}, "invalid_value", "messages[1].function_call"),
])
def test_malformed_tools_and_formats_are_refused_before_any_upstream_call(gw, upstream, extra, code, param):
    # Adapters translate function tools and response formats: a malformed one must not reach them.
    before = len(upstream.requests)
    r = httpx.post(f"{gw.url}/v1/chat/completions", json={"model": "auto", "messages": MSG, **extra})
    assert r.status_code == 400
    assert r.json()["error"]["code"] == code and r.json()["error"]["param"] == param
    assert len(upstream.requests) == before


def test_half_an_emoji_in_the_history_or_the_answer_is_replaced_not_a_500(gw, upstream):
    # JavaScript's slicing can cut an emoji in two and JSON.stringify writes the lone half as
    # "\ud83d": valid JSON, but no UTF-8 string. An agent replays it on every later turn.
    history = (b'{"model": "auto", "stream": %s, "messages": [{"role": "user", "content": "read it"},'
               b' {"role": "assistant", "content": null, "tool_calls": [{"id": "c1", "type": "function",'
               b' "function": {"name": "read", "arguments": "{}"}}]},'
               b' {"role": "tool", "tool_call_id": "c1", "content": "cut \\ud83d here \\ud83d\\ude00 whole"},'
               b' {"role": "user", "content": "and \\udc00?"}]}')
    for stream in (b"false", b"true"):
        r = httpx.post(f"{gw.url}/v1/chat/completions", content=history % stream, headers={"content-type": "application/json"})
        assert r.status_code == 200 and "error" not in r.text
    sent = upstream.requests[-1].body["messages"]
    assert sent[2]["content"] == "cut \ufffd here \U0001f600 whole" and sent[3]["content"] == "and \ufffd?"
    numeric_id = history.replace(b'"id": "c1"', b'"id": 7').replace(b'"tool_call_id": "c1"', b'"tool_call_id": "7"')
    r = httpx.post(f"{gw.url}/v1/chat/completions", content=numeric_id % b"false", headers={"content-type": "application/json"})
    assert r.status_code == 200  # a numeric tool-call id passes through, as it did before tool calls were checked
    upstream.script("m1", ok("half \ud83d"), ok("half \ud83d"))  # the fake escapes it as "\ud83d"
    answer = gw.client().chat.completions.create(model="m1", messages=MSG)
    assert answer.choices[0].message.content == "half \ufffd"
    streamed = gw.client().chat.completions.create(model="m1", messages=MSG, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == "half \ufffd"


def test_half_an_emoji_as_raw_bytes_is_replaced_and_the_request_logged(gw, upstream):
    # The same half unescaped, as Java's and CESU-8's encoders write it (ED A0 BD), and a whole emoji
    # written as two such halves: json.loads lets both through as surrogates. Was a 500 and no row.
    body = (b'{"model": "auto", "messages": [{"role": "user", "content": "cut \xed\xa0\xbd here '
            b'\xed\xa0\xbd\xed\xb8\x80 whole"}]}')
    r = httpx.post(f"{gw.url}/v1/chat/completions", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 200, r.text
    assert upstream.requests[-1].body["messages"][0]["content"] == "cut \ufffd here \U0001f600 whole"
    assert gw.outcome(r.headers["x-request-id"])["status"] == "ok"
    r = httpx.post(f"{gw.url}/v1/route", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 200, r.text


def test_oversized_body_and_bad_headers_are_refused(gw):
    big = json.dumps({"model": "auto", "messages": [{"role": "user", "content": "x" * 2_000_000}]}).encode()
    r = httpx.post(f"{gw.url}/v1/chat/completions", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
    r = httpx.post(f"{gw.url}/v1/chat/completions", json={"messages": MSG}, headers={"x-router-max-cost": "cheap"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "x-router-max-cost"
    r = httpx.get(f"{gw.url}/v1/nothing-here")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


def test_an_api_the_gateway_does_not_serve_is_a_404_that_says_which_it_serves(gw):
    # What an SDK user sees after pointing the Responses or Embeddings API here.
    for call in (lambda c: c.responses.create(model="auto", input="hi"),
                 lambda c: c.embeddings.create(model="auto", input="hi")):
        with pytest.raises(openai.NotFoundError) as info:
            call(gw.client())
        assert info.value.body["code"] == "not_found" and "POST /v1/chat/completions" in info.value.body["message"]


def test_empty_limit_headers_are_no_limit_and_a_refusal_says_no_model_was_eligible(gw):
    # A client filling headers from a template sends an unset variable as an empty header.
    empty = {h: "" for h in ("x-router-max-cost", "x-router-max-latency", "x-router-allowed-models",
                             "x-router-excluded-models", "x-router-required-tags", "x-router-local-only")}
    answer = gw.client().chat.completions.with_raw_response.create(model="auto", messages=MSG, extra_headers=empty)
    assert answer.status_code == 200 and answer.headers["x-router-model"] == "m1"
    r = httpx.post(f"{gw.url}/v1/chat/completions", json={"model": "auto", "messages": MSG}, headers={"x-router-max-cost": "1e-12"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "no_eligible_model"
    assert r.headers["x-router-reason"] == "auto: no eligible model"


def test_a_limit_header_sent_twice_is_one_list_or_a_conflict_never_its_first_value_alone(gw):
    route = f"{gw.url}/v1/route"
    body = {"model": "auto", "messages": MSG}
    both = httpx.post(route, json=body, headers=[("x-router-excluded-models", "m1"), ("x-router-excluded-models", "m2")])
    assert both.status_code == 200 and both.json()["model"] == "m3"  # the second value had been dropped: m2
    caps = [("x-router-max-cost-usd", "1"), ("x-router-max-cost-usd", "1e-12")]
    conflict = httpx.post(route, json=body, headers=caps)
    assert conflict.status_code == 400 and conflict.json()["error"]["param"] == "x-router-max-cost-usd"
    same = httpx.post(route, json=body, headers=[("x-router-local-only", "true"), ("x-router-local-only", "true")])
    assert same.status_code == 200 and same.json()["model"] == "m3"
    endless = httpx.post(route, json=body, headers={"x-router-max-cost-usd": "inf"})  # as the body refuses Infinity
    assert endless.status_code == 400 and endless.json()["error"]["param"] == "x-router-max-cost-usd"


def test_route_endpoint_needs_a_profile(gw):
    r = httpx.post(f"{gw.url}/v1/route", json={"model": "m1", "messages": MSG})
    assert r.status_code == 400 and r.json()["error"]["code"] == "not_a_profile"


def test_unknown_model_through_the_sdk(gw):
    with pytest.raises(openai.NotFoundError) as exc:
        gw.client().chat.completions.create(model="gpt-17", messages=MSG)
    assert exc.value.body["code"] == "model_not_found"


def test_an_error_inside_the_gateway_is_a_clean_500_and_still_logged(upstream, tmp_path):
    class Broken:
        name = "broken"

        async def pre(self, ctx):
            raise RuntimeError("a bug in a hook")

        async def post(self, ctx):
            return None

    running = Running(fake_config(upstream.base_url, f"sqlite:///{tmp_path}/outcomes.sqlite"),
                      router=QualityRouter(DEFAULT_QUALITY), hooks=[Broken()])
    try:
        r = httpx.post(f"{running.url}/v1/chat/completions", json={"model": "auto", "messages": MSG})
        assert r.status_code == 500 and r.json()["error"]["code"] == "internal_error" and "Traceback" not in r.text
        row = running.outcome(r.headers["x-request-id"])
        assert row["status"] == "error" and row["error"] == "internal: RuntimeError"
    finally:
        running.stop()


def test_a_request_without_model_uses_the_configured_default_profile(upstream, tmp_path):
    config = fake_config(upstream.base_url, f"sqlite:///{tmp_path}/outcomes.sqlite",
                         extra="router: {default_profile: fast, profiles: {fast: {willingness_to_pay: 0.001}}}")
    running = Running(config, router=QualityRouter(DEFAULT_QUALITY))
    try:
        r = httpx.post(f"{running.url}/v1/chat/completions", json={"messages": MSG})
        assert r.status_code == 200 and r.headers["x-router-model"]
        assert running.outcome(r.headers["x-request-id"])["profile"] == "fast"
        r = httpx.post(f"{running.url}/v1/route", json={"messages": MSG})
        assert r.status_code == 200 and r.json()["model"]
    finally:
        running.stop()


def test_an_answer_that_cannot_be_sent_is_one_error_and_refused_requests_are_no_cache_misses(tmp_path, monkeypatch):
    from service.governance.runtime import Governance
    from tests.fake_upstream import WireServer

    monkeypatch.setenv("OPENCLAW_MASTER_KEY", "mk-test-0123456789abcdef")
    nan = {"id": "x", "object": "chat.completion", "created": 1, "model": "m1",
           "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop",
                        "logprobs": {"content": [{"token": "hi", "logprob": float("nan"), "bytes": None, "top_logprobs": []}]}}],
           "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}}
    with WireServer() as srv:
        srv.reply(json_body=nan)
        config = fake_config(srv.url + "/v1", f"sqlite:///{tmp_path}/o.sqlite")
        config = config.model_copy(update={"cache": config.cache.model_copy(update={"enabled": True, "semantic": False})})
        running = Running(config, router=QualityRouter(DEFAULT_QUALITY), governance=Governance.from_config(config))
        try:
            good = {"authorization": "Bearer mk-test-0123456789abcdef"}
            r = httpx.post(f"{running.url}/v1/chat/completions", headers=good, json={"model": "m1", "messages": MSG})
            assert r.status_code == 500 and r.json()["error"]["code"] == "internal_error"
            for _ in range(3):  # refused by governance before the cache is asked
                assert httpx.post(f"{running.url}/v1/chat/completions", headers={"authorization": "Bearer wrong"},
                                  json={"model": "m1", "messages": MSG}).status_code == 401
            metrics = httpx.get(f"{running.url}/metrics").text
            assert 'openclaw_requests_total{model="m1",profile="none",status="error"} 1.0' in metrics
            assert 'status="ok"' not in metrics.split("openclaw_requests_total", 1)[1].split("# HELP", 1)[0]
            assert 'openclaw_cache_results_total{result="miss"} 1.0' in metrics
        finally:
            running.stop()


def test_a_refused_requests_row_keeps_a_bounded_error(gw):
    # An unknown model's name comes back in the error; the row of a request refused before any
    # key check must not store whatever a caller sends.
    r = httpx.post(f"{gw.url}/v1/chat/completions", json={"model": "x" * 100_000, "messages": MSG})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    row = gw.outcome(r.headers["x-request-id"])
    assert row["status"] == "rejected" and len(row["error"]) <= 500 and len(row["requested_model"]) <= 200


@pytest.mark.parametrize("include_usage", [True, False])
def test_usage_sent_on_the_finish_chunk_reaches_the_client_as_openai_sends_it(tmp_path, include_usage):
    # Mistral and vLLM put usage on the chunk that carries finish_reason; an OpenAI client reads
    # it from one chunk with no choices at the end, and only when it asked for it.
    from tests.fake_upstream import WireServer

    def chunk(delta, finish=None, usage=None):
        return {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m1",
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **({"usage": usage} if usage else {})}

    usage = {"prompt_tokens": 10, "completion_tokens": 1, "total_tokens": 11}
    with WireServer() as srv:
        srv.reply_sse([(None, chunk({"role": "assistant", "content": ""})), (None, chunk({"content": "Hi"})),
                       (None, chunk({}, "stop", usage)), (None, "[DONE]")])
        running = Running(fake_config(srv.url + "/v1", f"sqlite:///{tmp_path}/o.sqlite"), router=QualityRouter(DEFAULT_QUALITY))
        try:
            extra = {"stream_options": {"include_usage": True}} if include_usage else {}
            chunks = list(running.client().chat.completions.create(model="m1", messages=MSG, stream=True, **extra))
        finally:
            running.stop()
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hi"
    assert all(c.usage is None for c in chunks if c.choices)
    usage_chunks = [c for c in chunks if c.usage is not None]
    if include_usage:
        assert len(usage_chunks) == 1 and usage_chunks[0] is chunks[-1] and chunks[-1].choices == []
        assert usage_chunks[0].usage.total_tokens == 11
    else:
        assert usage_chunks == []
