"""Two ways a new user's setup silently went wrong, through the real app over HTTP, the real
`openai` SDK and fake upstreams on 127.0.0.1: an `x-router-*` header spelt as the body's field
(or misspelt) limited nothing, and a provider's key variable that is not set was reported as a key
the provider refuses while `/healthz` said everything was fine."""
from __future__ import annotations

import httpx
import openai
import pytest

from router.config import parse_config
from tests.fake_upstream import FakeUpstream
from tests.gateway_harness import DEFAULT_QUALITY, MSG, QualityRouter, Running, fake_config


@pytest.fixture
def gw(upstream, tmp_path):
    """m1 (the best, and dear), m2 and m3 (cheap)."""
    upstream.reset()
    models = [{"name": "m1", "context_window": 100000, "in": 10.0, "out": 10.0},
              {"name": "m2", "context_window": 100000, "in": 0.01, "out": 0.01},
              {"name": "m3", "context_window": 100000, "in": 0.01, "out": 0.01}]
    running = Running(fake_config(upstream.base_url, f"sqlite:///{tmp_path}/o.sqlite", models=models),
                      router=QualityRouter(DEFAULT_QUALITY))
    yield running
    running.stop()


def test_the_body_field_names_work_as_header_names(gw):
    client = gw.client()
    assert client.chat.completions.create(model="auto", messages=MSG).model == "m1"
    for cap in ({"x-router-max-cost-usd": "0.0001"}, {"x-router-max-cost": "0.0001"}):
        assert client.chat.completions.create(model="auto", messages=MSG, extra_headers=cap).model == "m2", cap
    for cap in ({"x-router-max-latency-s": "0.0001"}, {"x-router-max-latency": "0.0001"}):
        with pytest.raises(openai.BadRequestError) as refused:
            client.chat.completions.create(model="auto", messages=MSG, extra_headers=cap)
        assert refused.value.body["code"] == "no_eligible_model", cap
    # every body field has its header: `_` as `-`
    decision = httpx.post(f"{gw.url}/v1/route", json={"model": "auto", "messages": MSG},
                          headers={"X-Router-Excluded-Models": "m1", "x-router-local-only": "false"}).json()
    assert decision["model"] == "m2"


def test_an_unknown_router_header_is_a_400_that_names_the_valid_ones(gw, upstream):
    client = gw.client()
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model="auto", messages=MSG, extra_headers={"x-router-max-cots": "0.001"})
    error = refused.value.body
    assert error["code"] == "unknown_parameter" and error["param"] == "x-router-max-cots"
    assert error["type"] == "invalid_request_error"
    assert "did you mean x-router-max-cost?" in error["message"]
    for valid in ("x-router-max-cost-usd", "x-router-max-latency-s", "x-router-allowed-models", "x-router-local-only"):
        assert valid in error["message"]
    streamed = httpx.post(f"{gw.url}/v1/chat/completions", json={"model": "auto", "messages": MSG, "stream": True},
                          headers={"x-router-maxcost-usd": "0.001"})
    assert streamed.status_code == 400 and streamed.json()["error"]["param"] == "x-router-maxcost-usd"
    # what the gateway sets on its answers is no request limit: sent back, it says so
    answered = client.chat.completions.with_raw_response.create(model="auto", messages=MSG)
    echoed = httpx.post(f"{gw.url}/v1/route", json={"model": "auto", "messages": MSG},
                        headers={"x-router-model": answered.headers["x-router-model"]})
    assert echoed.status_code == 400
    assert echoed.json()["error"]["param"] == "x-router-model" and "sets on its answers" in echoed.json()["error"]["message"]
    # two spellings of one limit: which one was meant is not for the gateway to guess
    both = httpx.post(f"{gw.url}/v1/route", json={"model": "auto", "messages": MSG},
                      headers={"x-router-max-cost": "1", "x-router-max-cost-usd": "0.001"})
    assert both.status_code == 400 and "set the same limit" in both.json()["error"]["message"]
    # an empty one is no limit (a template's unset variable), so the other spelling stands alone
    one = httpx.post(f"{gw.url}/v1/route", json={"model": "auto", "messages": MSG},
                     headers={"x-router-max-cost": "", "x-router-max-cost-usd": "0.5"})
    assert one.status_code == 200, one.text
    assert len(upstream.requests) == 1  # only the plain request was called


