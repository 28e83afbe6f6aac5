"""The simulated upstream through the real `openai` SDK, and the demo catalog built on it."""
from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Literal, Optional

import httpx
import openai
import pytest
from pydantic import BaseModel

from router.config import load_config
from service.providers import build_provider
from service.simulated_answers import MODELS, is_good
from service.simulator import attach_simulator, start_simulator
from training.data import datasets_dir
from tests.conftest import require_dataset

CONFIG = Path(__file__).resolve().parents[1] / "service" / "default_config.yaml"
DATASETS = datasets_dir()
TOOLS = [
    {"type": "function", "function": {"name": "search_files", "description": "Search the workspace",
                                      "parameters": {"type": "object", "required": ["query", "limit"], "properties": {
                                          "query": {"type": "string"}, "limit": {"type": "integer"},
                                          "mode": {"type": "string", "enum": ["fast", "deep"]}}}}},
    {"type": "function", "function": {"name": "read_file", "parameters": {"type": "object", "properties": {"path": {"type": "string"}}}}},
]


@pytest.fixture(scope="module")
def sim_url():
    url, stop = start_simulator(time_scale=0.0)
    yield url
    stop()


@pytest.fixture
def client(sim_url):
    with openai.OpenAI(base_url=sim_url, api_key="unused", max_retries=0) as c:
        yield c


def ask(client, model, prompt, **kw):
    return client.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}], **kw)


def test_answers_are_labelled_deterministic_and_priced_in_tokens(client):
    a = ask(client, "gpt-4-1106-preview", "Explain binary search.")
    b = ask(client, "gpt-4-1106-preview", "Explain binary search.")
    c = ask(client, "mistral-7b-chat", "Explain binary search.")
    assert a.model == "gpt-4-1106-preview"
    assert a.choices[0].message.content.startswith("[simulated gpt-4-1106-preview]")
    assert c.choices[0].message.content.startswith("[simulated mistral-7b-chat]")
    assert a.choices[0].message.content == b.choices[0].message.content
    assert a.usage.completion_tokens > 0 and a.usage.prompt_tokens > 0
    assert a.usage.total_tokens == a.usage.prompt_tokens + a.usage.completion_tokens
    assert a.choices[0].finish_reason == "stop"


def test_sync_stream_matches_non_stream_with_usage(client):
    full = ask(client, "claude-instant-v1", "Write a haiku about routers.")
    chunks = list(ask(client, "claude-instant-v1", "Write a haiku about routers.", stream=True, stream_options={"include_usage": True}))
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == full.choices[0].message.content
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == full.usage.completion_tokens
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason] == ["stop"]


def test_n_choices_streamed_or_not_and_usage_counts_each(client):
    one = ask(client, "gpt-4-1106-preview", "Explain binary search.")
    three = ask(client, "gpt-4-1106-preview", "Explain binary search.", n=3)
    assert [c.index for c in three.choices] == [0, 1, 2]
    assert {c.message.content for c in three.choices} == {one.choices[0].message.content}
    assert three.usage.completion_tokens == 3 * one.usage.completion_tokens
    chunks = list(ask(client, "gpt-4-1106-preview", "Explain binary search.", n=2, stream=True,
                      stream_options={"include_usage": True}))
    for index in (0, 1):
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices and c.choices[0].index == index)
        assert text == one.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == 2 * one.usage.completion_tokens
    with pytest.raises(openai.BadRequestError) as err:
        ask(client, "gpt-4-1106-preview", "hi", n=0)
    assert err.value.response.headers["x-simulated"] == "true"


async def test_async_stream_with_usage(sim_url):
    async with openai.AsyncOpenAI(base_url=sim_url, api_key="unused", max_retries=0) as client:
        stream = await client.chat.completions.create(
            model="Yi-34B-Chat", messages=[{"role": "user", "content": "Name three prime numbers."}],
            stream=True, stream_options={"include_usage": True})
        chunks = [ch async for ch in stream]
        plain = await client.chat.completions.create(model="Yi-34B-Chat", messages=[{"role": "user", "content": "Name three prime numbers."}])
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == plain.choices[0].message.content
    assert chunks[-1].usage.total_tokens == plain.usage.total_tokens


