"""Requests OpenAI takes whose plain translation Anthropic or Gemini refuses (or answers badly), sent
through the running gateway with the real openai SDK to fake upstreams that apply the real APIs'
documented 400 rules: an inline photo or PDF without max_tokens, a tool history without tools,
whitespace stop sequences, a prompt of system turns alone, a conversation the assistant opens,
image types, https image types for Gemini, and a non-streamed answer slower than timeout_s."""
from __future__ import annotations

import asyncio
import base64
import json
import random
import struct
import zlib
from typing import Any, Callable

import openai
import pytest

from router.config import ConfigError, parse_config
from tests.gateway_harness import QualityRouter, Running
from tests.recording_upstream import RecordingUpstream, reply
from tests.samples import CLAUDE_OK, PAGE, object_stream, pdf, stream

GEMINI_OK = {"candidates": [{"content": {"role": "model", "parts": [{"text": "from gemini"}]}, "finishReason": "STOP"}],
             "usageMetadata": {"promptTokenCount": 10, "candidatesTokenCount": 3, "totalTokenCount": 13}, "responseId": "r1"}
IMAGE_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")


def claude_rules(body: dict[str, Any]) -> str | None:
    """What the Messages API answers 400 to, in its own words."""
    messages = body.get("messages") or []
    if not messages:
        return "messages: at least one message is required"
    if messages[0]["role"] != "user":
        return 'messages: first message must use the "user" role'
    if any(not s.strip() for s in body.get("stop_sequences", [])):
        return "stop_sequences: each stop sequence must contain non-whitespace"
    blocks = [b for m in messages for b in m["content"]]
    if any(b["type"] in ("tool_use", "tool_result") for b in blocks) and not body.get("tools"):
        return "Requests which include `tool_use` or `tool_result` blocks must define tools."
    for b in blocks:
        source = b.get("source") or {}
        if b["type"] == "image" and source.get("type") == "base64" and source.get("media_type") not in IMAGE_TYPES:
            return "image.source.base64.media_type: Input should be 'image/jpeg', 'image/png', 'image/gif' or 'image/webp'"
    return None


def gemini_rules(body: dict[str, Any]) -> str | None:
    return None if body.get("contents") else "* GenerateContentRequest.contents: contents is not specified"


class Strict(RecordingUpstream):
    """A fake upstream on 127.0.0.1 that refuses what `rules` names with the real API's 400 and
    otherwise answers `answer` after `delay_s`; records every request body."""

    def __init__(self, rules: Callable[[dict[str, Any]], str | None], answer: dict[str, Any], error: Callable[[str], Any]):
        super().__init__()
        self.rules, self.answer_body, self.error = rules, answer, error
        self.delay_s = 0.0

    async def answer(self, body: dict[str, Any], send: Any) -> None:
        why = self.rules(body)
        if why:
            return await reply(send, 400, self.error(why))
        await asyncio.sleep(self.delay_s)
        await reply(send, 200, self.answer_body)


