"""Failover, retries, stream holding, circuit breaker and RPM awareness, through the real
`openai` SDK against a running gateway whose upstream is a scriptable fake HTTP server."""
from __future__ import annotations

import asyncio
import time

import httpx
import openai
import pytest

from tests.fake_upstream import (
    Reply, context_length, cut_stream, error, hang, invalid_json, malformed_chunk, not_found, ok, rate_limit, server_error,
)
from tests.gateway_harness import MSG, ask


def attempts(row) -> list[tuple[str, str]]:
    return [(a["model"], a.get("kind") or a.get("reason") or a["status"]) for a in row["attempts"]]


def test_retry_after_within_limit_is_honoured_on_the_same_model(start_gateway, upstream):
    gw = start_gateway()
    upstream.script("m1", rate_limit(retry_after=0.3))
    t0 = time.monotonic()
    answer, headers = ask(gw)
    assert time.monotonic() - t0 >= 0.3  # waited as told instead of hammering the upstream
    assert answer.model == "m1" and headers["x-router-model"] == "m1"
    assert len(upstream.requests_for("m1")) == 2 and not upstream.requests_for("m2")
    row = gw.outcome(headers["x-request-id"])
    assert attempts(row) == [("m1", "rate_limit"), ("m1", "ok")]
    assert row["attempts"][0]["retry_after_s"] == 0.3
    assert headers["x-router-reason"].startswith("m1: retried after m1 (rate_limit); routed: ")  # no fallback: m1 answered


def test_long_retry_after_fails_over_and_steers_the_next_decision_away(start_gateway, upstream):
    gw = start_gateway()
    upstream.script("m1", rate_limit(retry_after=30))
    answer, headers = ask(gw)
    assert answer.model == "m2"
    assert "fallback after m1 (rate_limit); routed: " in headers["x-router-reason"]
    assert attempts(gw.outcome(headers["x-request-id"])) == [("m1", "rate_limit"), ("m2", "ok")]
    # m1 said "not for 30 s": the router now excludes it instead of calling it again.
    answer, headers = ask(gw)
    row = gw.outcome(headers["x-request-id"])
    assert row["chosen_model"] == "m2" and answer.model == "m2"
    m1 = next(c for c in row["candidates"] if c["model"] == "m1")
    assert m1["excluded"].startswith("unhealthy")
    assert len(upstream.requests_for("m1")) == 1


def test_server_errors_retry_then_fail_over(start_gateway, upstream):
    gw = start_gateway()
    upstream.script("m1", server_error(500), server_error(503))
    answer, headers = ask(gw)
    assert answer.model == "m2"
    row = gw.outcome(headers["x-request-id"])
    assert attempts(row) == [("m1", "server"), ("m1", "server"), ("m2", "ok")]
    assert row["fallback_chain"] == ["m1", "m2"] and row["status"] == "ok"
    metrics = httpx.get(f"{gw.url}/metrics").text
    assert 'openclaw_fallbacks_total{from_model="m1",reason="server"} 1.0' in metrics


def test_hang_past_the_timeout_fails_over_without_retrying(start_gateway, upstream):
    gw = start_gateway(timeout_s=0.5)
    upstream.script("m1", hang(10))
    answer, headers = ask(gw)
    assert answer.model == "m2"
    assert attempts(gw.outcome(headers["x-request-id"])) == [("m1", "timeout"), ("m2", "ok")]


@pytest.mark.parametrize("reply,kind", [
    (invalid_json(), "malformed"),
    (not_found(), "not_found"),
    # OpenRouter and DeepSeek answer an unknown model id with a 400, not a 404
    (error(400, "openai/gpt-4-0314 is not a valid model ID", code="400"), "not_found"),
    (error(400, "Model Not Exist", type="invalid_request_error"), "not_found"),
    # out of credit: DeepSeek's and OpenRouter's 402, Gemini's prepaid credit (RESOURCE_EXHAUSTED with it)
    (error(402, "Insufficient Balance", type="unknown_error"), "auth"),
    (error(402, "Your prepay credit balance is depleted.", code="RESOURCE_EXHAUSTED"), "auth"),
])
def test_broken_or_missing_upstream_model_fails_over(start_gateway, upstream, reply, kind):
    gw = start_gateway()
    upstream.script("m1", reply, reply)
    answer, headers = ask(gw)
    assert answer.model == "m2"
    assert attempts(gw.outcome(headers["x-request-id"]))[0] == ("m1", kind)


