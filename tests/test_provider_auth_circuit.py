"""A key its provider refuses is the provider entry's, not one model's: its refusals open one
circuit for every model of that entry, so routed traffic goes straight to another provider and a
request naming one of them is told the key is refused without a call; one answered probe brings
them all back. A 403 or a 402 stays the model's own. Two providers, each a real HTTP fake upstream on
127.0.0.1, the real `openai` SDK (and a real Redis for replicas)."""
from __future__ import annotations

import threading
import time

import httpx
import openai
import pytest

from router.config import parse_config
from tests.fake_upstream import FakeUpstream, error, ok
from tests.gateway_harness import MSG, QualityRouter, Running, ask
from tests.stream_gate import Gate
from tests.test_gateway_failover import attempts

ALPHA = ("a1", "a2", "a3")
QUALITY = {"a1": 0.9, "a2": 0.85, "a3": 0.8, "b1": 0.5}
REFUSAL = error(401, "Incorrect API key provided: sk-al****", code="invalid_api_key", type="invalid_request_error")


def two_providers(alpha_url: str, beta_url: str, db: str, failures: int, cooldown_s: float):
    models = "\n".join(f"  - {{name: {m}, provider: {p}, price: {{input_per_1m: 1, output_per_1m: 2}}, context_window: 100000}}"
                       for m, p in (("a1", "alpha"), ("a2", "alpha"), ("a3", "alpha"), ("b1", "beta")))
    return parse_config(f"""
models:
{models}
providers:
  alpha: {{kind: openai, base_url: "{alpha_url}", api_key_env: OPENCLAW_TEST_ALPHA_KEY, timeout_s: 2.0}}
  beta: {{kind: openai, base_url: "{beta_url}", api_key_env: OPENCLAW_TEST_BETA_KEY, timeout_s: 2.0}}
reliability: {{max_retries: 0, breaker_failures: {failures}, breaker_cooldown_s: {cooldown_s}}}
server: {{db: "{db}"}}
cache: {{enabled: false}}
""", "test-config")


@pytest.fixture
def providers(tmp_path, monkeypatch):
    """(start, alpha, beta): `start(failures, cooldown_s)` runs a gateway over the two upstreams."""
    monkeypatch.setenv("OPENCLAW_TEST_ALPHA_KEY", "sk-alpha")
    monkeypatch.setenv("OPENCLAW_TEST_BETA_KEY", "sk-beta")
    running: list[Running] = []
    with FakeUpstream() as alpha, FakeUpstream() as beta:
        def start(failures: int = 1, cooldown_s: float = 60.0, **kwargs) -> Running:
            config = two_providers(alpha.base_url, beta.base_url, f"sqlite:///{tmp_path}/o{len(running)}.sqlite",
                                   failures, cooldown_s)
            gw = Running(config, router=QualityRouter(QUALITY), **kwargs)
            running.append(gw)
            return gw

        try:
            yield start, alpha, beta
        finally:
            for gw in running:
                gw.stop()


def refuse_key(alpha: FakeUpstream) -> None:
    for m in ALPHA:
        alpha.default(m, REFUSAL)


def refused(gw: Running, model: str) -> str:
    with pytest.raises(openai.APIStatusError) as exc:
        gw.client().chat.completions.create(model=model, messages=MSG)
    assert exc.value.status_code == 502 and exc.value.response.headers["x-should-retry"] == "false"
    assert exc.value.body["code"] == "upstream_auth_failed" and "OPENCLAW_TEST_ALPHA_KEY" in exc.value.body["message"]
    return exc.value.body["message"]


def circuits(gw: Running) -> dict[str, str]:
    return {name: m["circuit"] for name, m in httpx.get(f"{gw.url}/healthz").json()["models"].items()}


def test_one_refused_key_leaves_out_every_model_of_its_provider_at_once(providers):
    start, alpha, beta = providers
    gw = start(failures=1)
    refuse_key(alpha)
    answer, headers = ask(gw)
    assert answer.model == "b1"
    # a2 and a3 hold the same key: skipped without a call, straight to the other provider.
    assert attempts(gw.outcome(headers["x-request-id"])) == [("a1", "auth"), ("a2", "circuit_open"),
                                                              ("a3", "circuit_open"), ("b1", "ok")]
    assert len(alpha.requests) == 1
    answer, headers = ask(gw)
    row = gw.outcome(headers["x-request-id"])
    assert answer.model == "b1" and attempts(row) == [("b1", "ok")]
    assert all(c["excluded"].startswith("unhealthy") for c in row["candidates"] if c["model"] in ALPHA)
    # Naming one of them: the 502 a model gets after its own refusals, without calling it.
    assert refused(gw, "a2").startswith("model a2 cannot be called")
    assert refused(gw, "a3").startswith("model a3 cannot be called")
    assert len(alpha.requests) == 1
    assert circuits(gw) == {"a1": "open", "a2": "open", "a3": "open", "b1": "closed"}
    assert 'openclaw_circuit_open{model="a3"} 1.0' in httpx.get(f"{gw.url}/metrics").text