@pytest.fixture
def upstreams(tmp_path):
    claude_error = lambda why: {"type": "error", "error": {"type": "invalid_request_error", "message": why}}  # noqa: E731
    gemini_error = lambda why: {"error": {"code": 400, "message": why, "status": "INVALID_ARGUMENT"}}  # noqa: E731
    with Strict(claude_rules, CLAUDE_OK, claude_error) as claude, Strict(gemini_rules, GEMINI_OK, gemini_error) as gemini:
        text = f"""
models:
  - {{name: claude, provider: anth, upstream: claude-sonnet-4-5, context_window: 200000, max_output_tokens: 8192,
     price: {{input_per_1m: 3, output_per_1m: 15}}, capabilities: [tools, vision]}}
  - {{name: claude-small, provider: anth, upstream: claude-sonnet-4-5, context_window: 20000, max_output_tokens: 8192,
     price: {{input_per_1m: 3, output_per_1m: 15}}, capabilities: [tools, vision, files]}}
  - {{name: claude-capped, provider: anth_capped, upstream: claude-sonnet-4-5, max_output_tokens: 8192,
     price: {{input_per_1m: 3, output_per_1m: 15}}, fallbacks: [gemini]}}
  - {{name: gemini, provider: goog, upstream: gemini-2.5-flash, context_window: 1000000,
     price: {{input_per_1m: 0.3, output_per_1m: 2.5}}, capabilities: [tools, json, vision]}}
providers:
  anth: {{kind: anthropic, base_url: "{claude.url}", timeout_s: 1}}
  anth_capped: {{kind: anthropic, base_url: "{claude.url}", timeout_s: 0.5, answer_timeout_s: 1}}
  goog: {{kind: gemini, base_url: "{gemini.url}/v1beta", timeout_s: 1}}
reliability: {{max_retries: 0, backoff_base_s: 0.01, backoff_max_s: 0.05, breaker_failures: 50, breaker_cooldown_s: 0.5}}
server: {{db: "sqlite:///{tmp_path}/o.sqlite", prompt_storage: full}}
cache: {{enabled: false}}
"""
        quality = {"claude": 0.99, "gemini": 0.5, "claude-small": 0.1, "claude-capped": 0.1}
        gw = Running(parse_config(text, "request-shapes"), router=QualityRouter(quality))
        try:
            yield gw.client(), claude, gemini
        finally:
            gw.stop()


def png(width: int, height: int, padding: int) -> bytes:
    """A PNG header of the given size, followed by `padding` random bytes of image data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", random.Random(1).randbytes(padding)) + chunk(b"IEND", b"")


def packed_pdf(pages: int, padding: int) -> bytes:
    """A PDF 1.5 whose page objects are inside a compressed object stream, as modern writers put
    them, with `padding` bytes of a picture's data."""
    return pdf(object_stream(zlib.compress(b" ".join([PAGE] * pages)), pages), b"<< /Type /Pages /Count %d >>" % pages,
               stream(b"/Type /XObject /Subtype /Image", random.Random(2).randbytes(padding)))


def data_url(mime_type: str, data: bytes) -> str:
    return f"data:{mime_type};base64,{base64.b64encode(data).decode()}"


def test_an_inline_photo_or_pdf_is_sized_by_what_anthropic_bills_not_its_base64(upstreams):
    client, claude, _ = upstreams
    photo = data_url("image/png", png(1024, 1024, 1_000_000))  # 1.3 MB of base64: ~1,400 tokens at Anthropic
    answer = client.chat.completions.create(model="claude", messages=[{"role": "user", "content": [
        {"type": "text", "text": "Describe this photo."}, {"type": "image_url", "image_url": {"url": photo}}]}])
    assert claude.bodies[-1]["max_tokens"] == 8192 and answer.choices[0].message.content == "from claude"
    # Ten pages of 1,500 tokens in a 20,000-token window leave about 5,000, whatever the file's bytes.
    document = data_url("application/pdf", packed_pdf(10, 1_000_000))
    client.chat.completions.create(model="claude-small", messages=[{"role": "user", "content": [
        {"type": "text", "text": "Summarise it."}, {"type": "file", "file": {"filename": "a.pdf", "file_data": document}}]}])
    assert 4_900 < claude.bodies[-1]["max_tokens"] < 5_000


