"""Claude's extended thinking through the running gateway and the real `openai` SDK, against an
upstream on 127.0.0.1 that speaks Anthropic's Messages API and plays a script.

The thinking is passed on as `reasoning_content` (LiteLLM's field): streamed, each thinking_delta
reaches the client as it comes, so a think of minutes opens the stream (the client shows it, an
idle timeout between them sees bytes); unstreamed, the thinking blocks' text is the message's
`reasoning_content`. Signatures and redacted thinking are no text and are not passed on; a tool
call after the thinking keeps its tool_calls index; a replayed `reasoning_content` is not sent back
to Anthropic; the cache replays the thinking with the answer.

Timing is read off the upstream's own schedule, not a wall clock: the upstream stops at a `Gate`
that the test opens when the client has received what came before it.
"""
from __future__ import annotations

import json
from typing import Any

import pytest

from router.config import parse_config
from tests.gateway_harness import QualityRouter, Running
from tests.recording_upstream import RecordingUpstream, reply
from tests.stream_gate import Gate, read

THOUGHT = ("Six sevens", " are 42.")
SIGNATURE = "EqQBCgIYAhIM1gbcDa9GJwZA2b3hGgxsig-SIGNATURE"
REDACTED = "EmwKAhgBEgy3va3pzix-REDACTED-DATA"
QUESTION = [{"role": "user", "content": "What is six times seven?"}]


class ScriptedClaude(RecordingUpstream):
    """An Anthropic Messages upstream: each request plays the next script, a list of SSE events
    ((name, data)) and `Gate`s for a stream, a Messages JSON object for a call without `stream`.
    Records each request body."""

    def __init__(self) -> None:
        super().__init__()
        self.scripts: list[Any] = []

    def script(self, steps: Any) -> None:
        with self._lock:
            self.scripts.append(steps)

    async def answer(self, body: dict[str, Any], send: Any) -> None:
        with self._lock:
            steps = self.scripts.pop(0)
        if isinstance(steps, dict):
            return await reply(send, 200, steps)
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        for step in steps:
            if isinstance(step, Gate):
                await step.wait()
                continue
            name, data = step
            event = f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()
            await send({"type": "http.response.body", "body": event, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


def start_block(index: int, block: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    return "content_block_start", {"type": "content_block_start", "index": index, "content_block": block}


def delta(index: int, body: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    return "content_block_delta", {"type": "content_block_delta", "index": index, "delta": body}


def stop_block(index: int) -> tuple[str, dict[str, Any]]:
    return "content_block_stop", {"type": "content_block_stop", "index": index}


MESSAGE_START = ("message_start", {"type": "message_start", "message": {
    "id": "msg_think", "type": "message", "role": "assistant", "content": [], "model": "claude-sonnet-4-5",
    "usage": {"input_tokens": 30, "output_tokens": 1}}})


def thinking_block(index: int, gate: Gate | None = None) -> list[Any]:
    """A thinking block: its first delta, the gate, its second delta, its signature."""
    steps: list[Any] = [start_block(index, {"type": "thinking", "thinking": ""}),
                        delta(index, {"type": "thinking_delta", "thinking": THOUGHT[0]})]
    if gate is not None:
        steps.append(gate)
    return [*steps, delta(index, {"type": "thinking_delta", "thinking": THOUGHT[1]}),
            delta(index, {"type": "signature_delta", "signature": SIGNATURE}), stop_block(index)]


def end(stop_reason: str, output_tokens: int) -> list[Any]:
    return [("message_delta", {"type": "message_delta", "delta": {"stop_reason": stop_reason, "stop_sequence": None},
                               "usage": {"output_tokens": output_tokens}}),
            ("message_stop", {"type": "message_stop"})]


def text_block(index: int, text: str) -> list[Any]:
    return [start_block(index, {"type": "text", "text": ""}), delta(index, {"type": "text_delta", "text": text}),
            stop_block(index)]


@pytest.fixture(scope="module")
def claude():
    with ScriptedClaude() as upstream:
        yield upstream


def start(claude: ScriptedClaude, tmp_path: Any, cache: bool = False) -> Running:
    claude.scripts.clear()
    claude.bodies.clear()
    text = f"""
models:
  - {{name: claude, provider: anth, upstream: claude-sonnet-4-5, context_window: 200000, max_output_tokens: 32000,
     price: {{input_per_1m: 3, output_per_1m: 15}}, capabilities: [tools]}}
providers:
  anth: {{kind: anthropic, base_url: "{claude.url}", timeout_s: 10}}
reliability: {{max_retries: 0, backoff_base_s: 0.01, backoff_max_s: 0.05, breaker_failures: 50, breaker_cooldown_s: 0.5}}
server: {{db: "sqlite:///{tmp_path}/o.sqlite", prompt_storage: full}}
cache: {{enabled: {str(cache).lower()}, semantic: false}}
"""
    return Running(parse_config(text, "anthropic-thinking"), router=QualityRouter({"claude": 0.9}))


@pytest.fixture
def gw(claude, tmp_path):
    running = start(claude, tmp_path)
    yield running
    running.stop()


def test_claude_thinking_reaches_the_client_while_claude_is_still_thinking(gw, claude):
    thinking = Gate()
    claude.script([MESSAGE_START, *thinking_block(0, thinking), *text_block(1, "42"), *end("end_turn", 45)])
    stream = gw.client().chat.completions.create(model="auto", messages=QUESTION, stream=True, reasoning_effort="medium",
                                                 max_tokens=20000, stream_options={"include_usage": True})
    seen = read(stream, on_thinking=thinking.open)
    # Claude had sent only its first thinking delta when the client received it.
    assert thinking.timed_out is False
    assert seen == [("thinking", THOUGHT[0]), ("thinking", THOUGHT[1]), ("answer", "42"), ("finish", "stop"),
                    ("usage", (30, 45))]
    assert claude.bodies[0]["thinking"] == {"type": "enabled", "budget_tokens": 8192}
    row = gw.outcome(stream.response.headers["x-request-id"])
    assert (row["status"], row["answered_model"], row["input_tokens"], row["output_tokens"]) == ("ok", "claude", 30, 45)
    assert row["cost_usd"] == pytest.approx((30 * 3 + 45 * 15) / 1e6)


def test_a_tool_call_after_thinking_keeps_its_index_and_signatures_stay_behind(gw, claude):
    claude.script([
        MESSAGE_START, *thinking_block(0),
        start_block(1, {"type": "redacted_thinking", "data": REDACTED}), stop_block(1),
        start_block(2, {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}}),
        delta(2, {"type": "input_json_delta", "partial_json": "{\"city\": "}),
        delta(2, {"type": "input_json_delta", "partial_json": "\"Lima\"}"}), stop_block(2),
        start_block(3, {"type": "tool_use", "id": "toolu_2", "name": "noop", "input": {}}), stop_block(3),
        *end("tool_use", 60)])
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}},
             {"type": "function", "function": {"name": "noop"}}]
    raw = gw.client().chat.completions.with_raw_response.create(model="auto", messages=QUESTION, tools=tools, stream=True)
    text = raw.http_response.read().decode()
    assert SIGNATURE not in text and REDACTED not in text
    chunks = [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: {")]
    thoughts = [c["choices"][0]["delta"]["reasoning_content"] for c in chunks
                if c["choices"] and "reasoning_content" in c["choices"][0]["delta"]]
    assert thoughts == list(THOUGHT)
    calls: dict[int, dict[str, Any]] = {}
    for c in chunks:
        for call in (c["choices"][0]["delta"].get("tool_calls") or []) if c["choices"] else []:
            entry = calls.setdefault(call["index"], {"id": None, "name": "", "arguments": ""})
            entry["id"] = call.get("id") or entry["id"]
            entry["name"] += (call.get("function") or {}).get("name") or ""
            entry["arguments"] += (call.get("function") or {}).get("arguments") or ""
    assert calls == {0: {"id": "toolu_1", "name": "get_weather", "arguments": "{\"city\": \"Lima\"}"},
                     1: {"id": "toolu_2", "name": "noop", "arguments": "{}"}}
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]] == ["tool_calls"]


