"""The Gemini adapter against a real server speaking the generateContent wire format."""
from __future__ import annotations

import json
import re

import pytest

from router.config import ModelSpec, Price, ProviderSpec
from service.providers import UpstreamError, build_provider
from tests.fake_upstream import WireServer

KEY = "AIza-test-key-0123456789"
MODEL = ModelSpec(name="gemini", provider="google", upstream="gemini-2.5-flash", price=Price(input_per_1m=0.3, output_per_1m=2.5))
PARAMS = {"$schema": "http://json-schema.org/draft-07/schema#", "type": "object", "additionalProperties": False,
          "properties": {"city": {"type": "string"}, "days": {"type": "integer"}}, "required": ["city"]}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather for a city", "parameters": PARAMS}}]
ROUND_TRIP = {
    "messages": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_a", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
        {"role": "tool", "tool_call_id": "call_a", "content": "{\"temp_c\": 21}"},
        {"role": "tool", "tool_call_id": "call_a", "content": "plain text result"},
        {"role": "user", "content": "Thanks, and tomorrow?"},
    ],
    "tools": TOOLS,
    "tool_choice": "required",
    "max_completion_tokens": 200,
    "temperature": 0.1,
    "stop": ["END"],
    "response_format": {"type": "json_object"},
}


def response(parts, finish="STOP", usage=(12, 7)):
    return {
        "candidates": [{"content": {"role": "model", "parts": parts}, "finishReason": finish, "index": 0}],
        "usageMetadata": {"promptTokenCount": usage[0], "candidatesTokenCount": usage[1], "totalTokenCount": sum(usage)},
        "modelVersion": "gemini-2.5-flash", "responseId": "resp-1",
    }


@pytest.fixture(scope="module")
def server():
    with WireServer() as srv:
        yield srv


@pytest.fixture
async def provider(server, monkeypatch):
    monkeypatch.setenv("GEMINI_TEST_KEY", KEY)
    server.requests.clear()
    p = build_provider(ProviderSpec(kind="gemini", base_url=f"{server.url}/v1beta", api_key_env="GEMINI_TEST_KEY", timeout_s=2))
    yield p
    await p.aclose()