def test_context_length_error_skips_models_with_no_bigger_window(start_gateway, upstream):
    gw = start_gateway(models=[
        {"name": "m1", "context_window": 8000}, {"name": "m2", "context_window": 8000}, {"name": "m3", "context_window": 32000},
    ])
    upstream.script("m1", context_length())
    answer, headers = ask(gw)
    assert answer.model == "m3"
    assert attempts(gw.outcome(headers["x-request-id"])) == [("m1", "context_length"), ("m2", "context_window"), ("m3", "ok")]
    assert not upstream.requests_for("m2")


def test_every_model_failing_is_a_503_and_logged(start_gateway, upstream):
    gw = start_gateway()
    for m in ("m1", "m2", "m3"):
        upstream.default(m, server_error())
    with pytest.raises(openai.InternalServerError) as exc:
        gw.client().chat.completions.create(model="auto", messages=MSG)
    assert exc.value.status_code == 503
    assert exc.value.body["code"] == "upstream_error"
    row = gw.outcome(exc.value.response.headers["x-request-id"])
    assert row["status"] == "error" and row["fallback_chain"] == ["m1", "m2", "m3"]


def test_a_client_error_reaches_the_client_with_the_upstreams_code_and_param(start_gateway, upstream):
    gw = start_gateway()
    combination = {"message": "max_tokens and max_completion_tokens cannot both be set", "type": "invalid_request_error",
                   "param": "max_tokens", "code": "invalid_parameter_combination"}
    vllm = {"object": "error", "type": "BadRequestError", "message": "bad top_k", "param": "top_k", "code": "400"}
    upstream.script("m1", Reply("error", status=400, body={"error": combination}),
                    error(400, "temperature is out of range", type="invalid_request_error"),
                    Reply("error", status=400, body={"error": vllm}))
    with pytest.raises(openai.BadRequestError) as exc:
        gw.client().chat.completions.create(model="m1", messages=MSG)
    assert (exc.value.code, exc.value.param, exc.value.type) == ("invalid_parameter_combination", "max_tokens", "invalid_request_error")
    assert combination["message"] in exc.value.message
    # An upstream error without a code of its own keeps the router's.
    with pytest.raises(openai.BadRequestError) as exc:
        gw.client().chat.completions.create(model="m1", messages=MSG)
    assert (exc.value.code, exc.value.param) == ("upstream_bad_request", None)
    # A server's own error type and a status written as a code (vLLM, proxies) stay OpenAI's.
    with pytest.raises(openai.BadRequestError) as exc:
        gw.client().chat.completions.create(model="m1", messages=MSG)
    assert (exc.value.code, exc.value.param, exc.value.type) == ("upstream_bad_request", "top_k", "invalid_request_error")
    assert not upstream.requests_for("m2") and not upstream.requests_for("m3")  # the client's fault: no failover


def test_named_model_is_honoured_without_failover(start_gateway, upstream):
    gw = start_gateway()
    upstream.script("m2", rate_limit(retry_after=30))
    with pytest.raises(openai.RateLimitError) as exc:
        gw.client().chat.completions.create(model="m2", messages=MSG)
    assert exc.value.response.headers["retry-after"] == "30"
    assert not upstream.requests_for("m1") and not upstream.requests_for("m3")
    # The next request does not call m2 (it is blocked): still a 429, with the time that is left.
    with pytest.raises(openai.RateLimitError) as again:
        gw.client().chat.completions.create(model="m2", messages=MSG)
    assert 28 <= int(again.value.response.headers["retry-after"]) <= 30 and len(upstream.requests_for("m2")) == 1


