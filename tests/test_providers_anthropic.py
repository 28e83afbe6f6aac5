"""The Anthropic Messages adapter against a real server speaking Anthropic's wire format."""
from __future__ import annotations

import json
import re

import pytest

from router.config import ModelSpec, Price, ProviderSpec
from service.providers import UpstreamError, build_provider
from tests.fake_upstream import WireServer

KEY = "sk-ant-test-abcdef0123456789"
MODEL = ModelSpec(name="claude", provider="anthropic", upstream="claude-sonnet-4-5", price=Price(input_per_1m=3, output_per_1m=15), max_output_tokens=1024)
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "Weather for a city",
                                      "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}},
    {"type": "function", "function": {"name": "noop"}},
]
ROUND_TRIP = {
    "model": "auto",
    "messages": [
        {"role": "system", "content": "You are terse."},
        {"role": "developer", "content": [{"type": "text", "text": "Use metric units."}]},
        {"role": "user", "content": "Weather in Paris and Oslo?"},
        {"role": "assistant", "content": "Checking.", "tool_calls": [
            {"id": "toolu_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}},
            {"id": "toolu_2", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Oslo\"}"}}]},
        {"role": "tool", "tool_call_id": "toolu_1", "content": "21C"},
        {"role": "tool", "tool_call_id": "toolu_2", "content": [{"type": "text", "text": "9C"}]},
        {"role": "user", "content": [{"type": "text", "text": "And this?"},
                                     {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0K"}}]},
    ],
    "tools": TOOLS,
    "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
    "parallel_tool_calls": False,
    "max_tokens": 300,
    "temperature": 0.2,
    "stop": "END",
    "user": "u-42",
}
MESSAGE = {
    "id": "msg_01", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5",
    "content": [{"type": "text", "text": "Let me look."},
                {"type": "tool_use", "id": "toolu_9", "name": "get_weather", "input": {"city": "Rome"}}],
    "stop_reason": "tool_use", "stop_sequence": None,
    "usage": {"input_tokens": 120, "cache_read_input_tokens": 30, "output_tokens": 45},
}


def stream_events(text_parts=("Hel", "lo"), stop="tool_use"):
    events = [
        ("message_start", {"type": "message_start", "message": {"id": "msg_02", "type": "message", "role": "assistant", "content": [],
                                                                 "usage": {"input_tokens": 50, "output_tokens": 1}}}),
        ("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        ("ping", {"type": "ping"}),
    ]
    events += [("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": t}}) for t in text_parts]
    events += [
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        ("content_block_start", {"type": "content_block_start", "index": 1,
                                 "content_block": {"type": "tool_use", "id": "toolu_7", "name": "get_weather", "input": {}}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "{\"city\": "}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "\"Lima\"}"}}),
        ("content_block_stop", {"type": "content_block_stop", "index": 1}),
        ("message_delta", {"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": None}, "usage": {"output_tokens": 17}}),
        ("message_stop", {"type": "message_stop"}),
    ]
    return events


@pytest.fixture(scope="module")
def server():
    with WireServer() as srv:
        yield srv


@pytest.fixture
async def provider(server, monkeypatch):
    monkeypatch.setenv("ANTHROPIC_TEST_KEY", KEY)
    server.requests.clear()
    p = build_provider(ProviderSpec(kind="anthropic", base_url=server.url, api_key_env="ANTHROPIC_TEST_KEY", timeout_s=2))
    yield p
    await p.aclose()