async def test_request_translation(server, provider):
    server.reply(response([{"text": "ok"}]))
    await provider.complete(MODEL, ROUND_TRIP)
    (req,) = server.requests
    assert req.path == "/v1beta/models/gemini-2.5-flash:generateContent"
    assert req.headers["x-goog-api-key"] == KEY and KEY not in req.path
    body = req.body
    assert body["systemInstruction"] == {"parts": [{"text": "You are terse."}]}
    assert body["contents"] == [
        {"role": "user", "parts": [{"text": "Weather in Paris?"}]},
        {"role": "model", "parts": [{"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}}]},
        {"role": "user", "parts": [
            {"functionResponse": {"name": "get_weather", "response": {"temp_c": 21}}},
            {"functionResponse": {"name": "get_weather", "response": {"content": "plain text result"}}},
            {"text": "Thanks, and tomorrow?"},
        ]},
    ]
    decl = body["tools"][0]["functionDeclarations"][0]
    assert decl["name"] == "get_weather" and decl["description"] == "Weather for a city"
    assert decl["parameters"] == {"type": "object", "properties": PARAMS["properties"], "required": ["city"]}
    assert body["toolConfig"] == {"functionCallingConfig": {"mode": "ANY"}}
    assert body["generationConfig"] == {"temperature": 0.1, "maxOutputTokens": 200, "stopSequences": ["END"],
                                        "responseMimeType": "application/json", "thinkingConfig": {"thinkingBudget": 100}}


@pytest.mark.parametrize("limits", [{"max_tokens": 5, "max_completion_tokens": 40}, {"max_tokens": 40, "max_completion_tokens": 5}])
async def test_both_output_limits_are_sent_as_the_tighter_one(server, provider, limits):
    server.reply(response([{"text": "ok"}]))
    await provider.complete(MODEL, {"messages": [{"role": "user", "content": "hi"}], **limits})
    assert server.requests[-1].body["generationConfig"]["maxOutputTokens"] == 5


async def test_named_tool_choice(server, provider):
    server.reply(response([{"text": "ok"}]))
    await provider.complete(MODEL, {**ROUND_TRIP, "tool_choice": {"type": "function", "function": {"name": "get_weather"}}})
    assert server.requests[-1].body["toolConfig"] == {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["get_weather"]}}


async def test_response_translation(server, provider):
    server.reply(response([{"text": "Checking "}, {"functionCall": {"name": "get_weather", "args": {"city": "Rome"}}},
                           {"functionCall": {"name": "get_weather", "args": {"city": "Oslo"}}}]))
    result = await provider.complete(MODEL, {"messages": [{"role": "user", "content": "Rome and Oslo?"}], "tools": TOOLS})
    assert result["model"] == "gemini" and result["id"] == "resp-1"
    choice = result["choices"][0]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] == "Checking "
    calls = choice["message"]["tool_calls"]
    assert [json.loads(c["function"]["arguments"]) for c in calls] == [{"city": "Rome"}, {"city": "Oslo"}]
    assert len({c["id"] for c in calls}) == 2 and all(c["id"].startswith("call_") for c in calls)
    assert result["usage"] == {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19}


@pytest.mark.parametrize("finish, expected", [("MAX_TOKENS", "length"), ("SAFETY", "content_filter"), ("STOP", "stop")])
async def test_finish_reasons(server, provider, finish, expected):
    server.reply(response([{"text": "partial"}], finish=finish))
    result = await provider.complete(MODEL, {"messages": [{"role": "user", "content": "hi"}]})
    assert result["choices"][0]["finish_reason"] == expected


@pytest.mark.parametrize("finish", ["MALFORMED_FUNCTION_CALL", "OTHER"])
async def test_a_finish_without_an_answer_is_an_error_to_fail_over_on(server, provider, finish):
    server.reply({"candidates": [{"finishReason": finish, "index": 0}], "usageMetadata": {"promptTokenCount": 900}})
    with pytest.raises(UpstreamError) as info:
        await provider.complete(MODEL, {"messages": [{"role": "user", "content": "hi"}], "tools": TOOLS})
    assert info.value.kind == "malformed" and info.value.failover and finish in info.value.message
    server.reply_sse([(None, {"candidates": [{"finishReason": finish, "index": 0}], "usageMetadata": {"promptTokenCount": 900}})])
    with pytest.raises(UpstreamError) as info:
        async for chunk in provider.stream(MODEL, {"messages": [{"role": "user", "content": "hi"}], "tools": TOOLS}):
            assert not chunk["choices"][0]["finish_reason"]  # nothing that would commit the stream
    assert info.value.kind == "malformed"


def test_history_gemini_would_refuse_is_sent_in_a_form_it_takes():
    from service.providers.gemini import to_gemini

    limited = MODEL.model_copy(update={"max_output_tokens": 8192})
    cut_off = {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Par'}}
    body = {"messages": [{"role": "user", "content": "weather?"},
                         {"role": "assistant", "content": [{"type": "text", "text": ""}, {"type": "text", "text": "  "}], "tool_calls": [cut_off]},
                         {"role": "tool", "tool_call_id": "c1", "content": "error: bad arguments"}],
            "max_completion_tokens": 48000}
    payload = to_gemini(limited, body)
    model_turn = next(c for c in payload["contents"] if c["role"] == "model")
    assert model_turn["parts"] == [{"functionCall": {"name": "get_weather", "args": {"arguments": '{"city": "Par'}}}]
    assert payload["generationConfig"]["maxOutputTokens"] == 8192
    # A limit left at its default is not known to be the model's: the client's stands.
    assert to_gemini(MODEL, body)["generationConfig"]["maxOutputTokens"] == 48000


async def test_stream_translation(server, provider):
    server.reply_sse([
        (None, {"candidates": [{"content": {"role": "model", "parts": [{"text": "Hel"}]}}], "usageMetadata": {"promptTokenCount": 9}}),
        (None, {"candidates": [{"content": {"role": "model", "parts": [{"text": "lo"}]}}]}),
        (None, {"candidates": [{"content": {"role": "model", "parts": [{"functionCall": {"name": "get_weather", "args": {"city": "Lima"}}}]},
                                "finishReason": "STOP"}],
                "usageMetadata": {"promptTokenCount": 9, "candidatesTokenCount": 6, "totalTokenCount": 15}}),
    ])
    chunks = [c async for c in provider.stream(MODEL, {"messages": [{"role": "user", "content": "hi"}], "tools": TOOLS})]
    assert server.requests[-1].path == "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    assert deltas[0]["role"] == "assistant"
    assert "".join(d.get("content") or "" for d in deltas) == "Hello"
    (call,) = [tc for d in deltas for tc in d.get("tool_calls") or []]
    assert call["index"] == 0 and call["function"]["name"] == "get_weather" and json.loads(call["function"]["arguments"]) == {"city": "Lima"}
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]] == ["tool_calls"]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == {"prompt_tokens": 9, "completion_tokens": 6, "total_tokens": 15}