def test_tool_call_round_trip(client):
    first = ask(client, "gpt-3.5-turbo-1106", "find the config loader", tools=TOOLS)
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls
    args = json.loads(call.function.arguments)
    assert call.function.name == "search_files"
    assert isinstance(args["query"], str) and isinstance(args["limit"], int) and set(args) == {"query", "limit"}
    second = client.chat.completions.create(model="gpt-3.5-turbo-1106", tools=TOOLS, messages=[
        {"role": "user", "content": "find the config loader"},
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": "router/config.py"},
    ])
    assert second.choices[0].finish_reason == "stop" and not second.choices[0].message.tool_calls
    assert "tool result" in second.choices[0].message.content


def test_named_tool_choice_and_streamed_tool_call(client):
    chunks = list(ask(client, "mixtral-8x7b-chat", "open README", tools=TOOLS, stream=True,
                      tool_choice={"type": "function", "function": {"name": "read_file"}}))
    calls = [tc for ch in chunks if ch.choices for tc in ch.choices[0].delta.tool_calls or []]
    assert calls[0].function.name == "read_file" and calls[0].id
    assert json.loads("".join(tc.function.arguments or "" for tc in calls)) == {"path": "open README"}
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason] == ["tool_calls"]


def test_models_without_tools_answer_in_text(client):
    result = ask(client, "llama-2-70b-chat", "find the config loader", tools=TOOLS)
    assert result.choices[0].message.tool_calls is None and result.choices[0].message.content


def test_json_mode_and_max_tokens(client):
    as_json = ask(client, "gpt-4-1106-preview", "Give me a JSON summary", response_format={"type": "json_object"})
    assert json.loads(as_json.choices[0].message.content)["simulated"] is True
    short = ask(client, "llama-2-70b-chat", "Tell me a long story", max_tokens=5)
    assert short.choices[0].finish_reason == "length" and short.usage.completion_tokens <= 5
    for cap in (20, 50, 51):  # a smoke test saw 21 tokens for 20 and 51 for 50: billed past the cap
        for i in range(5):
            capped = ask(client, "gpt-3.5-turbo-1106", f"Tell me a long story about case {i}", max_tokens=cap)
            assert capped.usage.completion_tokens <= cap


def test_errors_are_openai_shaped(client):
    with pytest.raises(openai.NotFoundError) as info:
        ask(client, "gpt-17", "hi")
    assert info.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as info:
        ask(client, "WizardLM-13B-V1.2", "word " * 5000)
    assert info.value.code == "context_length_exceeded"
    assert client.models.list().data[0].owned_by == "simulated"


def test_good_answer_rate_matches_quality_and_models_agree_on_hard_prompts():
    prompts = [f"question number {i}" for i in range(4000)]
    rates = {m: sum(is_good(m, p)[0] for p in prompts) / len(prompts) for m in ("gpt-4-1106-preview", "mistral-7b-chat", "claude-v2")}
    for model, rate in rates.items():
        assert abs(rate - MODELS[model].quality) < 0.03, (model, rate)
    # Shared difficulty: the weak model's good answers are mostly prompts the strong one also gets right.
    strong = {p for p in prompts if is_good("gpt-4-1106-preview", p)[0]}
    weak = {p for p in prompts if is_good("mistral-7b-chat", p)[0]}
    assert len(weak & strong) / len(weak) > MODELS["gpt-4-1106-preview"].quality


async def test_default_catalog_runs_on_the_simulator():
    config = load_config(CONFIG)
    assert {m.upstream_name for m in config.models} == set(MODELS)
    attached, stop = attach_simulator(config, time_scale=0.0)
    try:
        assert config.providers["simulated"].base_url == "simulated://"
        with pytest.raises(ValueError):
            build_provider(config.providers["simulated"])
        provider = build_provider(attached.providers["simulated"])
        spec = attached.model("claude-v1")
        result = await provider.complete(spec, {"messages": [{"role": "user", "content": "hi"}]})
        assert result["model"] == "claude-v1" and result["choices"][0]["message"]["content"].startswith("[simulated claude-v1]")
        await provider.aclose()
    finally:
        stop()


