"""POST /v1/feedback and the implicit signals, through a running gateway and the real SDK."""
from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from router.feedback_log import latest_rewards, read_feedback
from service.api_feedback import MAX_FEEDBACK_PER_REQUEST
from tests.fake_upstream import FakeUpstream, error, ok, server_error
from tests.gateway_harness import QualityRouter, Running, fake_config

QUALITY = {"m1": 0.80, "m2": 0.795, "m3": 0.2}


def _gateway(upstream, tmp_path, learning: str):
    upstream.reset()
    db = f"sqlite:///{tmp_path}/o.sqlite"
    running = Running(fake_config(upstream.base_url, db, extra=f"learning: {learning}"), router=QualityRouter(QUALITY))
    running.db = db
    yield running
    running.stop()


@pytest.fixture
def gw(upstream, tmp_path):
    yield from _gateway(upstream, tmp_path, "{bandit: {enabled: true}, regenerate_window_s: 60}")


def _ask(gw, text):
    raw = gw.client().chat.completions.with_raw_response.create(model="auto", messages=[{"role": "user", "content": text}])
    return raw.headers["x-request-id"]


def _feedback_rows(gw, n, deadline_s=10.0):
    """Implicit signals are written by post-hooks, after the client has its answer."""
    end = time.monotonic() + deadline_s
    while True:
        rows = read_feedback(gw.db)
        if len(rows) >= n or time.monotonic() > end:
            return rows
        time.sleep(0.02)


def test_unknown_request_is_rejected_with_an_openai_error(gw):
    r = httpx.post(f"{gw.url}/v1/feedback", json={"request_id": "req_nope", "thumbs": "up"})
    assert r.status_code == 404
    err = r.json()["error"]
    assert err["code"] == "request_not_found" and err["param"] == "request_id" and "req_nope" in err["message"]
    assert read_feedback(gw.db) == []


def test_a_request_refused_before_any_model_was_asked_takes_no_verdict(gw, upstream):
    def refused(**kwargs):
        with pytest.raises(openai.BadRequestError) as exc:
            gw.client().chat.completions.create(messages=[{"role": "user", "content": "Hi"}], **kwargs)
        return exc.value.response.headers["x-request-id"]

    invalid = refused(model="auto", max_tokens=-5)  # rejected before routing
    over_cap = refused(model="m2", extra_headers={"x-router-max-cost-usd": "1e-12"})  # its own cost cap: no call made
    for request_id in (invalid, over_cap):
        r = httpx.post(f"{gw.url}/v1/feedback", json={"request_id": request_id, "thumbs": "down"})
        err = r.json()["error"]
        assert (r.status_code, err["code"], err["param"]) == (409, "request_not_answered", "request_id"), r.text
        assert "got no answer to judge" in err["message"] and err["type"] == "invalid_request_error"
    assert gw.outcome(invalid)["status"] == "rejected" and read_feedback(gw.db) == []
    # One its models failed is judged as before (an explicit verdict beside the implicit `error`).
    for m in ("m1", "m2", "m3"):
        upstream.default(m, server_error(503))
    with pytest.raises(openai.APIStatusError) as exc:
        _ask(gw, "this will fail everywhere")
    failed = exc.value.response.headers["x-request-id"]
    assert httpx.post(f"{gw.url}/v1/feedback", json={"request_id": failed, "score": 0.0}).status_code == 200


@pytest.mark.parametrize("body, param", [
    ({"request_id": "x"}, None),
    ({"request_id": "x", "score": 0.5, "thumbs": "up"}, None),
    ({"request_id": "x", "score": 1.5}, "score"),
    ({"request_id": "x", "thumbs": "sideways"}, "thumbs"),
    ({"request_id": "x", "score": 1, "colour": "red"}, "colour"),
    ({"request_id": "x", "score": True}, "score"),  # were stored as 1.0 and 0.5
    ({"request_id": "x", "score": "0.5"}, "score"),
    ({"request_id": "x", "score": 1, "label": "a\x00b"}, "label"),  # was stored, and written raw into the shadow report
    ({"request_id": "x", "score": 1, "comment": "fine\x00"}, "comment"),
])
def test_malformed_feedback_is_a_400(gw, body, param):
    r = httpx.post(f"{gw.url}/v1/feedback", json=body)
    assert r.status_code == 400
    assert r.json()["error"]["type"] == "invalid_request_error"
    if param:
        assert r.json()["error"]["param"] == param


