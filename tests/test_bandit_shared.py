"""Two gateway replicas behind one load balancer learn together over Redis
(`learning.bandit.shared`): feedback that reaches the replica which did not decide the request
still teaches the bandit that did, and both end up with the same corrections. Real Redis,
real gateways on 127.0.0.1, the real `openai` SDK and feedback endpoint."""
from __future__ import annotations

import time

import httpx
import pytest

from router.config import BanditSection, CacheSection, ConfigError, LearningSection, parse_config
from service.hooks.cache_hook import CacheHook
from tests.fake_upstream import FakeUpstream
from tests.gateway_harness import QualityRouter, Running, fake_config


def arms(gw: Running) -> dict[str, float]:
    return {m: round(a["n_eff"], 6) for m, a in gw.app.state.learning.bandit.stats()["arms"].items() if a["n_eff"] > 0}


def wait_for(condition, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        time.sleep(0.05)


def test_replicas_share_what_their_bandits_learn(tmp_path, redis_url, monkeypatch):
    url, prefix = redis_url
    monkeypatch.setenv("OPENCLAW_REDIS_PREFIX", prefix)
    quality = {"m1": 0.80, "m2": 0.795, "m3": 0.2}
    with FakeUpstream() as up:
        # One outcome log for both, as replicas share one database: either can take any feedback.
        config = fake_config(up.base_url, f"sqlite:///{tmp_path}/shared.sqlite")
        config = config.model_copy(update={
            "server": config.server.model_copy(update={"redis_url": url}),
            "learning": LearningSection(bandit=BanditSection(enabled=True, shared=True)),
        })
        a, b = Running(config, router=QualityRouter(quality)), Running(config, router=QualityRouter(quality))
        try:
            ids = []
            for i in range(12):
                raw = a.client().chat.completions.with_raw_response.create(
                    model="auto", messages=[{"role": "user", "content": f"question {i}"}])
                ids.append(raw.headers["x-request-id"])
            for rid in ids:
                a.outcome(rid)
            assert arms(a) == {} and arms(b) == {}
            # The load balancer sends the client's feedback to the other replica.
            for rid in ids:
                r = httpx.post(f"{b.base_url}/feedback", json={"request_id": rid, "thumbs": "down"}, timeout=10)
                assert r.status_code == 200, r.text
            # Equal arms alone can hold half-way (both replicas at 11 of 12): wait for all 12 as well.
            sync_a, sync_b = a.app.state.learning.sync, b.app.state.learning.sync
            wait_for(lambda: sync_a.applied >= 12 and sync_b.applied >= 12 and arms(a) == arms(b))
            assert sync_a.applied == 12  # the `fb` messages it resolved, each once
            assert sum(arms(a).values()) > 0
            # Feedback to the replica that decided reaches the other one too.
            raw = a.client().chat.completions.with_raw_response.create(
                model="auto", messages=[{"role": "user", "content": "one more"}])
            rid = raw.headers["x-request-id"]
            a.outcome(rid)
            before = sum(arms(b).values())
            assert httpx.post(f"{a.base_url}/feedback", json={"request_id": rid, "score": 1.0}, timeout=10).status_code == 200
            wait_for(lambda: sum(arms(b).values()) > before and arms(a) == arms(b))
        finally:
            a.stop()
            b.stop()


def test_shared_bandit_needs_redis():
    with pytest.raises(ConfigError, match="learning.bandit.shared needs server.redis_url"):
        parse_config("""
models: [{name: m1, provider: p, price: {input_per_1m: 1, output_per_1m: 1}}]
providers: {p: {kind: openai, base_url: "http://127.0.0.1:9/v1"}}
learning: {bandit: {enabled: true, shared: true}}
""", "router.yaml")


def test_a_replica_whose_redis_is_down_still_serves_and_learns_alone(tmp_path):
    with FakeUpstream() as up:
        config = fake_config(up.base_url, f"sqlite:///{tmp_path}/o.sqlite")
        config = config.model_copy(update={
            "server": config.server.model_copy(update={"redis_url": "redis://127.0.0.1:1/0"}),  # nothing listens
            "learning": LearningSection(bandit=BanditSection(enabled=True, shared=True)),
        })
        gw = Running(config, router=QualityRouter({"m1": 0.8, "m2": 0.79, "m3": 0.2}))
        try:
            raw = gw.client().chat.completions.with_raw_response.create(
                model="auto", messages=[{"role": "user", "content": "hello"}])
            rid = raw.headers["x-request-id"]
            gw.outcome(rid)
            assert httpx.post(f"{gw.base_url}/feedback", json={"request_id": rid, "thumbs": "up"}, timeout=10).status_code == 200
            assert sum(arms(gw).values()) > 0
        finally:
            gw.stop()


def test_a_rejection_taken_by_another_replica_drops_the_answer_from_the_cache_that_holds_it(tmp_path, redis_url, monkeypatch):
    url, prefix = redis_url
    monkeypatch.setenv("OPENCLAW_REDIS_PREFIX", prefix)
    with FakeUpstream() as up:
        base = fake_config(up.base_url, f"sqlite:///{tmp_path}/shared.sqlite")
        base = base.model_copy(update={
            "server": base.server.model_copy(update={"redis_url": url}),
            "learning": LearningSection(bandit=BanditSection(enabled=True, shared=True)),
        })
        a, b = (Running(base.model_copy(update={"cache": CacheSection(enabled=True, path=str(tmp_path / name))}),
                        router=QualityRouter({"m1": 0.8, "m2": 0.7, "m3": 0.2})) for name in ("cache_a", "cache_b"))
        try:
            question = [{"role": "user", "content": "What is the boiling point of water at sea level?"}]
            rid = a.client().chat.completions.with_raw_response.create(model="auto", messages=question).headers["x-request-id"]
            a.outcome(rid)
            cache_a = next(h for h in a.gateway.pipeline.hooks if isinstance(h, CacheHook)).cache
            wait_for(lambda: len(cache_a) == 1)
            # The load balancer sends the thumbs down to the replica that did not answer.
            assert httpx.post(f"{b.base_url}/feedback", json={"request_id": rid, "thumbs": "down"}, timeout=10).status_code == 200
            wait_for(lambda: len(cache_a) == 0)
        finally:
            a.stop()
            b.stop()