def _catalog(alpha_url: str, beta_url: str, db: str):
    models = "\n".join(f"  - {{name: {m}, provider: {p}, price: {{input_per_1m: 1, output_per_1m: 2}}, context_window: 100000}}"
                       for m, p in (("a1", "alpha"), ("a2", "alpha"), ("a3", "alpha"), ("b1", "beta")))
    return parse_config(f"""
models:
{models}
providers:
  alpha: {{kind: openai, base_url: "{alpha_url}", api_key_env: OPENCLAW_TEST_ALPHA_KEY, timeout_s: 2.0}}
  beta: {{kind: openai, base_url: "{beta_url}", api_key_env: OPENCLAW_TEST_BETA_KEY, timeout_s: 2.0}}
reliability: {{max_retries: 0, max_fallbacks: 1, breaker_failures: 1, breaker_cooldown_s: 60}}
server: {{db: "{db}"}}
cache: {{enabled: false}}
""", "test-config")


def test_a_key_variable_that_is_not_set_is_said_so_and_healthz_shows_it(tmp_path, monkeypatch, caplog):
    monkeypatch.delenv("OPENCLAW_TEST_ALPHA_KEY", raising=False)
    monkeypatch.setenv("OPENCLAW_TEST_BETA_KEY", "sk-beta")
    with FakeUpstream() as alpha, FakeUpstream() as beta:
        gw = Running(_catalog(alpha.base_url, beta.base_url, f"sqlite:///{tmp_path}/o.sqlite"),
                     router=QualityRouter({"a1": 0.9, "a2": 0.85, "a3": 0.8, "b1": 0.5}))
        try:
            health = httpx.get(f"{gw.url}/healthz").json()
            assert health["status"] == "degraded" and health["healthy_models"] == 1 and health["router_loaded"]
            assert health["models"]["a1"]["healthy"] is False and health["models"]["a1"]["reason"] == "OPENCLAW_TEST_ALPHA_KEY not set"
            assert health["models"]["b1"]["healthy"] is True and "reason" not in health["models"]["b1"]
            assert health["models"]["a1"]["circuit"] == "closed"
            # routed: straight past the three models without a key (they use up no failover) to b1
            with caplog.at_level("WARNING"):
                assert gw.client().chat.completions.create(model="auto", messages=MSG).model == "b1"
            assert "OPENCLAW_TEST_ALPHA_KEY is not set" in caplog.text
            for request in ({"model": "a1"}, {"model": "auto", "extra_body": {"router": {"allowed_models": ["a1", "a2"]}}},
                            {"model": "a2", "stream": True}):
                with pytest.raises(openai.APIStatusError) as failed:
                    gw.client().chat.completions.create(messages=MSG, **request)
                assert failed.value.status_code == 502, request
                error = failed.value.body
                assert error["code"] == "provider_key_missing", request
                assert "OPENCLAW_TEST_ALPHA_KEY is not set" in error["message"] and "refuses" not in error["message"]
                assert failed.value.response.headers["x-should-retry"] == "false"
            assert alpha.requests == []
            # nothing opened a circuit: once the variable is there, the models answer
            monkeypatch.setenv("OPENCLAW_TEST_ALPHA_KEY", "sk-alpha")
            assert gw.client().chat.completions.create(model="a1", messages=MSG).model == "a1"
            health = httpx.get(f"{gw.url}/healthz").json()
            assert health["status"] == "ok" and "reason" not in health["models"]["a1"]
        finally:
            gw.stop()
