"""A stream whose upstream connection breaks mid-answer is billed at the input counts the provider
had already sent (Anthropic's `message_start`, Gemini's `usageMetadata`), its prompt-cache reads at
the cached price, and only the output it streamed estimated; never at an estimate of the prompt."""
from __future__ import annotations

import json

import httpx
import openai
import pytest

from router.config import parse_config
from router.request_view import estimate_tokens
from tests.fake_upstream import WireServer
from tests.gateway_harness import Running
from tests.recording_upstream import RecordingUpstream
from tests.stream_gate import Gate

ASK = [{"role": "user", "content": "Go on with the refactor."}]
CLAUDE_PRICE = {"input_per_1m": 3, "output_per_1m": 15, "cached_input_per_1m": 0.3, "cache_write_per_1m": 3.75}
GEMINI_PRICE = {"input_per_1m": 1.25, "output_per_1m": 10, "cached_input_per_1m": 0.3125}


def start(tmp_path, claude_url, gemini_url):
    text = f"""
models:
  - {{name: claude, provider: anth, upstream: claude-sonnet-4-5, context_window: 200000, max_output_tokens: 8192,
     price: {CLAUDE_PRICE}}}
  - {{name: gemini, provider: goog, upstream: gemini-2.5-pro, context_window: 1000000, price: {GEMINI_PRICE}}}
providers:
  anth: {{kind: anthropic, base_url: "{claude_url}", timeout_s: 10}}
  goog: {{kind: gemini, base_url: "{gemini_url}/v1beta", timeout_s: 10}}
reliability: {{max_retries: 0, backoff_base_s: 0.01, backoff_max_s: 0.05, breaker_failures: 3, breaker_cooldown_s: 0.5}}
server: {{db: "sqlite:///{tmp_path}/o.sqlite"}}
cache: {{enabled: false}}
"""
    return Running(parse_config(text, "cut-stream-billing"))


@pytest.fixture
def gateway(tmp_path):
    with WireServer() as claude, WireServer() as gemini:
        running = start(tmp_path, claude.url, gemini.url)
        try:
            yield running, claude, gemini
        finally:
            running.stop()


class HeldClaude(RecordingUpstream):
    """An Anthropic upstream that streams its `events`, then holds the stream open at its `gate`."""

    def __init__(self, events):
        super().__init__()
        self.events, self.gate = events, Gate(timeout_s=10)

    async def answer(self, body, send):
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        for name, data in self.events:
            await send({"type": "http.response.body", "body": f"event: {name}\ndata: {json.dumps(data)}\n\n".encode(), "more_body": True})
        await self.gate.wait()
        await send({"type": "http.response.body", "body": b"", "more_body": False})


def claude_events(parts, **usage):
    start = {"type": "message_start", "message": {"id": "msg_cut", "type": "message", "role": "assistant", "content": [],
                                                  "usage": {"output_tokens": 1, **usage}}}
    return [("message_start", start),
            ("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
            *[("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": t}})
              for t in parts]]


def gemini_event(text, **usage):
    return {"candidates": [{"content": {"role": "model", "parts": [{"text": text}]}}], "usageMetadata": usage, "responseId": "resp-cut"}


def read_until_cut(gw, model):
    """The chunks the client got before the stream's error event, and the request's outcome row."""
    chunks = []
    raw = gw.client().chat.completions.with_raw_response.create(model=model, messages=ASK, stream=True,
                                                                stream_options={"include_usage": True})
    with pytest.raises(openai.APIError, match="failed mid-answer"):
        for c in raw.parse():
            chunks.append(c)
    return chunks, gw.outcome(raw.headers["x-request-id"])


def cost(price, fresh, output, cached=0, written=0):
    return (fresh * price["input_per_1m"] + output * price["output_per_1m"] + cached * price["cached_input_per_1m"]
            + written * price.get("cache_write_per_1m", price["input_per_1m"])) / 1e6