def test_a_misspelt_feedback_field_is_named_with_the_one_meant(gw):
    # pydantic's "Extra inputs are not permitted" had named neither the fields nor the one meant.
    err = httpx.post(f"{gw.url}/v1/feedback", json={"request_id": "x", "scroe": 0.5}).json()["error"]
    assert err["param"] == "scroe" and "did you mean score?" in err["message"] and "Extra inputs" not in err["message"]


def test_the_answers_own_id_is_the_one_feedback_takes(gw):
    # What an SDK user holds: `reply.id`, each streamed chunk's id; the x-request-id header says the same.
    raw = gw.client().chat.completions.with_raw_response.create(model="auto", messages=[{"role": "user", "content": "hi"}])
    reply = raw.parse()
    assert reply.id == raw.headers["x-request-id"]
    stream = gw.client().chat.completions.create(model="auto", messages=[{"role": "user", "content": "hello"}], stream=True,
                                                 stream_options={"include_usage": True})
    ids = {chunk.id for chunk in stream}
    assert ids == {stream.response.headers["x-request-id"]}
    for answer_id in (reply.id, ids.pop()):
        r = httpx.post(f"{gw.url}/v1/feedback", json={"request_id": answer_id, "thumbs": "down"})
        assert r.status_code == 200, r.text
    assert sorted(r["request_id"] for r in _feedback_rows(gw, 2)) == sorted([reply.id, stream.response.headers["x-request-id"]])


def test_feedback_is_stored_and_updates_the_bandit_online(gw):
    bandit = gw.app.state.learning.bandit
    rid = _ask(gw, "How do I sort a list in Python?")
    before = {m: a["n_eff"] for m, a in bandit.stats()["arms"].items()}
    r = httpx.post(f"{gw.url}/v1/feedback", json={"request_id": rid, "thumbs": "down", "label": "wrong", "comment": "no"})
    assert r.status_code == 200 and r.json()["score"] == 0.0
    rid2 = _ask(gw, "Another question entirely")
    assert httpx.post(f"{gw.url}/v1/feedback", json={"request_id": rid2, "score": 0.75}).status_code == 200
    rows = read_feedback(gw.db)
    assert [(r["request_id"], r["score"], r["signal"], r["source"]) for r in rows] == [
        (rid, 0.0, "thumbs", "explicit"), (rid2, 0.75, "score", "explicit")]
    assert rows[0]["label"] == "wrong" and rows[0]["comment"] == "no"
    after = {m: a["n_eff"] for m, a in bandit.stats()["arms"].items()}
    assert sum(after.values()) == pytest.approx(sum(before.values()) + 2, abs=0.01)
    # the outcome log of the judged request is the one joined by retraining
    assert gw.outcome(rid)["propensity"] > 0
    # A new router (a promotion, hot reloaded): corrections learnt against the old one's
    # predictions are not added to the new one's, which may have learnt them already.
    gw.gateway.router.swap(QualityRouter(QUALITY))
    assert bandit.stats()["arms"] == {}


