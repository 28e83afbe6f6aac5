"""Two response headers as a client reads them through the real `openai` SDK: `x-cache`'s
similarity with the same three decimals as `x-router-reason`, and a long `x-router-reason` cut
between two parts (never inside a model's name) with a marker that says how much was left out,
while the outcome log and `/v1/route` keep the whole reason."""
from __future__ import annotations

import re
import time

import httpx

from router.config import CacheSection
from service.hooks.cache_hook import CacheHook
from tests.gateway_harness import DEFAULT_QUALITY, QualityRouter, Running, fake_config

Q = "How can I improve my English speaking skills?"
PARAPHRASE = "What is the best way to improve my English speaking skills?"


def test_x_cache_similarity_has_the_reasons_three_decimals(upstream, tmp_path):
    upstream.reset()
    config = fake_config(upstream.base_url, f"sqlite:///{tmp_path}/outcomes.sqlite")
    config = config.model_copy(update={"cache": CacheSection(enabled=True, path=str(tmp_path / "cache"))})
    gw = Running(config, router=QualityRouter(DEFAULT_QUALITY))
    try:
        client = gw.client()
        client.chat.completions.create(model="auto", messages=[{"role": "user", "content": Q}])
        cache = next(h for h in gw.gateway.pipeline.hooks if isinstance(h, CacheHook)).cache
        deadline = time.monotonic() + 10
        while len(cache) < 1 and time.monotonic() < deadline:  # stored by the post-hooks, off the latency path
            time.sleep(0.02)
        hit = client.chat.completions.with_raw_response.create(
            model="auto", messages=[{"role": "user", "content": PARAPHRASE}])
        m = re.fullmatch(r"semantic-hit; similarity=(\d\.\d{3})", hit.headers["x-cache"])
        assert m, hit.headers["x-cache"]
        # The same number the reason gives: a client never reads 1.00 beside 0.998.
        assert f"(similarity {m.group(1)}," in hit.headers["x-router-reason"]
    finally:
        gw.stop()


def test_a_long_router_reason_is_cut_between_parts_and_says_how_many_are_left_out(start_gateway):
    names = [f"01-ai/Yi-34B-Chat-{i:02d}" for i in range(20)]
    gw = start_gateway(models=[{"name": "m1", "context_window": 100000}]
                       + [{"name": n, "context_window": 100000} for n in names])
    body = {"model": "auto", "messages": [{"role": "user", "content": "Summarise Hamlet."}],
            "router": {"excluded_models": names}}
    raw = gw.client().chat.completions.with_raw_response.create(
        model="auto", messages=body["messages"], extra_body={"router": body["router"]})
    header = raw.headers["x-router-reason"]
    full = gw.outcome(raw.headers["x-request-id"])["reason"]
    assert len(full) > 400 and raw.headers["x-router-model"] == "m1"
    assert len(header.encode()) <= 400  # the limit it had before
    m = re.fullmatch(r"(.*) \(\+(\d+) more\)", header)
    assert m, header
    kept, more = m.group(1), int(m.group(2))
    # Cut at a separator of the whole reason, so every model named is named in full.
    assert full.startswith(kept) and full[len(kept):].startswith(", ")
    named = [n for n in names if f"{n} (excluded by request)" in kept]
    assert named and more == len(names) - len(named)
    # The outcome log and /v1/route (its numbers moved on with the live latency) keep every part.
    route = httpx.post(f"{gw.url}/v1/route", json=body).json()["reason"]
    for reason in (full, route):
        assert all(f"{n} (excluded by request)" in reason for n in names)
