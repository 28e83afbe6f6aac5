"""What the learning loop remembers between requests, and for how long: the bounded maps, a tool
loop's model, and answers a client may regenerate. Time is a fake clock, never slept through."""
from __future__ import annotations

import asyncio
import json
import time
from types import SimpleNamespace

import pytest
import redis

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


def test_replicas_find_each_others_turns_and_repeats_in_redis_and_take_a_repeat_once(redis_url):
    url, prefix = redis_url
    a, b = (session_memory.RedisMemory(session_memory.redis_client(url), prefix, WINDOW_S) for _ in range(2))
    a.turn_answered("turn", "m2", 0.29)
    a.answered("prompt", "req_1")
    a.close()  # its background writes have landed
    assert asyncio.run(b.find_turn("turn")) == ("m2", 0.29)
    assert asyncio.run(b.find_turn("another turn")) is None
    assert asyncio.run(b.take_repeat("prompt")) == "req_1"
    assert asyncio.run(b.take_repeat("prompt")) is None  # taken: a third ask is not the first answer's
    client = redis.Redis.from_url(url, decode_responses=True)
    assert 0 < client.pttl(next(client.scan_iter(match=f"{prefix}:turn:*"))) <= session_memory.TURN_TTL_S * 1000
    keys = list(client.scan_iter(match=f"{prefix}:*"))
    assert keys and all(len(k.rsplit(":", 1)[-1]) == 40 for k in keys)  # digests: no prompt text in Redis
    b.close()


def test_a_turn_written_late_does_not_replace_a_later_step_another_replica_stored(redis_url):
    url, prefix = redis_url
    a, b = (session_memory.RedisMemory(session_memory.redis_client(url), prefix, WINDOW_S) for _ in range(2))
    client = redis.Redis.from_url(url, decode_responses=True)
    a.turn_answered("turn", "m1", 0.9)
    a.close()
    key = next(client.scan_iter(match=f"{prefix}:turn:*"))
    # Another replica answered a later step of the turn on m3; this replica's write for an
    # earlier step was still queued (its clock reads earlier than the stored step's).
    client.set(key, json.dumps(["m3", 0.4, time.time() + 30]), ex=60)
    late = session_memory.RedisMemory(session_memory.redis_client(url), prefix, WINDOW_S)
    late.turn_answered("turn", "m2", 0.7)
    late.close()
    assert json.loads(client.get(key))[:2] == ["m3", 0.4]
    assert asyncio.run(b.find_turn("turn")) == ("m3", 0.4)
    client.set(key, json.dumps(["m3", 0.4, time.time() - 30]), ex=60)  # an earlier step: replaced
    later = session_memory.RedisMemory(session_memory.redis_client(url), prefix, WINDOW_S)
    later.turn_answered("turn", "m2", 0.7)
    later.close()
    assert json.loads(client.get(key))[:2] == ["m2", 0.7] and 0 < client.ttl(key) <= session_memory.TURN_TTL_S
    b.close()


class _Unavailable:
    """A Redis that fails every command, as a refused connection does, or answers too late."""

    def __init__(self, delay_s: float = 0.0):
        self.delay_s = delay_s
        self.asked: list[str] = []

    def _fail(self, what: str):
        self.asked.append(what)
        time.sleep(self.delay_s)
        raise redis.ConnectionError("connection refused")

    def get(self, key):
        return self._fail("get")

    def pipeline(self, transaction=True):
        return self._fail("pipeline")

    def register_script(self, script):
        return lambda **kwargs: self._fail("evalsha")

    def close(self):
        pass


def test_a_failing_redis_is_left_alone_for_a_while_and_the_replicas_own_memory_still_answers(monkeypatch):
    down = _Unavailable()
    memory = session_memory.RedisMemory(down, "p", WINDOW_S)
    assert asyncio.run(memory.find_turn("turn")) is None
    assert down.asked == ["get"]
    # Down: neither reads nor writes try it again meanwhile; what this replica answered it still finds.
    memory.turn_answered("turn", "m1", 1.0)
    memory.answered("prompt", "req_1")
    assert asyncio.run(memory.find_turn("turn")) == ("m1", 1.0)
    assert asyncio.run(memory.take_repeat("prompt")) == "req_1"
    assert down.asked == ["get"] and memory.dropped == 2
    monkeypatch.setattr(session_memory.time, "monotonic", lambda: time.perf_counter() + 10 * session_memory.RETRY_AFTER_S)
    assert asyncio.run(memory.take_repeat("other")) is None and down.asked == ["get", "pipeline"]
    memory.close()
    memory.answered("late", "req_2")  # after close: not written, and counted
    assert memory.dropped == 3


def test_a_read_that_redis_holds_past_the_timeout_is_given_up_and_redis_left_alone():
    slow = _Unavailable(delay_s=4 * session_memory.TIMEOUT_S)
    memory = session_memory.RedisMemory(slow, "p", WINDOW_S)
    assert asyncio.run(memory.find_turn("turn")) is None
    assert not memory._up()  # given up by the deadline, not by the late error
    assert asyncio.run(memory.take_repeat("prompt")) is None and slow.asked == ["get"]
    memory.close()


def test_a_loop_that_moved_on_another_replica_stays_on_the_model_it_moved_to(redis_url):
    url, prefix = redis_url
    a, b = (session_memory.RedisMemory(session_memory.redis_client(url), prefix, WINDOW_S) for _ in range(2))
    a.turn_answered("turn", "X", 0.5)  # step 1 on replica A
    a.close()
    assert asyncio.run(b.find_turn("turn")) == ("X", 0.5)
    time.sleep(0.01)
    b.turn_answered("turn", "Y", 0.5)  # step 2 on B moved (X was no longer eligible there)
    b.close()
    c = session_memory.RedisMemory(session_memory.redis_client(url), prefix, WINDOW_S)
    c.local.turn_answered("turn", "X", 0.5)
    c.local._turns["turn"] = ("X", 0.5, time.time() - 1.0)  # what A itself remembers: older than B's step
    assert asyncio.run(c.find_turn("turn")) == ("Y", 0.5)  # step 3, back on A's memory
    c.close()
