"""The Anthropic and Gemini adapters behind the running gateway, driven by the real openai SDK: what a
client sends reaches the upstream translated, and what the client gets back carries what its next
turn needs (a Gemini call's thought signature), or a 400 that says what cannot be sent."""
from __future__ import annotations

import openai
import pytest

from router.config import parse_config
from tests.fake_upstream import WireServer
from tests.gateway_harness import QualityRouter, Running

SIGNATURE = "CiQB0e2Kb+SIG/nature+w=="
READ = {"type": "function", "function": {"name": "read", "description": "Read a file",
                                         "parameters": {"type": "object", "properties": {"path": {"type": "string"}}}}}
CLAUDE_OK = {"id": "msg_1", "type": "message", "role": "assistant", "content": [{"type": "text", "text": "ok"}],
             "stop_reason": "end_turn", "usage": {"input_tokens": 12, "cache_creation_input_tokens": 0,
                                                  "cache_read_input_tokens": 30000, "output_tokens": 2}}


def gemini_answer(parts, **candidate):
    return {"candidates": [{"content": {"role": "model", "parts": parts}, "finishReason": "STOP", **candidate}],
            "usageMetadata": {"promptTokenCount": 9, "candidatesTokenCount": 3, "totalTokenCount": 12}, "responseId": "resp-1"}


@pytest.fixture
def gateway(tmp_path):
    with WireServer() as claude, WireServer() as gemini:
        text = f"""
models:
  - {{name: claude, provider: anth, upstream: claude-sonnet-4-5, context_window: 200000, max_output_tokens: 8192,
     price: {{input_per_1m: 3, output_per_1m: 15, cached_input_per_1m: 0.3}}, capabilities: [tools, vision]}}
  - {{name: gemini-3, provider: goog, upstream: gemini-3-pro-preview, context_window: 1000000,
     price: {{input_per_1m: 2, output_per_1m: 12}}, capabilities: [tools, json, vision]}}
  - {{name: gemini-2.0, provider: goog, upstream: gemini-2.0-flash, context_window: 1000000,
     price: {{input_per_1m: 0.1, output_per_1m: 0.4}}, capabilities: [tools, json, vision]}}
providers:
  anth: {{kind: anthropic, base_url: "{claude.url}", timeout_s: 2}}
  goog: {{kind: gemini, base_url: "{gemini.url}/v1beta", timeout_s: 2}}
reliability: {{max_retries: 0, backoff_base_s: 0.01, backoff_max_s: 0.05, breaker_failures: 3, breaker_cooldown_s: 0.5}}
server: {{db: "sqlite:///{tmp_path}/o.sqlite", prompt_storage: full}}
cache: {{enabled: false}}
"""
        running = Running(parse_config(text, "providers-gateway"), router=QualityRouter({"claude": 0.9, "gemini-3": 0.8, "gemini-2.0": 0.7}))
        try:
            yield running, claude, gemini
        finally:
            running.stop()


@pytest.mark.parametrize("stream", [False, True])
def test_a_gemini_3_tool_loop_replays_its_thought_signature(gateway, stream):
    gw, _, gemini = gateway
    client = gw.client()
    ask = [{"role": "user", "content": "read a"}]
    signed = gemini_answer([{"functionCall": {"name": "read", "args": {"path": "a"}}, "thoughtSignature": SIGNATURE}])
    if stream:
        gemini.reply_sse([(None, signed)])
        chunks = list(client.chat.completions.create(model="gemini-3", messages=ask, tools=[READ], stream=True))
        (call,) = [tc for c in chunks if c.choices for tc in c.choices[0].delta.tool_calls or []]
        call_id, function = call.id, {"name": call.function.name, "arguments": call.function.arguments}
    else:
        gemini.reply(signed)
        (call,) = client.chat.completions.create(model="gemini-3", messages=ask, tools=[READ]).choices[0].message.tool_calls
        call_id, function = call.id, call.function.model_dump()
    assert call_id.endswith("__thought__CiQB0e2Kb-SIG_nature-w")
    history = [*ask, {"role": "assistant", "content": None, "tool_calls": [{"id": call_id, "type": "function", "function": function}]},
               {"role": "tool", "tool_call_id": call_id, "content": "A"}]
    gemini.reply(gemini_answer([{"text": "A it is."}]))
    answer = client.chat.completions.create(model="gemini-3", messages=history, tools=[READ])
    assert answer.choices[0].message.content == "A it is."
    assert gemini.requests[-1].body["contents"][1:] == [
        {"role": "model", "parts": [{"functionCall": {"name": "read", "args": {"path": "a"}}, "thoughtSignature": SIGNATURE}]},
        {"role": "user", "parts": [{"functionResponse": {"name": "read", "response": {"content": "A"}}}]},
    ]