def test_catalog_prices_are_the_routerbench_ones():
    models_json = DATASETS / "routerbench_subset" / "models.json"
    if not models_json.exists():
        require_dataset(models_json)
    prices = json.loads(models_json.read_text())
    for m in load_config(CONFIG).models:
        assert m.price.input_per_1m == prices[m.name]["implied_usd_per_1M_input_tokens"]
        assert m.price.output_per_1m == prices[m.name]["implied_usd_per_1M_output_tokens"]
        assert (m.throughput_tps, m.ttft_s, m.context_window) == (MODELS[m.name].tps, MODELS[m.name].ttft_s, MODELS[m.name].context_window)
        assert ("tools" in m.capabilities) == MODELS[m.name].tools


def test_a_simulated_model_the_simulator_does_not_serve_is_a_start_up_error():
    from router.config import parse_config

    config = parse_config("""
providers:
  sim: {kind: simulated, base_url: "simulated://"}
models:
  - {name: claude-v1, provider: sim, price: {input_per_1m: 1, output_per_1m: 1}}
  - {name: my-model, provider: sim, price: {input_per_1m: 1, output_per_1m: 1}}
""", "demo.yaml")
    with pytest.raises(ValueError, match=r"models\[1\] \(my-model\): the simulator serves no model 'my-model'"):
        attach_simulator(config, time_scale=0.0)


def test_a_malformed_tool_schema_is_a_400_not_a_500(client, sim_url):
    broken = [{"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": "string"}}}}]
    for model in ("gpt-4-1106-preview", "llama-2-70b-chat"):  # a client error whether or not the model calls tools
        with pytest.raises(openai.BadRequestError) as info:
            ask(client, model, "weather in Paris", tools=broken)
        # the structural check every request gets (the gateway's own, service/schemas.py)
        assert (info.value.code, info.value.param) == ("invalid_value", "tools[0].function.parameters.properties.city")
    with pytest.raises(openai.BadRequestError) as info:
        ask(client, "gpt-4-1106-preview", "hi", tools=[{"type": "function", "function": {
            "name": "f", "parameters": {"type": "object", "properties": {"a": {"$ref": "#/$defs/Missing"}}}}}])
    assert info.value.code == "invalid_function_parameters"
    # Shallow at every step but thousands of references long: followed, not recursed into a 500.
    chain = {f"a{i}": {"$ref": f"#/$defs/a{i + 1}"} for i in range(3000)} | {"a3000": {"type": "string"}}
    with pytest.raises(openai.BadRequestError) as info:
        ask(client, "gpt-4-1106-preview", "hi", tools=[{"type": "function", "function": {"name": "f", "parameters": {
            "type": "object", "properties": {"a": {"$ref": "#/$defs/a0"}}, "$defs": chain}}}])
    assert "nested deeper than" in info.value.message
    # Input that never parses into a request is the client's fault too.
    assert httpx.post(f"{sim_url}/chat/completions", content=b"[" * 100_000).status_code == 400