def test_one_request_takes_a_bounded_number_of_verdicts_even_sent_at_once(gw):
    rid = _ask(gw, "Rate this one")

    def judge(i: int) -> httpx.Response:
        return httpx.post(f"{gw.url}/v1/feedback", json={"request_id": rid, "score": i % 2}, timeout=30)

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(judge, range(MAX_FEEDBACK_PER_REQUEST + 5)))
    statuses = sorted(r.status_code for r in answers)
    assert statuses == [200] * MAX_FEEDBACK_PER_REQUEST + [409] * 5
    refused = next(r for r in answers if r.status_code == 409).json()["error"]
    assert refused["code"] == "feedback_limit_reached" and refused["param"] == "request_id"
    explicit = [r for r in read_feedback(gw.db) if r["request_id"] == rid and r["source"] == "explicit"]
    assert len(explicit) == MAX_FEEDBACK_PER_REQUEST
    # Another request has its own allowance.
    assert httpx.post(f"{gw.url}/v1/feedback", json={"request_id": _ask(gw, "Another"), "score": 1}).status_code == 200


def test_upstream_failure_is_an_implicit_zero(gw, upstream):
    for m in ("m1", "m2", "m3"):
        upstream.default(m, server_error(503))
    with pytest.raises(openai.APIStatusError):
        _ask(gw, "this will fail everywhere")
    rows = _feedback_rows(gw, 1)
    assert [(r["signal"], r["source"], r["score"]) for r in rows] == [("error", "implicit", 0.0)]


def test_empty_answer_is_an_implicit_zero(gw, upstream):
    for m in ("m1", "m2"):
        upstream.default(m, ok(""))
    rid = _ask(gw, "say nothing")
    rows = _feedback_rows(gw, 1)
    assert [(r["request_id"], r["signal"]) for r in rows] == [(rid, "empty")]


def test_regenerating_the_same_prompt_marks_the_first_answer(gw):
    first = _ask(gw, "Write a haiku about routers")
    _ask(gw, "Something unrelated")
    second = _ask(gw, "Write a haiku about routers")
    rows = _feedback_rows(gw, 1)
    assert [(r["request_id"], r["signal"], r["score"]) for r in rows] == [(first, "regenerated", 0.0)]
    # explicit feedback wins over the implicit verdict for the same request
    httpx.post(f"{gw.url}/v1/feedback", json={"request_id": first, "score": 0.9}).raise_for_status()
    assert latest_rewards(read_feedback(gw.db))[first] == 0.9
    assert second != first


def test_tool_loop_steps_are_not_regenerations(gw):
    """An agent resends its last user turn on every tool-loop step, followed by the tool calls
    and results: progress, not a user asking again."""
    call = {"id": "call_1", "type": "function", "function": {"name": "read_file", "arguments": "{}"}}
    turn = [{"role": "user", "content": "Find the bug in parser.py"}]
    client = gw.client()
    first = client.chat.completions.with_raw_response.create(model="auto", messages=turn).headers["x-request-id"]
    loop = turn + [{"role": "assistant", "content": None, "tool_calls": [call]},
                   {"role": "tool", "tool_call_id": "call_1", "content": "def parse(): ..."}]
    client.chat.completions.create(model="auto", messages=loop)
    client.chat.completions.create(model="auto", messages=loop + [{"role": "user", "content": "Now fix it."}])
    assert _feedback_rows(gw, 1, deadline_s=1.0) == []
    # The same conversation sent again is a regeneration of the first answer.
    client.chat.completions.create(model="auto", messages=turn)
    rows = _feedback_rows(gw, 1)
    assert [(r["request_id"], r["signal"]) for r in rows] == [(first, "regenerated")]


def test_parallel_and_other_seed_requests_are_not_regenerations(gw, upstream):
    import concurrent.futures

    for m in ("m1", "m2", "m3"):
        upstream.default(m, ok("a haiku", delay_s=0.3))
    client = gw.client()
    body = {"model": "auto", "messages": [{"role": "user", "content": "Write a haiku about queues"}]}
    with concurrent.futures.ThreadPoolExecutor(3) as pool:  # best-of-3 in parallel: nobody has seen an answer yet
        list(pool.map(lambda seed: client.chat.completions.create(**body, seed=seed), (1, 1, 1)))
    client.chat.completions.create(**body, seed=2)  # asked again, but for another sample
    assert _feedback_rows(gw, 1, deadline_s=1.0) == []
    client.chat.completions.create(**body, seed=2)  # the same request after its answer: a regeneration
    assert [r["signal"] for r in _feedback_rows(gw, 1)] == ["regenerated"]


