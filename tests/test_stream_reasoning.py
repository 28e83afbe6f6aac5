"""Streams of thinking models, and streams whose upstream sends its usage early, through the
running gateway and the real `openai` SDK, against an upstream on 127.0.0.1 that plays a script.

A thinking model (DeepSeek's `reasoning_content`, Groq's and OpenRouter's `reasoning`) streams
its reasoning long before its answer: the client gets each reasoning delta as it comes (its
stream opens with the first), a failure before any output still fails over unseen, a failure
after the thinking reached the client ends its stream with an error, and the cache stores the
thinking with the answer. The usage chunk is always the last before [DONE].

Timing is read off the upstream's own schedule, not a wall clock: the upstream stops at a
`Gate` that the test opens when the client has received what came before it.
"""
from __future__ import annotations

import json
from typing import Any

import openai
import pytest

from router.config import CacheSection
from service.asgi_thread import serve_in_thread
from tests.fake_upstream import _CutConnection, read_body
from tests.gateway_harness import DEFAULT_QUALITY, MSG, QualityRouter, Running, fake_config
from tests.stream_gate import Gate, read

FIELDS = ("reasoning_content", "reasoning")  # DeepSeek, vLLM / Groq, OpenRouter, Ollama
USAGE = {"prompt_tokens": 123, "completion_tokens": 45, "total_tokens": 168}
DONE = "[DONE]"
CUT = "cut"


