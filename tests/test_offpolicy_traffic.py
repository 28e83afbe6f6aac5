"""Logged traffic for retraining and off-policy evaluation keeps the feature row the live router
computed, so it works without storing prompts (`prompt_storage: hash`)."""
from __future__ import annotations

import httpx
import numpy as np
import pytest

from router.features import request_features
from router.feedback_log import Feedback, FeedbackLog
from router.request_view import view_chat_request
from router.types import RoutingRequest
from tests.fake_upstream import FakeUpstream
from tests.gateway_harness import QualityRouter, Running, fake_config
from training.offpolicy import load_traffic

TOOLS = [{"type": "function", "function": {"name": f"tool_{i}", "parameters": {"type": "object", "properties": {}}}}
         for i in range(3)]


def _body(i: int) -> dict:
    return {
        "model": "auto",
        "tools": TOOLS,
        "messages": [
            {"role": "system", "content": "You are a careful agent. " * 40},
            {"role": "user", "content": f"List the files in project {i}."},
            {"role": "assistant", "content": "Which folder?"},
            {"role": "user", "content": f"The src folder of project {i}, please, and count the Python files."},
        ],
    }


def test_hash_storage_keeps_logged_requests_usable(tmp_path):
    db = f"sqlite:///{tmp_path}/log.sqlite"
    with FakeUpstream() as up:
        config = fake_config(up.base_url, db)
        config = config.model_copy(update={"server": config.server.model_copy(update={"prompt_storage": "hash"})})
        gw = Running(config, router=QualityRouter({"m1": 0.9, "m2": 0.6, "m3": 0.5}))
        try:
            bodies = [_body(i) for i in range(3)]
            for body in bodies:
                r = httpx.post(f"{gw.base_url}/chat/completions", json=body, timeout=10)
                assert r.status_code == 200
                fb = httpx.post(f"{gw.url}/v1/feedback", json={"request_id": r.headers["x-request-id"], "score": 1.0})
                assert fb.status_code == 200
            rows = gw.outcomes(at_least=3)
        finally:
            gw.stop()

    assert all(row["prompt"] is None and row["prompt_hash"] for row in rows)
    traffic = load_traffic(db)
    assert len(traffic) == 3
    assert set(traffic.texts) == {row["prompt_hash"] for row in rows}
    live = request_features([view_chat_request(b) for b in bodies])
    # Order-independent: every logged row is one of the live rows, and they are all there.
    for row in traffic.features:
        assert np.isclose(live, row, atol=1e-5).all(axis=1).any()
    # The stored row carries what the text alone cannot: turns and tools.
    text_only = request_features([RoutingRequest(text=b["messages"][-1]["content"]) for b in bodies])
    assert not np.allclose(np.sort(live, axis=0), np.sort(text_only, axis=0))


def test_a_feature_row_from_another_feature_set_is_converted_recomputed_or_left_out(tmp_path):
    from router.features import FEATURE_NAMES
    from router.outcome_log import OutcomeRecord, SQLiteStore

    candidates = [{"model": "m1", "p_good": 0.8, "utility": 0.7}, {"model": "m2", "p_good": 0.6, "utility": 0.55}]
    old_row = [9.0] * (len(FEATURE_NAMES) + 2)  # a width no version of this router logged
    prompt = "Explain the difference between a list and a tuple"

    def record(request_id: str, prompt: str | None) -> OutcomeRecord:
        return OutcomeRecord(request_id=request_id, prompt=prompt, prompt_hash="h-" + request_id, candidates=candidates,
                             embedding=np.ones(384, dtype=np.float32).tobytes(), chosen_model="m1", propensity=1.0,
                             status="error", attempts=[{"model": "m1", "status": "error", "kind": "server_error"}],
                             extras={"features": old_row})

    store = SQLiteStore(tmp_path / "log.sqlite")
    store.write_many([record("kept", prompt), record("hashed", None)])
    store.close()
    traffic = load_traffic(f"sqlite:///{tmp_path}/log.sqlite")
    assert traffic.request_ids == ["kept"]
    np.testing.assert_array_equal(traffic.features[0], request_features([RoutingRequest(text=prompt)])[0])


def test_a_row_logged_with_the_request_size_feature_keeps_the_rest_of_its_features(tmp_path):
    from router.features import FEATURE_NAMES
    from router.outcome_log import OutcomeRecord, SQLiteStore

    live = list(range(len(FEATURE_NAMES)))  # what the router saw, in today's order
    store = SQLiteStore(tmp_path / "log.sqlite")
    store.write_many([OutcomeRecord(
        request_id="before-the-change", prompt="[system] a 30 KB agent prompt...\n[user] list the files", prompt_hash="h",
        candidates=[{"model": "m1", "p_good": 0.8, "utility": 0.7}], embedding=np.ones(384, dtype=np.float32).tobytes(),
        chosen_model="m1", propensity=1.0, status="error", attempts=[{"model": "m1", "status": "error", "kind": "server_error"}],
        extras={"features": [8.1, *live]})])  # log_input_tokens came first
    store.close()
    traffic = load_traffic(f"sqlite:///{tmp_path}/log.sqlite")
    np.testing.assert_array_equal(traffic.features[0], live)  # not recomputed from the stored system prompt


