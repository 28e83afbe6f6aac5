"""A client that leaves before its answer (an SDK's read timeout, a user pressing stop), through
a running gateway, a fake upstream that answers slowly or hangs, and real clients that close their
connection: the request ends `client_closed`, nothing more is called or billed for it, its retry
is no regeneration, and the models' live state learns nothing false from it."""
from __future__ import annotations

import time
from typing import Any, Callable

import httpx
import openai
import pytest

from tests.fake_upstream import hang, ok, rate_limit, server_error
from tests.gateway_harness import MSG, ask
from tests.governance_harness import governed_gateway, new_key, settled


def leave_before_the_answer(gw: Any, stream: bool) -> None:
    """The SDK's read timeout: no byte within 0.3 s, and the connection is closed."""
    with pytest.raises(openai.APITimeoutError):
        gw.client(timeout=0.3).chat.completions.create(model="auto", messages=MSG, stream=stream)


def leave_after_the_first_word(gw: Any) -> None:
    with httpx.Client(timeout=10) as client:
        with client.stream("POST", f"{gw.base_url}/chat/completions",
                           json={"model": "auto", "messages": MSG, "stream": True}) as response:
            assert next(line for line in response.iter_lines() if '"content":"w0"' in line)


def streamed_text(gw: Any) -> str:
    chunks = gw.client().chat.completions.create(model="auto", messages=MSG, stream=True)
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def attempts(row: dict[str, Any]) -> list[tuple[str, str, str]]:
    return [(a["model"], a["status"], a.get("kind") or a.get("reason")) for a in row["attempts"]]


def live(gw: Any, model: str) -> dict[str, Any]:
    return httpx.get(f"{gw.url}/healthz").json()["models"][model]


def upstream_calls(gw: Any, model: str) -> dict[str, float]:
    """`openclaw_upstream_attempts_total` for `model`, by outcome."""
    prefix = f'openclaw_upstream_attempts_total{{model="{model}",outcome="'
    lines = httpx.get(f"{gw.url}/metrics").text.splitlines()
    return {line[len(prefix):].split('"', 1)[0]: float(line.rsplit(" ", 1)[1]) for line in lines if line.startswith(prefix)}


