"""What the client hears when upstreams refuse the gateway itself rather than fail: a key the
provider refuses (the operator's to fix: a 502 naming the variable, not a 503 to retry) and a
parameter a model does not take (the next model for a routed request, the upstream's 400 for a
named one). Real HTTP fake upstreams, the real `openai` SDK."""
from __future__ import annotations

import openai
import pytest

from tests.fake_upstream import error
from tests.gateway_harness import MSG, ask
from tests.test_gateway_failover import attempts


def test_a_key_the_upstream_refuses_is_named_and_not_a_retry_shortly(upstream, tmp_path, monkeypatch, caplog):
    # A wrong key is the operator's to fix: the client hears which variable holds it, also once its
    # refusals have opened the circuit (a 503 "retry shortly" had SDKs and OpenClaw retry for
    # minutes), and the SDK is told not to retry; the upstream's own words go to the log only.
    from router.config import parse_config
    from tests.gateway_harness import DEFAULT_QUALITY, QualityRouter, Running

    upstream.reset()
    config = parse_config(f"""
models:
  - {{name: m1, provider: keyed, price: {{input_per_1m: 1, output_per_1m: 2}}, context_window: 100000}}
  - {{name: m2, provider: other, price: {{input_per_1m: 1, output_per_1m: 2}}, context_window: 100000}}
providers:
  keyed: {{kind: openai, base_url: "{upstream.base_url}", api_key_env: OPENCLAW_TEST_FAKE_KEY, timeout_s: 1.0}}
  # Its own entry: a key refused for m1 leaves out every model of m1's entry (one key circuit for a provider).
  other: {{kind: openai, base_url: "{upstream.base_url}", api_key_env: OPENCLAW_TEST_FAKE_KEY, timeout_s: 1.0}}
reliability: {{max_retries: 0, breaker_failures: 3, breaker_cooldown_s: 60}}
server: {{db: "sqlite:///{tmp_path}/o.sqlite"}}
cache: {{enabled: false}}
""", "test-config")
    gw = Running(config, router=QualityRouter(DEFAULT_QUALITY))
    refusal = error(401, "Incorrect API key provided: sk-te****", code="invalid_api_key", type="invalid_request_error")

    def refused(model):
        with pytest.raises(openai.APIStatusError) as exc:
            gw.client().chat.completions.create(model=model, messages=MSG)
        assert exc.value.status_code == 502 and exc.value.response.headers["x-should-retry"] == "false"
        assert exc.value.body["code"] == "upstream_auth_failed" and "OPENCLAW_TEST_FAKE_KEY" in exc.value.body["message"]
        assert "sk-te" not in exc.value.body["message"]
        return exc.value.body["message"]

    try:
        # A secret mounted from a file ends in a line break, which no header may carry: dropped.
        monkeypatch.setenv("OPENCLAW_TEST_FAKE_KEY", "sk-test\r\n")
        assert gw.client().chat.completions.create(model="m1", messages=MSG).model == "m1"
        assert upstream.requests_for("m1")[-1].headers["authorization"] == "Bearer sk-test"
        monkeypatch.setenv("OPENCLAW_TEST_FAKE_KEY", "sk-\ntest")  # a break inside the key: no call, no 500
        with caplog.at_level("WARNING", logger="service.dispatch"):
            refused("m2")
        assert "OPENCLAW_TEST_FAKE_KEY holds a line break" in caplog.text and not upstream.requests_for("m2")
        monkeypatch.setenv("OPENCLAW_TEST_FAKE_KEY", "sk-test")
        caplog.clear()
        upstream.default("m1", refusal)
        with caplog.at_level("WARNING", logger="service.dispatch"):
            for _ in range(5):  # the third refusal opens m1's circuit: the later ones are answered without a call
                assert refused("m1").startswith("model m1 cannot be called")
        assert len(upstream.requests_for("m1")) == 4
        assert "Incorrect API key provided" in caplog.text  # the operator reads why
        assert gw.client().chat.completions.create(model="auto", messages=MSG).model == "m2"  # auto routes around it
        upstream.default("m2", refusal)  # now every model's key is refused: auto says so too, before and after m2's circuit opens
        for _ in range(4):
            assert "m2" in refused("auto")
    finally:
        gw.stop()

