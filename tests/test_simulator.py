"""The simulated upstream through the real `openai` SDK, and the demo catalog built on it."""
from __future__ import annotations

import json
from pathlib import Path

import openai
import pytest

from router.config import load_config
from service.providers import build_provider
from service.simulator import MODELS, attach_simulator, is_good, start_simulator
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