class ScriptedUpstream:
    """An OpenAI-compatible upstream: each call of a model plays that model's next script (its
    last one again when none is left): chunks (dicts), `DONE`, a `Gate` to wait at, `CUT` to
    drop the connection, or an int, an HTTP error status before any byte of a stream."""

    def __init__(self) -> None:
        self.base_url = ""
        self._scripts: dict[str, list[Any]] = {}
        self._last: dict[str, Any] = {}
        self.calls: list[str] = []

    def script(self, model: str, *steps: Any) -> None:
        self._scripts.setdefault(model, []).append(steps)

    def reset(self) -> None:
        self._scripts.clear()
        self._last.clear()
        self.calls.clear()

    def _next(self, model: str) -> Any:
        queue = self._scripts.get(model)
        if queue:
            self._last[model] = queue.pop(0)
        return self._last.get(model, (500,))

    async def app(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        model = json.loads(await read_body(receive))["model"]
        self.calls.append(model)
        steps = self._next(model)
        if isinstance(steps[0], int):
            body = json.dumps({"error": {"message": "scripted failure", "type": "server_error", "code": None}}).encode()
            await send({"type": "http.response.start", "status": steps[0], "headers": [(b"content-type", b"application/json")]})
            await send({"type": "http.response.body", "body": body})
            return
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        for step in steps:
            if isinstance(step, Gate):
                await step.wait()
                continue
            if step == CUT:
                raise _CutConnection("scripted cut")
            data = step if step == DONE else json.dumps(step)
            await send({"type": "http.response.body", "body": f"data: {data}\n\n".encode(), "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


def chunk(delta: dict[str, Any] | None, finish: str | None = None, usage: dict[str, Any] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"id": "chatcmpl-up", "object": "chat.completion.chunk", "created": 1, "model": "up",
                           "choices": [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]}
    if usage is not None:
        out["usage"] = usage
    return out


ROLE = chunk({"role": "assistant", "content": None})
FINISH = chunk({}, "stop")
USAGE_CHUNK = chunk(None, usage=USAGE)


def think(text: str, field: str = "reasoning_content") -> dict[str, Any]:
    return chunk({"content": None, field: text})


def say(text: str) -> dict[str, Any]:
    return chunk({"content": text})


@pytest.fixture(scope="module")
def upstream():
    scripted = ScriptedUpstream()
    url, stop = serve_in_thread(scripted.app)
    scripted.base_url = f"{url}/v1"
    yield scripted
    stop()


def start(upstream: ScriptedUpstream, tmp_path: Any, cache: bool = False) -> Running:
    upstream.reset()
    config = fake_config(upstream.base_url, f"sqlite:///{tmp_path}/outcomes.sqlite", timeout_s=10.0)
    if cache:
        config = config.model_copy(update={"cache": CacheSection(enabled=True, semantic=False)})
    return Running(config, router=QualityRouter(DEFAULT_QUALITY))


@pytest.fixture
def gw(upstream, tmp_path):
    running = start(upstream, tmp_path)
    yield running
    running.stop()


@pytest.mark.parametrize("field", FIELDS)
def test_the_reasoning_reaches_the_client_while_the_model_is_still_thinking(gw, upstream, field):
    thinking = Gate()
    upstream.script("m1", ROLE, think("Six sevens", field), thinking, think(" are 42.", field), say("42"), FINISH,
                    USAGE_CHUNK, DONE)
    stream = gw.client().chat.completions.create(model="auto", messages=MSG, stream=True,
                                                 stream_options={"include_usage": True})
    seen = read(stream, field, on_thinking=thinking.open)
    # The upstream had sent only its first reasoning delta when the client received it.
    assert thinking.timed_out is False
    assert seen == [("thinking", "Six sevens"), ("thinking", " are 42."), ("answer", "42"), ("finish", "stop"),
                    ("usage", (123, 45))]
    row = gw.outcome(stream.response.headers["x-request-id"])
    assert (row["status"], row["answered_model"], row["output_tokens"]) == ("ok", "m1", 45)
    assert [(a["model"], a["status"]) for a in row["attempts"]] == [("m1", "ok")]


@pytest.mark.parametrize("failure", [(404,), (ROLE, CUT)], ids=["404", "reset-before-output"])
def test_a_failure_before_any_output_still_fails_over_unseen(gw, upstream, failure):
    upstream.script("m1", *failure)
    upstream.script("m2", ROLE, think("Hmm."), say("Fine."), FINISH, DONE)
    seen = read(gw.client().chat.completions.create(model="auto", messages=MSG, stream=True))
    assert seen == [("thinking", "Hmm."), ("answer", "Fine."), ("finish", "stop")]
    assert upstream.calls[-1] == "m2"


def test_once_the_thinking_reached_the_client_the_model_is_committed(gw, upstream):
    upstream.script("m1", ROLE, think("Let me work this out " * 20), CUT)
    upstream.script("m2", ROLE, say("From another model."), FINISH, DONE)
    stream = gw.client().chat.completions.create(model="auto", messages=MSG, stream=True)
    seen: list[tuple[str, Any]] = []
    with pytest.raises(openai.APIError, match="failed mid-answer"):
        seen.extend(read(stream))
    assert "m2" not in upstream.calls  # the client holds m1's thinking: no other model answers after it
    row = gw.outcome(stream.response.headers["x-request-id"])
    assert (row["status"], row["answered_model"]) == ("truncated", "m1")
    # No usage from the cut upstream: the estimate bills the thinking the model produced.
    assert row["output_tokens"] > 50 and row["extras"].get("usage_estimated") is True


@pytest.mark.parametrize("end", [(DONE,), (CUT,)], ids=["done", "cut-before-done"])
def test_the_usage_chunk_is_last_when_the_upstream_sends_it_before_the_finish(gw, upstream, end):
    upstream.script("m1", ROLE, say("Hello"), USAGE_CHUNK, FINISH, *end)
    stream = gw.client().chat.completions.create(model="auto", messages=MSG, stream=True,
                                                 stream_options={"include_usage": True})
    chunks = list(stream)
    assert [c.usage is not None for c in chunks] == [False] * (len(chunks) - 1) + [True]
    assert chunks[-1].choices == [] and (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (123, 45)
    assert chunks[-2].choices[0].finish_reason == "stop"
    row = gw.outcome(stream.response.headers["x-request-id"])
    assert (row["status"], row["input_tokens"], row["output_tokens"]) == ("ok", 123, 45)


def test_the_cache_keeps_the_thinking_with_the_answer_and_never_stores_thinking_alone(upstream, tmp_path):
    running = start(upstream, tmp_path, cache=True)
    try:
        client = running.client()
        upstream.script("m1", ROLE, think("Two and two."), say("Four."), FINISH, DONE)
        question = [{"role": "user", "content": "What is two plus two?"}]
        first = read(client.chat.completions.create(model="auto", messages=question, stream=True))
        assert first == [("thinking", "Two and two."), ("answer", "Four."), ("finish", "stop")]
        hit = client.chat.completions.with_raw_response.create(model="auto", messages=question, stream=True)
        assert hit.headers["x-cache"] == "hit"
        assert read(hit.parse()) == first
        whole = client.chat.completions.create(model="auto", messages=question)
        assert (whole.choices[0].message.model_extra["reasoning_content"], whole.choices[0].message.content) == ("Two and two.", "Four.")
        assert upstream.calls == ["m1"]

        # An answer that is all thinking (the model spent its turn on it) is no answer to replay.
        upstream.script("m1", ROLE, think("Still thinking."), FINISH, DONE)
        other = [{"role": "user", "content": "What is three plus three?"}]
        for _ in range(2):
            assert read(client.chat.completions.create(model="auto", messages=other, stream=True)) == [
                ("thinking", "Still thinking."), ("finish", "stop")]
        assert upstream.calls == ["m1", "m1", "m1"]
    finally:
        running.stop()