async def test_request_translation(server, provider):
    server.reply(MESSAGE)
    await provider.complete(MODEL, ROUND_TRIP)
    (req,) = server.requests
    assert req.path == "/v1/messages"
    assert req.headers["x-api-key"] == KEY and req.headers["anthropic-version"] == "2023-06-01"
    body = req.body
    assert body["model"] == "claude-sonnet-4-5" and body["max_tokens"] == 300 and "stream" not in body
    # Prompt-cache breakpoints on the last tool, the system prompt, the last block of the history and
    # the last block before the last assistant turn.
    assert body["system"] == [{"type": "text", "text": "You are terse.\n\nUse metric units.", "cache_control": {"type": "ephemeral"}}]
    assert body["temperature"] == 0.2 and body["stop_sequences"] == ["END"] and body["metadata"] == {"user_id": "u-42"}
    assert body["tools"] == [
        {"name": "get_weather", "description": "Weather for a city", "input_schema": TOOLS[0]["function"]["parameters"]},
        {"name": "noop", "description": "", "input_schema": {"type": "object", "properties": {}}, "cache_control": {"type": "ephemeral"}},
    ]
    assert body["tool_choice"] == {"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True}
    assert [m["role"] for m in body["messages"]] == ["user", "assistant", "user"]
    assert body["messages"][0]["content"] == [{"type": "text", "text": "Weather in Paris and Oslo?", "cache_control": {"type": "ephemeral"}}]
    assert body["messages"][1]["content"] == [
        {"type": "text", "text": "Checking."},
        {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}},
        {"type": "tool_use", "id": "toolu_2", "name": "get_weather", "input": {"city": "Oslo"}},
    ]
    # Both tool results and the next user turn merge into one user turn, results first.
    assert body["messages"][2]["content"] == [
        {"type": "tool_result", "tool_use_id": "toolu_1", "content": "21C"},
        {"type": "tool_result", "tool_use_id": "toolu_2", "content": "9C"},
        {"type": "text", "text": "And this?"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0K"}, "cache_control": {"type": "ephemeral"}},
    ]


async def test_default_max_tokens_and_json_mode(server, provider):
    server.reply(MESSAGE)
    await provider.complete(MODEL, {"messages": [{"role": "user", "content": "hi"}], "response_format": {"type": "json_object"}})
    body = server.requests[-1].body
    assert body["max_tokens"] == 1024 and "tools" not in body
    assert body["system"] == [{"type": "text", "text": "Respond with a single valid JSON object and nothing else.",
                               "cache_control": {"type": "ephemeral"}}]


@pytest.mark.parametrize("limits", [{"max_tokens": 5, "max_completion_tokens": 40}, {"max_tokens": 40, "max_completion_tokens": 5}])
async def test_both_output_limits_are_sent_as_the_tighter_one(server, provider, limits):
    server.reply(MESSAGE)
    await provider.complete(MODEL, {"messages": [{"role": "user", "content": "hi"}], **limits})
    assert server.requests[-1].body["max_tokens"] == 5


async def test_response_translation(server, provider):
    server.reply(MESSAGE)
    result = await provider.complete(MODEL, {"messages": [{"role": "user", "content": "Rome?"}], "tools": TOOLS})
    assert result["object"] == "chat.completion" and result["model"] == "claude"
    choice = result["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] == "Let me look."
    (call,) = choice["message"]["tool_calls"]
    assert call["id"] == "toolu_9" and call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"city": "Rome"}
    # cache reads are prompt tokens, and said to be cache reads (billed at the cached price)
    assert result["usage"] == {"prompt_tokens": 150, "completion_tokens": 45, "total_tokens": 195,
                               "prompt_tokens_details": {"cached_tokens": 30}}


async def test_stream_translation(server, provider):
    server.reply_sse(stream_events())
    chunks = [c async for c in provider.stream(MODEL, {"messages": [{"role": "user", "content": "hi"}], "tools": TOOLS})]
    assert server.requests[-1].body["stream"] is True
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    assert "".join(d.get("content") or "" for d in deltas) == "Hello"
    calls = [tc for d in deltas for tc in d.get("tool_calls") or []]
    assert calls[0] == {"index": 0, "id": "toolu_7", "type": "function", "function": {"name": "get_weather", "arguments": ""}}
    assert json.loads("".join(tc["function"]["arguments"] for tc in calls)) == {"city": "Lima"}
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]] == ["tool_calls"]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == {"prompt_tokens": 50, "completion_tokens": 17, "total_tokens": 67}
    assert {c["id"] for c in chunks} == {"msg_02"}


async def test_a_tool_call_without_input_streams_empty_json_arguments(server, provider):
    events = [e for e in stream_events(text_parts=()) if "input_json_delta" not in str(e[1])]
    events.insert(-3, ("content_block_delta", {"type": "content_block_delta", "index": 1,
                                               "delta": {"type": "input_json_delta", "partial_json": ""}}))
    server.reply_sse(events)
    chunks = [c async for c in provider.stream(MODEL, {"messages": [{"role": "user", "content": "hi"}], "tools": TOOLS})]
    calls = [tc for c in chunks if c["choices"] for tc in c["choices"][0]["delta"].get("tool_calls") or []]
    assert json.loads("".join(tc["function"]["arguments"] for tc in calls)) == {}  # as the non-streamed answer


