"""Feedback and shadow decisions with a PostgreSQL outcome log, through a running gateway."""
from __future__ import annotations

import json
import time
from argparse import Namespace

import httpx

from router.feedback_log import (
    Feedback,
    latest_rewards,
    open_feedback_log,
    read_feedback,
    read_shadows,
)
from router.outcome_log import open_store
from tests.fake_upstream import FakeUpstream
from tests.gateway_harness import QualityRouter, Running, fake_config
from tests.test_shadow import LIVE


def _ask(gw, text):
    raw = gw.client().chat.completions.with_raw_response.create(model="auto", messages=[{"role": "user", "content": text}])
    return raw.headers["x-request-id"]


def test_feedback_is_stored_in_postgres_and_read_back(pg_url):
    with FakeUpstream() as up:
        gw = Running(fake_config(up.base_url, pg_url, extra="learning: {bandit: {enabled: true}}"),
                     router=QualityRouter(LIVE))
        try:
            rid = _ask(gw, "What is two plus two?")
            gw.outcome(rid)
            missing = httpx.post(f"{gw.url}/v1/feedback", json={"request_id": "req_nope", "thumbs": "up"})
            nul = httpx.post(f"{gw.url}/v1/feedback", json={"request_id": "req_\u0000x", "thumbs": "up"})  # was a 500
            ok = httpx.post(f"{gw.url}/v1/feedback", json={"request_id": rid, "score": 0.25, "label": "math"})
            ok_body = ok.json()
        finally:
            gw.stop()

    assert missing.status_code == 404 and missing.json()["error"]["code"] == "request_not_found"
    assert nul.status_code == 404 and nul.json()["error"]["code"] == "request_not_found"
    assert ok.status_code == 200, ok.text
    assert ok_body == {"object": "feedback", "request_id": rid, "score": 0.25, "signal": "score"}
    rows = read_feedback(pg_url)
    assert [(r["request_id"], r["score"], r["source"], r["label"]) for r in rows] == [(rid, 0.25, "explicit", "math")]
    assert latest_rewards(rows) == {rid: 0.25}


def test_tables_are_created_idempotently_and_keep_rows(pg_url):
    open_store(pg_url).close()  # the gateway's outcome log, beside which the readers below read feedback
    first = open_feedback_log(pg_url)
    first.add_feedback(Feedback("req_a", 0.1, source="implicit", signal="error"))
    first.add_feedback(Feedback("req_a", 0.9))
    first.close()
    second = open_feedback_log(pg_url)  # a second replica, or a restart, opens the same tables
    try:
        assert [r["score"] for r in second.feedback("req_a")] == [0.1, 0.9]
        assert second.feedback("req_b") == []
    finally:
        second.close()
    assert latest_rewards(read_feedback(pg_url)) == {"req_a": 0.9}
    assert read_shadows(pg_url) == []


def test_shadow_decisions_are_recorded_in_postgres_and_reported(shadow_artifact, pg_url, tmp_path):
    from training import shadow_report

    prompts = [f"Question {i}: which is larger, {i} squared or {i + 7} times two?" for i in range(6)]
    extra = f'learning: {{shadow: {{artifact: "{shadow_artifact}", call_share: 1.0, max_call_cost_usd: 10.0}}}}'
    with FakeUpstream() as up:
        gw = Running(fake_config(up.base_url, pg_url, extra=extra), router=QualityRouter(LIVE))
        try:
            ids = [_ask(gw, text) for text in prompts]
            for i, rid in enumerate(ids):
                gw.outcome(rid)
                r = httpx.post(f"{gw.url}/v1/feedback", json={"request_id": rid, "score": float(i % 2)})
                assert r.status_code == 200, r.text
            deadline = time.monotonic() + 20
            while len(read_shadows(pg_url)) < len(prompts) and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            gw.stop()

    rows = read_shadows(pg_url)
    assert sorted(r["request_id"] for r in rows) == sorted(ids)
    assert all(r["live_model"] == "m1" and isinstance(r["agree"], bool) for r in rows)
    assert all(r["agree"] == (r["shadow_model"] == "m1") for r in rows)
    assert all(set(r["shadow_candidate"]) >= {"p_good", "cost_usd", "latency_s"} for r in rows)
    assert all(r["called"] and r["call_status"] == "ok" for r in rows if not r["agree"])

    out = tmp_path / "report"
    assert shadow_report.run(Namespace(db=pg_url, out=str(out), seed=0)) == 0
    report = json.loads((out / "shadow_report.json").read_text())
    assert report["overall"]["requests"] == len(prompts)
    assert report["ope"]["n"] == len(ids)  # the retraining reader joined every outcome to its PostgreSQL feedback


def test_every_postgres_store_names_a_schema_that_does_not_exist(pg_url):
    # One set-up guard for the three stores: the feedback log's raised a bare psycopg traceback.
    import pytest

    from router.feedback_store_pg import PostgresFeedbackLog
    from router.outcome_store_pg import PostgresStore
    from service.governance.db import open_database

    missing = pg_url.rsplit("%3D", 1)[0] + "%3Dno_such_schema_here"
    for what, opener in (("feedback log", PostgresFeedbackLog), ("outcome log", PostgresStore),
                         ("governance database", open_database)):
        with pytest.raises(ValueError, match=f"^{what} .*cannot set up its tables: .*CREATE SCHEMA it first"):
            opener(missing)


def test_a_repeat_is_answered_while_the_feedback_table_cannot_be_written(pg_url, caplog):
    import psycopg

    with FakeUpstream() as up:
        gw = Running(fake_config(up.base_url, pg_url), router=QualityRouter(LIVE))
        try:
            first = _ask(gw, "Name a prime number above ten.")
            gw.outcome(first)
            with psycopg.connect(pg_url, autocommit=True) as conn:
                conn.execute("ALTER TABLE feedback RENAME TO feedback_away")  # every insert now fails
            with caplog.at_level("WARNING", logger="service.hooks.learning_hook"):
                again = _ask(gw, "Name a prime number above ten.")  # a regeneration: its signal cannot be stored
                gw.outcome(again)
                deadline = time.monotonic() + 10
                while "was not recorded" not in caplog.text and time.monotonic() < deadline:
                    time.sleep(0.02)
            with psycopg.connect(pg_url, autocommit=True) as conn:
                conn.execute("ALTER TABLE feedback_away RENAME TO feedback")
            third = _ask(gw, "Name a prime number above ten.")
            gw.outcome(third)
            deadline = time.monotonic() + 10
            while not read_feedback(pg_url) and time.monotonic() < deadline:
                time.sleep(0.02)
        finally:
            gw.stop()
    assert f"implicit feedback regenerated on {first} was not recorded" in caplog.text
    assert [(r["request_id"], r["signal"]) for r in read_feedback(pg_url)] == [(again, "regenerated")]