def test_retraining_leaves_out_what_the_live_bandit_leaves_out(tmp_path):
    from router.outcome_log import OutcomeRecord, SQLiteStore

    def rec(rid: str, status: str, answered: str | None, attempts: list) -> OutcomeRecord:
        return OutcomeRecord(request_id=rid, prompt="q", prompt_hash="h", candidates=[{"model": "m1", "p_good": 0.8, "utility": 0.7}],
                             embedding=np.ones(384, dtype=np.float32).tobytes(), chosen_model="m1", propensity=1.0,
                             status=status, answered_model=answered, attempts=attempts)

    store = SQLiteStore(tmp_path / "log.sqlite")
    store.write_many([
        rec("m1-failed", "error", None, [{"model": "m1", "status": "error", "kind": "server_error"}]),
        # the chosen model's circuit was open: never called, so the failure says nothing of it
        rec("m1-skipped", "error", None, [{"model": "m1", "status": "skipped", "reason": "circuit_open"},
                                          {"model": "m2", "status": "error", "kind": "server_error"}]),
        # a fallback's answer was cut off: its truncation is not m1's
        rec("m2-truncated", "truncated", "m2", [{"model": "m1", "status": "error", "kind": "server_error"},
                                                {"model": "m2", "status": "ok"}]),
        # m1 refused the request itself (invalid): feedback on it is no reward for m1
        rec("m1-refused", "error", None, [{"model": "m1", "status": "error", "kind": "bad_request"}]),
    ])
    store.close()
    FeedbackLog(f"sqlite:///{tmp_path}/log.sqlite").add_feedback(Feedback("m1-refused", 0.0))
    assert load_traffic(f"sqlite:///{tmp_path}/log.sqlite").request_ids == ["m1-failed"]


@pytest.fixture(params=["sqlite", "postgresql"])
def log_url(request, tmp_path):
    return f"sqlite:///{tmp_path}/log.sqlite" if request.param == "sqlite" else request.getfixturevalue("pg_url")


def test_every_kind_of_unusable_row_is_left_out_whether_sql_or_python_finds_it(log_url):
    """Part of the rule runs in SQL, the rest in Python: together they keep exactly these rows."""
    from router.features import FEATURE_NAMES
    from router.feedback_log import open_feedback_log
    from router.outcome_log import OutcomeRecord, open_store

    candidates = [{"model": "m1", "p_good": 0.8, "utility": 0.7}, {"model": "m2", "p_good": 0.6, "utility": 0.5, "excluded": "rpm"}]
    ok = {"status": "ok", "answered_model": "m1", "attempts": [{"model": "m1", "status": "ok"}]}
    failed = {"status": "error", "answered_model": None, "attempts": [{"model": "m1", "status": "error", "kind": "server_error"}]}
    rows = {  # request id: how it differs from a usable row with feedback
        "no-candidates": {"candidates": None}, "empty-candidates": {"candidates": []},
        "no-propensity": {"propensity": None}, "nan-propensity": {"propensity": float("nan")},
        "no-chosen-model": {"chosen_model": None}, "empty-chosen-model": {"chosen_model": ""},
        "no-embedding": {"embedding": None}, "cache-hit": {"cache_status": "hit"},
        "no-prompt-no-features": {"prompt": None, "extras": {}},
        "no-prompt-features-of-another-width": {"prompt": None, "extras": {"features": [1.0, 2.0]}},
        "fallback-answered": {"answered_model": "m2"},
        "kept": {}, "kept-bypass": {"cache_status": "bypass"},
        "kept-hash-only": {"prompt": None},
        "kept-model-listed-twice": {"candidates": [*candidates, {"model": "m1", "p_good": 0.9, "utility": 0.4}]},
        "kept-feedback-on-an-error": failed,
    }
    unfed = {
        "no-feedback": {},
        "refused-by-the-model": {**failed, "attempts": [{"model": "m1", "status": "error", "kind": "bad_request"}]},
        "chosen-model-skipped": {**failed, "attempts": [{"model": "m1", "status": "skipped"},
                                                        {"model": "m2", "status": "error", "kind": "server_error"}]},
        "kept-failed": failed,
    }
    records = []
    for i, (rid, change) in enumerate([*rows.items(), *unfed.items()]):
        fields = {"prompt": f"prompt {rid}", "prompt_hash": f"h-{rid}", "candidates": candidates, "chosen_model": "m1",
                  "propensity": 0.5, "embedding": np.ones(384, dtype=np.float32).tobytes(), "cost_usd": 0.01 * i,
                  "extras": {"features": list(range(len(FEATURE_NAMES)))}, **ok, **change}
        records.append(OutcomeRecord(request_id=rid, ts=1000.0 + i, **fields))
    store = open_store(log_url)
    store.write_many(records)
    store.close()
    feedback = open_feedback_log(log_url)
    for rid in rows:
        feedback.add_feedback(Feedback(rid, 0.3, source="implicit", signal="error"))
        feedback.add_feedback(Feedback(rid, 0.75, label="code"))
    feedback.close()

    traffic = load_traffic(log_url)
    assert traffic.request_ids == ["kept", "kept-bypass", "kept-hash-only", "kept-model-listed-twice",
                                   "kept-feedback-on-an-error", "kept-failed"]
    np.testing.assert_array_equal(traffic.quality, [0.75] * 5 + [0.0])  # the explicit score; 0 for a failure
    assert traffic.task == ["code"] * 5 + [None]
    assert traffic.texts[2] == "h-kept-hash-only" and traffic.models == ["m1", "m2"]
    np.testing.assert_array_equal(traffic.eligible[0], [True, False])
    # A model listed twice counts with its last entry.
    np.testing.assert_allclose([traffic.p_logged[3, 0], traffic.penalty[3, 0]], [0.9, 0.5])
    np.testing.assert_allclose(traffic.cost, [0.01 * i for i in (11, 12, 13, 14, 15, 19)])
    np.testing.assert_array_equal(traffic.features[0], list(range(len(FEATURE_NAMES))))


