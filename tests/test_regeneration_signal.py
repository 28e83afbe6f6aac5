"""What is not a regeneration, through a running gateway with its response cache: a repeat that
arrives while the first answer is still being stored (the store is off the latency path, and a
cold start's first embedding takes seconds; here the store is held until the test lets it go),
and the same question asked under other limits of its own (a model excluded, local only)."""
from __future__ import annotations

import threading
import time

import httpx
import pytest

from router.config import CacheSection
from service.hooks import cache_hook
from service.hooks.cache_hook import CacheHook
from tests.gateway_harness import DEFAULT_QUALITY, QualityRouter, Running, fake_config

PROMPT = [{"role": "user", "content": "Write a haiku about routers"}]


@pytest.fixture
def gw(upstream, tmp_path):
    upstream.reset()
    config = fake_config(upstream.base_url, f"sqlite:///{tmp_path}/o.sqlite", extra="learning: {regenerate_window_s: 60}")
    config = config.model_copy(update={"cache": CacheSection(enabled=True, semantic=False)})
    running = Running(config, router=QualityRouter(DEFAULT_QUALITY))
    yield running
    running.stop()


def cache_of(gw) -> CacheHook:
    return next(h for h in gw.gateway.pipeline.hooks if isinstance(h, CacheHook))


def hold_stores(gw) -> threading.Event:
    """The cache's stores wait until the returned gate is set."""
    cache = cache_of(gw).cache
    put, gate = cache.put, threading.Event()

    def held_put(*args, **kwargs):
        assert gate.wait(10)
        return put(*args, **kwargs)

    cache.put = held_put
    return gate


def ask(gw, model: str = "m1", stream: bool = True, headers: dict | None = None, **body) -> tuple[str, str, str]:
    """(the answer's id, its x-cache header, its body), read to its end; `m1` named, streamed."""
    payload = {"model": model, "messages": PROMPT, "stream": stream, **body}
    with httpx.Client(timeout=20) as client:
        with client.stream("POST", f"{gw.base_url}/chat/completions", json=payload, headers=headers or {}) as response:
            assert response.status_code == 200
            text = "".join(response.iter_text())
            return response.headers["x-request-id"], response.headers["x-cache"], text


def regenerated(gw, wait_s: float) -> list[str]:
    """Request ids marked `regenerated` within `wait_s`: the signal is written beside the repeat."""
    log = gw.app.state.learning.feedback_log
    deadline = time.monotonic() + wait_s
    while True:
        rows = [r["request_id"] for r in log.feedback() if r["signal"] == "regenerated"]
        if rows or time.monotonic() > deadline:
            return rows
        time.sleep(0.02)


def stored(gw, n: int) -> None:
    deadline = time.monotonic() + 10
    while len(cache_of(gw).cache) < n and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(cache_of(gw).cache) == n


def test_a_repeat_while_the_answer_is_being_stored_waits_for_it_and_is_no_regeneration(gw, upstream):
    gate = hold_stores(gw)
    first, status, _ = ask(gw)
    assert status == "miss"
    repeat: dict = {}
    thread = threading.Thread(target=lambda: repeat.update(zip(("id", "x-cache", "text"), ask(gw))))
    thread.start()
    thread.join(0.5)
    assert thread.is_alive()  # waiting for the store, not gone upstream on a miss
    gate.set()
    thread.join(20)
    assert repeat["x-cache"] == "hit" and repeat["id"] != first
    assert len(upstream.requests_for("m1")) == 1
    assert regenerated(gw, 1.0) == []
    stored(gw, 1)  # the first answer was not dropped as rejected
    assert ask(gw)[1] == "hit"


def test_a_repeat_that_outwaits_the_store_goes_upstream_and_is_no_regeneration(gw, upstream, monkeypatch):
    monkeypatch.setattr(cache_hook, "PENDING_STORE_WAIT_S", 0.2)
    gate = hold_stores(gw)
    ask(gw)
    _, status, _ = ask(gw)
    assert status == "miss" and len(upstream.requests_for("m1")) == 2
    assert regenerated(gw, 1.0) == []
    gate.set()
    stored(gw, 1)


def test_the_same_question_under_limits_of_its_own_is_no_regeneration_of_the_plain_one(gw, upstream):
    assert ask(gw, model="auto", stream=False)[1] == "miss"
    stored(gw, 1)
    # A lower token limit is another request (the exact key holds it): never a repeat either.
    assert ask(gw, model="auto", stream=False, max_tokens=20)[1] == "miss"
    # m1 answered the plain request; this one excludes it, so the cache may not serve it m1's answer.
    limited, status, _ = ask(gw, model="auto", stream=False, headers={"x-router-excluded-models": "m1"})
    assert status == "miss" and len(upstream.requests_for("m2")) == 1
    assert regenerated(gw, 1.0) == []
    assert ask(gw, model="auto", stream=False)[1] == "hit"  # the plain answer is still cached
    # The same limited request again, asking for a fresh answer, is a regeneration of the limited one.
    ask(gw, model="auto", stream=False, headers={"x-router-excluded-models": "m1", "Cache-Control": "no-cache"})
    assert regenerated(gw, 3.0) == [limited]
