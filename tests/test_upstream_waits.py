"""What an upstream's wait and a circuit's cooldown tell the client, through the real `openai` SDK
against a running gateway: a Retry-After that is no finite number, and the 503 of a model whose
circuit is open (its retry-after the rest of the cooldown, not 1)."""
from __future__ import annotations

import httpx
import openai
import pytest

from tests.fake_upstream import rate_limit, server_error
from tests.gateway_harness import MSG, ask
from tests.test_gateway_failover import attempts


def test_an_infinite_retry_after_is_no_wait_and_no_500(start_gateway, upstream):
    gw = start_gateway()
    upstream.script("m1", rate_limit(retry_after="inf"))
    answer, headers = ask(gw)
    assert answer.model == "m1"  # retried at once, as a 429 without a wait is
    assert attempts(gw.outcome(headers["x-request-id"])) == [("m1", "rate_limit"), ("m1", "ok")]
    answer, _ = ask(gw)
    assert answer.model == "m1"  # not held out for ever


def test_an_open_circuit_says_when_to_retry_named_and_routed(start_gateway, upstream):
    # "retry-after: 1" while the circuit stayed open for its whole cooldown: a client honouring it
    # spent its retries against the open circuit.
    gw = start_gateway(cooldown_s=20.0)
    upstream.default("m1", server_error())
    for _ in range(2):  # a retry each: the breaker's 3 failures
        with pytest.raises(openai.APIStatusError):
            ask(gw, model="m1")
    assert httpx.get(f"{gw.url}/healthz").json()["models"]["m1"]["circuit"] == "open"
    for body in ({"model": "m1"}, {"model": "auto", "router": {"allowed_models": ["m1"]}}):
        r = httpx.post(f"{gw.base_url}/chat/completions", json={**body, "messages": MSG})
        assert r.status_code == 503 and r.json()["error"]["code"] == "no_model_available", r.text
        assert 15 <= int(r.headers["retry-after"]) <= 20, (body, r.headers["retry-after"])