def test_a_pdf_reaches_claude_as_a_document_and_audio_is_a_400_naming_the_part(gateway):
    gw, claude, _ = gateway
    client = gw.client()
    pdf = {"type": "file", "file": {"filename": "contract.pdf", "file_data": "data:application/pdf;base64,JVBERi0xLjQK"}}
    claude.reply(CLAUDE_OK)
    client.chat.completions.create(model="claude", messages=[{"role": "user", "content": [{"type": "text", "text": "Sum up."}, pdf]}])
    assert claude.requests[-1].body["messages"][0]["content"][1] == {
        "type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0xLjQK"},
        "title": "contract.pdf"}  # a one-shot request: no history breakpoint
    audio = {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}}
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="claude", messages=[{"role": "user", "content": [{"type": "text", "text": "Transcribe."}, audio]}])
    error = info.value.body
    assert (error["code"], error["param"]) == ("unsupported_value", "messages[0].content[1]") and "take no audio" in error["message"]
    assert len(claude.requests) == 1  # the audio never left the gateway


def test_claudes_prompt_cache_is_marked_and_its_reads_reach_the_client(gateway):
    gw, claude, _ = gateway
    client = gw.client()
    ask = [{"role": "system", "content": "You are OpenClaw."}, {"role": "user", "content": "hi"}]
    claude.reply(CLAUDE_OK)
    client.chat.completions.create(model="claude", tools=[READ], messages=ask)
    body = claude.requests[-1].body
    # One-shot: the shared prefix (tools, system prompt) is marked, the history is not.
    assert body["tools"][-1]["cache_control"] == body["system"][-1]["cache_control"] == {"type": "ephemeral"}
    assert body["messages"] == [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]
    claude.reply(CLAUDE_OK)
    answer = client.chat.completions.create(model="claude", tools=[READ], messages=[
        *ask, {"role": "assistant", "content": "ok"}, {"role": "user", "content": "and now?"}])
    # The next turn marks its history, and the block the previous turn ended on.
    assert claude.requests[-1].body["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "hi", "cache_control": {"type": "ephemeral"}}]},
        {"role": "assistant", "content": [{"type": "text", "text": "ok"}]},
        {"role": "user", "content": [{"type": "text", "text": "and now?", "cache_control": {"type": "ephemeral"}}]}]
    assert (answer.usage.prompt_tokens, answer.usage.prompt_tokens_details.cached_tokens) == (30012, 30000)


def test_logprobs_come_from_gemini_and_are_refused_by_claude(gateway):
    gw, claude, gemini = gateway
    client = gw.client()
    gemini.reply(gemini_answer([{"text": "Hi"}], logprobsResult={
        "chosenCandidates": [{"token": "Hi", "logProbability": -0.5}],
        "topCandidates": [{"candidates": [{"token": "Hi", "logProbability": -0.5}, {"token": "Yo", "logProbability": -2.0}]}]}))
    answer = client.chat.completions.create(model="gemini-2.0", messages=[{"role": "user", "content": "hi"}], logprobs=True, top_logprobs=2)
    (token,) = answer.choices[0].logprobs.content
    assert (token.token, token.logprob, [t.token for t in token.top_logprobs]) == ("Hi", -0.5, ["Hi", "Yo"])
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="claude", messages=[{"role": "user", "content": "hi"}], logprobs=True)
    assert (info.value.body["code"], info.value.body["param"]) == ("unsupported_parameter", "logprobs")
    assert claude.requests == []