def test_an_upstream_refusing_the_request_itself_is_no_verdict_on_the_model(gw, upstream):
    for m in ("m1", "m2", "m3"):
        upstream.script(m, error(400, "'messages' is malformed", type="invalid_request_error"))
    with pytest.raises(openai.BadRequestError):
        _ask(gw, "a request the upstream refuses")
    assert _feedback_rows(gw, 1, deadline_s=1.0) == []


def _evidence(gw) -> dict[str, float]:
    return {m: round(a["n_eff"], 6) for m, a in gw.app.state.learning.bandit.stats()["arms"].items() if a["n_eff"] > 0}


@pytest.fixture
def greedy_gw(upstream, tmp_path):
    """A gateway whose bandit learns but never explores: the router's choice is called."""
    yield from _gateway(upstream, tmp_path, "{bandit: {enabled: true, explore_share: 0.0}}")


def test_a_reward_for_an_answer_a_fallback_gave_is_no_reward_for_the_model_chosen(greedy_gw, upstream):
    gw = greedy_gw
    upstream.default("m1", server_error(503))  # chosen (best predicted), fails; m2 answers
    upstream.default("m2", ok(""))  # ...with an empty answer: an implicit zero, but not m1's
    raw = gw.client().chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": "who answers this?"}])
    assert raw.parse().model == "m2" and raw.headers["x-router-model"] == "m2"
    rid = raw.headers["x-request-id"]
    gw.outcome(rid)
    assert httpx.post(f"{gw.url}/v1/feedback", json={"request_id": rid, "score": 1.0}).status_code == 200
    assert _evidence(gw) == {}  # m1 learnt neither the empty answer nor the 1.0 (m1 got both before)
    assert [r["signal"] for r in read_feedback(gw.db)] == ["empty", "score"]  # both kept for retraining


def test_feedback_the_moment_a_fallback_answered_is_no_reward_for_the_model_chosen(upstream, tmp_path):
    # The post-hooks may run late on a busy gateway; the client may rate the answer at once.
    upstream.reset()
    config = fake_config(upstream.base_url, f"sqlite:///{tmp_path}/o.sqlite",
                         extra="learning: {bandit: {enabled: true, explore_share: 0.0}}")  # m1 chosen, not an exploration draw
    running = Running(config, router=QualityRouter(QUALITY), hooks=[SlowPostHook(0.5)])
    try:
        upstream.default("m1", server_error(503))
        raw = running.client().chat.completions.with_raw_response.create(
            model="auto", messages=[{"role": "user", "content": "who answers this?"}])
        assert raw.headers["x-router-model"] == "m2"
        r = httpx.post(f"{running.url}/v1/feedback", json={"request_id": raw.headers["x-request-id"], "score": 1.0})
        assert r.status_code == 200 and _evidence(running) == {}
    finally:
        running.stop()


def test_two_end_users_asking_the_same_is_no_regeneration(gw):
    ask = lambda user: gw.client().chat.completions.with_raw_response.create(  # noqa: E731
        model="auto", messages=[{"role": "user", "content": "Write a haiku about routers"}], user=user)
    ask("alice")
    ask("bob")
    ask("alice")
    rows = _feedback_rows(gw, 1, deadline_s=2.0)
    assert [(r["signal"]) for r in rows] == ["regenerated"]  # alice again, not bob after alice


class SlowPostHook:
    """Holds the post-hooks back, as a busy gateway's background tasks may be."""

    name = "slow-post"

    def __init__(self, seconds: float = 1.0):
        self.seconds = seconds

    async def pre(self, ctx):
        return None

    async def post(self, ctx):
        await asyncio.sleep(self.seconds)


