"""What a model cannot take, now or ever, in a running gateway through the real openai SDK: its own
RPM/TPM limit (`models[].limits`: the router steers away before the upstream answers 429; named or
routed, a request its window cannot take now is a 429 with the wait, one no window can ever take a
413), and an upstream's 413 (the body's bytes, not its tokens)."""
from __future__ import annotations

import httpx
import openai
import pytest

from tests.fake_upstream import error
from tests.gateway_harness import MSG, ask
from tests.test_gateway_failover import attempts


def test_rpm_limit_steers_away_before_any_429(start_gateway, upstream):
    gw = start_gateway(models=[{"name": "m1", "limits": {"rpm": 2}}, {"name": "m2"}, {"name": "m3"}])
    served = [ask(gw)[0].model for _ in range(4)]
    assert served == ["m1", "m1", "m2", "m2"]
    assert len(upstream.requests_for("m1")) == 2
    # Named, it is refused by its own window, never called: a 429 that says so and when to retry.
    with pytest.raises(openai.RateLimitError) as limited:
        ask(gw, model="m1")
    assert "configured rpm/tpm limit" in limited.value.message and len(upstream.requests_for("m1")) == 2
    assert 55 <= int(limited.value.response.headers["retry-after"]) <= 60
    # Routed with m1 the only model it may use: the same 429 and wait, not a 503 to retry every second for a minute.
    with pytest.raises(openai.RateLimitError) as routed:
        gw.client().chat.completions.create(model="auto", messages=MSG, extra_body={"router": {"allowed_models": ["m1"]}})
    assert 55 <= int(routed.value.response.headers["retry-after"]) <= 60 and len(upstream.requests_for("m1")) == 2


def test_a_request_over_a_models_tpm_limit_is_too_large_not_rate_limited(start_gateway, upstream):
    gw = start_gateway(models=[{"name": "m1", "limits": {"tpm": 5}}, {"name": "m2", "limits": {"tpm": 8}}, {"name": "m3"}])
    with pytest.raises(openai.APIStatusError) as refused:
        ask(gw, model="m1")  # ~12 input tokens: no minute's window ever takes it; a Retry-After would loop
    assert refused.value.status_code == 413 and refused.value.body["code"] == "request_too_large"
    # Routed, the same: it had been a 503 calling the idle models unhealthy, to retry in a second, forever.
    for allowed in (["m1"], ["m1", "m2"]):
        with pytest.raises(openai.APIStatusError) as routed:
            gw.client().chat.completions.create(model="auto", messages=MSG, extra_body={"router": {"allowed_models": allowed}})
        assert routed.value.status_code == 413 and routed.value.body["code"] == "request_too_large", allowed
    decision = httpx.post(f"{gw.url}/v1/route", json={"model": "auto", "messages": MSG}).json()
    assert decision["model"] == "m3" and {c["model"]: c["excluded"] for c in decision["candidates"]}["m1"].startswith("over its tpm limit")
    assert not upstream.requests_for("m1") and not upstream.requests_for("m2")


def test_an_upstreams_413_is_a_request_too_large_not_a_context_window(start_gateway, upstream):
    # Anthropic's 413 counts the body's bytes (32 MB): telling the client its prompt does not fit
    # the context window would send it to trim the conversation instead of the attachment.
    # Bytes, not tokens: no model is skipped for its window, as the next may take the body.
    gw = start_gateway(models=[
        {"name": "m1", "context_window": 200000}, {"name": "m2", "context_window": 8000}, {"name": "m3", "context_window": 8000},
    ])
    too_large = error(413, "Request exceeds the maximum allowed number of bytes.", type="request_too_large")
    upstream.script("m1", too_large)
    answer, headers = ask(gw)
    assert answer.model in ("m2", "m3") and attempts(gw.outcome(headers["x-request-id"]))[0] == ("m1", "unsupported")
    for m in ("m1", "m2", "m3"):
        upstream.default(m, too_large)
    with pytest.raises(openai.APIStatusError) as exc:
        gw.client().chat.completions.create(model="auto", messages=MSG)
    assert exc.value.status_code == 413 and exc.value.body["code"] == "request_too_large"
    assert "maximum allowed number of bytes" in exc.value.body["message"]
    with pytest.raises(openai.APIStatusError) as named:  # a named model's own limit: no fallback asked for
        gw.client().chat.completions.create(model="m2", messages=MSG)
    assert named.value.status_code == 413 and named.value.body["code"] == "request_too_large"
    # A 413 that says the prompt is longer than the window stays what it was: a context-length error.
    for m in ("m1", "m2", "m3"):
        upstream.default(m, error(413, "This model's maximum context length is 8192 tokens.", "context_length_exceeded"))
    for model in ("auto", "m2"):
        with pytest.raises(openai.BadRequestError) as window:
            gw.client().chat.completions.create(model=model, messages=MSG)
        assert window.value.body["code"] == "context_length_exceeded", model