def test_odd_but_valid_tool_schemas_get_instances(client):
    parameters = {
        "type": "object",
        "$defs": {"Any": True, "Point": {"type": "object", "properties": {"x": {"type": "number", "minimum": 2}}},
                  "Node": {"type": "object", "required": ["label", "children"], "properties": {
                      "label": {"type": "string", "maxLength": 4},
                      "children": {"type": "array", "items": {"$ref": "#/$defs/Node"}}}}},
        "required": ["nullable", "fixed", "either", "point", "grid", "counts", "untyped", "one", "tree", "when", "anything",
                     "referred", "listed", "merged"],
        "properties": {
            "nullable": {"type": ["null", "string"]},
            "fixed": {"const": 3},
            "either": {"anyOf": [{"type": "null"}, {"type": "integer", "minimum": 5}]},
            "point": {"$ref": "#/$defs/Point"},
            "grid": {"type": "array", "items": {"type": "array", "items": {"type": "boolean"}}},
            "counts": {"type": "object", "required": ["a"], "additionalProperties": {"type": "integer"}},
            "untyped": {"description": "no type at all"},
            "one": {"oneOf": [{"enum": ["x", "y"]}, {"type": "integer"}]},
            "tree": {"$ref": "#/$defs/Node"},
            "when": {"type": "string", "format": "date-time"},
            # Boolean schemas, as Rust's schemars writes an any-JSON field: `true` allows anything.
            "anything": True,
            "referred": {"$ref": "#/$defs/Any"},
            "listed": {"type": "array", "items": True},
            "merged": {"allOf": [True, {"type": "object", "required": ["n"], "properties": {"n": {"type": "integer"}}}]},
        },
    }
    tools = [{"type": "function", "function": {"name": "odd", "parameters": parameters}}]
    first = ask(client, "gpt-4-1106-preview", "plot the points", tools=tools)
    args = json.loads(first.choices[0].message.tool_calls[0].function.arguments)
    assert args == json.loads(ask(client, "gpt-4-1106-preview", "plot the points", tools=tools)
                              .choices[0].message.tool_calls[0].function.arguments)
    assert {k: args[k] for k in ("nullable", "fixed", "either", "point", "grid", "counts", "untyped", "one")} == {
        "nullable": "plot the points", "fixed": 3, "either": 5, "point": {"x": 2.0}, "grid": [[True]],
        "counts": {"a": 1}, "untyped": "plot the points", "one": "x"}
    assert (args["anything"], args["referred"], args["listed"], args["merged"]) == (
        "plot the points", "plot the points", ["plot the points"], {"n": 1})
    datetime.fromisoformat(args["when"])
    node, depth = args["tree"], 0
    while node["children"]:  # a self-referencing schema ends in a finite tree
        assert node["label"] == "plot" and len(node["children"]) == 1
        node, depth = node["children"][0], depth + 1
    assert 1 <= depth < 10


class Step(BaseModel):
    explanation: str
    output: int


class Solution(BaseModel):
    steps: list[Step]
    final_answer: str
    confidence: Literal["low", "high"]
    checked_at: Optional[datetime]


@pytest.mark.parametrize("parse", ["beta", "ga"])
def test_structured_outputs_parse_into_the_schema(client, parse):
    create = client.beta.chat.completions.parse if parse == "beta" else client.chat.completions.parse
    messages = [{"role": "user", "content": "solve 8x + 7 = -23"}]
    first = create(model="gpt-3.5-turbo-1106", messages=messages, response_format=Solution)
    again = create(model="gpt-3.5-turbo-1106", messages=messages, response_format=Solution)
    solution = first.choices[0].message.parsed
    assert isinstance(solution, Solution) and solution.steps and solution.confidence == "low"
    assert again.choices[0].message.content == first.choices[0].message.content
    with client.chat.completions.stream(model="gpt-3.5-turbo-1106", messages=messages, response_format=Solution) as stream:
        streamed = stream.get_final_completion().choices[0].message
    assert streamed.parsed == solution and streamed.content == first.choices[0].message.content