@pytest.mark.parametrize("cut", ["connection", "error_event"])
def test_a_claude_stream_cut_mid_answer_bills_message_starts_counts(gateway, cut):
    gw, claude, _ = gateway
    parts = ["Renaming the module ", "and its imports, then ", "running the tests"]
    events = claude_events(parts, input_tokens=10, cache_read_input_tokens=50000, cache_creation_input_tokens=2000)
    if cut == "error_event":
        events.append(("error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}))
    claude.reply_sse(events, cut=cut == "connection")
    chunks, row = read_until_cut(gw, "claude")
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "".join(parts)
    assert all(c.usage is None for c in chunks)  # the partial counts are billed, not told as the answer's usage
    output = estimate_tokens("".join(parts))
    assert row["status"] == "truncated" and row["extras"]["usage_estimated"] is True  # the output is the estimate
    assert (row["input_tokens"], row["output_tokens"]) == (10 + 50000 + 2000, output)
    assert row["cost_usd"] == pytest.approx(cost(CLAUDE_PRICE, 10, output, cached=50000, written=2000))


def test_a_claude_stream_its_client_left_mid_answer_bills_message_starts_counts(tmp_path):
    parts = ["Reading the config, ", "then the tests"]
    with HeldClaude(claude_events(parts, input_tokens=10, cache_read_input_tokens=50000)) as claude:
        gw = start(tmp_path, claude.url, claude.url)
        try:
            with httpx.Client(timeout=10) as client, client.stream(
                    "POST", f"{gw.base_url}/chat/completions", headers={"authorization": "Bearer test-key"},
                    json={"model": "claude", "messages": ASK, "stream": True}) as response:
                assert next(line for line in response.iter_lines() if "then the tests" in line)
                request_id = response.headers["x-request-id"]
            row = gw.outcome(request_id)  # the client is gone: the upstream still holds the stream open
            output = estimate_tokens("".join(parts))
            assert row["status"] == "client_closed" and (row["input_tokens"], row["output_tokens"]) == (50010, output)
            assert row["cost_usd"] == pytest.approx(cost(CLAUDE_PRICE, 10, output, cached=50000))
        finally:
            claude.gate.open()
            gw.stop()
    assert claude.gate.timed_out is False


def test_a_claude_stream_whose_message_start_counts_nothing_bills_the_estimate(gateway):
    # A proxy that sends message_start without usage: no count of 0 input, the prompt is estimated.
    gw, claude, _ = gateway
    claude.reply_sse(claude_events(["Half an answer"]), cut=True)
    _, row = read_until_cut(gw, "claude")
    assert row["status"] == "truncated" and row["input_tokens"] > 0 and row["extras"]["usage_estimated"] is True


def test_a_whole_claude_stream_still_sends_one_usage_chunk_last(gateway):
    gw, claude, _ = gateway
    end = [("content_block_stop", {"type": "content_block_stop", "index": 0}),
           ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 7}}),
           ("message_stop", {"type": "message_stop"})]
    claude.reply_sse(claude_events(["All done."], input_tokens=10, cache_read_input_tokens=50000) + end)
    chunks = list(gw.client().chat.completions.create(model="claude", messages=ASK, stream=True, stream_options={"include_usage": True}))
    assert [i for i, c in enumerate(chunks) if c.usage is not None] == [len(chunks) - 1]
    usage = chunks[-1].usage
    assert (usage.prompt_tokens, usage.completion_tokens, usage.prompt_tokens_details.cached_tokens) == (50010, 7, 50000)


def test_a_gemini_stream_cut_mid_answer_bills_its_usage_metadatas_prompt(gateway):
    gw, _, gemini = gateway
    parts = ["The failing test ", "imports the old name"]
    usage = {"promptTokenCount": 40000, "cachedContentTokenCount": 30000}
    gemini.reply_sse([(None, gemini_event(parts[0], **usage, candidatesTokenCount=4, totalTokenCount=40004)),
                      (None, gemini_event(parts[1], **usage, candidatesTokenCount=9, totalTokenCount=40009))], cut=True)
    chunks, row = read_until_cut(gw, "gemini")
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "".join(parts)
    assert all(c.usage is None for c in chunks)
    output = estimate_tokens("".join(parts))
    assert row["status"] == "truncated" and (row["input_tokens"], row["output_tokens"]) == (40000, output)
    assert row["cost_usd"] == pytest.approx(cost(GEMINI_PRICE, 10000, output, cached=30000))