def wait_until(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def feedback_within(gw: Any, seconds: float) -> list[dict[str, Any]]:
    """Implicit signals are written in the background: whatever was written within `seconds`."""
    log = gw.app.state.learning.feedback_log
    deadline = time.monotonic() + seconds
    while not log.feedback() and time.monotonic() < deadline:
        time.sleep(0.02)
    return log.feedback()


WORDS = " ".join(f"w{i}" for i in range(20))


def test_a_stream_whose_client_timed_out_is_no_answer_and_its_retry_no_regeneration(start_gateway, upstream):
    gw = start_gateway(timeout_s=5.0)
    upstream.script("m1", ok("The answer the client never saw.", delay_s=1.5))
    leave_before_the_answer(gw, stream=True)
    first = gw.outcomes(1)[0]
    assert first["status"] == "client_closed"
    assert streamed_text(gw) == "Hello from m1."  # the SDK's retry of the same request
    assert sorted(r["status"] for r in gw.outcomes(2)) == ["client_closed", "ok"]
    assert feedback_within(gw, 1.0) == []  # no `regenerated` reward 0 for an answer nobody read


@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
def test_a_client_that_left_while_the_model_hung_gets_no_failover(start_gateway, upstream, stream):
    gw = start_gateway()  # provider timeout 1 s
    upstream.script("m1", hang(10))
    leave_before_the_answer(gw, stream)
    row = gw.outcomes(1)[0]
    assert (row["status"], row["answered_model"]) == ("client_closed", None)
    assert [r.model for r in upstream.requests] == ["m1"]  # m2 neither called nor billed
    m1 = live(gw, "m1")
    assert m1["in_flight"] == 0
    if stream:
        # The stream awaited is cut when the client leaves: no timeout is waited out, none blamed on m1.
        assert attempts(row) == [("m1", "abandoned", "client_left")]
        assert (m1["error_rate"], m1["circuit"]) == (0.0, "closed")
        # m1 was sent the prompt: it is billed, with no output.
        assert row["cost_usd"] > 0 and row["output_tokens"] == 0 and row["input_tokens"] > 0
        assert upstream_calls(gw, "m1") == {"abandoned": 1.0}  # a call made, so counted
    else:
        # A non-streamed call in flight runs on (most providers bill it anyway; the cache may keep its answer).
        assert attempts(row) == [("m1", "error", "timeout")]
        assert row["cost_usd"] == 0.0  # it failed: a failed attempt is no answer to bill


@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
def test_a_client_that_left_during_a_backoff_gets_no_retry(start_gateway, upstream, stream):
    gw = start_gateway()
    upstream.script("m1", rate_limit(retry_after=0.8))  # waited out on m1 (max_retry_after_s is 1 s)
    leave_before_the_answer(gw, stream)
    row = gw.outcomes(1)[0]
    assert (row["status"], row["answered_model"], row["cost_usd"]) == ("client_closed", None, 0.0)
    assert attempts(row) == [("m1", "error", "rate_limit")]
    assert [r.model for r in upstream.requests] == ["m1"]


def test_a_stream_its_client_abandons_adds_no_latency_sample(start_gateway, upstream):
    gw = start_gateway(timeout_s=5.0)
    upstream.default("m1", ok(WORDS, chunk_delay_s=0.05))
    assert streamed_text(gw) == WORDS
    gw.outcomes(1)
    whole = live(gw, "m1")
    leave_after_the_first_word(gw)
    assert "client_closed" in [r["status"] for r in gw.outcomes(2)]
    after = live(gw, "m1")
    # The time until the user pressed stop is no latency of the model's: a slow model would pass for fast.
    assert after["ewma_latency_s"] == whole["ewma_latency_s"]
    assert after["ewma_ttft_s"] is not None and after["error_rate"] == 0.0 and after["in_flight"] == 0
    assert upstream_calls(gw, "m1") == {"ok": 1.0, "abandoned": 1.0}


def test_an_abandoned_probe_leaves_the_circuit_to_the_next_probe(start_gateway, upstream):
    gw = start_gateway(timeout_s=5.0)  # breaker_failures 3, cooldown 0.5 s
    upstream.script("m1", server_error(), server_error(), server_error(), ok(WORDS, delay_s=1.0), ok(WORDS, chunk_delay_s=0.05))
    ask(gw)  # m1 fails twice (retry), m2 answers
    ask(gw)  # the third failure opens m1's circuit
    assert live(gw, "m1")["circuit"] == "open"
    wait_until(lambda: live(gw, "m1")["circuit"] == "half_open")
    leave_before_the_answer(gw, stream=True)  # the probe: its client leaves before m1's first token
    wait_until(lambda: gw.outcomes(3)[-1]["status"] == "client_closed")
    # No verdict: neither closed by an answer nobody saw nor stuck open on a probe that never ends.
    assert live(gw, "m1")["circuit"] == "half_open"
    leave_after_the_first_word(gw)  # the next probe: m1's first token is its verdict
    row = gw.outcomes(4)[-1]
    assert (row["status"], row["answered_model"]) == ("client_closed", "m1")
    assert live(gw, "m1")["circuit"] == "closed"


def test_a_stream_left_before_its_first_token_bills_its_prompt_to_the_keys_budget(tmp_path):
    # Billed nothing, a client that always leaves before the first token would send prompts
    # upstream without end against a budget that never moves.
    prompt = "word " * 20_000  # ~20,000 input tokens: $0.20 on m1
    with governed_gateway(tmp_path) as (gw, admin, _, up, _):
        key, secret = new_key(admin, name="budgeted")
        admin.post("/admin/budgets", json={"scope": "key", "scope_id": key["id"], "period": "total", "limit_usd": 0.45})
        up.default("m1", ok("slow", delay_s=1.5))
        impatient = openai.OpenAI(base_url=gw.base_url, api_key=secret, max_retries=0, timeout=0.3)
        with pytest.raises(openai.APITimeoutError):
            list(impatient.chat.completions.create(model="m1", stream=True, max_tokens=50,
                                                   messages=[{"role": "user", "content": prompt}]))
        row = settled(admin, 1)[0]
        assert (row["status"], row["model"], row["output_tokens"]) == ("client_closed", "m1", 0)
        assert row["cost_usd"] > 0.15
        assert admin.get("/admin/budgets").json()["data"][0]["spent_usd"] == pytest.approx(row["cost_usd"])
        with pytest.raises(openai.APIStatusError) as refused:  # the budget has too little left for another
            list(impatient.chat.completions.create(model="m1", stream=True, max_tokens=50,
                                                   messages=[{"role": "user", "content": prompt}]))
        assert refused.value.status_code == 402
        assert len(up.requests_for("m1")) == 1