def test_unstreamed_the_thinking_blocks_are_the_messages_reasoning_content(gw, claude):
    claude.script({
        "id": "msg_whole", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5",
        "content": [{"type": "thinking", "thinking": THOUGHT[0], "signature": SIGNATURE},
                    {"type": "redacted_thinking", "data": REDACTED},
                    {"type": "thinking", "thinking": THOUGHT[1], "signature": SIGNATURE},
                    {"type": "text", "text": "42"}],
        "stop_reason": "end_turn", "stop_sequence": None, "usage": {"input_tokens": 30, "output_tokens": 45}})
    raw = gw.client().chat.completions.with_raw_response.create(model="auto", messages=QUESTION)
    assert SIGNATURE not in raw.http_response.text and REDACTED not in raw.http_response.text
    answer = raw.parse()
    message = answer.choices[0].message
    assert (message.model_extra["reasoning_content"], message.content) == ("".join(THOUGHT), "42")
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (30, 45)


def test_a_replayed_reasoning_content_is_not_sent_to_claude(gw, claude):
    claude.script([MESSAGE_START, *text_block(0, "Yes."), *end("end_turn", 3)])
    history = [*QUESTION,
               {"role": "assistant", "content": "42", "reasoning_content": "".join(THOUGHT)},
               {"role": "user", "content": "Sure?"}]
    read(gw.client().chat.completions.create(model="auto", messages=history, stream=True))
    sent = claude.bodies[0]
    assert sent["messages"][1] == {"role": "assistant", "content": [{"type": "text", "text": "42"}]}
    assert THOUGHT[0] not in json.dumps(sent)


def test_the_cache_replays_claudes_thinking_with_the_answer(claude, tmp_path):
    running = start(claude, tmp_path, cache=True)
    try:
        client = running.client()
        claude.script([MESSAGE_START, *thinking_block(0), *text_block(1, "42"), *end("end_turn", 45)])
        first = read(client.chat.completions.create(model="auto", messages=QUESTION, stream=True))
        assert first == [("thinking", THOUGHT[0]), ("thinking", THOUGHT[1]), ("answer", "42"), ("finish", "stop")]
        hit = client.chat.completions.with_raw_response.create(model="auto", messages=QUESTION, stream=True)
        assert hit.headers["x-cache"] == "hit"
        assert read(hit.parse()) == [("thinking", "".join(THOUGHT)), ("answer", "42"), ("finish", "stop")]
        whole = client.chat.completions.create(model="auto", messages=QUESTION)
        assert (whole.choices[0].message.model_extra["reasoning_content"], whole.choices[0].message.content) == ("".join(THOUGHT), "42")
        assert len(claude.bodies) == 1
    finally:
        running.stop()
