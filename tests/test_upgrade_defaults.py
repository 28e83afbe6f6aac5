"""Defaults that changed under configs written before them, shown on a real gateway, the real
`openai` SDK and fake upstreams on 127.0.0.1.

- `answer_timeout_s` (600 s unless set) bounds a non-streamed call, no longer `timeout_s`: a file
  that set `timeout_s` to fail over fast from a hung upstream would now wait 600 s on a
  non-streamed call, so `check` and `serve` say so, naming the key that restores it.
- Claude's thinking is now answered as `reasoning_content`, which clients replay: a provider
  written by hand for api.openai.com (not the preset) was sent it and answered 400, so a base URL
  on an API known to refuse it drops it unless the file says otherwise.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any

import openai
import pytest

from router.config import parse_config
from service.asgi_thread import serve_in_thread
from service.cli import main
from tests.fake_upstream import read_body
from tests.gateway_harness import QualityRouter, Running
from tests.samples import openai_unexpected_property
from tests.serve_harness import start_serve, stop

PRICE = "price: {input_per_1m: 1, output_per_1m: 1}, context_window: 100000"


async def _reply(send: Any, status: int, body: dict[str, Any]) -> None:
    await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": json.dumps(body).encode()})


def _answer(model: str, text: str) -> dict[str, Any]:
    return {"id": "c", "object": "chat.completion", "created": 0, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}


async def _hung(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] == "http":
        await read_body(receive)
        await asyncio.sleep(60)  # accepted, never answered


async def _healthy(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] == "http":
        await read_body(receive)
        await _reply(send, 200, _answer("m2", "from m2"))


def test_a_timeout_s_that_no_longer_bounds_non_streamed_calls_is_said_by_check_and_serve(tmp_path, capsys):
    hung_url, stop_hung = serve_in_thread(_hung)
    ok_url, stop_ok = serve_in_thread(_healthy)
    try:
        (tmp_path / "c.yaml").write_text(f"""
models:
  - {{name: m1, provider: fast, {PRICE}}}
  - {{name: m2, provider: ok, {PRICE}}}
  - {{name: m3, provider: both, {PRICE}}}
  - {{name: m4, provider: plain, {PRICE}}}
providers:
  fast: {{kind: openai, base_url: "{hung_url}/v1", timeout_s: 2}}
  ok: {{kind: openai, base_url: "{ok_url}/v1", timeout_s: 900}}
  both: {{kind: openai, base_url: "{hung_url}/v1", timeout_s: 1, answer_timeout_s: 2}}
  plain: {{kind: openai, base_url: "{ok_url}/v1"}}
  unused: {{kind: openai, base_url: "{ok_url}/v1", timeout_s: 2}}
