"""A model whose provider's key variable is not set is left out by the router itself, as one whose
circuit is open, not chosen and then skipped by the dispatcher: the decision, `/v1/route`, the
outcome log, `x-router-reason` and the bandit's draw name only models that could be called. Through
the real app over HTTP, the real `openai` SDK and fake upstreams on 127.0.0.1."""
from __future__ import annotations

from contextlib import contextmanager

import httpx
import openai
import pytest

from router.config import parse_config
from tests.fake_upstream import FakeUpstream, error, rate_limit, server_error
from tests.gateway_harness import MSG, QualityRouter, Running, routed_questions

ALPHA_KEY, BETA_KEY = "OPENCLAW_TEST_ALPHA_KEY", "OPENCLAW_TEST_BETA_KEY"
KEYLESS = f"key_missing: {ALPHA_KEY} not set"


def _catalog(alpha_url: str, beta_url: str, db: str, extra: str = ""):
    """a1, a2 on provider alpha (the better ones), b1, b2 on beta."""
    models = "\n".join(f"  - {{name: {m}, provider: {p}, price: {{input_per_1m: 1, output_per_1m: 2}}, context_window: 100000}}"
                       for m, p in (("a1", "alpha"), ("a2", "alpha"), ("b1", "beta"), ("b2", "beta")))
    return parse_config(f"""
models:
{models}
providers:
  alpha: {{kind: openai, base_url: "{alpha_url}", api_key_env: {ALPHA_KEY}, timeout_s: 2.0}}
  beta: {{kind: openai, base_url: "{beta_url}", api_key_env: {BETA_KEY}, timeout_s: 2.0}}
reliability: {{max_retries: 0, max_fallbacks: 1, breaker_failures: 1, breaker_cooldown_s: 60, max_retry_after_s: 1.0}}
server: {{db: "{db}"}}
cache: {{enabled: false}}
{extra}""", "test-config")


@contextmanager
def _gateway(tmp_path, monkeypatch, quality, extra: str = ""):
    monkeypatch.delenv(ALPHA_KEY, raising=False)
    monkeypatch.setenv(BETA_KEY, "sk-beta")
    with FakeUpstream() as alpha, FakeUpstream() as beta:
        gw = Running(_catalog(alpha.base_url, beta.base_url, f"sqlite:///{tmp_path}/o.sqlite", extra),
                     router=QualityRouter(quality))
        try:
            yield gw, alpha, beta
        finally:
            gw.stop()


def _route(gw, **router):
    body = {"model": "auto", "messages": MSG, **({"router": router} if router else {})}
    return httpx.post(f"{gw.url}/v1/route", json=body)


def test_the_router_leaves_a_keyless_model_out_with_its_reason(tmp_path, monkeypatch):
    with _gateway(tmp_path, monkeypatch, {"a1": 0.9, "a2": 0.85, "b1": 0.6, "b2": 0.5}) as (gw, alpha, beta):
        shown = _route(gw).json()
        assert shown["model"] == "b1" and shown["fallbacks"] == ["b2"]
        excluded = {c["model"]: c["excluded"] for c in shown["candidates"]}
        assert excluded == {"a1": KEYLESS, "a2": KEYLESS, "b1": None, "b2": None}
        assert f"a1 ({KEYLESS})" in shown["reason"]

        raw = gw.client().chat.completions.with_raw_response.create(model="auto", messages=MSG)
        assert raw.parse().model == "b1"
        assert raw.headers["x-router-model"] == "b1" and raw.headers["x-router-reason"].startswith("b1:")
        row = gw.outcome(raw.headers["x-request-id"])
        # the decision logged is one that could be made: no skipped keyless model before the answer
        assert row["chosen_model"] == "b1" and row["propensity"] == 1.0
        assert [(a["model"], a["status"]) for a in row["attempts"]] == [("b1", "ok")]
        assert alpha.requests == []

        # set in the process: eligible on the very next decision, nothing remembered
        monkeypatch.setenv(ALPHA_KEY, "sk-alpha")
        shown = _route(gw).json()
        assert shown["model"] == "a1" and all(c["excluded"] is None for c in shown["candidates"])
        assert gw.client().chat.completions.create(model="auto", messages=MSG).model == "a1"
        # and unset again: left out again
        monkeypatch.setenv(ALPHA_KEY, "  ")
        assert _route(gw).json()["model"] == "b1"
        assert len(alpha.requests) == 1


