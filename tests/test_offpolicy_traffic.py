"""Logged traffic for retraining and off-policy evaluation keeps the feature row the live router
computed, so it works without storing prompts (`prompt_storage: hash`)."""
from __future__ import annotations

import httpx
import numpy as np

from router.features import request_features
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


def test_a_feature_row_from_another_feature_set_is_recomputed_or_left_out(tmp_path):
    from router.features import FEATURE_NAMES
    from router.outcome_log import OutcomeRecord, SQLiteStore

    candidates = [{"model": "m1", "p_good": 0.8, "utility": 0.7}, {"model": "m2", "p_good": 0.6, "utility": 0.55}]
    old_row = [9.0] * (len(FEATURE_NAMES) + 1)  # logged by a version with one more cheap feature
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