@pytest.mark.parametrize(
    "status, payload, headers, kind, retry_after",
    [
        (529, {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}, {}, "server", None),
        (429, {"type": "error", "error": {"type": "rate_limit_error", "message": "Number of request tokens has exceeded your per-minute rate limit"}},
         {"retry-after": "12"}, "rate_limit", 12.0),
        (400, {"type": "error", "error": {"type": "invalid_request_error", "message": "prompt is too long: 210000 tokens > 200000 maximum"}}, {},
         "context_length", None),
        (400, {"type": "error", "error": {"type": "invalid_request_error", "message": "max_tokens: Field required"}}, {}, "bad_request", None),
        (401, {"type": "error", "error": {"type": "authentication_error", "message": "invalid x-api-key"}}, {}, "auth", None),
        (404, {"type": "error", "error": {"type": "not_found_error", "message": "model: claude-x"}}, {}, "not_found", None),
        # out of credit: another model, never a 400 to the client
        (400, {"type": "error", "error": {"type": "invalid_request_error",
                                          "message": "Your credit balance is too low to access the Anthropic API."}}, {}, "auth", None),
    ],
)
async def test_errors(server, provider, status, payload, headers, kind, retry_after):
    server.reply(payload, status=status, headers=headers)
    with pytest.raises(UpstreamError) as info:
        await provider.complete(MODEL, {"messages": [{"role": "user", "content": "hi"}]})
    assert (info.value.kind, info.value.status, info.value.retry_after) == (kind, status, retry_after)
    # A refused key (or its account out of credit) names the variable that holds it.
    named = f" (the key in {provider.spec.api_key_env})" if kind == "auth" else ""
    assert info.value.message == payload["error"]["message"] + named