def test_a_parameter_a_model_refuses_sends_a_routed_request_to_the_next_model(start_gateway, upstream):
    # OpenClaw sends reasoning_effort every turn; OpenAI's non-reasoning models refuse it with a 400.
    gw = start_gateway()
    upstream.default("m1", error(400, "Unrecognized request argument supplied: reasoning_effort", type="invalid_request_error"))
    for _ in range(4):
        answer, headers = ask(gw, reasoning_effort="high")
        assert answer.model == "m2"
        assert attempts(gw.outcome(headers["x-request-id"])) == [("m1", "unsupported"), ("m2", "ok")]
    # Not the model's fault: no circuit opened (breaker_failures 3), and no implicit reward of 0.
    assert gw.gateway.live.breaker.state("m1") == "closed"
    # Naming the model, the client gets the upstream's refusal, as OpenAI would answer it.
    with pytest.raises(openai.BadRequestError) as exc:
        gw.client().chat.completions.create(model="m1", messages=MSG, reasoning_effort="high")
    assert "Unrecognized request argument supplied: reasoning_effort" in exc.value.body["message"]
    # The upstream gave no code: the one a routed request's refusal gets, not a generic bad request.
    assert exc.value.body["code"] == "unsupported_parameter"
    # Every eligible model refusing it is a 400 too, not a 503 to retry.
    upstream.default("m2", error(400, "`reasoning_effort` is not supported with this model", type="invalid_request_error"))
    upstream.default("m3", error(400, "Unsupported parameter: 'reasoning_effort'", code="unsupported_parameter"))
    with pytest.raises(openai.BadRequestError) as exc:
        gw.client().chat.completions.create(model="auto", messages=MSG, reasoning_effort="high")
    assert exc.value.body["code"] == "unsupported_parameter" and "no eligible model takes the request" in exc.value.body["message"]


def test_a_model_busy_with_its_own_rate_window_after_a_refused_key_is_no_key_refusal(start_gateway, upstream):
    # Once refused, a key (rotated since) says nothing about a model that is merely at its rpm limit:
    # that is worth the retry a 503 invites, not the "operator must fix it" 502.
    gw = start_gateway(models=[{"name": "m1", "context_window": 100000, "limits": {"rpm": 1}}])
    upstream.script("m1", error(401, "Incorrect API key provided", code="invalid_api_key", type="invalid_request_error"))
    with pytest.raises(openai.APIStatusError) as first:
        gw.client().chat.completions.create(model="auto", messages=MSG)
    assert first.value.status_code == 502 and first.value.body["code"] == "upstream_auth_failed"
    with pytest.raises(openai.APIStatusError) as busy:
        gw.client().chat.completions.create(model="auto", messages=MSG)
    assert busy.value.status_code in (429, 503) and busy.value.body["code"] != "upstream_auth_failed"


def test_a_refused_key_beside_a_model_at_its_rate_limit_is_a_retry_not_a_key_refusal(start_gateway, upstream):
    # m1's key is refused, m2 only waits out its own rpm window: the same answer before and after
    # m1's refusals open its circuit (breaker_failures 3), and one a client may retry.
    gw = start_gateway(models=[{"name": "m1", "context_window": 100000},
                               {"name": "m2", "context_window": 100000, "limits": {"rpm": 1}}], quality={"m1": 0.9, "m2": 0.8})
    upstream.default("m1", error(401, "Incorrect API key provided", code="invalid_api_key", type="invalid_request_error"))
    assert gw.client().chat.completions.create(model="auto", messages=MSG).model == "m2"  # m2's one request this minute
    for _ in range(4):
        with pytest.raises(openai.APIStatusError) as exc:
            gw.client().chat.completions.create(model="auto", messages=MSG)
        assert exc.value.status_code in (429, 503) and exc.value.body["code"] != "upstream_auth_failed"
