"""A conversation that moves between providers keeps the thinking it replays only where it is taken.

Clients (the Vercel AI SDK's: OpenCode, Cursor...) replay assistant turns with the thinking the
gateway answered with (`reasoning_content`, `reasoning`, `reasoning_details`). OpenAI, Mistral and
Groq answer 400 (422) to a message field they do not know, which fails nothing over and ends the
client's session; DeepSeek's thinking mode answers 400 to a tool-call turn sent back without its
`reasoning_content`. The gateway, the real openai SDK and fake upstreams on 127.0.0.1 that apply
those two rules show that `request.reasoning_history: drop` sends it to the first and the default
(`keep`) to the second, and that the shipped presets drop it for OpenAI, Mistral and Groq.
"""
from __future__ import annotations

import json
from typing import Any, Callable

import pytest

from router.config import CacheSection, ConfigError, parse_config
from service.presets import build_preset_config
from tests.gateway_harness import QualityRouter, Running
from tests.recording_upstream import RecordingUpstream, reply
from tests.samples import openai_unexpected_property

REASONING = ("reasoning_content", "reasoning", "reasoning_details")
THOUGHT = "The user wants the weather in Paris: I should call get_weather."
TOOL = {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                          "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}


def strict_rules(body: dict[str, Any]) -> str | None:
    return openai_unexpected_property(body["messages"])


def deepseek_rules(body: dict[str, Any]) -> str | None:
    for m in body["messages"]:
        if m.get("role") == "assistant" and m.get("tool_calls") and not m.get("reasoning_content"):
            return "The reasoning_content in the thinking mode must be passed back to the API."
    return None


class Upstream(RecordingUpstream):
    """An OpenAI-compatible upstream on 127.0.0.1 that answers 400 to what `rules` names, as the real
    API words it; otherwise a thinking model: a tool call after a user turn when tools are offered,
    else text, with its reasoning_content. Streams and non-streamed answers alike; records each body."""

    def __init__(self, rules: Callable[[dict[str, Any]], str | None]):
        super().__init__()
        self.rules = rules

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    async def answer(self, body: dict[str, Any], send: Any) -> None:
        why = self.rules(body)
        if why:
            error = {"error": {"message": why, "type": "invalid_request_error", "param": None, "code": None}}
            return await reply(send, 400, error)
        message: dict[str, Any] = {"role": "assistant", "content": f"from {body['model']}", "reasoning_content": THOUGHT}
        if body.get("tools") and body["messages"][-1]["role"] == "user":
            message.update(content=None, tool_calls=[{"id": "call_0", "type": "function",
                                                      "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}])
        finish = "tool_calls" if message.get("tool_calls") else "stop"
        usage = {"prompt_tokens": 20, "completion_tokens": 10, "total_tokens": 30}
        head = {"id": "chatcmpl-1", "created": 1, "model": body["model"]}
        if not body.get("stream"):
            answer = {**head, "object": "chat.completion", "usage": usage,
                      "choices": [{"index": 0, "message": message, "finish_reason": finish}]}
            return await reply(send, 200, answer)
        calls = [{"index": 0, **c} for c in message.get("tool_calls", ())]
        deltas = [({"role": "assistant", "reasoning_content": THOUGHT}, None),
                  ({"tool_calls": calls} if calls else {"content": message["content"]}, None), ({}, finish)]
        chunks = [{**head, "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": d, "finish_reason": f}]}
                  for d, f in deltas] + [{**head, "object": "chat.completion.chunk", "choices": [], "usage": usage}]
        events = "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"
        await reply(send, 200, events.encode(), "text/event-stream")


def replayed_turn(client: Any, model: str, stream: bool) -> dict[str, Any]:
    """The assistant turn a thinking model answers, as a client replays it: with its thinking, and
    with OpenRouter's reasoning fields as another client's history may carry them."""
    ask = [{"role": "user", "content": "What's the weather in Paris?"}]
    if stream:
        chunks = list(client.chat.completions.create(model=model, messages=ask, tools=[TOOL], stream=True))
        deltas = [c.choices[0].delta for c in chunks if c.choices]
        call = next(d.tool_calls[0] for d in deltas if d.tool_calls)
        turn = {"role": "assistant", "content": None, "tool_calls": [
            {"id": call.id, "type": "function", "function": {"name": call.function.name, "arguments": call.function.arguments}}],
            "reasoning_content": "".join((d.model_extra or {}).get("reasoning_content") or "" for d in deltas)}
    else:
        message = client.chat.completions.create(model=model, messages=ask, tools=[TOOL]).choices[0].message
        turn = message.model_dump(exclude_none=True)  # reasoning_content included, as an extra field
    assert turn["tool_calls"] and turn["reasoning_content"] == THOUGHT
    return {**turn, "reasoning": THOUGHT, "reasoning_details": [{"type": "reasoning.text", "text": THOUGHT, "index": 0}]}


def go_on(client: Any, model: str, turn: dict[str, Any], stream: bool) -> str:
    messages = [{"role": "user", "content": "What's the weather in Paris?"}, turn,
                {"role": "tool", "tool_call_id": turn["tool_calls"][0]["id"], "content": "18C, sunny"}]
    if stream:
        chunks = client.chat.completions.create(model=model, messages=messages, tools=[TOOL], stream=True)
        return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return client.chat.completions.create(model=model, messages=messages, tools=[TOOL]).choices[0].message.content


@pytest.fixture
def upstreams():
    with Upstream(strict_rules) as strict, Upstream(deepseek_rules) as deepseek:
        yield strict, deepseek


@pytest.mark.parametrize("stream", [False, True])
def test_a_thinking_models_tool_turn_goes_on_on_a_strict_provider_and_on_deepseek(upstreams, tmp_path, stream):
    strict, deepseek = upstreams
    config = parse_config(f"""
models:
  - {{name: gpt, provider: strict, price: {{input_per_1m: 1, output_per_1m: 2}}, capabilities: [tools]}}
  - {{name: ds, provider: thinking, price: {{input_per_1m: 1, output_per_1m: 2}}, capabilities: [tools]}}
providers:
  strict: {{kind: openai, base_url: "{strict.base_url}", timeout_s: 5, request: {{reasoning_history: drop}}}}
  thinking: {{kind: openai, base_url: "{deepseek.base_url}", timeout_s: 5}}
reliability: {{max_retries: 0, max_fallbacks: 0}}
server: {{db: "sqlite:///{tmp_path}/o.sqlite"}}
cache: {{enabled: false}}
""", "reasoning-history")
    gw = Running(config, router=QualityRouter({"gpt": 0.9, "ds": 0.5}))
    try:
        client = gw.client()
        turn = replayed_turn(client, "ds", stream)
        # The router moves the conversation to the strict provider: it gets the turn without its thinking.
        assert go_on(client, "gpt", turn, stream) == "from gpt"
        sent = strict.bodies[-1]["messages"][1]
        assert not set(REASONING) & set(sent) and sent["tool_calls"] == turn["tool_calls"]
        # Back on DeepSeek the same history keeps it, as thinking mode requires.
        assert go_on(client, "ds", turn, stream) == "from ds"
        assert {k: deepseek.bodies[-1]["messages"][1].get(k) for k in REASONING} == {k: turn[k] for k in REASONING}
    finally:
        gw.stop()


def test_the_presets_drop_replayed_reasoning_for_openai_mistral_and_groq_and_keep_it_for_deepseek(upstreams, tmp_path, monkeypatch):
    strict, deepseek = upstreams
    keys = {"OPENAI_API_KEY": "sk-o", "MISTRAL_API_KEY": "mi", "GROQ_API_KEY": "gsk", "DEEPSEEK_API_KEY": "sk-d"}
    for var, key in keys.items():
        monkeypatch.setenv(var, key)  # adapters read the key from the process environment on every call
    config = build_preset_config({**keys, "OPENAI_BASE_URL": strict.base_url, "MISTRAL_BASE_URL": strict.base_url,
                                  "GROQ_BASE_URL": strict.base_url, "DEEPSEEK_BASE_URL": deepseek.base_url})
    server = config.server.model_copy(update={"db": f"sqlite:///{tmp_path}/o.sqlite"})
    gw = Running(config.model_copy(update={"server": server, "cache": CacheSection(enabled=False)}))
    try:
        client = gw.client()
        turn = replayed_turn(client, "deepseek-chat", stream=True)
        # Each preset's model is sent under its provider's own name for it.
        for model, upstream in (("gpt-4.1-mini", "gpt-4.1-mini"), ("mistral-small-latest", "mistral-small-latest"),
                                ("groq/llama-3.1-8b-instant", "llama-3.1-8b-instant")):
            assert go_on(client, model, turn, stream=True) == f"from {upstream}", model
            assert not set(REASONING) & set(strict.bodies[-1]["messages"][1]), model
        assert go_on(client, "deepseek-chat", turn, stream=False) == "from deepseek-chat"
        assert deepseek.bodies[-1]["messages"][1]["reasoning_content"] == THOUGHT
    finally:
        gw.stop()


def test_an_unknown_reasoning_history_or_a_non_openai_provider_is_a_config_error():
    base = "models: [{name: m, provider: p, price: {input_per_1m: 1, output_per_1m: 1}}]\nproviders:\n  p: "
    with pytest.raises(ConfigError, match="reasoning_history"):
        parse_config(base + "{kind: openai, base_url: 'http://127.0.0.1:1/v1', request: {reasoning_history: strip}}", "bad-value")
    # Anthropic and Gemini adapters build messages field by field and never send these fields.
    with pytest.raises(ConfigError, match="only an `openai` provider"):
        parse_config(base + "{kind: anthropic, base_url: 'http://127.0.0.1:1', request: {reasoning_history: drop}}", "bad-kind")