def test_refusals_of_the_providers_models_count_together_and_are_logged_once(providers, caplog):
    start, alpha, beta = providers
    gw = start(failures=3)
    refuse_key(alpha)
    with caplog.at_level("WARNING", logger="service.dispatch"):
        for m in ALPHA:  # one refusal each: the third of the provider's opens its key circuit
            refused(gw, m)
        answer, headers = ask(gw)
    assert answer.model == "b1" and attempts(gw.outcome(headers["x-request-id"])) == [("b1", "ok")]
    assert len(alpha.requests) == 3
    # The operator reads the upstream's words once for the provider, and once that its models are left out.
    assert caplog.text.count("Incorrect API key provided") == 1 and "provider alpha (model a1)" in caplog.text
    assert caplog.text.count("provider alpha refuses the gateway's key: its models a1, a2, a3 are left out") == 1


def test_one_answered_probe_brings_back_every_model_of_the_provider(providers):
    start, alpha, beta = providers
    gw = start(failures=1, cooldown_s=0.3)
    refuse_key(alpha)
    assert ask(gw)[0].model == "b1"
    answer = Gate(timeout_s=10)  # the probe's answer waits until a sibling has been asked for
    for m in ALPHA:  # the operator fixes the key
        alpha.default(m, ok(gate=answer))
    time.sleep(0.35)
    probe: list = []
    worker = threading.Thread(target=lambda: probe.append(gw.client().chat.completions.create(model="a3", messages=MSG)))
    worker.start()
    deadline = time.monotonic() + 5
    while not alpha.requests_for("a3") and time.monotonic() < deadline:
        time.sleep(0.01)
    # One probe for the provider: a sibling is not called while it runs.
    refused(gw, "a1")
    assert [r.model for r in alpha.requests] == ["a1", "a3"]
    answer.open()
    worker.join(5)
    assert answer.timed_out is False
    assert probe and probe[0].model == "a3"
    # a1's own circuit, which its refusal opened, closed with the key's.
    assert circuits(gw) == {"a1": "closed", "a2": "closed", "a3": "closed", "b1": "closed"}
    assert ask(gw)[0].model == "a1"
    assert 'openclaw_circuit_open{model="a2"} 0.0' in httpx.get(f"{gw.url}/metrics").text


def test_a_streamed_probe_brings_the_provider_back_at_its_first_token(providers):
    start, alpha, beta = providers
    gw = start(failures=1, cooldown_s=0.3)
    refuse_key(alpha)
    assert ask(gw)[0].model == "b1"
    for m in ALPHA:
        alpha.default(m, ok("one two three", chunk_delay_s=0.5))
    time.sleep(0.35)
    stream = gw.client().chat.completions.create(model="a2", messages=MSG, stream=True)
    first = next(iter(stream))
    assert first.model == "a2"
    assert circuits(gw)["a1"] == "closed"  # before the stream ends
    stream.close()


def test_a_failed_probe_keeps_every_model_of_the_provider_left_out(providers):
    start, alpha, beta = providers
    # The calls after the failed probe must all fall inside its new cooldown, also on a busy machine.
    gw = start(failures=1, cooldown_s=3.0)
    refuse_key(alpha)
    assert ask(gw)[0].model == "b1"
    time.sleep(3.05)
    refused(gw, "a2")  # the probe: the key is still refused
    assert [r.model for r in alpha.requests] == ["a1", "a2"]
    refused(gw, "a1")
    refused(gw, "a3")
    answer, headers = ask(gw)
    assert answer.model == "b1" and attempts(gw.outcome(headers["x-request-id"])) == [("b1", "ok")]
    assert len(alpha.requests) == 2
    assert {m: s for m, s in circuits(gw).items() if m in ALPHA} == {"a1": "open", "a2": "open", "a3": "open"}