@pytest.mark.parametrize(
    "status, error, kind, retry_after",
    [
        (429, {"code": 429, "message": "Resource has been exhausted (e.g. check quota).", "status": "RESOURCE_EXHAUSTED",
               "details": [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "17s"}]}, "rate_limit", 17.0),
        # no finite wait: none ("infs" had been a 500 on every later request naming the model); a day at most
        (429, {"code": 429, "message": "Resource has been exhausted.", "status": "RESOURCE_EXHAUSTED",
               "details": [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "infs"}]}, "rate_limit", None),
        (429, {"code": 429, "message": "Resource has been exhausted.", "status": "RESOURCE_EXHAUSTED",
               "details": [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "99999999999s"}]}, "rate_limit",
         86_400.0),
        (400, {"code": 400, "message": "The input token count (1200000) exceeds the maximum number of tokens allowed (1048576).",
               "status": "INVALID_ARGUMENT"}, "context_length", None),
        (400, {"code": 400, "message": "API key not valid. Please pass a valid API key.", "status": "INVALID_ARGUMENT"}, "auth", None),
        # an expired key: named by the reason in `details`, whatever the message says
        (400, {"code": 400, "message": "Your credentials need renewing.", "status": "INVALID_ARGUMENT",
               "details": [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID"}]}, "auth", None),
        (400, {"code": 400, "message": "API key expired. Please renew the API key.", "status": "INVALID_ARGUMENT"}, "auth", None),
        (503, {"code": 503, "message": "The model is overloaded. Please try again later.", "status": "UNAVAILABLE"}, "server", None),
        (404, {"code": 404, "message": "models/gemini-x is not found for API version v1beta", "status": "NOT_FOUND"}, "not_found", None),
    ],
)
async def test_errors(server, provider, status, error, kind, retry_after):
    server.reply({"error": error}, status=status)
    with pytest.raises(UpstreamError) as info:
        await provider.complete(MODEL, {"messages": [{"role": "user", "content": "hi"}]})
    assert (info.value.kind, info.value.status, info.value.retry_after) == (kind, status, retry_after)


async def test_stream_errors(server, provider):
    server.reply_sse([(None, {"candidates": [{"content": {"parts": [{"text": "Hel"}]}}]}),
                      (None, {"error": {"code": 503, "message": "overloaded", "status": "UNAVAILABLE"}})])
    with pytest.raises(UpstreamError) as info:
        async for _ in provider.stream(MODEL, {"messages": [{"role": "user", "content": "hi"}]}):
            pass
    assert info.value.kind == "server"
    server.reply_sse([(None, {"candidates": [{"content": {"parts": [{"text": "Hel"}]}}]})], cut=True)
    with pytest.raises(UpstreamError) as info:
        async for _ in provider.stream(MODEL, {"messages": [{"role": "user", "content": "hi"}]}):
            pass
    assert info.value.kind == "connection"
    server.reply_sse([(None, "{\"candidates\": [")])
    with pytest.raises(UpstreamError) as info:
        async for _ in provider.stream(MODEL, {"messages": [{"role": "user", "content": "hi"}]}):
            pass
    assert info.value.kind == "malformed"


def test_schemas_keep_property_names_and_inline_references():
    from service.providers.gemini import clean_schema

    params = {"type": "object", "additionalProperties": False, "required": ["query", "strict"],
              "properties": {"query": {"type": "string"}, "strict": {"type": "boolean"}}}
    assert clean_schema(params) == {"type": "object", "required": ["query", "strict"],
                                    "properties": {"query": {"type": "string"}, "strict": {"type": "boolean"}}}
    nested = {"$defs": {"Addr": {"type": "object", "properties": {"city": {"type": "string"}}}},
              "type": "object", "properties": {"to": {"$ref": "#/$defs/Addr"}}}
    assert clean_schema(nested) == {"type": "object", "properties": {"to": {"type": "object", "properties": {"city": {"type": "string"}}}}}


def test_a_reference_chain_too_deep_to_inline_is_the_requests_fault_not_a_crash():
    from service.providers import UpstreamError
    from service.providers.gemini import clean_schema

    chain = {f"a{i}": {"$ref": f"#/$defs/a{i + 1}"} for i in range(3000)} | {"a3000": {"type": "string"}}
    with pytest.raises(UpstreamError) as info:
        clean_schema({"type": "object", "properties": {"a": {"$ref": "#/$defs/a0"}}, "$defs": chain})
    assert info.value.kind == "bad_request" and "$refs are inlined" in info.value.message
    short = {f"a{i}": {"$ref": f"#/$defs/a{i + 1}"} for i in range(20)} | {"a20": {"type": "string"}}
    assert clean_schema({"type": "object", "properties": {"a": {"$ref": "#/$defs/a0"}}, "$defs": short}) == {
        "type": "object", "properties": {"a": {"type": "string"}}}


def test_boolean_subschemas_are_sent_as_gemini_reads_them():
    from service.providers.gemini import clean_schema

    # The gateway takes JSON Schema's `true` / `false` subschemas (Rust's schemars writes them); Gemini
    # wants an object in each place: `true` is its empty schema, a `false` property can never be sent.
    params = {"type": "object", "$defs": {"any": True},
              "properties": {"payload": True, "never": False, "list": {"type": "array", "items": True},
                             "pick": {"anyOf": [True, {"type": "string"}, False]}, "ref": {"$ref": "#/$defs/any"},
                             "merged": {"allOf": [{"$ref": "#/$defs/any"}, {"type": "string"}]}}}
    assert clean_schema(params) == {"type": "object", "properties": {
        "payload": {}, "list": {"type": "array", "items": {}}, "pick": {"anyOf": [{}, {"type": "string"}]}, "ref": {},
        "merged": {"type": "string"}}}


def test_formats_gemini_refuses_are_told_and_an_array_gets_items():
    from service.providers.gemini import clean_schema

    # "format: only 'enum' and 'date-time' are supported for STRING type"; "items: missing field".
    params = {"type": "object", "properties": {
        "url": {"type": "string", "format": "uri", "description": "the page"},
        "when": {"type": "string", "format": "date-time"},
        "n": {"type": "integer", "format": "int64"},
        "ratio": {"type": "number", "format": "percent"},
        "headers": {"type": "array"}}}
    assert clean_schema(params) == {"type": "object", "properties": {
        "url": {"type": "string", "description": "the page (format: uri)"},
        "when": {"type": "string", "format": "date-time"},
        "n": {"type": "integer", "format": "int64"},
        "ratio": {"type": "number", "description": "(format: percent)"},
        "headers": {"type": "array", "items": {}}}}


def test_json_schema_gemini_would_refuse_is_sent_in_its_dialect():
    from service.providers.gemini import clean_schema

    params = {"type": "object", "properties": {
        "mode": {"anyOf": [{"const": "fast"}, {"const": "slow"}]},  # what strict-mode and MCP tools send
        "path": {"type": ["string", "null"], "description": "where"},
        "count": {"type": "integer", "enum": [1, 2, 3], "exclusiveMinimum": 0},
        "value": {"oneOf": [{"type": "string"}, {"type": "number"}]},
        "both": {"allOf": [{"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]},
                           {"properties": {"b": {"type": "integer"}}, "required": ["b"]}]}}}
    assert clean_schema(params)["properties"] == {
        "mode": {"anyOf": [{"type": "string", "enum": ["fast"]}, {"type": "string", "enum": ["slow"]}]},
        "path": {"type": "string", "nullable": True, "description": "where"},
        "count": {"type": "integer", "description": "(one of: 1, 2, 3)"},  # Gemini's enums are strings
        "value": {"anyOf": [{"type": "string"}, {"type": "number"}]},
        "both": {"type": "object", "properties": {"a": {"type": "string"}, "b": {"type": "integer"}}, "required": ["a", "b"]},
    }
    # the usual generated form of a described sub-model: a $ref inside allOf
    described = {"$defs": {"Addr": {"type": "object", "properties": {"city": {"type": "string"}}}}, "type": "object",
                 "properties": {"home": {"allOf": [{"$ref": "#/$defs/Addr"}], "description": "where the user lives"}}}
    assert clean_schema(described)["properties"]["home"] == {
        "type": "object", "properties": {"city": {"type": "string"}}, "description": "where the user lives"}
    # a model that refers to itself that way (a tree) is inlined once, never forever
    tree = {"$defs": {"Node": {"type": "object", "properties": {
                "name": {"type": "string"}, "child": {"allOf": [{"$ref": "#/$defs/Node"}], "description": "a subtree"}}}},
            "type": "object", "properties": {"root": {"allOf": [{"$ref": "#/$defs/Node"}], "description": "the root"}}}
    root = clean_schema(tree)["properties"]["root"]
    assert root["properties"]["name"] == {"type": "string"} and root["properties"]["child"] == {"description": "a subtree"}


def test_billing_and_account_errors_fail_over_instead_of_blaming_the_client():
    from service.providers.base import classify

    region = {"error": {"code": 400, "status": "FAILED_PRECONDITION",
                        "message": "Gemini API free tier is not available in your country. Please enable billing on your project."}}
    prepaid = {"error": {"code": 402, "status": "RESOURCE_EXHAUSTED", "message": "Your prepay credit balance is depleted."}}
    assert classify(400, region, "") == "auth"
    assert classify(402, prepaid, "") == "auth"  # not a rate limit a client would wait out
    assert classify(429, {"error": {"code": 429, "status": "RESOURCE_EXHAUSTED", "message": "Quota exceeded"}}, "") == "rate_limit"
    assert classify(400, {"error": {"code": 400, "status": "INVALID_ARGUMENT", "message": "bad value"}}, "") == "bad_request"


def test_unnamed_calls_of_different_answers_get_different_ids():
    from service.providers.gemini import from_gemini

    def answer(response_id):
        return {"responseId": response_id, "candidates": [{"content": {"role": "model", "parts": [
            {"functionCall": {"name": "get_weather", "args": {"city": "Lima"}}}]}, "finishReason": "STOP"}]}

    first, again, second = (from_gemini(MODEL, answer(r))["choices"][0]["message"]["tool_calls"][0]["id"] for r in ("a", "a", "b"))
    assert first == again and first != second  # stable for one answer, unique across turns


GEMINI_3 = MODEL.model_copy(update={"upstream": "gemini-3-pro-preview"})
SIGNATURE = "CiQB0e2Kb+SIG/nature+w=="  # base64 as Gemini sends it: `+`, `/` and padding


async def test_files_audio_and_images_are_sent_inline(server, provider):
    server.reply(response([{"text": "ok"}]))
    content = [
        {"type": "text", "text": "Summarise all of it."},
        {"type": "file", "file": {"filename": "a.pdf", "file_data": "data:application/pdf;base64,JVBERi0xLjQK"}},
        {"type": "file", "file": {"filename": "notes.txt", "file_data": "aGVsbG8K"}},  # bare base64: typed by its name
        {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}},
        {"type": "input_audio", "input_audio": {"data": "SUQzBA==", "format": "mp3"}},
        {"type": "input_image", "image_url": "data:image/png;base64,iVBORw0K"},
    ]
    await provider.complete(MODEL, {"messages": [{"role": "user", "content": content}]})
    assert server.requests[-1].body["contents"] == [{"role": "user", "parts": [
        {"text": "Summarise all of it."},
        {"inlineData": {"mimeType": "application/pdf", "data": "JVBERi0xLjQK"}},
        {"inlineData": {"mimeType": "text/plain", "data": "aGVsbG8K"}},
        {"inlineData": {"mimeType": "audio/wav", "data": "UklGRg=="}},
        {"inlineData": {"mimeType": "audio/mp3", "data": "SUQzBA=="}},
        {"inlineData": {"mimeType": "image/png", "data": "iVBORw0K"}},
    ]}]


@pytest.mark.parametrize("part, kind, words", [
    ({"type": "file", "file": {"file_id": "file-abc123"}}, "bad_request", "file_id"),
    ({"type": "input_audio", "input_audio": {"data": "AAAA", "format": "pcm16"}}, "bad_request", "audio format 'pcm16'"),
    # a part Gemini has no form for: dropped, the model had answered about a video it never saw;
    # `unsupported`, a routed request fails over to a model that may read it
    ({"type": "video_url", "video_url": {"url": "https://example.com/clip.mp4"}}, "unsupported", "'video_url'"),
])
async def test_attachments_gemini_cannot_read_are_refused_naming_the_part(server, provider, part, kind, words):
    with pytest.raises(UpstreamError) as info:
        await provider.complete(MODEL, {"messages": [{"role": "system", "content": "x"}, {"role": "user", "content": ["hi", part]}]})
    assert (info.value.kind, info.value.param) == (kind, "messages[1].content[1]") and words in info.value.message
    assert server.requests == []



def signed_call(name="read", args=None, signature=SIGNATURE):
    return {"functionCall": {"name": name, "args": args or {"path": "a"}}, "thoughtSignature": signature}


@pytest.mark.parametrize("streamed", [False, True])
async def test_thought_signatures_ride_in_the_call_id_and_come_back_on_replay(server, provider, streamed):
    parts = [signed_call(), signed_call("write", {"path": "b"}, signature=None)]  # parallel calls: the first one is signed
    body = {"messages": [{"role": "user", "content": "read a, write b"}], "tools": TOOLS}
    if streamed:
        server.reply_sse([(None, response(parts))])
        deltas = [c["choices"][0]["delta"] for c in [c async for c in provider.stream(GEMINI_3, body)] if c["choices"]]
        calls = [tc for d in deltas for tc in d.get("tool_calls") or []]
    else:
        server.reply(response(parts))
        calls = (await provider.complete(GEMINI_3, body))["choices"][0]["message"]["tool_calls"]
    first, second = (c["id"] for c in calls)
    assert first.endswith("__thought__CiQB0e2Kb-SIG_nature-w") and "__thought__" not in second
    assert all(re.fullmatch(r"[A-Za-z0-9_-]+", c["id"]) for c in calls)
    history = [*body["messages"], {"role": "assistant", "content": None, "tool_calls": [
        {"id": c["id"], "type": "function", "function": c["function"]} for c in calls]},
        {"role": "tool", "tool_call_id": first, "content": "A"}, {"role": "tool", "tool_call_id": second, "content": "ok"}]
    server.reply(response([{"text": "done"}]))
    await provider.complete(GEMINI_3, {**body, "messages": history})
    contents = server.requests[-1].body["contents"]
    assert contents[1] == {"role": "model", "parts": [signed_call(), {"functionCall": {"name": "write", "args": {"path": "b"}}}]}
    assert contents[2]["parts"] == [{"functionResponse": {"name": "read", "response": {"content": "A"}}},
                                    {"functionResponse": {"name": "write", "response": {"content": "ok"}}}]


def test_calls_another_model_made_get_googles_sentinel_in_the_current_turn_only():
    from service.providers.gemini import to_gemini

    def turn(call_id, ask):
        return [{"role": "user", "content": ask},
                {"role": "assistant", "content": None, "tool_calls": [{"id": call_id, "type": "function",
                                                                       "function": {"name": "get_weather", "arguments": "{}"}}]},
                {"role": "tool", "tool_call_id": call_id, "content": "9C"}]

    body = {"messages": [*turn("toolu_old", "Paris?"), {"role": "assistant", "content": "9C."}, *turn("toolu_01", "Oslo?"),
                         *turn("toolu_02", "")[1:]], "tools": TOOLS}  # two steps of the current turn, both Claude's
    model_turns = [c for c in to_gemini(GEMINI_3, body)["contents"] if c["role"] == "model"]
    assert [p.get("thoughtSignature") for c in model_turns for p in c["parts"]] == [
        None, None, "skip_thought_signature_validator", "skip_thought_signature_validator"]
    # Gemini 2.5 checks no signature: none is made up for it.
    assert "skip_thought_signature_validator" not in json.dumps(to_gemini(MODEL, body))


@pytest.mark.parametrize("upstream, limit, effort, config", [
    # Gemini counts thoughts within maxOutputTokens: half of it at most goes to thinking.
    ("gemini-2.5-flash", 1000, "high", {"maxOutputTokens": 1000, "thinkingConfig": {"thinkingBudget": 500}}),
    ("gemini-2.5-flash", 20000, "medium", {"maxOutputTokens": 20000, "thinkingConfig": {"thinkingBudget": 8192}}),
    ("gemini-2.5-flash", None, "high", {"thinkingConfig": {"thinkingBudget": 24576}}),  # the model's own limit, 65,536
    ("gemini-2.5-flash", 1, "low", {"maxOutputTokens": 1, "thinkingConfig": {"thinkingBudget": 0}}),
    # Below a model's least budget: off where thinking can stop, the least on 2.5 Pro.
    ("gemini-2.5-flash-lite", 1000, "high", {"maxOutputTokens": 1000, "thinkingConfig": {"thinkingBudget": 0}}),
    ("gemini-2.5-flash-lite", 2000, "high", {"maxOutputTokens": 2000, "thinkingConfig": {"thinkingBudget": 1000}}),
    ("gemini-2.5-pro", 200, "high", {"maxOutputTokens": 200, "thinkingConfig": {"thinkingBudget": 128}}),
    ("gemini-2.5-pro", 1000, "none", {"maxOutputTokens": 1000, "thinkingConfig": {"thinkingBudget": 128}}),
    # Models that answer a thinkingConfig with 400 "Thinking is not enabled for this model".
    ("gemini-2.5-flash-image", 1000, "high", {"maxOutputTokens": 1000}),
    ("gemini-2.5-flash-image-preview", 1000, "none", {"maxOutputTokens": 1000}),
    ("gemini-2.5-flash-preview-tts", 1000, "low", {"maxOutputTokens": 1000}),
    # No effort: a small output limit still keeps half for the answer; a large one, or none, leaves
    # the model's own (dynamic) thinking alone.
    ("gemini-2.5-flash", 100, None, {"maxOutputTokens": 100, "thinkingConfig": {"thinkingBudget": 50}}),
    ("gemini-2.5-flash-lite", 2000, None, {"maxOutputTokens": 2000}),  # it does not think by default
    ("gemini-2.5-pro", 100, None, {"maxOutputTokens": 100, "thinkingConfig": {"thinkingBudget": 128}}),
    ("gemini-2.5-flash", 60000, None, {"maxOutputTokens": 60000}),
    ("gemini-2.5-flash", None, None, {}),
    ("gemini-3-pro-preview", 4096, None, {"maxOutputTokens": 4096, "thinkingConfig": {"thinkingLevel": "low"}}),
    ("gemini-3-pro-preview", 8192, None, {"maxOutputTokens": 8192}),  # an agent's limit keeps the default
    # Aliases other clients send: "max" is the most, "adaptive" the middle budget, "default" the model's own.
    ("gemini-2.5-flash", 60000, "max", {"maxOutputTokens": 60000, "thinkingConfig": {"thinkingBudget": 24576}}),
    ("gemini-2.5-flash", 20000, "adaptive", {"maxOutputTokens": 20000, "thinkingConfig": {"thinkingBudget": 8192}}),
    ("gemini-2.5-flash", 60000, "default", {"maxOutputTokens": 60000}),
    ("gemini-2.0-flash", 100, None, {"maxOutputTokens": 100}),
])
async def test_the_thinking_budget_leaves_room_for_the_answer(server, provider, upstream, limit, effort, config):
    server.reply(response([{"text": "ok"}]))
    model = MODEL.model_copy(update={"upstream": upstream})
    body = {"messages": [{"role": "user", "content": "hi"}], **({"reasoning_effort": effort} if effort else {}),
            **({"max_tokens": limit} if limit else {})}
    await provider.complete(model, body)
    assert server.requests[-1].path == f"/v1beta/models/{upstream}:generateContent"
    assert server.requests[-1].body.get("generationConfig", {}) == config


@pytest.mark.parametrize("upstream", ["gemini-1.5-flash", "gemini-2.0-flash", "gemini-2.0-flash-thinking-exp-01-21", "gemini-2.5-flash"])
async def test_penalties_are_not_sent_to_gemini(server, provider, upstream):
    # Gemini answers them with 400 "Penalty is not enabled for models/..." (1.5, 2.5 and others).
    server.reply(response([{"text": "ok"}]))
    model = MODEL.model_copy(update={"upstream": upstream})
    await provider.complete(model, {"messages": [{"role": "user", "content": "hi"}], "presence_penalty": 0.5,
                                    "frequency_penalty": -0.25, "temperature": 0.3})
    assert server.requests[-1].body["generationConfig"] == {"temperature": 0.3}


LOGPROBS = {"chosenCandidates": [{"token": "Hi", "tokenId": 5, "logProbability": -0.25}, {"token": "!", "tokenId": 9}],
            "topCandidates": [{"candidates": [{"token": "Hi", "logProbability": -0.25}, {"token": "Hey", "logProbability": -1.5}]},
                              {"candidates": [{"token": "!"}]}]}
OPENAI_LOGPROBS = [
    {"token": "Hi", "logprob": -0.25, "bytes": [72, 105],
     "top_logprobs": [{"token": "Hi", "logprob": -0.25, "bytes": [72, 105]}, {"token": "Hey", "logprob": -1.5, "bytes": [72, 101, 121]}]},
    {"token": "!", "logprob": 0.0, "bytes": [33], "top_logprobs": [{"token": "!", "logprob": 0.0, "bytes": [33]}]},
]


async def test_logprobs_are_asked_for_and_given_in_openais_shape(server, provider):
    answer = response([{"text": "Hi!"}])
    answer["candidates"][0]["logprobsResult"] = LOGPROBS
    server.reply(answer)
    body = {"messages": [{"role": "user", "content": "hi"}], "logprobs": True, "top_logprobs": 2}
    result = await provider.complete(MODEL, body)
    assert server.requests[-1].body["generationConfig"] == {"responseLogprobs": True, "logprobs": 2}
    assert result["choices"][0]["logprobs"] == {"content": OPENAI_LOGPROBS, "refusal": None}
    server.reply_sse([(None, {"candidates": [{"content": {"parts": [{"text": "Hi"}]}, "logprobsResult": {
                          "chosenCandidates": LOGPROBS["chosenCandidates"][:1], "topCandidates": LOGPROBS["topCandidates"][:1]}}]}),
                      (None, {"candidates": [{"content": {"parts": [{"text": "!"}]}, "finishReason": "STOP", "logprobsResult": {
                          "chosenCandidates": LOGPROBS["chosenCandidates"][1:], "topCandidates": LOGPROBS["topCandidates"][1:]}}]})])
    chunks = [c async for c in provider.stream(MODEL, body)]
    streamed = [t for c in chunks if c["choices"] and c["choices"][0].get("logprobs") for t in c["choices"][0]["logprobs"]["content"]]
    assert streamed == OPENAI_LOGPROBS