@pytest.mark.parametrize("calls", [False, True], ids=["text", "tool_call"])
def test_a_claude_stream_ended_by_message_stop_without_stop_reason_is_a_whole_answer(gateway, calls):
    # message_stop is Anthropic's explicit end: the answer is finished, as the same answer unstreamed
    # without a stop_reason is, not cut mid-answer.
    gw, claude, _ = gateway
    block = {"type": "tool_use", "id": "toolu_1", "name": "read", "input": {}} if calls else {"type": "text", "text": ""}
    events = [("message_start", {"type": "message_start", "message": {"id": "msg_1", "usage": {"input_tokens": 12, "output_tokens": 1}}}),
              ("content_block_start", {"type": "content_block_start", "index": 0, "content_block": block}),
              ("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {
                  "type": "input_json_delta", "partial_json": '{"path": "a"}'} if calls else {"type": "text_delta", "text": "All of it."}}),
              ("content_block_stop", {"type": "content_block_stop", "index": 0}),
              ("message_delta", {"type": "message_delta", "delta": {}, "usage": {"output_tokens": 4}}),
              ("message_stop", {"type": "message_stop"})]
    claude.reply_sse(events)
    chunks = list(gw.client().chat.completions.create(model="claude", messages=[{"role": "user", "content": "hi"}], tools=[READ],
                                                      stream=True, stream_options={"include_usage": True}))
    expected = "tool_calls" if calls else "stop"
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == [expected]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == ("" if calls else "All of it.")
    assert chunks[-1].usage.completion_tokens == 4
    row = gw.outcomes()[-1]
    assert row["status"] == "ok" and row["error"] is None
    claude.reply({**CLAUDE_OK, "content": [block | ({"input": {"path": "a"}} if calls else {"text": "All of it."})], "stop_reason": None})
    unstreamed = gw.client().chat.completions.create(model="claude", messages=[{"role": "user", "content": "hi"}], tools=[READ])
    assert unstreamed.choices[0].finish_reason == expected


def test_an_answer_without_its_usage_is_billed_at_the_estimate_not_zero(gateway):
    gw, claude, gemini = gateway
    client = gw.client()
    question = [{"role": "user", "content": "Write two sentences about the sea."}]
    text = "The sea is wide and deep. Its waves never rest."
    gemini.reply({"candidates": [{"content": {"role": "model", "parts": [{"text": text}]}, "finishReason": "STOP"}]})
    claude.reply({**CLAUDE_OK, "content": [{"type": "text", "text": text}], "usage": {}})
    gemini.reply({"candidates": [{"content": {"role": "model", "parts": [{"text": text}]}, "finishReason": "STOP"}],
                  "usageMetadata": {"totalTokenCount": 40}})
    for model in ("gemini-2.0", "claude", "gemini-2.0"):
        usage = client.chat.completions.create(model=model, messages=question).usage
        assert usage.prompt_tokens > 0 and usage.completion_tokens > 0 and usage.cost > 0, (model, usage)
    assert usage.total_tokens == 40  # a total the upstream gave is kept; the estimate only splits it


def test_an_adapters_own_refusal_is_not_called_the_upstreams(gateway):
    gw, claude, _ = gateway
    with pytest.raises(openai.BadRequestError) as info:
        gw.client().chat.completions.create(model="claude", messages=[{"role": "user", "content": "hi"}], reasoning_effort="bogus")
    assert info.value.body["message"].startswith("claude cannot take the request: ") and claude.requests == []
    # An error the upstream answered in a 200 body is the upstream's, though it reports no status.
    claude.reply({"type": "error", "error": {"type": "invalid_request_error", "message": "messages.0: bad thing"}})
    with pytest.raises(openai.BadRequestError) as info:
        gw.client().chat.completions.create(model="claude", messages=[{"role": "user", "content": "hi"}])
    assert info.value.body["message"] == "the upstream rejected the request: messages.0: bad thing"