def test_the_routers_that_made_the_logged_decisions_are_read_on_either_backend(log_url):
    # retrain's default live router; the PostgreSQL driver reads a `%` in SQL as a placeholder.
    from router.outcome_log import OutcomeRecord, open_store
    from training.retrain import logged_routers

    store = open_store(log_url)
    store.write_many([OutcomeRecord(request_id="a", ts=1.0, extras={"router": "/models/first"}),
                 OutcomeRecord(request_id="b", ts=2.0, extras={"client_request_id": "x"}),
                 OutcomeRecord(request_id="c", ts=3.0, extras={"router": "/models/second"}),
                 OutcomeRecord(request_id="d", ts=4.0, extras={"router": "/models/second", "usage_estimated": True})])
    store.close()
    assert logged_routers(log_url) == ("/models/second", {"/models/first": 1, "/models/second": 2})


def test_models_predicted_through_a_router_model_are_replayed_as_the_live_router_predicted_them(tmp_path):
    """Every preset catalog names its models for the router through `router_model`: offline, they
    had been given the unseen-model prior, so the "live router" retrain and shadow-report judged
    chose otherwise than the one that served."""
    from router.engine import LearnedRouter
    from training.offpolicy import greedy_probs, router_p_good

    db = f"sqlite:///{tmp_path}/log.sqlite"
    router = LearnedRouter.load("models/default")
    proxies = {"big": "gpt-4-1106-preview", "mid": "mixtral-8x7b-chat", "small": "mistral-7b-chat"}
    with FakeUpstream() as up:
        config = fake_config(up.base_url, db, models=[
            {"name": name, "router_model": proxy, "context_window": 100000, "in": price, "out": 2 * price}
            for (name, proxy), price in zip(proxies.items(), (10.0, 0.6, 0.2))])
        gw = Running(config, router=router)
        try:
            questions = ["What is 17 * 23?", "Write a haiku about autumn.", "Prove that the square root of 2 is irrational.",
                         "Translate 'good morning' into French.", "Explain how a hash map handles collisions."]
            for q in questions:
                r = httpx.post(f"{gw.base_url}/chat/completions", json={"model": "auto", "messages": [{"role": "user", "content": q}]},
                               timeout=30)
                assert r.status_code == 200
                assert httpx.post(f"{gw.url}/v1/feedback", json={"request_id": r.headers["x-request-id"], "score": 1.0}).status_code == 200
            gw.outcomes(at_least=len(questions))
        finally:
            gw.stop()
    traffic = load_traffic(db)
    assert len(traffic) == len(questions) and traffic.predicted_as == proxies
    p = router_p_good(router, traffic)
    assert np.allclose(p, traffic.p_logged, atol=1e-3)  # the predictions it served with, not the prior
    assert (np.argmax(greedy_probs(p, traffic), axis=1) == traffic.action).all()  # and so its own choices