HISTORY = [{"role": "user", "content": "What's the weather in Paris?"},
           {"role": "assistant", "content": None, "tool_calls": [
               {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
           {"role": "tool", "tool_call_id": "call_1", "content": "18C, sunny"},
           {"role": "user", "content": "Summarise what you found in one sentence."}]


@pytest.mark.parametrize("model", ["claude", "auto"])
def test_a_tool_history_without_tools_is_answered_in_text(upstreams, model):
    client, claude, gemini = upstreams
    answer = client.chat.completions.create(model=model, messages=HISTORY)
    assert answer.model == "claude" and answer.choices[0].message.content == "from claude"
    body = claude.bodies[-1]
    assert [t["name"] for t in body["tools"]] == ["get_weather"] and body["tool_choice"] == {"type": "none"}
    assert [b["type"] for m in body["messages"] for b in m["content"]] == ["text", "tool_use", "tool_result", "text"]
    client.chat.completions.create(model="gemini", messages=HISTORY)
    assert [d["name"] for d in gemini.bodies[-1]["tools"][0]["functionDeclarations"]] == ["get_weather"]
    assert gemini.bodies[-1]["toolConfig"] == {"functionCallingConfig": {"mode": "NONE"}}


def test_a_tool_name_anthropic_refuses_is_not_declared(upstreams):
    client, claude, gemini = upstreams
    dotted = json.loads(json.dumps(HISTORY).replace("get_weather", "weather.get"))
    client.chat.completions.create(model="claude", messages=dotted)
    assert [t["name"] for t in claude.bodies[-1]["tools"]] == ["history_tool"]
    client.chat.completions.create(model="gemini", messages=dotted)
    assert [d["name"] for d in gemini.bodies[-1]["tools"][0]["functionDeclarations"]] == ["weather.get"]  # Gemini takes dots


def test_whitespace_stop_sequences_are_not_sent_to_claude(upstreams):
    client, claude, _ = upstreams
    ask = [{"role": "user", "content": "Capital of France? One line."}]
    assert client.chat.completions.create(model="claude", messages=ask, stop=["\n", "END"]).choices[0].message.content == "from claude"
    assert claude.bodies[-1]["stop_sequences"] == ["END"]
    client.chat.completions.create(model="claude", messages=ask, stop="\n")
    assert "stop_sequences" not in claude.bodies[-1]


def test_a_prompt_of_system_turns_alone_is_sent_as_the_user_turn(upstreams):
    client, claude, gemini = upstreams
    ask = [{"role": "system", "content": "Write a haiku"}, {"role": "developer", "content": "about autumn."}]
    assert client.chat.completions.create(model="claude", messages=ask).choices[0].message.content == "from claude"
    assert claude.bodies[-1]["messages"] == [{"role": "user", "content": [{"type": "text", "text": "Write a haiku\n\nabout autumn."}]}]
    assert "system" not in claude.bodies[-1]
    assert client.chat.completions.create(model="gemini", messages=ask).choices[0].message.content == "from gemini"
    assert gemini.bodies[-1]["contents"] == [{"role": "user", "parts": [{"text": "Write a haiku\n\nabout autumn."}]}]
    assert "systemInstruction" not in gemini.bodies[-1]


def test_a_conversation_the_assistant_opens_gets_a_user_turn_first(upstreams):
    client, claude, gemini = upstreams
    ask = [{"role": "system", "content": "You are a pirate."}, {"role": "assistant", "content": "Ahoy! How can I help ye?"},
           {"role": "user", "content": "Where be the treasure?"}]
    assert client.chat.completions.create(model="claude", messages=ask).choices[0].message.content == "from claude"
    messages = claude.bodies[-1]["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "user"] and messages[0]["content"][0]["text"] == "."
    client.chat.completions.create(model="gemini", messages=ask)
    contents = gemini.bodies[-1]["contents"]
    assert [c["role"] for c in contents] == ["user", "model", "user"] and contents[0]["parts"] == [{"text": "."}]


def test_a_blank_last_user_turn_is_sent_not_dropped(upstreams):
    # Dropped, the conversation ended on the assistant's turn: a prefill Claude continues ("Autumn
    # moon rises ...") instead of answering; alone, no message at all, which both refuse.
    client, claude, gemini = upstreams
    haiku = [{"role": "user", "content": "Write a haiku"}, {"role": "assistant", "content": "Autumn moon rises"},
             {"role": "user", "content": " "}]
    for ask in (haiku, [{"role": "user", "content": " "}], [*haiku, {"role": "system", "content": "Be brief."}]):
        client.chat.completions.create(model="claude", messages=ask)
        last = claude.bodies[-1]["messages"][-1]
        assert last["role"] == "user" and [(b["type"], b["text"]) for b in last["content"]] == [("text", ".")]
        client.chat.completions.create(model="gemini", messages=ask)
        assert gemini.bodies[-1]["contents"][-1] == {"role": "user", "parts": [{"text": "."}]}
    # After a user turn that was kept, a blank one adds nothing.
    ask = [{"role": "user", "content": "Hi"}, {"role": "user", "content": " "}]
    client.chat.completions.create(model="claude", messages=ask)
    assert [b["text"] for b in claude.bodies[-1]["messages"][-1]["content"]] == ["Hi"]
    client.chat.completions.create(model="gemini", messages=ask)
    assert gemini.bodies[-1]["contents"][-1]["parts"] == [{"text": "Hi"}]


def image_question(url: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": [{"type": "text", "text": "What is this?"}, {"type": "image_url", "image_url": {"url": url}}]}]


def test_image_jpg_is_sent_as_image_jpeg(upstreams):
    client, claude, gemini = upstreams
    ask = image_question("data:image/jpg;base64,/9j/4AAQSkZJRgABAQ==")
    assert client.chat.completions.create(model="claude", messages=ask).choices[0].message.content == "from claude"
    assert claude.bodies[-1]["messages"][0]["content"][1]["source"]["media_type"] == "image/jpeg"
    client.chat.completions.create(model="gemini", messages=ask)
    assert gemini.bodies[-1]["contents"][0]["parts"][1]["inlineData"]["mimeType"] == "image/jpeg"


def test_an_image_type_claude_cannot_read_is_refused_before_the_call_or_routed_elsewhere(upstreams):
    client, claude, gemini = upstreams
    ask = image_question("data:image/bmp;base64,Qk0eAAAAAAAAABoAAAAMAAAAAQABAAEAGAAAAP8A")
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="claude", messages=ask)
    error = info.value.body
    assert (error["code"], error["param"]) == ("unsupported_value", "messages[0].content[1]") and "image/bmp" in error["message"]
    answer = client.chat.completions.create(model="auto", messages=ask)
    assert answer.model == "gemini" and answer.choices[0].message.content == "from gemini"
    assert claude.bodies == []  # never sent


@pytest.mark.parametrize("url, mime_type", [
    ("https://example.com/chart.png", "image/png"), ("https://example.com/a.webp", "image/webp"),
    ("https://example.com/anim.gif", "image/gif"), ("https://example.com/Photo.JPEG?size=large", "image/jpeg"),
    ("https://example.com/render?id=7", "image/jpeg"),
])
def test_gemini_is_told_an_https_images_type_by_its_extension(upstreams, url, mime_type):
    client, _, gemini = upstreams
    client.chat.completions.create(model="gemini", messages=image_question(url))
    assert gemini.bodies[-1]["contents"][0]["parts"][1] == {"fileData": {"mimeType": mime_type, "fileUri": url}}


def test_a_non_streamed_answer_may_take_longer_than_timeout_s(upstreams):
    client, claude, gemini = upstreams
    claude.delay_s = 2.0  # twice timeout_s, which is the wait for a stream's first byte
    answer = client.chat.completions.create(model="claude", messages=[{"role": "user", "content": "Write an essay."}])
    assert answer.choices[0].message.content == "from claude" and len(claude.bodies) == 1 and gemini.bodies == []
    # answer_timeout_s still bounds it: past it the call fails over (here to the model's fallback).
    answer = client.chat.completions.create(model="claude-capped", messages=[{"role": "user", "content": "Write an essay."}])
    assert answer.model == "gemini" and len(claude.bodies) == 2


def test_answer_timeout_s_defaults_generously_and_is_never_below_timeout_s():
    provider = 'models: [{name: m, provider: p, price: {input_per_1m: 1, output_per_1m: 1}}]\nproviders:\n  p: {kind: openai, base_url: "http://127.0.0.1:9/v1"%s}\n'
    assert parse_config(provider % "", "t").providers["p"].answer_wait_s == 600
    assert parse_config(provider % ", timeout_s: 900", "t").providers["p"].answer_wait_s == 900
    assert parse_config(provider % ", answer_timeout_s: 1200", "t").providers["p"].answer_wait_s == 1200
    with pytest.raises(ConfigError, match=r"providers\.p: answer_timeout_s \(5\) is shorter than timeout_s \(10\)"):
        parse_config(provider % ", timeout_s: 10, answer_timeout_s: 5", "t")