def test_feedback_sent_to_another_replica_the_moment_the_answer_arrives_is_accepted(upstream, tmp_path):
    # Two replicas behind a load balancer share the outcome log; the one that answered writes
    # its row after its post-hooks, so the other must not call the id unknown at once.
    upstream.reset()
    config = fake_config(upstream.base_url, f"sqlite:///{tmp_path}/shared.sqlite")
    answering = Running(config, router=QualityRouter(QUALITY), hooks=[SlowPostHook(0.6)])
    other = Running(config, router=QualityRouter(QUALITY))
    try:
        rid = _ask(answering, "What is the capital of France?")
        r = httpx.post(f"{other.url}/v1/feedback", json={"request_id": rid, "thumbs": "up"})
        assert r.status_code == 200, r.text
    finally:
        answering.stop()
        other.stop()


def test_feedback_sent_the_moment_a_cache_hit_arrives_is_accepted(upstream, tmp_path):
    upstream.reset()
    db = f"sqlite:///{tmp_path}/o.sqlite"
    config = fake_config(upstream.base_url, db, extra="learning: {bandit: {enabled: true}}")
    config = config.model_copy(update={"cache": config.cache.model_copy(update={"enabled": True, "semantic": False})})
    running = Running(config, router=QualityRouter(QUALITY), hooks=[SlowPostHook()])
    try:
        messages = [{"role": "user", "content": "What is the capital of France?"}]
        first = running.client().chat.completions.with_raw_response.create(model="auto", messages=messages)
        time.sleep(1.5)  # the answer is stored once its post-hooks have run
        hit = running.client().chat.completions.with_raw_response.create(model="auto", messages=messages)
        assert hit.headers["x-cache"] == "hit" and hit.headers["x-request-id"] != first.headers["x-request-id"]
        assert hit.parse().id == hit.headers["x-request-id"]  # the cached answer is under this request's id
        r = httpx.post(f"{running.url}/v1/feedback", json={"request_id": hit.headers["x-request-id"], "thumbs": "up"})
        assert r.status_code == 200, r.text
    finally:
        running.stop()


def test_answers_past_the_regeneration_window_are_forgotten_and_the_user_field_is_not_kept(monkeypatch):
    from service.hooks import learning_hook
    from service.pipeline import RequestContext
    from router.request_view import view_chat_request

    config = fake_config("http://127.0.0.1:9/v1", "sqlite:///:memory:", extra="learning: {regenerate_window_s: 60}")
    rt = learning_hook.LearningRuntime(config, None, None, None, None)
    clock = [1000.0]
    monkeypatch.setattr(learning_hook.time, "time", lambda: clock[0])
    rt.memory.answered("a", "req_a")
    clock[0] += 61
    rt.memory.answered("b", "req_b")
    assert len(rt.memory._prompts) == 1 and rt.memory.repeated("b") == "req_b"  # "a" could no longer be regenerated: gone
    body = {"model": "auto", "messages": [{"role": "user", "content": "hi"}], "user": "u" * 1_000_000}
    ctx = RequestContext(request_id="r", body=body, routing=view_chat_request(body), headers={}, stream=False, profile="auto")
    assert len(learning_hook.repeat_key(ctx)) < 200  # a megabyte `user` is not held for the window


def test_a_client_that_gave_up_waiting_did_not_get_the_answer_its_retry_repeats(gw, upstream):
    # The OpenAI SDK times out and retries the same request: the first answer reached no one, so
    # the retry is no regeneration (which would score that answer 0).
    upstream.script("m1", ok("slow story", delay_s=1.0))
    with pytest.raises(openai.APITimeoutError):
        gw.client(timeout=0.3).chat.completions.create(
            model="auto", messages=[{"role": "user", "content": "Tell me a story"}])
    time.sleep(1.2)  # the abandoned request finishes upstream meanwhile
    _ask(gw, "Tell me a story")
    rows = gw.outcomes(2)
    assert sorted(r["status"] for r in rows) == ["client_closed", "ok"]
    assert _feedback_rows(gw, 1, deadline_s=1.0) == []


