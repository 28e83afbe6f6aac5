"""A regeneration sent the moment the answer arrives (a script, an agent's retry), through a
running gateway whose post-hooks are held back until the test lets them go, as a busy gateway's
background tasks may be: the repeat must still find the answer it repeats, and only an answer
the client got counts."""
from __future__ import annotations

import asyncio
import threading
import time

import httpx
import openai
import pytest

from tests.fake_upstream import cut_stream, ok
from tests.gateway_harness import QualityRouter, Running, fake_config

QUALITY = {"m1": 0.80, "m2": 0.795, "m3": 0.2}
PROMPT = [{"role": "user", "content": "Write a haiku about routers"}]


class HeldPostHooks:
    """Listed after the learning hook, so its post-hook runs first (post-hooks run in reverse)
    and the learning hook's waits behind it while the gate is closed."""

    name = "held-post"

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.gate.set()

    async def pre(self, ctx):
        return None

    async def post(self, ctx):
        await asyncio.to_thread(self.gate.wait, 30)


@pytest.fixture
def held(upstream, tmp_path):
    """A gateway (response cache on, exact keys only) and the gate holding its post-hooks."""
    upstream.reset()
    config = fake_config(upstream.base_url, f"sqlite:///{tmp_path}/o.sqlite", extra="learning: {regenerate_window_s: 60}")
    config = config.model_copy(update={"cache": config.cache.model_copy(update={"enabled": True, "semantic": False})})
    hook = HeldPostHooks()
    running = Running(config, router=QualityRouter(QUALITY), hooks=[hook])
    yield running, hook.gate
    hook.gate.set()
    running.stop()


def regenerated(gw, wait_s: float) -> list[str]:
    """Request ids marked `regenerated` within `wait_s` (the signal is written beside the
    repeat, not by the post-hooks)."""
    log = gw.app.state.learning.feedback_log
    deadline = time.monotonic() + wait_s
    while True:
        rows = [r["request_id"] for r in log.feedback() if r["signal"] == "regenerated"]
        if rows or time.monotonic() > deadline:
            return rows
        time.sleep(0.02)


def ask(gw, stream: bool, **kwargs) -> str:
    """The request id of a fresh (never cached) answer, read to its end."""
    headers = {"Cache-Control": "no-cache", **kwargs.pop("extra_headers", {})}
    if stream:
        chunks = gw.client().chat.completions.create(model="auto", messages=PROMPT, stream=True, extra_headers=headers, **kwargs)
        ids = {chunk.id for chunk in chunks}
        assert len(ids) == 1
        return ids.pop()
    return gw.client().chat.completions.create(model="auto", messages=PROMPT, extra_headers=headers, **kwargs).id


@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
def test_a_repeat_sent_before_the_answers_post_hooks_ran_is_a_regeneration(held, stream):
    gw, gate = held
    gate.clear()
    first = ask(gw, stream)
    ask(gw, stream)  # at once: the first answer's post-hooks are still waiting
    assert regenerated(gw, 3.0) == [first]
    gate.set()
    assert len(gw.outcomes(2)) == 2


def test_a_repeat_of_a_cache_hit_its_post_hooks_have_not_seen_regenerates_the_hit(held):
    gw, gate = held
    stored = gw.client().chat.completions.create(model="auto", messages=PROMPT).id
    gw.outcome(stored)  # its post-hooks have run: the answer is in the cache
    gate.clear()
    hit = gw.client().chat.completions.with_raw_response.create(model="auto", messages=PROMPT)
    assert hit.headers["x-cache"] == "hit"
    ask(gw, stream=False)  # the user asks for a fresh answer instead of the cached one
    assert regenerated(gw, 3.0) == [hit.parse().id]


def test_the_retry_of_a_stream_cut_mid_answer_regenerates_nothing(held, upstream):
    # The client holds part of an answer and an error: the stream is `truncated` (its own
    # implicit signal), not an answer the client got, so its retry is no regeneration.
    gw, gate = held
    gate.clear()
    upstream.script("m1", cut_stream(after_chunks=2))
    with pytest.raises(openai.APIError):
        ask(gw, stream=True)
    ask(gw, stream=True)
    assert regenerated(gw, 1.0) == []
    gate.set()
    assert sorted(r["status"] for r in gw.outcomes(2)) == ["ok", "truncated"]


def test_the_retry_of_a_stream_its_client_left_regenerates_nothing(held, upstream):
    gw, gate = held
    gate.clear()
    upstream.script("m1", ok(" ".join(f"w{i}" for i in range(20)), chunk_delay_s=0.05))
    with httpx.Client(timeout=10) as client:
        with client.stream("POST", f"{gw.base_url}/chat/completions",
                           json={"model": "auto", "messages": PROMPT, "stream": True}) as response:
            assert next(line for line in response.iter_lines() if '"content":"w0"' in line)  # the first word, then the connection is closed
    ask(gw, stream=True)
    assert regenerated(gw, 1.0) == []
    gate.set()
    assert sorted(r["status"] for r in gw.outcomes(2)) == ["client_closed", "ok"]
