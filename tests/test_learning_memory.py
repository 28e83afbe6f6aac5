"""What the learning loop remembers between requests, and for how long: the bounded maps, a tool
loop's model, and answers a client may regenerate. Time is a fake clock, never slept through."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from service.hooks import learning_hook
from service.recent import Recent
from tests.gateway_harness import fake_config

WINDOW_S = 60.0


@pytest.fixture
def clock(monkeypatch):
    """The learning hook's `time.time`, set by the test (only that module sees it)."""
    now = [1000.0]
    monkeypatch.setattr(learning_hook, "time", SimpleNamespace(time=lambda: now[0]))
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
    runtime.turn_answered("turn", "m2", 0.29)
    clock[0] += learning_hook.TURN_TTL_S
    assert runtime.turn_model("turn") == ("m2", 0.29)
    clock[0] += 1.0
    assert runtime.turn_model("turn") is None  # the next step draws afresh


def test_an_answer_older_than_the_window_is_no_regeneration_even_if_nothing_pruned_it(runtime, clock):
    runtime.answered("late", "req_late")
    runtime.answered("soon", "req_soon")
    clock[0] += WINDOW_S
    assert runtime.repeated("soon") == "req_soon"
    # No answer came in since: the old entry is still held, but is past the window.
    clock[0] += 1.0
    assert "late" in runtime._prompts
    assert runtime.repeated("late") is None