async def test_error_event_mid_stream(server, provider):
    events = stream_events()[:4] + [("error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})]
    server.reply_sse(events)
    got = []
    with pytest.raises(UpstreamError) as info:
        async for c in provider.stream(MODEL, {"messages": [{"role": "user", "content": "hi"}]}):
            got.append(c)
    assert info.value.kind == "server" and info.value.retryable
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in got) == "Hel"


async def test_stream_cut_before_message_stop(server, provider):
    server.reply_sse(stream_events()[:5], cut=True)
    with pytest.raises(UpstreamError) as info:
        async for _ in provider.stream(MODEL, {"messages": [{"role": "user", "content": "hi"}]}):
            pass
    assert info.value.kind == "connection"


async def test_stream_cut_after_its_final_usage_bills_the_upstreams_counts(server, provider):
    server.reply_sse(stream_events()[:-1], cut=True)  # message_delta arrived, message_stop never did
    got = [c async for c in provider.stream(MODEL, {"messages": [{"role": "user", "content": "hi"}]})]
    assert got[-2]["choices"][0]["finish_reason"] == "tool_calls"
    assert got[-1]["usage"]["prompt_tokens"] == 50 and got[-1]["usage"]["completion_tokens"] == 17


async def test_stream_with_invalid_json_event(server, provider):
    server.reply_sse(stream_events()[:2] + [("content_block_delta", "{\"type\": \"content_block_delta\", ")])
    with pytest.raises(UpstreamError) as info:
        async for _ in provider.stream(MODEL, {"messages": [{"role": "user", "content": "hi"}]}):
            pass
    assert info.value.kind == "malformed"


async def test_key_is_scrubbed_from_error_messages(server, provider):
    server.reply({"type": "error", "error": {"type": "authentication_error", "message": f"bad key {KEY}"}}, status=401)
    with pytest.raises(UpstreamError) as info:
        await provider.complete(MODEL, {"messages": [{"role": "user", "content": "hi"}]})
    assert KEY not in str(info.value)


def test_openai_values_anthropic_would_refuse_are_translated():
    from service.providers.anthropic import FINISH_REASONS, to_anthropic
    from service.providers.base import classify

    body = {"messages": [{"role": "user", "content": [{"type": "text", "text": ""}, {"type": "text", "text": "hi"}]},
                         {"role": "assistant", "content": " ", "tool_calls": [
                             {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
                         {"role": "tool", "tool_call_id": "c1", "content": "ok"}],
            "temperature": 1.5, "top_p": 0.9}
    payload = to_anthropic(MODEL, body, stream=False)
    assert payload["temperature"] == 1.0 and "top_p" not in payload  # [0, 1], and not both
    texts = [b for m in payload["messages"] for b in m["content"] if b.get("type") == "text"]
    assert [b["text"] for b in texts] == ["hi"]  # no empty or blank text blocks
    assert FINISH_REASONS["model_context_window_exceeded"] == "length"
    too_long = {"type": "error", "error": {"type": "invalid_request_error",
                                           "message": "input length and `max_tokens` exceed context limit: 150000 + 64000 > 200000"}}
    assert classify(400, too_long, "") == "context_length"  # fails over to a bigger window


def test_history_a_provider_would_refuse_is_sent_in_a_form_it_takes():
    from service.providers.anthropic import to_anthropic

    cut_off = {"id": "c1", "type": "function", "function": {"name": "write", "arguments": '{"path": "a.txt", "te'}}
    body = {"messages": [{"role": "user", "content": "write it"}, {"role": "assistant", "content": None, "tool_calls": [cut_off]},
                         {"role": "tool", "tool_call_id": "c1", "content": "error: bad arguments"}],
            "max_completion_tokens": 48000}
    payload = to_anthropic(MODEL, body, stream=False)
    (use,) = [b for m in payload["messages"] for b in m["content"] if b.get("type") == "tool_use"]
    assert use["input"] == {"arguments": '{"path": "a.txt", "te'}  # wrapped: refusing was a 400 on every later turn
    assert payload["max_tokens"] == 1024  # the model's max_output_tokens, not the 48,000 asked for


def test_tool_call_ids_another_provider_made_are_rewritten_alike_in_call_and_result():
    from service.providers.anthropic import to_anthropic

    ids = ["functions.read_file:0", "functions.read_file:1", "call_ok-1"]
    body = {"messages": [{"role": "user", "content": "read both"},
                         {"role": "assistant", "content": None, "tool_calls": [
                             {"id": i, "type": "function", "function": {"name": "read_file", "arguments": "{}"}} for i in ids]},
                         *[{"role": "tool", "tool_call_id": i, "content": f"text {n}"} for n, i in enumerate(ids)]]}
    payload = to_anthropic(MODEL, body, stream=False)
    uses = [b["id"] for m in payload["messages"] for b in m["content"] if b.get("type") == "tool_use"]
    results = [b["tool_use_id"] for m in payload["messages"] for b in m["content"] if b.get("type") == "tool_result"]
    assert uses == results and len(set(uses)) == 3 and uses[2] == "call_ok-1"  # a valid id is kept as it is
    assert all(re.fullmatch(r"[a-zA-Z0-9_-]+", i) for i in uses)  # Anthropic's pattern for tool_use ids


PDF = "JVBERi0xLjQK"  # "%PDF-1.4\n"


async def test_files_and_images_of_every_part_shape_reach_anthropic(server, provider):
    server.reply(MESSAGE)
    content = [
        {"type": "text", "text": "Compare them."},
        {"type": "file", "file": {"filename": "contract.pdf", "file_data": f"data:application/pdf;base64,{PDF}"}},
        {"type": "file", "file": {"filename": "notes.txt", "file_data": "data:text/plain;base64,aMOpbGxvCg=="}},
        {"type": "file", "file": {"filename": "scan.png", "file_data": "data:image/png;base64,iVBORw0K"}},
        {"type": "file", "file": {"filename": "bare.pdf", "file_data": PDF}},  # bare base64: typed by its name
        {"type": "input_image", "image_url": "https://example.com/cat.jpg"},
        {"type": "input_image", "image_url": "data:image/webp;base64,UklGRg=="},
    ]
    await provider.complete(MODEL, {"messages": [{"role": "user", "content": content}]})
    (message,) = server.requests[-1].body["messages"]
    assert message["content"] == [
        {"type": "text", "text": "Compare them."},
        {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": PDF}, "title": "contract.pdf"},
        {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "héllo\n"}, "title": "notes.txt"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0K"}},
        {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": PDF}, "title": "bare.pdf"},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
        {"type": "image", "source": {"type": "base64", "media_type": "image/webp", "data": "UklGRg=="}},
    ]


@pytest.mark.parametrize("part, param, words", [
    ({"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}}, "messages[0].content[1]", "take no audio"),
    ({"type": "file", "file": {"file_id": "file-abc123"}}, "messages[0].content[1]", "file_id"),
    ({"type": "input_image", "file_id": "file-abc123"}, "messages[0].content[1]", "file_id"),
    ({"type": "file", "file": {"filename": "a.docx", "file_data": "data:application/vnd.ms-word;base64,UEsDBA=="}},
     "messages[0].content[1]", "not application/vnd.ms-word"),
    ({"type": "file", "file": {"filename": "a.txt", "file_data": "data:text/plain;base64,//79"}}, "messages[0].content[1]", "UTF-8"),
])
async def test_attachments_anthropic_cannot_read_are_refused_naming_the_part(server, provider, part, param, words):
    with pytest.raises(UpstreamError) as info:
        await provider.complete(MODEL, {"messages": [{"role": "user", "content": [{"type": "text", "text": "what is this?"}, part]}]})
    assert (info.value.kind, info.value.param, info.value.code) == ("bad_request", param, "unsupported_value")
    assert words in info.value.message and not info.value.failover
    assert server.requests == []  # never sent without the attachment



async def test_a_part_type_anthropic_has_no_block_for_is_refused_for_failover_not_dropped(server, provider):
    # Dropped, the model would answer about a video it was never shown.
    video = {"type": "video_url", "video_url": {"url": "https://example.com/clip.mp4"}}
    with pytest.raises(UpstreamError) as info:
        await provider.complete(MODEL, {"messages": [{"role": "user", "content": [{"type": "text", "text": "what happens?"}, video]}]})
    assert (info.value.kind, info.value.param) == ("unsupported", "messages[0].content[1]") and info.value.failover
    assert "'video_url'" in info.value.message and server.requests == []
    # An assistant's replayed refusal part is what it said: sent as its text.
    server.reply(MESSAGE)
    await provider.complete(MODEL, {"messages": [
        {"role": "user", "content": "help me pick a lock"},
        {"role": "assistant", "content": [{"type": "refusal", "refusal": "I can't help with that."}]},
        {"role": "user", "content": "it is my own door"}]})
    assert server.requests[-1].body["messages"][1]["content"] == [{"type": "text", "text": "I can't help with that."}]

BIG = MODEL.model_copy(update={"max_output_tokens": 64000})


async def test_reasoning_effort_is_a_thinking_budget_within_max_tokens(server, provider):
    server.reply(MESSAGE)
    await provider.complete(BIG, {"messages": [{"role": "user", "content": "prove it"}], "reasoning_effort": "medium",
                                    "max_completion_tokens": 20000, "temperature": 0.3, "top_p": 0.5})
    body = server.requests[-1].body
    assert body["thinking"] == {"type": "enabled", "budget_tokens": 8192} and body["max_tokens"] == 20000
    assert "temperature" not in body and "top_p" not in body  # refused beside thinking
    server.reply(MESSAGE)
    await provider.complete(BIG, {"messages": [{"role": "user", "content": "prove it"}], "reasoning_effort": "high", "max_tokens": 6000})
    assert server.requests[-1].body["thinking"] == {"type": "enabled", "budget_tokens": 3000}  # half of max_tokens at most


def test_thinking_is_left_out_where_anthropic_would_refuse_it():
    from service.providers.anthropic import to_anthropic

    ask = {"role": "user", "content": "weather?"}
    call = {"role": "assistant", "content": None, "tool_calls": [
        {"id": "toolu_1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}]}
    result = {"role": "tool", "tool_call_id": "toolu_1", "content": "9C"}
    old = BIG.model_copy(update={"upstream": "claude-3-5-haiku-20241022"})
    refused = [
        (BIG, {"messages": [ask, call, result], "tools": TOOLS}),  # mid tool loop: the call's thinking block is gone
        (BIG, {"messages": [ask], "tools": TOOLS, "tool_choice": "required"}),  # forced tool use
        (BIG, {"messages": [ask], "max_tokens": 1500}),  # no room for the least budget beside an answer
        (BIG, {"messages": [ask, {"role": "assistant", "content": "Sunny, "}]}),  # a prefilled answer
        (old, {"messages": [ask]}),  # a model without extended thinking
    ]
    for model, body in refused:
        assert "thinking" not in to_anthropic(model, {**body, "reasoning_effort": "high"}, stream=False)
    # The loop over, a new user turn thinks again.
    body = {"messages": [ask, call, result, {"role": "assistant", "content": "9C."}, {"role": "user", "content": "and Oslo?"}],
            "tools": TOOLS, "reasoning_effort": "low"}
    assert to_anthropic(BIG, body, stream=False)["thinking"] == {"type": "enabled", "budget_tokens": 1024}
    assert "thinking" not in to_anthropic(BIG, {**body, "reasoning_effort": "none"}, stream=False)


@pytest.mark.parametrize("extra, param", [({"logprobs": True}, "logprobs"), ({"logprobs": True, "top_logprobs": 3}, "logprobs"),
                                          ({"reasoning_effort": "extreme"}, "reasoning_effort")])
async def test_what_anthropic_cannot_honour_is_refused_not_dropped(server, provider, extra, param):
    with pytest.raises(UpstreamError) as info:
        await provider.complete(MODEL, {"messages": [{"role": "user", "content": "hi"}], **extra})
    assert (info.value.kind, info.value.param) == ("bad_request", param) and server.requests == []


def test_a_gemini_calls_thought_signature_is_not_sent_to_anthropic():
    from service.providers.anthropic import to_anthropic

    signed = "call_5f3c__thought__CiQB0e2Kb-SIG_x"
    body = {"messages": [{"role": "user", "content": "read a"},
                         {"role": "assistant", "content": None, "tool_calls": [
                             {"id": signed, "type": "function", "function": {"name": "read", "arguments": "{}"}}]},
                         {"role": "tool", "tool_call_id": signed, "content": "A"}]}
    payload = to_anthropic(MODEL, body, stream=False)
    assert payload["messages"][1]["content"][0]["id"] == "call_5f3c"
    assert payload["messages"][2]["content"][0]["tool_use_id"] == "call_5f3c"


def test_a_tool_call_id_repeated_across_turns_reaches_anthropic_once():
    # Some models number their calls per turn (call_0 every turn); Anthropic refuses a history whose
    # tool_use ids repeat, and an agent replays its whole history every turn.
    from service.providers.anthropic import to_anthropic

    def step(call_id, path, result):
        return [{"role": "assistant", "content": None, "tool_calls": [
                    {"id": call_id, "type": "function", "function": {"name": "read", "arguments": json.dumps({"path": path})}}]},
                {"role": "tool", "tool_call_id": call_id, "content": result}]

    body = {"messages": [{"role": "user", "content": "read a, then b, then c"}, *step("call_0", "a", "A"),
                         {"role": "assistant", "content": "Read a."}, {"role": "user", "content": "go on"},
                         *step("call_0", "b", "B"), *step("functions.read:0", "c", "C"), *step("functions.read:0", "d", "D")]}
    payload = to_anthropic(MODEL, body, stream=False)
    uses = [(b["id"], b["input"]["path"]) for m in payload["messages"] for b in m["content"] if b["type"] == "tool_use"]
    results = [(b["tool_use_id"], b["content"]) for m in payload["messages"] for b in m["content"] if b["type"] == "tool_result"]
    ids = [i for i, _ in uses]
    assert len(set(ids)) == 4 and ids[0] == "call_0"  # the first use keeps its id: the cached prefix is unchanged
    # each result answers its own call
    assert {i: p for i, p in uses} == {i: r.lower() for i, r in results}


def test_two_calls_of_one_id_in_a_turn_are_answered_in_order():
    from service.providers.anthropic import to_anthropic

    calls = [{"id": "call_0", "type": "function", "function": {"name": "read", "arguments": json.dumps({"path": p})}}
             for p in ("a", "b")]
    body = {"messages": [{"role": "user", "content": "read a and b"},
                         {"role": "assistant", "content": None, "tool_calls": calls},
                         {"role": "tool", "tool_call_id": "call_0", "content": "A"},
                         {"role": "tool", "tool_call_id": "call_0", "content": "B"}]}
    blocks = [b for m in to_anthropic(MODEL, body, stream=False)["messages"] for b in m["content"]]
    uses = {b["id"]: b["input"]["path"] for b in blocks if b["type"] == "tool_use"}
    results = {b["tool_use_id"]: b["content"] for b in blocks if b["type"] == "tool_result"}
    assert len(uses) == 2 and {i: p.upper() for i, p in uses.items()} == results
