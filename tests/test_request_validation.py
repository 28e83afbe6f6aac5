"""What the gateway refuses as OpenAI does, through a running gateway and real HTTP: the legacy
`functions` list, content parts, tool schemas and tool_choice, numeric ranges, nulls for optional
fields, non-finite numbers, and the `Allow` header of a 405. Refused input never reaches an
upstream (its failure there would count against the model's breaker) and is never a 500."""
from __future__ import annotations

import httpx
import pytest

MSG = [{"role": "user", "content": "What is the weather in Paris?"}]
WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


@pytest.fixture
def gw(start_gateway):
    return start_gateway()


def refused(gw, upstream, body: dict, endpoint: str = "chat/completions") -> dict:
    before = len(upstream.requests)
    r = httpx.post(f"{gw.base_url}/{endpoint}", json={"model": "auto", "messages": MSG, **body})
    assert r.status_code == 400, r.text
    assert len(upstream.requests) == before
    return r.json()["error"]


def image(detail) -> list[dict]:
    return [{"role": "user", "content": [{"type": "text", "text": "what is this?"},
                                         {"type": "image_url", "image_url": {"url": "https://e.com/a.png", "detail": detail}}]}]


@pytest.mark.parametrize("endpoint", ["chat/completions", "route"])
@pytest.mark.parametrize("body,param", [
    ({"functions": True}, "functions"),
    ({"functions": 5}, "functions"),
    ({"functions": "abc"}, "functions"),
    ({"functions": [1]}, "functions[0]"),
    ({"functions": [{"description": "no name"}]}, "functions[0].name"),
    ({"functions": [{"name": "f", "parameters": {"type": "object", "properties": []}}]}, "functions[0].parameters.properties"),
    ({"messages": image([])}, "messages[0].content[1].image_url.detail"),
    ({"messages": image({})}, "messages[0].content[1].image_url.detail"),
    ({"messages": [{"role": "user", "content": [{"type": "text", "text": ["hi"]}]}]}, "messages[0].content[0].text"),
])
def test_legacy_functions_and_content_parts_are_checked_not_a_500(gw, upstream, endpoint, body, param):
    with httpx.Client(base_url=gw.base_url) as client:
        before = len(upstream.requests)
        r = client.post(endpoint, json={"model": "auto", "messages": MSG, **body})
        assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text
        assert r.json()["error"]["code"] in ("invalid_value", "missing_required_parameter")
        assert len(upstream.requests) == before
        # A 500 here used to reset the keep-alive connection under the client's next request.
        assert client.post(endpoint, json={"model": "auto", "messages": MSG}).status_code == 200


def test_well_formed_functions_and_image_details_pass_through(start_gateway, upstream):
    gw = start_gateway(models=[{"name": "m1", "context_window": 100000, "capabilities": ["tools", "vision"]}])
    fn = WEATHER["function"]
    r = httpx.post(f"{gw.base_url}/chat/completions", json={"model": "auto", "messages": image("low"), "functions": [fn]})
    assert r.status_code == 200
    assert upstream.requests[-1].body["functions"] == [fn]


@pytest.mark.parametrize("parameters,path", [
    ({"type": "object", "properties": {"city": "string"}}, "properties.city"),
    ({"type": "object", "properties": ["city"]}, "properties"),
    ({"type": "object", "properties": {"city": {"type": "string"}}, "required": "city"}, "required"),
    ({"type": "object", "required": [1]}, "required"),
    ({"type": 7}, "type"),
    ({"type": "object", "properties": {"tags": {"type": "array", "items": "string"}}}, "properties.tags.items"),
    ({"type": "object", "properties": {"p": {"type": "object", "properties": {"q": None}}}}, "properties.p.properties.q"),
    ({"anyOf": [{"type": "string"}, "number"]}, "anyOf[1]"),
    ({"$defs": {"A": []}}, "$defs.A"),
    ({"type": "object", "additionalProperties": "no"}, "additionalProperties"),
    ({"type": "array", "items": None}, "items"),
])
def test_a_malformed_tool_schema_is_refused_before_any_upstream_call(gw, upstream, parameters, path):
    tools = [WEATHER, {"type": "function", "function": {"name": "f", "parameters": parameters}}]
    error = refused(gw, upstream, {"tools": tools})
    assert error["code"] == "invalid_value" and error["param"] == f"tools[1].function.parameters.{path}"
    assert error["message"].startswith(f"invalid value for 'tools[1].function.parameters.{path}': ")


def test_a_malformed_response_format_schema_is_refused_before_any_upstream_call(gw, upstream):
    fmt = {"type": "json_schema", "json_schema": {"name": "weather", "schema": {"type": "object", "properties": {"city": "string"}}}}
    error = refused(gw, upstream, {"response_format": fmt})
    assert error["param"] == "response_format.json_schema.schema.properties.city"