def test_a_tool_loop_step_kept_on_its_turns_model_is_logged_with_the_turns_draw_probability():
    # OPE weighs every logged request by the probability its action had: a step that follows the
    # turn's draw had that draw's probability, not certainty.
    from router.request_view import view_chat_request
    from router.types import Candidate, Decision
    from service.hooks import learning_hook
    from service.pipeline import RequestContext

    config = fake_config("http://127.0.0.1:9/v1", "sqlite:///:memory:")
    rt = learning_hook.LearningRuntime(config, None, None, None, None)
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    step = {"model": "auto", "messages": [{"role": "user", "content": "fix it"},
                                          {"role": "assistant", "content": None, "tool_calls": [call]},
                                          {"role": "tool", "tool_call_id": "c1", "content": "x" * 3000}]}
    ctx = RequestContext(request_id="r2", body=step, routing=view_chat_request(step), headers={}, stream=False, profile="auto")
    rt.memory.turn_answered(learning_hook._turn_digest(ctx).hex(), "m2", 0.29)  # the turn's first step drew m2 at 0.29
    candidates = tuple(Candidate(m, 0.8, 0.05, 50, 1e-4, 1.0, 0.7) for m in ("m1", "m2"))
    ctx.decision = Decision("m1", candidates, "m1: best", 0.01, propensity=1.0)
    rt.hook._keep_the_turns_model(ctx, rt.memory.turn_model(learning_hook._turn_digest(ctx).hex()))
    assert ctx.decision.model == "m2" and ctx.decision.propensity == 0.29
    # The step's own draw agreeing with the turn's model changes nothing: the turn's draw set it.
    ctx.decision = Decision("m2", candidates, "bandit exploration: m2 (p=0.81) instead of m1", 0.01, propensity=0.81)
    rt.hook._keep_the_turns_model(ctx, rt.memory.turn_model(learning_hook._turn_digest(ctx).hex()))
    assert ctx.decision.model == "m2" and ctx.decision.propensity == 0.29 and "p=0.81" not in ctx.decision.reason