def test_a_named_model_its_upstream_does_not_know_is_a_404_model_not_found(start_gateway, upstream):
    # OpenClaw fails over at once on a 404 model_not_found; a 502 is retried by the SDKs.
    gw = start_gateway()  # breaker_failures 3
    upstream.default("m1", not_found())
    sdk = openai.OpenAI(base_url=gw.base_url, api_key="test-key", max_retries=2)  # the SDK's default
    for n in range(5):  # the third 404 opens m1's circuit: the later requests never reach it
        with pytest.raises(openai.NotFoundError) as exc:
            sdk.chat.completions.create(model="m1", messages=MSG)
        assert exc.value.body["code"] == "model_not_found" and exc.value.body["param"] == "model"
        assert len(upstream.requests_for("m1")) == min(n + 1, 3)  # the SDK did not retry it


WITH_FALLBACKS = [
    {"name": "m1", "context_window": 100000, "capabilities": ["tools", "json"], "fallbacks": ["m3", "m2"], "tags": ["local"]},
    {"name": "m2", "context_window": 100000, "capabilities": ["tools", "json"]},
    {"name": "m3", "context_window": 100000, "capabilities": ["json"], "tags": ["local"]},
]


def test_named_model_fails_over_along_its_configured_fallbacks(start_gateway, upstream):
    gw = start_gateway(models=WITH_FALLBACKS)
    upstream.script("m1", rate_limit(retry_after=30))
    upstream.script("m3", server_error(500), server_error(500))
    answer, headers = ask(gw, model="m1")
    assert answer.model == "m2" and headers["x-router-model"] == "m2"
    row = gw.outcome(headers["x-request-id"])
    assert row["profile"] is None and row["requested_model"] == "m1"
    assert attempts(row) == [("m1", "rate_limit"), ("m3", "server"), ("m3", "server"), ("m2", "ok")]


def test_named_model_fallbacks_respect_the_request_limits_and_needs(start_gateway, upstream):
    gw = start_gateway(models=WITH_FALLBACKS)
    upstream.default("m1", rate_limit(retry_after=30))
    upstream.script("m3", server_error(500), server_error(500))
    # local-only: when the local fallback fails too, m2 (not local) must never see the prompt;
    # the client hears that its model is rate limited (and for how long), not a generic 502.
    with pytest.raises(openai.APIStatusError) as exc:
        gw.client().chat.completions.create(model="m1", messages=MSG, extra_body={"router": {"local_only": True}})
    assert exc.value.status_code == 429 and exc.value.response.headers["retry-after"] == "30"
    assert len(upstream.requests_for("m3")) == 2 and not upstream.requests_for("m2")
    # tools: m3 lacks the capability, so m2 stands in.
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}]
    answer = gw.client().chat.completions.create(model="m1", messages=MSG, tools=tools)
    assert answer.model == "m2" and len(upstream.requests_for("m3")) == 2