def test_a_json_schema_format_without_its_schema_names_what_is_missing(gw, upstream):
    error = refused(gw, upstream, {"response_format": {"type": "json_schema"}})
    assert (error["code"], error["param"]) == ("missing_required_parameter", "response_format.json_schema")


def test_a_json_schema_name_is_a_string(gw, upstream):
    fmt = {"type": "json_schema", "json_schema": {"name": 5, "schema": {"type": "object"}}}
    assert refused(gw, upstream, {"response_format": fmt})["param"] == "response_format.json_schema.name"


def test_schema_nesting_is_bounded(gw, upstream):
    schema: dict = {"type": "string"}
    for _ in range(40):
        schema = {"type": "object", "properties": {"a": schema}}
    error = refused(gw, upstream, {"tools": [{"type": "function", "function": {"name": "f", "parameters": schema}}]})
    assert error["code"] == "invalid_value" and "deeper than" in error["message"]


def test_valid_schemas_and_other_tool_types_pass_through_as_sent(gw, upstream):
    schema = {"type": "object", "additionalProperties": False, "required": ["q", "when"],
              "properties": {"q": {"type": ["string", "null"]}, "when": {"$ref": "#/$defs/date"},
                             "pair": {"type": "array", "items": [{"type": "number"}, {"type": "number"}]},
                             "tags": {"type": "array", "items": {"anyOf": [{"type": "string"}, {"type": "integer"}]}}},
              "$defs": {"date": {"type": "string", "format": "date"}}}
    tools = [{"type": "function", "function": {"name": "search", "parameters": schema}},
             {"type": "web_search_preview"}, {"type": "custom", "custom": {"name": "sql"}}]
    for choice in ("auto", "required", {"type": "function", "function": {"name": "search"}},
                   {"type": "custom", "custom": {"name": "sql"}}):
        r = httpx.post(f"{gw.base_url}/chat/completions", json={"model": "auto", "messages": MSG, "tools": tools, "tool_choice": choice})
        assert r.status_code == 200, r.text
        assert upstream.requests[-1].body["tools"] == tools and upstream.requests[-1].body["tool_choice"] == choice
    r = httpx.post(f"{gw.base_url}/chat/completions", json={"model": "auto", "messages": MSG, "tools": [], "tool_choice": "none"})
    assert r.status_code == 200 and "tool_choice" not in upstream.requests[-1].body  # asks nothing, not forwarded


@pytest.mark.parametrize("body,code,param", [
    ({"tools": [WEATHER], "tool_choice": "sometimes"}, "invalid_value", "tool_choice"),
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "get_time"}}}, "invalid_value",
     "tool_choice.function.name"),
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": "get_weather"}}, "missing_required_parameter",
     "tool_choice.function.name"),
    ({"tools": [WEATHER], "tool_choice": {"function": {"name": "get_weather"}}}, "missing_required_parameter", "tool_choice.type"),
    ({"tool_choice": "auto"}, "invalid_value", "tool_choice"),
    ({"tool_choice": {"type": "function", "function": {"name": "get_weather"}}}, "invalid_value", "tool_choice"),
    ({"tools": [], "tool_choice": "auto"}, "invalid_value", "tool_choice"),
])
def test_tool_choice_is_checked_as_openai_does(gw, upstream, body, code, param):
    error = refused(gw, upstream, body)
    assert (error["code"], error["param"]) == (code, param)


@pytest.mark.parametrize("body,param", [
    ({"presence_penalty": 2.5}, "presence_penalty"),
    ({"frequency_penalty": -3}, "frequency_penalty"),
    ({"logit_bias": {"50256": 101}}, "logit_bias.50256"),
    ({"logit_bias": {"the": 5}}, "logit_bias.the"),
    ({"logit_bias": {"50256": "ban"}}, "logit_bias.50256"),
    ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    ({"top_logprobs": 5}, "top_logprobs"),
    ({"logprobs": False, "top_logprobs": 5}, "top_logprobs"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"stop": 5}, "stop"),
    ({"stop": ["a", 5]}, "stop"),
    ({"seed": 1.5}, "seed"),
    ({"seed": "42"}, "seed"),
    ({"messages": [{"role": "user", "content": None}]}, "messages[0].content"),
    ({"reasoning_effort": 3}, "reasoning_effort"),
    # A string "false" read as true had sent the usage chunk; the other fields reached the upstream.
    ({"stream": True, "stream_options": {"include_usage": "false"}}, "stream_options.include_usage"),
    ({"seed": 2**70}, "seed"),
    ({"user": 5}, "user"),
    ({"metadata": [1, 2]}, "metadata"),
    ({"metadata": {"tier": 3}}, "metadata.tier"),
    ({"messages": [{"role": "user", "content": []}]}, "messages[0].content"),
    ({"tools": [{"type": "function", "function": {"name": "bad name!"}}]}, "tools[0].function.name"),
    ({"functions": [{"name": "a" * 65}]}, "functions[0].name"),
    ({"tools": [{"type": "function", "function": {"name": "get_weather\n"}}]}, "tools[0].function.name"),
])
def test_ranges_and_combinations_openai_refuses(gw, upstream, body, param):
    error = refused(gw, upstream, body)
    assert error["code"] == "invalid_value" and error["param"].startswith(param) and error["type"] == "invalid_request_error"
    assert error["message"].startswith(f"invalid value for '{error['param']}'")