def test_two_sessions_sending_the_same_follow_up_are_two_turns():
    # Keyed by the system prompt and the last user message alone, two sessions of one agent that
    # both sent "continue" shared a turn: one's tool loop was moved to the other's model.
    from router.request_view import view_chat_request
    from service.hooks import learning_hook
    from service.pipeline import RequestContext

    def step(history: str, result: str, marked: bool = False) -> RequestContext:
        call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
        follow_up = [{"type": "text", "text": "continue", **({"cache_control": {"type": "ephemeral"}} if marked else {})}]
        body = {"model": "auto", "messages": [
            {"role": "system", "content": "You are an agent."}, {"role": "user", "content": history},
            {"role": "assistant", "content": "Done."}, {"role": "user", "content": follow_up},
            {"role": "assistant", "content": None, "tool_calls": [call]}, {"role": "tool", "tool_call_id": "c1", "content": result}]}
        return RequestContext(request_id="r", body=body, routing=view_chat_request(body), headers={}, stream=False, profile="auto")

    a, b = step("Refactor the parser.", "ok"), step("Write the release notes.", "ok")
    assert learning_hook._turn_digest(a) != learning_hook._turn_digest(b)
    # Every step of one turn is one turn, whatever its tool results, and wherever the client moved
    # its cache_control mark (Anthropic's advice: on the newest message).
    assert learning_hook._turn_digest(a) == learning_hook._turn_digest(step("Refactor the parser.", "x" * 3000))
    assert learning_hook._turn_digest(a) == learning_hook._turn_digest(step("Refactor the parser.", "ok", marked=True))

    def asked(system: list | str, user: list | str) -> bytes:
        body = {"model": "auto", "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}]}
        ctx = RequestContext(request_id="r", body=body, routing=view_chat_request(body), headers={}, stream=False, profile="auto")
        return learning_hook._turn_digest(ctx)

    # A system prompt whose client marked its stable part: what follows the mark (the time) is no other turn.
    stable = {"type": "text", "text": "You are an agent.", "cache_control": {"type": "ephemeral"}}
    assert asked([stable, {"type": "text", "text": "Time: 12:01:33"}], "go") == asked([stable, {"type": "text", "text": "Time: 12:01:41"}], "go")
    # Another picture under the same words is another question.
    photo = lambda url: [{"type": "text", "text": "What is wrong with this item?"}, {"type": "image_url", "image_url": {"url": url}}]  # noqa: E731
    assert asked("Inspect items.", photo("https://e.com/a.png")) != asked("Inspect items.", photo("https://e.com/b.png"))


def test_every_step_of_a_tool_loop_logs_the_probability_its_turn_drew_the_model_with(tmp_path):
    # Wide exploration, and a long tool result that moves the ranking (m1 is dear per input token):
    # each step's own draw has other probabilities than the turn's first. The reviewer's gateway
    # logged a step that stayed on mixtral (the turn's, p=0.67) with its own draw's p=0.81, and every
    # later step of the turn with it too.
    models = [{"name": m, "context_window": 100000, "capabilities": ["tools"], "in": price}
              for m, price in (("m1", 2.0), ("m2", 0.5), ("m3", 0.5))]
    extra = ("learning: {bandit: {enabled: true, explore_share: 1.0, extra_cost_share: 100, total_cost_share: null, "
             "utility_margin: 1.0}}")
    call = {"id": "c1", "type": "function", "function": {"name": "lookup", "arguments": "{}"}}
    result = {"role": "tool", "tool_call_id": "c1", "content": "population 12345 " * 150}
    logged, reasons = [], []
    with FakeUpstream() as up:
        gw = Running(fake_config(up.base_url, f"sqlite:///{tmp_path}/o.sqlite", models=models, extra=extra),
                     router=QualityRouter({"m1": 0.9, "m2": 0.87, "m3": 0.86}))
        try:
            for i in range(8):
                messages = [{"role": "user", "content": f"Find the population of city {i}"}]
                steps = []
                for _ in range(3):  # the question, then two steps after a tool result each
                    raw = gw.client().chat.completions.with_raw_response.create(model="auto", messages=messages)
                    steps.append(gw.outcome(raw.headers["x-request-id"]))
                    reasons.append(raw.headers["x-router-reason"])
                    messages = [*messages, {"role": "assistant", "content": None, "tool_calls": [call]}, result]
                logged.append([(o["chosen_model"], o["propensity"]) for o in steps])
        finally:
            gw.stop()
    for turn in logged:
        assert turn == [turn[0]] * 3, logged  # on the turn's model, with the probability the turn drew it with
    assert any("this step's own draw agreed" in r for r in reasons), reasons  # the case in question came up


def test_a_turn_whose_step_a_fallback_answered_does_not_pin_the_fallback(upstream, tmp_path):
    # The fallback was never drawn: pinning later steps to it would log them with the failed
    # model's probability.
    upstream.reset()
    config = fake_config(upstream.base_url, f"sqlite:///{tmp_path}/o.sqlite")
    running = Running(config, router=QualityRouter(QUALITY))
    try:
        upstream.script("m1", server_error(503), server_error(503))
        turn = [{"role": "user", "content": "Find the bug"}]
        first = running.client().chat.completions.with_raw_response.create(model="auto", messages=turn)
        assert first.headers["x-router-model"] == "m2"  # m1 chosen, failed; m2 answered
        assert not running.app.state.learning.memory._turns  # no turn pinned to m2
    finally:
        running.stop()