reliability: {{max_retries: 0}}
server: {{db: "sqlite:///{tmp_path}/o.sqlite"}}
cache: {{enabled: false}}
""")
        assert main(["check", "--config", str(tmp_path / "c.yaml")]) == 0
        said = [line for line in capsys.readouterr().out.splitlines() if "answer_timeout_s" in line]
        # One line, for the provider whose timeout_s is below the wait and that sets no answer_timeout_s.
        assert said == ["warning: providers.fast.answer_timeout_s: not set, so a non-streamed call to fast waits up to "
                        "600 s for its answer before failing over (timeout_s: 2 bounds a stream's first byte and the "
                        "gaps between its chunks); set answer_timeout_s to fail over from a hung upstream sooner"]
        # What the line says to do: with answer_timeout_s set, a hung upstream is failed over at it.
        config = parse_config((tmp_path / "c.yaml").read_text(), "c.yaml")
        gw = Running(config, router=QualityRouter({"m3": 0.9, "m2": 0.8, "m1": 0.1, "m4": 0.1}))
        try:
            client = openai.OpenAI(base_url=gw.base_url, api_key="x", max_retries=0, timeout=30)
            start = time.monotonic()
            answer = client.chat.completions.create(model="auto", messages=[{"role": "user", "content": "hi"}])
            # Failed over at answer_timeout_s (2 s), not at the 600 s default the client's 30 s would cut.
            assert answer.choices[0].message.content == "from m2" and 1.5 < time.monotonic() - start < 25
        finally:
            gw.stop()
    finally:
        stop_hung()
        stop_ok()


def test_serve_warns_at_start_for_a_file_and_not_for_the_presets(tmp_path, capsys, monkeypatch):
    with contextlib.ExitStack() as running:
        ok_url, stop_ok = serve_in_thread(_healthy)
        running.callback(stop_ok)
        proc, _ = start_serve(tmp_path, f"{ok_url}/v1", {})  # its provider sets timeout_s: 30
        running.callback(stop, proc)
        log = (tmp_path / "serve.log").read_text()
        assert ("WARNING openclaw.serve: providers.fake.answer_timeout_s: not set, so a non-streamed call to fake "
                "waits up to 600 s") in log
    # The presets' timeout_s (60, Ollama's 300) is theirs, not a choice to fail over fast: no warning.
    for var in ("OPENAI_API_KEY", "OLLAMA_BASE_URL"):
        monkeypatch.setenv(var, "sk-test" if var.endswith("KEY") else "http://127.0.0.1:11434")
    main(["check"])
    out = capsys.readouterr().out
    assert "via openai" in out and "via ollama" in out and "answer_timeout_s" not in out


class StrictOpenAI:
    """api.openai.com as an HTTP proxy hands it over (a request for http://api.openai.com/...),
    refused with OpenAI's 400 when a message carries a field OpenAI does not know."""

    def __init__(self) -> None:
        self.targets: list[str] = []
        self.bodies: list[dict[str, Any]] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = json.loads(await read_body(receive))
        self.targets.append(dict(scope["headers"])[b"host"].decode() + scope["path"])
        self.bodies.append(body)
        if why := openai_unexpected_property(body["messages"]):
            return await _reply(send, 400, {"error": {"message": why, "type": "invalid_request_error", "param": None,
                                                      "code": None}})
        await _reply(send, 200, _answer(body["model"], "ok"))


async def _claude(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] == "http":
        await read_body(receive)
        await _reply(send, 200, {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5",
                                 "content": [{"type": "thinking", "thinking": "6*7=42", "signature": "sig"},
                                             {"type": "text", "text": "42"}],
                                 "stop_reason": "end_turn", "usage": {"input_tokens": 5, "output_tokens": 3}})


@pytest.fixture
def through_a_proxy(monkeypatch):
    """http://api.openai.com reached through a proxy on 127.0.0.1 (HTTP_PROXY, honoured as the
    OpenAI SDK honours it), the gateway and Claude directly."""
    strict = StrictOpenAI()
    proxy_url, stop_proxy = serve_in_thread(strict)
    for var in ("HTTP_PROXY", "http_proxy"):
        monkeypatch.setenv(var, proxy_url)
    for var in ("NO_PROXY", "no_proxy"):
        monkeypatch.setenv(var, "127.0.0.1,localhost")
    yield strict
    stop_proxy()


def test_a_hand_written_openai_provider_drops_replayed_thinking_unless_told_to_keep_it(through_a_proxy, tmp_path):
    strict = through_a_proxy
    with contextlib.ExitStack() as running:
        claude_url, stop_claude = serve_in_thread(_claude)
        running.callback(stop_claude)
        config = parse_config(f"""
models:
  - {{name: claude, provider: anthropic, upstream: claude-sonnet-4-5, context_window: 200000, max_output_tokens: 32000,
     price: {{input_per_1m: 3, output_per_1m: 15}}}}
  - {{name: gpt, provider: openai, upstream: gpt-4.1, {PRICE}}}
  - {{name: gpt-kept, provider: openai-kept, upstream: gpt-4.1, {PRICE}}}
providers:
  anthropic: {{kind: anthropic, base_url: "{claude_url}"}}
  openai: {{kind: openai, base_url: "http://api.openai.com/v1"}}
  openai-kept: {{kind: openai, base_url: "http://api.openai.com/v1", request: {{reasoning_history: keep}}}}
reliability: {{max_retries: 0, max_fallbacks: 0}}
server: {{db: "sqlite:///{tmp_path}/o.sqlite"}}
cache: {{enabled: false}}
""", "written-before")
        gw = Running(config, router=QualityRouter({"claude": 0.9, "gpt": 0.8, "gpt-kept": 0.7}))
        running.callback(gw.stop)
        client = openai.OpenAI(base_url=gw.base_url, api_key="x", max_retries=0, timeout=30)
        messages: list[dict[str, Any]] = [{"role": "user", "content": "What is six times seven?"}]
        first = client.chat.completions.create(model="claude", messages=messages, reasoning_effort="medium", max_tokens=8000)
        turn = first.choices[0].message.model_dump(exclude_none=True)  # as the Vercel AI SDK replays it
        assert turn["reasoning_content"] == "6*7=42"
        messages += [turn, {"role": "user", "content": "And seven times eight?"}]
        assert client.chat.completions.create(model="gpt", messages=messages).choices[0].message.content == "ok"
        assert strict.targets[-1] == "api.openai.com/v1/chat/completions"
        assert strict.bodies[-1]["messages"][1] == {"role": "assistant", "content": "42"}
        # Written `keep` wins, and OpenAI refuses it as before.
        with pytest.raises(openai.BadRequestError, match="'reasoning_content' was unexpected"):
            client.chat.completions.create(model="gpt-kept", messages=messages)


@pytest.mark.parametrize("url, default", [
    ("https://api.openai.com/v1", "drop"), ("https://my-resource.openai.azure.com/openai/v1", "drop"),
    ("https://api.mistral.ai/v1", "drop"), ("https://API.Groq.com./openai/v1", "drop"),
    ("https://api.deepseek.com/v1", "keep"), ("https://openrouter.ai/api/v1", "keep"), ("http://127.0.0.1:8000/v1", "keep"),
    ("https://notapi.openai.com/v1", "keep"), ("https://api.openai.com.example.net/v1", "keep"), ("https://openai.azure.com/v1", "keep"),
])
def test_the_default_follows_the_host_and_what_is_written_wins(url, default):
    base = "models: [{name: m, provider: p, price: {input_per_1m: 1, output_per_1m: 1}}]\nproviders:\n  p: "
    shape = parse_config(base + f"{{kind: openai, base_url: '{url}', request: {{drop: [seed]}}}}", "t").providers["p"].request
    assert shape.reasoning_history == default and shape.drop == {"seed"}
    for written in ("keep", "drop"):
        spec = parse_config(base + f"{{kind: openai, base_url: '{url}', request: {{reasoning_history: {written}}}}}", "t")
        assert spec.providers["p"].request.reasoning_history == written
    # Anthropic and Gemini adapters never send these fields: nothing to default there.
    assert parse_config(base + f"{{kind: anthropic, base_url: '{url}'}}", "t").providers["p"].request.is_identity