def test_a_user_message_without_content_is_missing_content(gw, upstream):
    error = refused(gw, upstream, {"messages": [{"role": "user"}]})
    assert (error["code"], error["param"]) == ("missing_required_parameter", "messages[0].content")


def test_values_inside_the_ranges_pass_through(gw, upstream):
    body = {"model": "auto", "presence_penalty": -2, "frequency_penalty": 2.0, "logit_bias": {"50256": -100, "11": 42.5},
            "logprobs": True, "top_logprobs": 20, "stop": ["a", "b", "c", "d"], "seed": 42, "reasoning_effort": "xhigh",
            "messages": [*MSG, {"role": "assistant", "content": None, "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}]},
                {"role": "tool", "tool_call_id": "c1", "content": "sunny"}]}
    r = httpx.post(f"{gw.base_url}/chat/completions", json=body)
    assert r.status_code == 200, r.text
    assert upstream.requests[-1].body["logit_bias"] == body["logit_bias"] and upstream.requests[-1].body["seed"] == 42


def test_what_agent_sdks_send_that_openai_would_refuse_is_taken_as_meant(gw, upstream):
    # `tools: []` (no tools) and `stream_options` on a non-streamed call: real clients send both.
    body = {"model": "auto", "messages": MSG, "tools": [], "stream": False, "stream_options": {"include_usage": True},
            "parallel_tool_calls": False}
    r = httpx.post(f"{gw.base_url}/chat/completions", json=body)
    assert r.status_code == 200, r.text
    sent = upstream.requests[-1].body
    assert not {"tools", "stream_options", "parallel_tool_calls"} & set(sent), sent
    # With tools, parallel_tool_calls means something and goes along.
    r = httpx.post(f"{gw.base_url}/chat/completions", json={**body, "tools": [WEATHER]})
    assert r.status_code == 200 and upstream.requests[-1].body["parallel_tool_calls"] is False


def test_bool_subschemas_are_schemas(gw, upstream):
    # Rust's schemars writes `true` for an any-JSON field; JSON Schema allows booleans wherever a schema goes.
    schema = {"type": "object", "properties": {"value": True, "never": False, "pick": {"anyOf": [{"type": "string"}, True]},
                                               "list": {"type": "array", "items": True}},
              "$defs": {"any": True}}
    tools = [{"type": "function", "function": {"name": "store", "parameters": schema}}]
    r = httpx.post(f"{gw.base_url}/chat/completions", json={"model": "auto", "messages": MSG, "tools": tools})
    assert r.status_code == 200, r.text
    assert upstream.requests[-1].body["tools"] == tools


def test_null_is_the_default_for_every_optional_field(gw, upstream):
    nulls = dict.fromkeys(["stream", "stream_options", "max_tokens", "max_completion_tokens", "temperature", "top_p", "n",
                           "presence_penalty", "frequency_penalty", "logit_bias", "logprobs", "top_logprobs", "stop",
                           "seed", "tools", "tool_choice", "functions", "response_format", "router"])
    r = httpx.post(f"{gw.base_url}/chat/completions", json={"model": "auto", "messages": MSG, **nulls})
    assert r.status_code == 200, r.text
    assert r.json()["object"] == "chat.completion"  # `stream: null` is no stream
    assert httpx.post(f"{gw.base_url}/route", json={"model": "auto", "messages": MSG, **nulls}).status_code == 200


@pytest.mark.parametrize("number", [b"NaN", b"Infinity", b"-Infinity", b"1e999"])
@pytest.mark.parametrize("template", [
    b'{"model": "auto", "messages": [{"role": "user", "content": "hi"}], "temperature": %s}',
    b'{"model": "auto", "messages": [{"role": "user", "content": "hi"}], "metadata": {"score": [%s]}}',
])
def test_non_finite_numbers_are_not_json(gw, upstream, template, number):
    before = len(upstream.requests)
    r = httpx.post(f"{gw.base_url}/chat/completions", content=template % number, headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    assert "non-finite numbers are not JSON" in r.json()["error"]["message"]
    assert len(upstream.requests) == before


def test_a_405_says_which_methods_are_allowed(gw):
    r = httpx.get(f"{gw.base_url}/chat/completions")
    assert r.status_code == 405 and r.headers["allow"] == "POST"
    assert r.json()["error"]["code"] == "method_not_allowed"

