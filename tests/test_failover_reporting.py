"""How failures are reported, through the real `openai` SDK against a running gateway over a
scriptable fake upstream: the `x-router-reason` of a failover names each failed model once with
its failures counted, the all-failed error message too, and `/metrics` counts a request that failed under the model it named or
tried, not under "none"."""
from __future__ import annotations

import re

import httpx
import openai
import pytest

from tests.fake_upstream import not_found, rate_limit, server_error
from tests.gateway_harness import MSG, ask


def requests_counted(gw) -> dict[tuple[str, str, str], float]:
    text = httpx.get(f"{gw.url}/metrics").text
    found = re.findall(r'^openclaw_requests_total\{model="([^"]*)",profile="([^"]*)",status="([^"]*)"\} (\S+)$', text, re.M)
    return {(m, p, s): float(n) for m, p, s, n in found}


def test_a_failover_reason_names_each_failed_model_once_with_its_failures_counted(start_gateway, upstream):
    gw = start_gateway()
    upstream.script("m1", server_error(500), server_error(503))  # a retry on m1, then the next model
    upstream.script("m2", rate_limit(retry_after=30))
    answer, headers = ask(gw)
    assert answer.model == "m3"
    reason = headers["x-router-reason"]
    assert reason.startswith("m3: fallback after m1 (server x2), m2 (rate_limit); routed: m1"), reason
    assert gw.outcome(headers["x-request-id"])["reason"] == reason


def test_a_named_models_fallback_is_requested_not_routed(start_gateway, upstream):
    gw = start_gateway(models=[{"name": "m1", "fallbacks": ["m2"]}, {"name": "m2"}, {"name": "m3"}])
    upstream.script("m1", rate_limit(retry_after=30))
    answer, headers = ask(gw, model="m1")
    assert answer.model == "m2"
    assert headers["x-router-reason"] == "m2: fallback after m1 (rate_limit); requested: m1: requested by name"


def test_the_all_failed_error_names_each_model_once_with_its_failures_counted(start_gateway, upstream):
    gw = start_gateway()
    for m in ("m1", "m2", "m3"):
        upstream.default(m, server_error(500))  # max_retries 1: each model is called twice
    with pytest.raises(openai.InternalServerError) as exc:
        gw.client().chat.completions.create(model="auto", messages=MSG)
    assert exc.value.status_code == 503 and exc.value.body["code"] == "upstream_error"
    assert exc.value.body["message"] == "no model could answer (m1 (server x2), m2 (server x2), m3 (server x2))"


def test_a_failed_request_is_counted_under_the_model_it_named_or_tried(start_gateway, upstream):
    gw = start_gateway()
    upstream.script("m1", not_found(), not_found())
    with pytest.raises(openai.APIStatusError):
        gw.client().chat.completions.create(model="m1", messages=MSG)
    # Refused before any call, by the request's own cost cap: the model it named.
    with pytest.raises(openai.BadRequestError):
        gw.client().chat.completions.create(model="m2", messages=MSG, extra_headers={"x-router-max-cost-usd": "1e-12"})
    # A name outside the catalog is no label: each label is a time series.
    with pytest.raises(openai.NotFoundError):
        gw.client().chat.completions.create(model="made-up-model", messages=MSG)
    counted = requests_counted(gw)
    assert counted[("m1", "none", "error")] == 1.0
    assert counted[("m2", "none", "error")] == 1.0
    assert ("none", "none", "rejected") in counted and not any("made-up" in m for m, _, _ in counted)


def test_a_failed_request_is_never_counted_under_a_model_it_only_skipped():
    # A chain skips a model whose window or circuit closed after the decision (a race a running
    # gateway hardly shows on demand): the request had been counted under that model, never called.
    from router.types import RoutingRequest
    from service.pipeline import RequestContext
    from service.request_summary import metrics_model

    ctx = RequestContext(request_id="r", body={}, routing=RoutingRequest(text="hi"), headers={}, stream=False, profile="auto",
                         attempts=[{"model": "m1", "status": "error"}, {"model": "m2", "status": "skipped"}])
    assert metrics_model(ctx, {"m1", "m2"}) == "m1"
    ctx.attempts = [{"model": "m2", "status": "skipped"}]
    assert metrics_model(ctx, {"m1", "m2"}) == "none"
