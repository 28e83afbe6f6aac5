"""Two gateway replicas behind one load balancer learn together over Redis
(`learning.bandit.shared`): feedback that reaches the replica which did not decide the request
still teaches the bandit that did, and both end up with the same corrections; with
`server.redis_url` alone, a tool loop's next step and a regeneration are recognised on either
replica. Real Redis, real gateways on 127.0.0.1, the real `openai` SDK and feedback endpoint."""
from __future__ import annotations

import time

import httpx
import pytest
import redis

from router.config import BanditSection, CacheSection, ConfigError, LearningSection, parse_config
from router.feedback_log import read_feedback
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


def _two_replicas(upstream_url: str, db: str, url: str, quality_a: dict, quality_b: dict) -> tuple[Running, Running]:
    """Replicas sharing one Redis and one outcome log, without the shared bandit: what they
    remember of conversations is shared whenever `server.redis_url` is set."""
    config = fake_config(upstream_url, db)
    config = config.model_copy(update={"server": config.server.model_copy(update={"redis_url": url})})
    return Running(config, router=QualityRouter(quality_a)), Running(config, router=QualityRouter(quality_b))


def test_a_tool_loop_step_on_another_replica_stays_on_the_turns_model(tmp_path, redis_url, monkeypatch):
    url, prefix = redis_url
    monkeypatch.setenv("OPENCLAW_REDIS_PREFIX", prefix)
    # The replicas rank the models apart, as one router does when the history grows mid-loop.
    with FakeUpstream() as up:
        a, b = _two_replicas(up.base_url, f"sqlite:///{tmp_path}/shared.sqlite", url, {"m1": 0.9, "m2": 0.5},
                             {"m1": 0.5, "m2": 0.9})
        try:
            turn = [{"role": "user", "content": "Fix the failing test"}]
            first = a.client().chat.completions.with_raw_response.create(model="auto", messages=turn)
            assert first.headers["x-router-model"] == "m1"
            call = {"id": "c1", "type": "function", "function": {"name": "read_file", "arguments": "{}"}}
            step = [*turn, {"role": "assistant", "content": None, "tool_calls": [call]},
                    {"role": "tool", "tool_call_id": "c1", "content": "def test(): assert 1 == 2"}]
            client = redis.Redis.from_url(url, decode_responses=True)
            wait_for(lambda: any(client.scan_iter(match=f"{prefix}:turn:*")))  # written off the request path
            second = b.client().chat.completions.with_raw_response.create(model="auto", messages=step)
            assert second.headers["x-router-model"] == "m1"
            assert "tool loop is on" in second.headers["x-router-reason"]
            # A new turn on that replica is routed by its own ranking.
            other = b.client().chat.completions.with_raw_response.create(
                model="auto", messages=[{"role": "user", "content": "Something else"}])
            assert other.headers["x-router-model"] == "m2"
        finally:
            a.stop()
            b.stop()


def test_a_regeneration_sent_to_another_replica_marks_the_first_answer(tmp_path, redis_url, monkeypatch):
    url, prefix = redis_url
    monkeypatch.setenv("OPENCLAW_REDIS_PREFIX", prefix)
    with FakeUpstream() as up:
        quality, db = {"m1": 0.9, "m2": 0.5}, f"sqlite:///{tmp_path}/shared.sqlite"
        a, b = _two_replicas(up.base_url, db, url, quality, quality)
        try:
            question = [{"role": "user", "content": "Write a haiku about rain"}]
            rid = a.client().chat.completions.with_raw_response.create(model="auto", messages=question).headers["x-request-id"]
            a.outcome(rid)
            client = redis.Redis.from_url(url, decode_responses=True)
            wait_for(lambda: any(client.scan_iter(match=f"{prefix}:regen:*")))
            again = b.client().chat.completions.with_raw_response.create(model="auto", messages=question)
            b.outcome(again.headers["x-request-id"])
            wait_for(lambda: any(r["request_id"] == rid for r in read_feedback(db)))
            rows = [r for r in read_feedback(db) if r["request_id"] == rid]
            assert [(r["signal"], r["score"]) for r in rows] == [("regenerated", 0.0)]
            # Counted once: a third ask regenerates the second answer, not the first again.
            b.client().chat.completions.create(model="auto", messages=question)
            wait_for(lambda: any(r["request_id"] == again.headers["x-request-id"] for r in read_feedback(db)))
            assert len([r for r in read_feedback(db) if r["request_id"] == rid]) == 1
        finally:
            a.stop()
            b.stop()