def test_stream_failure_before_the_first_token_fails_over_invisibly(start_gateway, upstream):
    gw = start_gateway()
    upstream.script("m1", cut_stream(after_chunks=1), cut_stream(after_chunks=1))  # role chunk, then the line drops
    upstream.script("m2", malformed_chunk(after_chunks=1), malformed_chunk(after_chunks=1))
    stream = gw.client().chat.completions.create(model="auto", messages=MSG, stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == "Hello from m3."
    row = gw.outcomes()[-1]
    assert attempts(row) == [("m1", "connection")] * 2 + [("m2", "malformed")] * 2 + [("m3", "ok")]
    assert row["status"] == "ok" and row["answered_model"] == "m3" and row["ttft_s"] is not None


@pytest.mark.parametrize("reply", [cut_stream(after_chunks=3), malformed_chunk(after_chunks=3)])
def test_stream_failure_after_the_first_token_ends_with_an_error_event(start_gateway, upstream, reply):
    gw = start_gateway()
    upstream.script("m1", reply)
    received = []
    with pytest.raises(openai.APIError) as exc:
        for chunk in gw.client().chat.completions.create(model="auto", messages=MSG, stream=True):
            received.append(chunk.choices[0].delta.content or "")
    assert "".join(received) == "Hello from"  # the partial answer, then an explicit error, never a clean end
    assert "failed mid-answer" in exc.value.message
    # aiohttp's own words for a cut ("TransferEncodingError: 400, message='Not enough data...'") read as a refusal
    assert "400" not in exc.value.message
    row = gw.outcomes()[-1]
    assert row["status"] == "truncated" and row["answered_model"] == "m1"
    assert row["attempts"][-1]["status"] == "error"
    assert not upstream.requests_for("m2")


def test_a_line_dropped_after_the_last_chunk_is_a_whole_answer(start_gateway, upstream):
    gw = start_gateway()
    upstream.script("m1", cut_stream(after_chunks=5))  # role, three words, finish_reason: then no usage, no [DONE]
    chunks = list(gw.client().chat.completions.create(model="auto", messages=MSG, stream=True,
                                                      stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello from m1."
    # The usage chunk the client asked for was lost with the line: it gets the estimate instead.
    assert chunks[-1].usage is not None and not chunks[-1].choices and chunks[-1].usage.completion_tokens > 0
    row = gw.outcomes()[-1]
    assert row["status"] == "ok" and row["answered_model"] == "m1"
    assert row["output_tokens"] == chunks[-1].usage.completion_tokens


def wire_chunk(delta, finish=None, usage=None):
    choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]
    return None, {"id": "u1", "object": "chat.completion.chunk", "created": 1, "model": "up", "choices": choices,
                  **({"usage": usage} if usage else {})}


@pytest.mark.parametrize("calls", [False, True], ids=["text", "tool_call"])
@pytest.mark.parametrize("done", [True, False], ids=["done", "cut"])
def test_an_answer_ended_by_done_without_finish_reason_is_whole_a_cut_one_is_not(tmp_path, calls, done):
    # Some upstreams never set finish_reason: their [DONE] ends the answer, as the same answer
    # unstreamed is accepted; a line dropped before [DONE] still cuts it.
    from tests.fake_upstream import WireServer
    from tests.gateway_harness import DEFAULT_QUALITY, QualityRouter, Running, fake_config

    call = {"index": 0, "id": "c1", "type": "function", "function": {"name": "ls", "arguments": "{}"}}
    said = [{"tool_calls": [call]}] if calls else [{"content": "The whole"}, {"content": " answer."}]
    usage = {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}
    expected = "tool_calls" if calls else "stop"
    with WireServer() as srv:
        events = [wire_chunk({"role": "assistant", "content": ""}), *map(wire_chunk, said), wire_chunk(None, usage=usage)]
        srv.reply_sse(events + [(None, "[DONE]")] if done else events, cut=not done)
        answer = {"role": "assistant", "content": None if calls else "The whole answer.", **({"tool_calls": [call]} if calls else {})}
        srv.reply(json_body={"id": "u2", "object": "chat.completion", "created": 1, "model": "up", "usage": usage,
                             "choices": [{"index": 0, "message": answer, "finish_reason": None}]})
        gw = Running(fake_config(srv.url + "/v1", f"sqlite:///{tmp_path}/o.sqlite"), router=QualityRouter(DEFAULT_QUALITY))
        try:
            stream = gw.client().chat.completions.create(model="m1", messages=MSG, stream=True, stream_options={"include_usage": True})
            chunks = []
            if done:
                chunks = list(stream)
            else:
                with pytest.raises(openai.APIError) as cut:
                    chunks.extend(stream)
                assert "failed mid-answer" in cut.value.message
            row = gw.outcomes()[-1]
            unstreamed = gw.client().chat.completions.create(model="m1", messages=MSG)
            assert unstreamed.choices[0].finish_reason == expected and gw.outcomes(2)[-1]["status"] == "ok"
        finally:
            gw.stop()
    if not done:
        assert row["status"] == "truncated"
        return
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [expected] and "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == (
        "" if calls else "The whole answer.")
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == 8  # after the finish, as OpenAI orders them
    assert row["status"] == "ok" and row["error"] is None and row["output_tokens"] == 3


def test_circuit_opens_after_repeated_failures_then_probes(start_gateway, upstream):
    # breaker_failures=3; a cooldown the asks after the circuit opens fit in, also on a busy machine
    gw = start_gateway(cooldown_s=2.0)
    upstream.default("m1", server_error())
    ask(gw)  # m1 fails twice (retry), m2 answers
    ask(gw)  # third consecutive failure opens m1's circuit
    health = httpx.get(f"{gw.url}/healthz").json()
    assert health["models"]["m1"]["circuit"] == "open" and not health["models"]["m1"]["healthy"]
    calls = len(upstream.requests_for("m1"))
    answer, _ = ask(gw)
    assert answer.model == "m2" and len(upstream.requests_for("m1")) == calls  # open: not even tried
    time.sleep(2.1)
    upstream.reset()  # m1 recovered
    answer, _ = ask(gw)
    assert answer.model == "m1"  # the half-open probe went through and closed the circuit
    assert httpx.get(f"{gw.url}/healthz").json()["models"]["m1"]["circuit"] == "closed"


async def test_concurrent_async_clients_never_see_upstream_errors(start_gateway, upstream):
    gw = start_gateway()
    upstream.script("m1", *[server_error() for _ in range(4)], rate_limit(retry_after=30))
    client = gw.async_client()

    async def one(i: int) -> str:
        if i % 2:
            stream = await client.chat.completions.create(model="auto", messages=MSG, stream=True)
            return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        answer = await client.chat.completions.create(model="auto", messages=MSG)
        return answer.choices[0].message.content

    answers = await asyncio.gather(*(one(i) for i in range(24)))
    assert all(a.startswith("Hello from m") for a in answers)
    assert len(gw.outcomes(at_least=24)) == 24


def test_client_leaving_mid_stream_closes_the_upstream_and_is_logged(start_gateway, upstream):
    gw = start_gateway()
    upstream.script("m1", ok(" ".join(f"w{i}" for i in range(40)), chunk_delay_s=0.1))
    with httpx.Client(timeout=10) as client:
        with client.stream("POST", f"{gw.base_url}/chat/completions",
                           json={"model": "auto", "messages": MSG, "stream": True}) as response:
            request_id = response.headers["x-request-id"]
            lines = response.iter_lines()
            assert next(line for line in lines if '"content":"w0"' in line)
    row = gw.outcome(request_id)
    assert row["status"] == "client_closed" and row["answered_model"] == "m1"
    assert row["output_tokens"] is not None and row["cost_usd"] > 0  # billed for what was generated
    assert httpx.get(f"{gw.url}/healthz").json()["models"]["m1"]["in_flight"] == 0


def test_auto_with_every_model_waiting_out_its_retry_after_is_a_429(start_gateway, upstream):
    # a 429 with the time left (OpenClaw retries those), never a 503
    gw = start_gateway()
    for m in ("m1", "m2", "m3"):
        upstream.default(m, rate_limit(retry_after=20))
    with pytest.raises(openai.RateLimitError):
        gw.client().chat.completions.create(model="auto", messages=MSG)
    with pytest.raises(openai.RateLimitError) as routed:
        gw.client().chat.completions.create(model="auto", messages=MSG)
    assert 18 <= int(routed.value.response.headers["retry-after"]) <= 20


def test_a_short_retry_after_on_every_model_is_waited_out_not_a_429(start_gateway, upstream):
    # OpenAI's 429s often say "try again in 300ms": the gateway waits that out (within
    # max_retry_after_s, 1 s here) and goes round once more instead of sending OpenClaw a 429.
    gw = start_gateway()
    upstream.script("m1", rate_limit(retry_after=0.3), rate_limit(retry_after=0.3))
    answer, headers = ask(gw, model="m1")
    assert answer.model == "m1"
    assert attempts(gw.outcome(headers["x-request-id"])) == [("m1", "rate_limit"), ("m1", "rate_limit"), ("m1", "ok")]
    for m in ("m1", "m2", "m3"):
        upstream.script(m, rate_limit(retry_after=0.3), rate_limit(retry_after=0.3))
    answer, headers = ask(gw)
    assert answer.model == "m1"
    assert attempts(gw.outcome(headers["x-request-id"])) == [
        *[(m, "rate_limit") for m in ("m1", "m1", "m2", "m2", "m3", "m3")], ("m1", "ok")]


SIX = [{"name": f"m{i}", "context_window": 100000} for i in range(1, 7)]
SIX_QUALITY = {f"m{i}": 1.0 - i / 10 for i in range(1, 7)}


def test_rate_limited_models_do_not_use_up_the_failover_budget(start_gateway, upstream):
    # One provider's account-wide 429 hits the four best-ranked models: the request is answered by
    # the fifth (max_fallbacks is 3), not a 429 that OpenClaw would retry for two minutes.
    gw = start_gateway(models=SIX, quality=SIX_QUALITY)
    for m in ("m1", "m2", "m3", "m4"):
        upstream.default(m, rate_limit(retry_after=60))
    raw = gw.client().chat.completions.with_raw_response.create(
        model="auto", messages=MSG, stream=True, stream_options={"include_usage": True})
    text = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
    assert text == "Hello from m5." and raw.headers["x-router-model"] == "m5"
    assert attempts(gw.outcome(raw.headers["x-request-id"])) == [
        ("m1", "rate_limit"), ("m2", "rate_limit"), ("m3", "rate_limit"), ("m4", "rate_limit"), ("m5", "ok")]
    assert not upstream.requests_for("m6")


def test_failovers_after_errors_stop_at_max_fallbacks(start_gateway, upstream):
    gw = start_gateway(models=SIX, quality=SIX_QUALITY)
    for m in SIX_QUALITY:
        upstream.default(m, server_error(503))
    with pytest.raises(openai.APIStatusError) as failed:
        gw.client().chat.completions.create(model="auto", messages=MSG)
    assert failed.value.status_code == 503
    # the chosen model and max_fallbacks (3) more, each tried twice (max_retries 1); m5 and m6 never
    assert [m for m in SIX_QUALITY if upstream.requests_for(m)] == ["m1", "m2", "m3", "m4"]
    metrics = httpx.get(f"{gw.url}/metrics").text
    counted = {line.split('from_model="')[1].split('"')[0] for line in metrics.splitlines()
               if line.startswith("openclaw_fallbacks_total{")}
    assert counted == {"m1", "m2", "m3"}  # m4's failure led to no failover


def test_429s_without_retry_after_stay_429s_once_they_open_the_circuit(start_gateway, upstream):
    # The circuit they open is a rate limit too: OpenClaw retries a 429, but a 503 sends it elsewhere.
    gw = start_gateway()
    upstream.default("m1", rate_limit(retry_after=None))
    for _ in range(4):
        with pytest.raises(openai.RateLimitError) as limited:
            gw.client().chat.completions.create(model="m1", messages=MSG)
    assert int(limited.value.response.headers["retry-after"]) >= 1
    assert httpx.get(f"{gw.url}/healthz").json()["models"]["m1"]["circuit"] == "open"


def test_a_streamed_answer_without_upstream_usage_gets_and_bills_an_estimate(start_gateway, upstream):
    gw = start_gateway()
    call = {"name": "write_file", "arguments": {"path": "notes.txt", "text": "word " * 200}}
    upstream.default("m1", ok(tool_calls=[call], usage=False))
    stream = gw.client().chat.completions.create(model="m1", messages=MSG, stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    usage = [c.usage for c in chunks if c.usage]
    assert len(usage) == 1 and chunks[-1].usage is not None and not chunks[-1].choices
    assert usage[0].completion_tokens >= 250  # the tool call's ~1,000 characters of arguments
    assert {c.system_fingerprint for c in chunks} == {"fp_fake"}  # the usage chunk the gateway made too
    row = gw.outcomes(at_least=1)[-1]
    assert row["output_tokens"] == usage[0].completion_tokens and row["cost_usd"] > 0
    # Not streamed, the same answer gets the same estimate (the adapter's own counted one choice,
    # and the prompt from its JSON, where a CJK character reads as six).
    answer = gw.client().chat.completions.create(model="m1", messages=MSG)
    assert answer.usage.completion_tokens == usage[0].completion_tokens
    assert answer.usage.prompt_tokens == usage[0].prompt_tokens


def test_a_model_whose_own_output_limit_fits_its_window_answers_a_larger_requested_limit(start_gateway, upstream):
    # OpenClaw asks for 32,768 output tokens; m1 (16k window, 4,096 out) is sent 4,096 and fits.
    # The router's policy counted it so; the dispatcher skipped m1 on the raw 32,768, and the
    # dearest model of the chain answered every turn.
    models = [{"name": "m1", "context_window": 16384, "max_output_tokens": 4096},
              {"name": "m2", "context_window": 200000}, {"name": "m3", "context_window": 200000}]
    gw = start_gateway(models=models)
    answer = gw.client().chat.completions.with_raw_response.create(model="auto", messages=MSG, max_completion_tokens=32768)
    assert answer.parse().model == "m1" and "fallback" not in answer.headers["x-router-reason"]
    assert upstream.requests_for("m1")[-1].body["max_completion_tokens"] == 4096


def test_a_named_models_fallbacks_respect_the_requests_cost_cap(start_gateway, upstream):
    models = [{"name": "m1", "context_window": 100000, "fallbacks": ["m2", "m3"]},
              {"name": "m2", "context_window": 100000, "in": 1000.0, "out": 1000.0},
              {"name": "m3", "context_window": 100000}]
    gw = start_gateway(models=models)
    upstream.default("m1", server_error())
    answer = gw.client().chat.completions.create(model="m1", messages=MSG, extra_body={"router": {"max_cost_usd": 0.001}})
    assert answer.model == "m3" and not upstream.requests_for("m2")  # m2's prompt alone costs more than the cap


def test_concurrent_requests_never_overrun_a_models_rpm(start_gateway, upstream):
    import concurrent.futures

    models = [{"name": "m1", "context_window": 100000, "limits": {"rpm": 2}},
              {"name": "m2", "context_window": 100000}, {"name": "m3", "context_window": 100000}]
    gw = start_gateway(models=models)
    for m in ("m1", "m2", "m3"):
        upstream.default(m, ok(delay_s=0.3))
    with concurrent.futures.ThreadPoolExecutor(12) as pool:  # all decide before any is counted
        answers = list(pool.map(lambda _: gw.client().chat.completions.create(model="auto", messages=MSG), range(12)))
    assert len(upstream.requests_for("m1")) <= 2 and len(answers) == 12
    assert any(a.model != "m1" for a in answers)


def test_an_inline_file_is_billed_at_its_worst_case_when_the_upstream_reports_no_usage(start_gateway, upstream):
    # What governance reserved for the file is what the estimate bills; the text alone would
    # bill a few tokens for a 30 KB PDF.
    gw = start_gateway()
    upstream.default("m1", ok(text="A summary.", usage=False))
    pdf = {"type": "file", "file": {"filename": "r.pdf", "file_data": "data:application/pdf;base64," + "QUJD" * 10_000}}
    messages = [{"role": "user", "content": [{"type": "text", "text": "Summarise this."}, pdf]}]
    answer = gw.client().chat.completions.create(model="m1", messages=messages)
    assert answer.usage.prompt_tokens >= 30_000  # 30,000 decoded bytes at one token each
    streamed = gw.client().chat.completions.create(model="m1", messages=messages, stream=True,
                                                   stream_options={"include_usage": True})
    assert [c.usage.prompt_tokens for c in streamed if c.usage] == [answer.usage.prompt_tokens]