def test_every_eligible_model_keyless_is_a_502_naming_the_variable(tmp_path, monkeypatch):
    with _gateway(tmp_path, monkeypatch, {"a1": 0.9, "a2": 0.85, "b1": 0.6, "b2": 0.5}) as (gw, alpha, beta):
        for request in ({"model": "a1"}, {"model": "auto", "extra_body": {"router": {"allowed_models": ["a1", "a2"]}}},
                        {"model": "auto", "stream": True, "extra_body": {"router": {"excluded_models": ["b1", "b2"]}}}):
            with pytest.raises(openai.APIStatusError) as failed:
                gw.client().chat.completions.create(messages=MSG, **request)
            assert failed.value.status_code == 502, request
            assert failed.value.body["code"] == "provider_key_missing", request
            assert f"{ALPHA_KEY} is not set" in failed.value.body["message"], request
            assert failed.value.response.headers["x-should-retry"] == "false"
        # /v1/route decides as chat does
        refused = _route(gw, allowed_models=["a1", "a2"])
        assert refused.status_code == 502 and refused.json()["error"]["code"] == "provider_key_missing"
        # a cap every model breaks, keyless or not, is the request's 400, which no key would change
        for cap in ({"max_cost_usd": 1e-12}, {"max_latency_s": 1e-6}):
            with pytest.raises(openai.BadRequestError) as capped:
                gw.client().chat.completions.create(model="auto", messages=MSG, extra_body={"router": cap})
            assert capped.value.body["code"] == "no_eligible_model", cap
            assert _route(gw, **cap).json()["error"]["code"] == "no_eligible_model"
        assert alpha.requests == [] and beta.requests == []


def test_keyless_beside_rate_limited_or_open_circuits_is_still_worth_a_retry(tmp_path, monkeypatch):
    with _gateway(tmp_path, monkeypatch, {"a1": 0.9, "a2": 0.85, "b1": 0.6, "b2": 0.5}) as (gw, alpha, beta):
        # b1 waits out a Retry-After, b2's circuit is open: only b1 and the keyless ones allowed -> 429
        beta.script("b1", rate_limit(retry_after=30))
        beta.script("b2", server_error())
        for named in ("b1", "b2"):
            with pytest.raises(openai.APIStatusError):
                gw.client().chat.completions.create(model=named, messages=MSG)
        limited = {"allowed_models": ["a1", "a2", "b1"]}
        with pytest.raises(openai.RateLimitError) as waiting:
            gw.client().chat.completions.create(model="auto", messages=MSG, extra_body={"router": limited})
        assert float(waiting.value.response.headers["retry-after"]) > 1
        # with b2's open circuit among them: a 503 that invites the retry, not the operator's 502
        with pytest.raises(openai.InternalServerError) as busy:
            gw.client().chat.completions.create(model="auto", messages=MSG)
        assert busy.value.status_code == 503 and busy.value.body["code"] == "no_model_available"
        shown = _route(gw, allowed_models=["a1", "b2"])
        assert shown.status_code == 503 and shown.json()["error"]["code"] == "no_model_available"
        assert alpha.requests == []


def test_the_bandit_never_draws_a_keyless_model(tmp_path, monkeypatch):
    """b1 and b2 near-equal, so the bandit explores between them; a1, the best, has no key."""
    bandit = ("learning: {bandit: {enabled: true, explore_share: 1.0, extra_cost_share: 10.0, "
              "total_cost_share: 10.0, budget_horizon: 250}}")
    with _gateway(tmp_path, monkeypatch, {"a1": 0.95, "a2": 0.1, "b1": 0.80, "b2": 0.795}, bandit) as (gw, alpha, beta):
        answered = routed_questions(gw, 30)
        assert {m for _, m in answered} == {"b1", "b2"}  # explored, and only among the callable
        for rid, model in answered:
            row = gw.outcome(rid)
            assert row["chosen_model"] == model and 0 < row["propensity"] < 1
            assert [a["model"] for a in row["attempts"]] == [model]
        assert alpha.requests == []


def test_keyless_beside_refused_keys_is_the_operators_502_naming_both(tmp_path, monkeypatch):
    with _gateway(tmp_path, monkeypatch, {"a1": 0.9, "a2": 0.85, "b1": 0.6, "b2": 0.5}) as (gw, alpha, beta):
        beta.default("b1", error(401, "Incorrect API key provided", code="invalid_api_key", type="invalid_request_error"))
        with pytest.raises(openai.APIStatusError):
            gw.client().chat.completions.create(model="b1", messages=MSG)  # opens beta's key circuit
        with pytest.raises(openai.APIStatusError) as failed:
            gw.client().chat.completions.create(model="auto", messages=MSG)
        assert failed.value.status_code == 502 and failed.value.body["code"] == "upstream_auth_failed"
        assert BETA_KEY in failed.value.body["message"] and f"{ALPHA_KEY} is not set" in failed.value.body["message"]
        assert alpha.requests == [] and len(beta.requests) == 1
