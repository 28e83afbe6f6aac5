"""What "OpenAI-compatible" servers send that OpenAI does not, through a running gateway and the
real `openai` SDK: `"error": null` beside a good answer, usage with null counts, a usage chunk
whose `choices` is null, raw surrogates, engines' own stop reasons, FastAPI's `{"detail": ...}`
errors (each upstream a `WireServer` replying verbatim), and OpenRouter's keep-alive comments."""
from __future__ import annotations

import json
from contextlib import contextmanager
from typing import Any, Iterator

import httpx
import openai
import pytest

from tests.fake_upstream import WireServer, keep_alive
from tests.gateway_harness import DEFAULT_QUALITY, MSG, QualityRouter, Running, fake_config

ANSWER = {"id": "c1", "object": "chat.completion", "created": 1, "model": "m1",
          "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi there"}, "finish_reason": "stop"}]}
NULL_USAGE = {"prompt_tokens": None, "completion_tokens": None, "total_tokens": None}


def chunk(delta: dict[str, Any] | None, finish: str | None = None, **fields: Any) -> dict[str, Any]:
    choices = [{"index": 0, "delta": delta, "finish_reason": finish}] if delta is not None else fields.pop("choices")
    return {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m1", "choices": choices, **fields}


@contextmanager
def gateway(tmp_path, reply) -> Iterator[Running]:
    with WireServer() as srv:
        reply(srv)
        running = Running(fake_config(srv.url + "/v1", f"sqlite:///{tmp_path}/o.sqlite"), router=QualityRouter(DEFAULT_QUALITY))
        try:
            yield running
        finally:
            running.stop()


def test_an_answer_with_error_null_and_null_usage_is_answered_and_billed_at_the_estimate(tmp_path):
    # Was: failed over as an error (and a 503 with no other model); with the nulls, billed $0.
    with gateway(tmp_path, lambda srv: srv.reply(json_body={**ANSWER, "error": None, "usage": NULL_USAGE})) as gw:
        raw = gw.client().chat.completions.with_raw_response.create(model="m1", messages=MSG, extra_body={"fallbacks": []})
        answer, row = raw.parse(), gw.outcome(raw.headers["x-request-id"])
    assert answer.choices[0].message.content == "Hi there"
    assert answer.usage.prompt_tokens > 0 and answer.usage.completion_tokens > 0
    assert [(a["model"], a["status"]) for a in row["attempts"]] == [("m1", "ok")]
    assert row["cost_usd"] > 0 and row["extras"]["usage_estimated"] is True


@pytest.mark.parametrize("usage_chunk, billed_tokens", [
    # vLLM-like servers that put `choices: null` on the usage chunk: the reported usage was dropped
    (chunk(None, choices=None, usage={"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}), (11, 7)),
    # counts reported as null: the estimate bills it, as for a server that reports none
    (chunk(None, choices=[], usage=NULL_USAGE), None),
], ids=["choices-null", "null-counts"])
def test_a_streamed_answers_usage_in_other_shapes_is_read_or_estimated(tmp_path, usage_chunk, billed_tokens):
    events = [(None, chunk({"role": "assistant", "content": ""}, error=None)), (None, chunk({"content": "Hi there"}, error=None)),
              (None, chunk({}, "stop")), (None, usage_chunk), (None, "[DONE]")]
    with gateway(tmp_path, lambda srv: srv.reply_sse(events)) as gw:
        chunks = list(gw.client().chat.completions.create(model="m1", messages=MSG, stream=True,
                                                          stream_options={"include_usage": True}))
        row = gw.outcome(chunks[0].id)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hi there"
    usage = chunks[-1].usage
    assert [c for c in chunks if c.usage is not None] == [chunks[-1]]
    assert row["status"] == "ok" and row["cost_usd"] > 0
    if billed_tokens:
        assert (usage.prompt_tokens, usage.completion_tokens) == billed_tokens == (row["input_tokens"], row["output_tokens"])
    else:
        assert usage.prompt_tokens > 0 and usage.completion_tokens > 0 and row["extras"]["usage_estimated"] is True


def test_a_streamed_answers_raw_surrogates_read_as_the_same_answer_unstreamed(tmp_path):
    # Java's encoders write an emoji as two surrogates of three bytes each and a cut one as one:
    # unstreamed the pair became the emoji, streamed it was six U+FFFD.
    text = "a \ud83d\ude00 b \ud800 c"  # two surrogates, not one character: written out raw below
    events = [(None, json.dumps(chunk({"role": "assistant", "content": text}), ensure_ascii=False)),
              (None, chunk({}, "stop")), (None, "[DONE]")]
    with gateway(tmp_path, lambda srv: srv.reply_sse(events)) as gw:
        chunks = list(gw.client().chat.completions.create(model="m1", messages=MSG, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "a \U0001f600 b \ufffd c"


def test_a_usage_chunk_with_null_counts_is_replaced_not_passed_on_empty(tmp_path):
    # With its usage dropped, an upstream's usage-only chunk had reached clients as a chunk with
    # neither choices nor usage, before the gateway's own usage chunk.
    for choices in (None, []):
        events = [(None, chunk({"role": "assistant", "content": "Hi"})), (None, chunk({}, "stop")),
                  (None, chunk(None, choices=choices, usage=NULL_USAGE)), (None, "[DONE]")]
        with gateway(tmp_path / str(choices), lambda srv: srv.reply_sse(events)) as gw:
            lines = [json.loads(line[len("data: "):]) for line in httpx.post(
                f"{gw.url}/v1/chat/completions", json={"model": "m1", "messages": MSG, "stream": True,
                                                        "stream_options": {"include_usage": True}}).text.splitlines()
                     if line.startswith("data: {")]
        assert all(isinstance(e["choices"], list) for e in lines)
        assert [e for e in lines if not e["choices"]] == [lines[-1]] and lines[-1]["usage"]["completion_tokens"] > 0


def test_a_float_created_and_an_engines_own_stop_reason_reach_the_client_as_openai_writes_them(tmp_path):
    # Typed clients (Go's, Rust's SDKs) take an integer `created` and OpenAI's finish reasons only.
    streamed = [(None, chunk({"role": "assistant", "content": "Hi"}, created=1700000000.5)),
                (None, chunk({}, "eos", created=1700000000.5)), (None, "[DONE]")]

    def replies(srv):
        srv.reply(json_body={**ANSWER, "created": 1700000000.5, "choices": [{**ANSWER["choices"][0], "finish_reason": "max_tokens"}]})
        srv.reply_sse(streamed)

    with gateway(tmp_path, replies) as gw:
        raw = httpx.post(f"{gw.url}/v1/chat/completions", json={"model": "m1", "messages": MSG}).json()
        lines = [line for line in httpx.post(f"{gw.url}/v1/chat/completions", json={"model": "m1", "messages": MSG, "stream": True}
                                             ).text.splitlines() if line.startswith("data: {")]
    assert raw["created"] == 1700000000 and raw["choices"][0]["finish_reason"] == "length"
    events = [json.loads(line[len("data: "):]) for line in lines]
    assert {e["created"] for e in events} == {1700000000}
    assert [c["finish_reason"] for e in events for c in e["choices"] if c.get("finish_reason")] == ["stop"]


PARTIAL = {"prompt_tokens": None, "completion_tokens": 7, "completion_tokens_details": {"reasoning_tokens": 5}}


@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
def test_a_usage_with_one_count_keeps_it_and_estimates_the_other(tmp_path, stream):
    # A server that counts only its output, reasoning included: its 7 tokens (5 of them unseen
    # reasoning) had been replaced by an estimate of the visible text alone.
    events = [(None, chunk({"role": "assistant", "content": "Hi there"})), (None, chunk({}, "stop")),
              (None, chunk(None, choices=[], usage=PARTIAL)), (None, "[DONE]")]

    def reply(srv):
        srv.reply_sse(events) if stream else srv.reply(json_body={**ANSWER, "usage": PARTIAL})

    with gateway(tmp_path, reply) as gw:
        extra = {"stream": True, "stream_options": {"include_usage": True}} if stream else {}
        body = httpx.post(f"{gw.url}/v1/chat/completions", json={"model": "m1", "messages": MSG, **extra})
        if stream:
            usage = [json.loads(line[len("data: "):]) for line in body.text.splitlines() if line.startswith("data: {")][-1]["usage"]
        else:
            usage = body.json()["usage"]
        row = gw.outcome(body.headers["x-request-id"])
    assert usage["completion_tokens"] == 7 and usage["completion_tokens_details"] == {"reasoning_tokens": 5}
    assert usage["prompt_tokens"] > 0 and usage["total_tokens"] == usage["prompt_tokens"] + 7
    assert (row["input_tokens"], row["output_tokens"]) == (usage["prompt_tokens"], 7) and row["extras"]["usage_estimated"] is True


@pytest.mark.parametrize("reported, expected", [
    ({"total_tokens": 9000}, lambda est: (est, 9000 - est)),  # the estimate splits the upstream's total
    ({"total_tokens": 3}, lambda est: (3, 0)),  # a total below the input's estimate caps it
    ({"completion_tokens": 40, "total_tokens": 9000}, lambda est: (8960, 40)),  # the other count follows
], ids=["total-only", "small-total", "total-and-output"])
def test_a_usage_with_its_total_keeps_the_total(tmp_path, reported, expected):
    # Had been billed at the estimate's sum, the upstream's own total dropped.
    with gateway(tmp_path, lambda srv: srv.reply(json_body={**ANSWER, "usage": reported})) as gw:
        body = httpx.post(f"{gw.url}/v1/chat/completions", json={"model": "m1", "messages": MSG})
        usage, row = body.json()["usage"], gw.outcome(body.headers["x-request-id"])
    estimate = row["input_tokens_est"]
    assert (usage["prompt_tokens"], usage["completion_tokens"]) == expected(estimate) == (row["input_tokens"], row["output_tokens"])
    assert usage["total_tokens"] == reported["total_tokens"] and row["extras"]["usage_estimated"] is True


@pytest.mark.parametrize("detail, message", [
    ("temperature must be <= 2", "temperature must be <= 2"),
    ([{"loc": ["body", "temperature"], "msg": "Input should be less than or equal to 2", "type": "less_than_equal"}],
     "body.temperature: Input should be less than or equal to 2"),
], ids=["string", "validation-list"])
def test_a_fastapi_servers_detail_is_the_error_message(tmp_path, detail, message):
    with gateway(tmp_path, lambda srv: srv.reply(json_body={"detail": detail}, status=422 if isinstance(detail, list) else 400)) as gw:
        with pytest.raises(openai.BadRequestError) as info:
            gw.client().chat.completions.create(model="m1", messages=MSG, temperature=1.5)
    assert message in info.value.message and '{"detail"' not in info.value.message


class _Body:
    """An aiohttp response's `content` as `_lines` reads it: these blocks, in this order."""

    def __init__(self, blocks: list[bytes]):
        self.content = self
        self._blocks = blocks

    async def iter_any(self):
        for block in self._blocks:
            yield block


def test_sse_lines_are_the_same_however_the_body_is_cut_into_reads():
    import asyncio

    from service.providers.sse_read import iter_sse

    body = (b': OPENROUTER PROCESSING\r\n\r\nevent: delta\r\ndata: {"a": "\xc3\xa9t\xc3\xa9"}\r\n\r\n'
            b'data: ' + b"x" * 5000 + b'\ndata: second line\n\ndata: [DONE]')

    async def events(blocks):
        return [item async for item in iter_sse(_Body(blocks))]

    whole = asyncio.run(events([body]))
    assert whole == [("delta", '{"a": "été"}'), (None, "x" * 5000 + "\nsecond line"), (None, "[DONE]")]
    for size in (1, 2, 3, 7, 64, 1000):  # mid-line, between "\r" and "\n", inside a UTF-8 character
        assert asyncio.run(events([body[i:i + size] for i in range(0, len(body), size)])) == whole
    assert asyncio.run(events([b"", body[:40], b"", body[40:]])) == whole


def test_a_stream_kept_open_by_comments_alone_fails_over_at_answer_timeout(start_gateway, upstream):
    # OpenRouter sends ": OPENROUTER PROCESSING" while a provider is queued: each comment reset the
    # read timeout, so a stuck provider held the request until the client gave up, with no failover.
    gw = start_gateway(timeout_s=1.0)  # answer_timeout_s 1 s as well
    upstream.script("m1", keep_alive(seconds=5, every_s=0.1))
    chunks = list(gw.client().chat.completions.create(model="auto", messages=MSG, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello from m2."
    row = gw.outcome(chunks[0].id)
    assert [(a["model"], a.get("kind") or a["status"]) for a in row["attempts"]] == [("m1", "timeout"), ("m2", "ok")]
    assert "no output within 1 s (answer_timeout_s)" in row["attempts"][0]["message"]


def test_a_stream_kept_open_by_comments_alone_after_its_first_token_ends_at_timeout_s(start_gateway, upstream):
    # Once a token was sent the stream cannot fail over, but it must end: comments reset the
    # connection's read timeout, so one token and then comments alone held the answer open for as
    # long as the upstream kept sending them (here 5 s; then the whole answer came, as if on time).
    gw = start_gateway(timeout_s=1.0)
    upstream.script("m1", keep_alive(seconds=5, every_s=0.1, after_chunks=2))
    received = []
    with pytest.raises(openai.APIError, match="failed mid-answer") as exc:
        for chunk in gw.client().chat.completions.create(model="auto", messages=MSG, stream=True):
            received.append(chunk.choices[0].delta.content or "" if chunk.choices else "")
    assert "".join(received) == "Hello"
    assert "no chunk for 1 s (timeout_s)" in exc.value.message
    row = gw.outcomes()[-1]
    assert (row["status"], row["answered_model"]) == ("truncated", "m1")
    assert not upstream.requests_for("m2")


def test_an_answer_ended_with_finish_reason_error_is_a_failure_not_an_answer(tmp_path):
    # OpenRouter ends an answer so when its provider fails. Before any output it had been passed on
    # as an empty answer, logged ok (no retry, no failover); now it is retried like a 500.
    failed = [(None, chunk({"role": "assistant", "content": ""})), (None, chunk({}, "error")), (None, "[DONE]")]
    good = [(None, chunk({"role": "assistant", "content": ""})), (None, chunk({"content": "Hi there"})),
            (None, chunk({}, "stop")), (None, "[DONE]")]

    def replies(srv):
        srv.reply_sse(failed)
        srv.reply_sse(good)
        srv.reply(json_body={**ANSWER, "choices": [{"index": 0, "message": {"role": "assistant", "content": ""},
                                                    "finish_reason": "error"}]})
        srv.reply(json_body=ANSWER)
        srv.reply_sse([(None, chunk({"role": "assistant", "content": "Hi"})), (None, chunk({}, "error")), (None, "[DONE]")])

    with gateway(tmp_path, replies) as gw:
        chunks = list(gw.client().chat.completions.create(model="m1", messages=MSG, stream=True))
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hi there"
        assert [(a["model"], a.get("kind") or a["status"]) for a in gw.outcome(chunks[0].id)["attempts"]] == [
            ("m1", "server"), ("m1", "ok")]
        assert gw.client().chat.completions.create(model="m1", messages=MSG).choices[0].message.content == "Hi there"
        # After output the client holds part of an answer: it ends with an error, and is logged as cut short.
        received = []
        with pytest.raises(openai.APIError, match="failed mid-answer"):
            for c in gw.client().chat.completions.create(model="m1", messages=MSG, stream=True):
                received.append(c)
        assert gw.outcome(received[0].id)["status"] == "truncated"


def test_the_rest_of_a_stream_closed_before_it_is_read_closes_its_upstream():
    # A client gone before its answer began: `rest` is closed unread. As a generator, whose
    # `finally` an unstarted close skips, it had left the upstream's connection to the collector.
    import asyncio

    from service.stream_deadlines import Paced

    closed = []

    async def upstream():
        try:
            yield {"choices": []}
        finally:
            closed.append(True)

    async def scenario():
        stream = upstream()
        await anext(stream)  # the held first output, as dispatch reads it
        await Paced(stream, 1.0).aclose()

    asyncio.run(scenario())
    assert closed == [True]
