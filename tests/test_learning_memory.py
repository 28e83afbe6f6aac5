"""What the learning loop remembers between requests, and for how long: the bounded maps, a tool
loop's model, and answers a client may regenerate. Time is a fake clock, never slept through."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from service import session_memory
from service.hooks import learning_hook
from service.recent import Recent
from tests.gateway_harness import fake_config

WINDOW_S = 60.0


@pytest.fixture
def clock(monkeypatch):
    """The session memory's `time.time`, set by the test (only that module sees it)."""
    now = [1000.0]
    monkeypatch.setattr(session_memory, "time", SimpleNamespace(time=lambda: now[0]))
    return now


@pytest.fixture
def runtime():
    config = fake_config("http://127.0.0.1:9/v1", "sqlite:///:memory:",
                         extra=f"learning: {{regenerate_window_s: {WINDOW_S}}}")
    return learning_hook.LearningRuntime(config, None, None, None, None)


def test_recent_drops_the_oldest_entries_past_its_limit():
    recent = Recent(2)
    recent.put("a", 1)
    recent.put("b", 2)
    recent.put("a", 3)  # put again: now the newest, so "b" is the oldest
    recent.put("c", 4)
    assert list(recent.items()) == [("a", 3), ("c", 4)]


def test_a_turns_model_is_kept_for_the_turn_ttl_then_forgotten(runtime, clock):
    runtime.memory.turn_answered("turn", "m2", 0.29)
    clock[0] += session_memory.TURN_TTL_S
    assert runtime.memory.turn_model("turn") == ("m2", 0.29)
    clock[0] += 1.0
    assert runtime.memory.turn_model("turn") is None  # the next step draws afresh


def test_an_answer_older_than_the_window_is_no_regeneration_even_if_nothing_pruned_it(runtime, clock):
    runtime.memory.answered("late", "req_late")
    runtime.memory.answered("soon", "req_soon")
    clock[0] += WINDOW_S
    assert runtime.memory.repeated("soon") == "req_soon"
    # No answer came in since: the old entry is still held, but is past the window.
    clock[0] += 1.0
    assert "late" in runtime.memory._prompts
    assert runtime.memory.repeated("late") is None


def test_redis_memory_round_trips_and_takes_a_regeneration_once(redis_url):
    import redis

    url, prefix = redis_url
    client = redis.Redis.from_url(url, decode_responses=True)
    memory = session_memory.RedisMemory(client, prefix, WINDOW_S)
    memory.turn_answered("turn", "m2", 0.29)
    memory.answered("prompt", "req_1")
    memory.close()  # the background writes have landed
    assert memory.turn_model("turn") == ("m2", 0.29)
    assert memory.turn_model("another turn") is None
    assert memory.repeated("prompt") == "req_1"
    assert memory.repeated("prompt") is None  # taken: another replica asking too gets nothing
    assert 0 < client.pttl(next(client.scan_iter(match=f"{prefix}:turn:*"))) <= session_memory.TURN_TTL_S * 1000
    keys = list(client.scan_iter(match=f"{prefix}:*"))
    assert keys and all(len(k.rsplit(":", 1)[-1]) == 40 for k in keys)  # digests: no prompt text in Redis


def test_a_failing_redis_is_left_alone_for_a_while_then_asked_again(monkeypatch):
    import redis

    asked = []

    class Down:
        def get(self, key):
            asked.append("get")
            raise redis.ConnectionError("connection refused")

        def pipeline(self, transaction=True):
            asked.append("pipeline")
            raise redis.ConnectionError("connection refused")

        def set(self, *args, **kwargs):
            asked.append("set")
            raise redis.ConnectionError("connection refused")

    now = [100.0]
    monkeypatch.setattr(session_memory, "time", SimpleNamespace(time=lambda: now[0], monotonic=lambda: now[0]))
    memory = session_memory.RedisMemory(Down(), "p", WINDOW_S)
    assert memory.turn_model("turn") is None
    # Down: neither reads on the request path nor writes try it again meanwhile.
    assert memory.repeated("prompt") is None
    memory.answered("prompt", "req_1")
    memory.turn_answered("turn", "m1", 1.0)
    memory.close()
    assert asked == ["get"]
    now[0] += session_memory.RETRY_AFTER_S
    assert memory.repeated("prompt") is None and asked == ["get", "pipeline"]