def test_stop_sequences_end_the_answer_before_them(client):
    full = ask(client, "gpt-4-1106-preview", "Explain binary search.").choices[0].message.content
    cut = ask(client, "gpt-4-1106-preview", "Explain binary search.", stop=["binary", "Answer to"])
    assert cut.choices[0].message.content == full[:full.index("Answer to")] == "[simulated gpt-4-1106-preview] "
    assert cut.choices[0].finish_reason == "stop" and cut.usage.completion_tokens < 10
    chunks = list(ask(client, "gpt-4-1106-preview", "Explain binary search.", stop="binary", stream=True,
                      stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == full[:full.index("binary")]
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    absent = ask(client, "gpt-4-1106-preview", "Explain binary search.", stop="no such words")
    assert absent.choices[0].message.content == full
    with pytest.raises(openai.BadRequestError):
        ask(client, "gpt-4-1106-preview", "hi", stop=["a", "b", "c", "d", "e"])


def test_legacy_functions_answer_with_function_call(client):
    functions = [{"name": "get_weather", "parameters": {"type": "object", "required": ["city"],
                                                         "properties": {"city": {"type": "string"}}}},
                 {"name": "get_time", "parameters": {"type": "object", "properties": {"tz": {"type": "string"}}}}]
    forced = ask(client, "mixtral-8x7b-chat", "time in Paris", functions=functions, function_call={"name": "get_time"})
    choice = forced.choices[0]
    assert choice.finish_reason == "function_call" and choice.message.tool_calls is None and choice.message.content is None
    assert choice.message.function_call.name == "get_time"
    assert json.loads(choice.message.function_call.arguments) == {"tz": "time in Paris"}
    chunks = list(ask(client, "mixtral-8x7b-chat", "weather in Paris", functions=functions, function_call="auto", stream=True))
    calls = [c.choices[0].delta.function_call for c in chunks if c.choices and c.choices[0].delta.function_call]
    assert calls[0].name == "get_weather"
    assert json.loads("".join(f.arguments or "" for f in calls)) == {"city": "weather in Paris"}
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["function_call"]
    assert ask(client, "claude-v1", "weather in Paris", functions=functions).choices[0].message.function_call is None


def test_streamed_tool_call_accumulates_to_null_content(client):
    with client.chat.completions.stream(model="gpt-3.5-turbo-1106", tools=TOOLS,
                                        messages=[{"role": "user", "content": "find the config loader"}]) as stream:
        streamed = stream.get_final_completion().choices[0].message
    plain = ask(client, "gpt-3.5-turbo-1106", "find the config loader", tools=TOOLS).choices[0].message
    assert streamed.content is None and plain.content is None
    assert streamed.tool_calls[0].function.arguments == plain.tool_calls[0].function.arguments


def test_logprobs_and_system_fingerprint(client, sim_url):
    plain = httpx.post(f"{sim_url}/chat/completions", json={
        "model": "Yi-34B-Chat", "messages": [{"role": "user", "content": "hi"}]}).json()
    assert plain["system_fingerprint"] == "fp_simulated" and plain["choices"][0]["logprobs"] is None
    streamed = httpx.post(f"{sim_url}/chat/completions", json={
        "model": "Yi-34B-Chat", "messages": [{"role": "user", "content": "hi"}], "stream": True}).text
    chunks = [json.loads(line[6:]) for line in streamed.splitlines() if line.startswith("data: {")]
    assert all(c["system_fingerprint"] == "fp_simulated" and c["choices"][0]["logprobs"] is None for c in chunks)

    result = ask(client, "Yi-34B-Chat", "Name three prime numbers.", logprobs=True, top_logprobs=3)
    content = result.choices[0].logprobs.content
    assert "".join(t.token for t in content) == result.choices[0].message.content
    for t in content:
        assert t.logprob < 0 and bytes(t.bytes).decode() == t.token and len(t.top_logprobs) == 3
        assert t.top_logprobs[0].token == t.token and len({a.token for a in t.top_logprobs}) == 3
    again = ask(client, "Yi-34B-Chat", "Name three prime numbers.", logprobs=True, top_logprobs=3)
    assert again.choices[0].logprobs.content == content
    chunks = list(ask(client, "Yi-34B-Chat", "Name three prime numbers.", logprobs=True, top_logprobs=3, stream=True))
    assert [t for c in chunks if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.content] == content


def test_a_time_scale_that_is_no_number_names_its_variable(monkeypatch):
    from service.simulator import Simulator

    monkeypatch.setenv("OPENCLAW_SIM_TIME_SCALE", "fast")
    with pytest.raises(ValueError, match="OPENCLAW_SIM_TIME_SCALE='fast' is not a number"):
        Simulator()
