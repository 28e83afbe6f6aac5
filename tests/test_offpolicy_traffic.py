"""Logged traffic for retraining and off-policy evaluation keeps the feature row the live router
computed, so it works without storing prompts (`prompt_storage: hash`)."""
from __future__ import annotations

import httpx
import numpy as np

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