def test_a_403_for_one_model_leaves_the_providers_other_models_in_use(providers):
    # A 403 may deny one model to a key that serves the others: that model's circuit only.
    start, alpha, beta = providers
    gw = start(failures=1)
    alpha.default("a1", error(403, "You do not have access to model a1", type="permission_error"))
    answer, headers = ask(gw)
    assert answer.model == "a2" and attempts(gw.outcome(headers["x-request-id"])) == [("a1", "auth"), ("a2", "ok")]
    answer, headers = ask(gw)
    assert answer.model == "a2" and attempts(gw.outcome(headers["x-request-id"])) == [("a2", "ok")]
    assert gw.client().chat.completions.create(model="a3", messages=MSG).model == "a3"
    assert refused(gw, "a1").startswith("model a1 cannot be called")
    assert circuits(gw) == {"a1": "open", "a2": "closed", "a3": "closed", "b1": "closed"}


def test_a_402_for_one_request_leaves_the_providers_cheaper_models_in_use(providers):
    # OpenRouter's 402 for an output limit the credit left cannot cover on a dear model: its
    # cheaper models still answer, so the refusal is that model's, not the provider's.
    start, alpha, beta = providers
    gw = start(failures=1)
    alpha.default("a1", error(402, "This request requires more credits, or fewer max_tokens. You can only afford 1200 tokens."))
    answer, headers = ask(gw)
    assert answer.model == "a2" and attempts(gw.outcome(headers["x-request-id"])) == [("a1", "auth"), ("a2", "ok")]
    assert circuits(gw) == {"a1": "open", "a2": "closed", "a3": "closed", "b1": "closed"}


def test_a_refused_key_raises_one_circuit_alert_for_its_provider(providers, tmp_path):
    from service.asgi_thread import serve_in_thread
    from service.governance.runtime import Governance, GovernanceSettings
    from tests.governance_harness import MASTER, Webhook, wait_for

    start, alpha, beta = providers
    hook = Webhook()
    hook_url, stop_hook = serve_in_thread(hook)
    try:
        config = two_providers(alpha.base_url, beta.base_url, f"sqlite:///{tmp_path}/g.sqlite", 1, 60.0)
        gov = Governance(config, GovernanceSettings(db_url=f"sqlite:///{tmp_path}/gov.sqlite", master_key=MASTER,
                                                    webhook_url=hook_url + "/hook"))
        gw = start(failures=1, governance=gov)
        c = openai.OpenAI(base_url=gw.base_url, api_key=MASTER, max_retries=0)
        refuse_key(alpha)
        for _ in range(2):
            assert c.chat.completions.create(model="auto", messages=MSG).model == "b1"
        for m in ("a2", "a3"):
            with pytest.raises(openai.APIStatusError):
                c.chat.completions.create(model=m, messages=MSG)
        alert = wait_for(lambda: [a for a in hook.received if a["kind"] == "circuit_open"])
        time.sleep(0.3)
        assert len([a for a in hook.received if a["kind"] == "circuit_open"]) == 1
        assert alert[0]["details"]["model"] == "a1" and alert[0]["details"]["cause"].startswith("auth")
    finally:
        stop_hook()


def test_replicas_share_the_key_circuit_in_redis(redis_url, tmp_path):
    from service.breaker import PASS
    from service.governance.redis_breaker import RedisCircuitBreaker
    from service.governance.redis_state import connect
    from service.live_state import LiveState

    url, prefix = redis_url
    clock = [1000.0]
    config = two_providers("http://127.0.0.1:9/v1", "http://127.0.0.1:9/v1", f"sqlite:///{tmp_path}/o.sqlite", 1, 10.0)
    a, b = (LiveState(config, RedisCircuitBreaker(connect(url), 1, 10.0, prefix=prefix, clock=lambda: clock[0], refresh_s=0))
            for _ in range(2))
    a.failed("a1", PASS, "auth")  # one replica's (its variable unset): every replica leaves the provider out
    assert [b.stats(m).healthy for m in (*ALPHA, "b1")] == [False, False, False, True]
    assert b.describe()["a3"]["circuit"] == "open" and b.left_out_for_key("a3")
    clock[0] += 11
    probe = b.acquire("a2")
    assert probe.key_probe and a.acquire("a3") is None  # one probe across replicas and models
    b.succeeded("a2", 0.1, None, 5)
    assert a.stats("a3").healthy and a.describe()["a3"]["circuit"] == "closed"
