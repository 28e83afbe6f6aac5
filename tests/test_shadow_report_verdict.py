"""The shadow report leads with the verdict `retrain` would give, shows whether the log supports the
shadow router's choices, plots the paired difference against 0, writes numbers for a person, and
counts the shadow calls the spend cap skipped (which the observed deltas leave out)."""
from __future__ import annotations

import concurrent.futures
import html
import json
from argparse import Namespace

import httpx
import pytest

from router.feedback_log import SKIPPED_BY_CAP, read_feedback, read_shadows
from tests.fake_upstream import FakeUpstream
from tests.gateway_harness import QualityRouter, Running, fake_config
from tests.test_shadow import LIVE, _shadows, _synthetic_shadows

TOPICS = ["reverse a linked list in Python", "the capital of Australia", "solving 3x + 7 = 22", "'good morning' in French",
          "the planet closest to the sun", "TCP against UDP", "whether a tomato is a fruit", "why the trophy does not fit",
          "sorting a list of dictionaries by key", "the boiling point of water on Everest"]


def _id(client, text: str, **kwargs) -> str:
    raw = client.chat.completions.with_raw_response.create(model="auto", messages=[{"role": "user", "content": text}], **kwargs)
    return raw.headers["x-request-id"]


def _run(db: str, out) -> dict:
    from training import shadow_report

    assert shadow_report.run(Namespace(db=db, out=str(out), seed=0)) == 0
    return json.loads((out / "shadow_report.json").read_text())


def test_the_report_gives_retrains_verdict_support_and_the_paired_difference(shadow_artifact, tmp_path, capsys, monkeypatch):
    """The review's case: the live router serves m1 with probability 1 (no bandit), the shadow router
    prefers m2 on most requests, so the log never shows most of its choices. Retrain refuses such a
    candidate; the report showed a SNIPS gain and said nothing of support."""
    from training import shadow_report
    from training.offpolicy import load_traffic
    from training.retrain import promotion
    from training.support_advice import GENERIC, exploration_advice

    db = f"sqlite:///{tmp_path}/shadow.sqlite"
    extra = f'learning: {{shadow: {{artifact: "{shadow_artifact}"}}}}'
    prompts = [f"Question {i}: tell me about {TOPICS[i % len(TOPICS)]}, case {i * 7919 % 1000}." for i in range(210)]
    with FakeUpstream() as up:
        gw = Running(fake_config(up.base_url, db, extra=extra), router=QualityRouter(LIVE))
        try:
            with concurrent.futures.ThreadPoolExecutor(8) as pool:
                ids = list(pool.map(lambda p: _id(gw.client(), p), prompts))
            for i, rid in enumerate(ids):
                gw.outcome(rid)
                r = httpx.post(f"{gw.url}/v1/feedback", json={"request_id": rid, "score": float(i % 3 != 0)})
                assert r.status_code == 200, r.text
            rows = _shadows(db, len(ids))
        finally:
            gw.stop()
    assert sum(not r["agree"] for r in rows) > 0.2 * len(rows)

    capsys.readouterr()
    report = _run(db, tmp_path / "report")
    said = capsys.readouterr().out
    # the same rule as retrain (its default estimator and least number of requests, its advice read
    # off the log), on the same estimates
    advice: list[str] = []
    raw = shadow_report.summarize(rows, {}, {}, load_traffic(db), seed=0,
                                  advise=lambda t, choices: advice.append(exploration_advice(db, t, choices)) or advice[-1])
    expected, each = promotion(raw["ope"], raw["ope_vs_live_router"], "dr", 200, advice[0])
    assert report["ope"]["n"] >= 200 and report["ope"]["support"]["verdict"] == "unsupported"
    headline = f"Keep the live router: {expected.reason}."
    assert report["verdict"] == {"promote": False, "reason": expected.reason, "estimator": "dr", "min_requests": 200,
                                 "each": each, "headline": headline}
    assert expected.reason.startswith("the log does not support the candidate's choices")
    # What the log shows (no bandit: every choice logged with propensity 1), not the generic advice.
    assert "the gateway explored none of these requests" in expected.reason and GENERIC not in expected.reason
    assert said.splitlines()[0] == headline  # the CLI says it too

    page = (tmp_path / "report" / "shadow_report.html").read_text()
    body = page[page.index("<body>"):]
    assert body.index('<div class="verdict keep"><b>Keep the live router</b>') < body.index("<h2>")  # it leads
    for comparison in each.values():  # each of retrain's two comparisons says why it failed
        assert f": {html.escape(comparison['reason'])}</li>" in page and "<b>Failed</b>" in page
    never = 1 - report["ope"]["support"]["weight_mean"]["value"]
    assert "Support: the log does not support the shadow router's choices." in page
    assert f"About {never:.1%} (95 % interval" in page and "of them are choices the live gateway never made" in page
    assert f"choices the log never shows<b>{never:.1%}</b>" in page
    assert "<td>utility · DR</td>" in page and "decides</td>" not in page  # the support check refused: none decides

    figures = []
    monkeypatch.setattr(shadow_report, "_png", lambda fig: figures.append(fig) or "")
    shadow_report.plots(report, read_shadows(db))
    (ope,) = [f for f in figures if f._suptitle is not None
              and f._suptitle.get_text().startswith("Shadow router − what the gateway served")]
    for ax, (metric, scale) in zip(ope.axes, (("utility", 1.0), ("quality", 1.0), ("cost_usd", 1000.0))):
        assert any(list(line.get_ydata()) == [0.0, 0.0] for line in ax.get_lines())  # the zero line
        drawn = sorted(float(line.get_ydata()[0]) for line in ax.get_lines() if line.get_marker() == "o")
        diffs = report["ope"][metric]["difference"]
        assert drawn == pytest.approx(sorted(diffs[e]["value"] * scale for e in ("ips", "snips", "dr") if diffs[e]["value"] is not None))


def test_the_report_writes_money_per_thousand_requests_and_shares_as_percent():
    from training import shadow_report

    shadows = _synthetic_shadows(40)
    for r in shadows[20:]:  # the shadow's choice is predicted 8.261e-06 cheaper, as in the review
        r["shadow_on_live_choice"] = {**r["shadow_candidate"], "cost_usd": r["shadow_candidate"]["cost_usd"] + 2 * 8.261e-06}
    for r in shadows[:20]:
        r["shadow_on_live_choice"] = r["shadow_candidate"]
    report = shadow_report.summarize(shadows, {}, {})
    page = shadow_report.render_html(report, {})
    assert "Δ predicted cost<b>-$0.0083</b><small>per 1,000 requests</small>" in page
    assert "agreement<b>50.0%</b>" in page
    assert "e-0" not in page  # no -8.261e-06
    assert '<div class="verdict none"><b>No verdict yet</b>' in page  # no feedback: nothing to judge on


def test_shadow_calls_the_spend_cap_skips_are_kept_apart_and_reported(shadow_artifact, tmp_path, capsys):
    """A call reserves the most it could be billed: without max_tokens that is the model's whole
    output limit, over this cap; with max_tokens 16 it fits. The skipped calls were stored as if
    never drawn, and the observed deltas read only the calls made."""
    db = f"sqlite:///{tmp_path}/shadow.sqlite"
    cap = 0.001
    extra = f'learning: {{shadow: {{artifact: "{shadow_artifact}", call_share: 1.0, max_call_cost_usd: {cap}}}}}'
    short = set()
    with FakeUpstream() as up:
        gw = Running(fake_config(up.base_url, db, extra=extra), router=QualityRouter(LIVE))
        try:
            for i in range(24):
                text = f"Question {i}: tell me about {TOPICS[i % len(TOPICS)]}."
                if i % 2:
                    short.add(_id(gw.client(), text, max_tokens=16))
                else:
                    _id(gw.client(), text)
            rows = _shadows(db, 24)
            shadow_calls = [r for r in up.requests if r.body.get("model") != "m1"]
        finally:
            gw.stop()
    drawn = [r for r in rows if not r["agree"]]
    called = [r for r in drawn if r["request_id"] in short]
    skipped = [r for r in drawn if r["request_id"] not in short]
    assert called and skipped
    assert all(r["called"] and r["call_status"] == "ok" and r["call_reserved_usd"] <= cap for r in called)
    assert all(not r["called"] and r["call_status"] == SKIPPED_BY_CAP and r["call_reserved_usd"] > cap for r in skipped)
    assert all(r["call_status"] is None for r in rows if r["agree"])  # never drawn: no call to skip
    assert len(shadow_calls) == len(called)

    capsys.readouterr()
    calls = _run(db, tmp_path / "report")["observed_shadow_calls"]
    assert (calls["drawn"], calls["calls"], calls["skipped_by_cap"]) == (len(drawn), len(called), len(skipped))
    assert calls["skipped_reserved_usd_max"] == pytest.approx(max(r["call_reserved_usd"] for r in skipped))
    for model in {r["shadow_model"] for r in drawn}:
        assert calls["by_model"][model]["skipped_by_cap"] == sum(r["shadow_model"] == model for r in skipped)
        assert calls["by_model"][model]["calls"] == sum(r["shadow_model"] == model for r in called)
    assert f"{len(skipped)} of {len(drawn)} shadow calls drawn were skipped by the spend cap" in capsys.readouterr().out
    page = (tmp_path / "report" / "shadow_report.html").read_text()
    assert f"{len(skipped)} of the {len(drawn)} shadow calls drawn" in page
    assert f"The observed deltas below cover only the {len(called)} calls made" in page
    assert read_feedback(db) == []


def _log_from_before_reservations(path):
    """The outcome log's feedback tables as a version before `call_reserved_usd` left them (WAL mode)."""
    import sqlite3

    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(
            "CREATE TABLE shadow_decisions (request_id TEXT PRIMARY KEY, ts REAL, profile TEXT, live_model TEXT, "
            "shadow_model TEXT, agree INTEGER, live_candidate TEXT, shadow_candidate TEXT, shadow_on_live_choice TEXT, "
            "shadow_propensity REAL, called INTEGER, call_status TEXT, call_cost_usd REAL, call_latency_s REAL, "
            "call_output_chars INTEGER)")
        conn.execute("INSERT INTO shadow_decisions VALUES ('old', 1.0, NULL, 'm1', 'm2', 0, '{}', '{}', NULL, 1.0, 0, NULL, "
                     "NULL, NULL, NULL)")
        conn.execute("CREATE TABLE feedback (id INTEGER PRIMARY KEY AUTOINCREMENT, request_id TEXT NOT NULL, ts REAL, "
                     "score REAL, source TEXT, signal TEXT, label TEXT, comment TEXT)")
        conn.execute("CREATE INDEX feedback_request ON feedback (request_id)")
        for table in ("feedback", "shadow_decisions"):
            conn.execute(f"CREATE INDEX {table}_ts ON {table} (ts)")
    conn.close()


def test_a_shadow_log_from_before_reservations_opens_and_reports(tmp_path):
    """A file written before `call_reserved_usd`: the column is added, old rows read it as None."""
    from router.feedback_log import FeedbackLog, ShadowRecord

    path = tmp_path / "old.sqlite"
    _log_from_before_reservations(path)
    log = FeedbackLog(f"sqlite:///{path}")
    try:
        log.add_shadow(ShadowRecord("new", None, "m1", "m2", {}, {}, None, call_status=SKIPPED_BY_CAP, call_reserved_usd=0.5))
        rows = {r["request_id"]: r for r in log.shadows()}
    finally:
        log.close()
    assert rows["old"]["call_reserved_usd"] is None and rows["old"]["call_status"] is None
    assert rows["new"]["call_reserved_usd"] == 0.5 and rows["new"]["call_status"] == SKIPPED_BY_CAP
    assert not rows["new"]["called"]


def test_two_processes_upgrading_the_same_old_log_at_once_both_open_it(tmp_path, monkeypatch):
    """Another process (the gateway, a report job) adds the column while this one opens the file: this
    one must see it added, not add it again ("duplicate column name") and fail to start. The other
    process holds its ALTER uncommitted until this one asks for the write lock to upgrade the file
    (its BEGIN IMMEDIATE, or the ALTER itself where it checked the columns without the lock first),
    and commits then."""
    import sqlite3
    import threading

    from router import feedback_log
    from router.feedback_log import FeedbackLog, ShadowRecord

    path = tmp_path / "old.sqlite"
    _log_from_before_reservations(path)
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    other.execute("ALTER TABLE shadow_decisions ADD COLUMN call_reserved_usd REAL")  # its upgrade, not committed yet
    asked = threading.Event()

    def note(sql: str) -> None:
        if sql.startswith(("BEGIN IMMEDIATE", "ALTER TABLE shadow_decisions")):
            asked.set()

    def traced(*args, **kwargs):
        conn = connect(*args, **kwargs)
        conn.set_trace_callback(note)
        return conn

    def commit_once_asked():
        asked.wait(10)
        other.execute("COMMIT")

    connect = sqlite3.connect
    committer = threading.Thread(target=commit_once_asked)
    committer.start()
    try:
        with monkeypatch.context() as patch:
            patch.setattr(feedback_log.sqlite3, "connect", traced)
            log = FeedbackLog(f"sqlite:///{path}")
    finally:
        committer.join()
        other.close()
    assert asked.is_set()  # the race happened: this process upgraded while the other held the lock
    try:
        log.add_shadow(ShadowRecord("new", None, "m1", "m2", {}, {}, None, call_reserved_usd=0.5))
        rows = {r["request_id"]: r for r in log.shadows()}
    finally:
        log.close()
    assert rows["old"]["call_reserved_usd"] is None and rows["new"]["call_reserved_usd"] == 0.5


def test_postgres_shadow_tables_from_before_reservations_gain_the_column(pg_url):
    import psycopg

    from router.feedback_log import ShadowRecord, open_feedback_log

    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE shadow_decisions (request_id TEXT PRIMARY KEY, ts DOUBLE PRECISION, profile TEXT, "
            "live_model TEXT, shadow_model TEXT, agree BOOLEAN, live_candidate TEXT, shadow_candidate TEXT, "
            "shadow_on_live_choice TEXT, shadow_propensity DOUBLE PRECISION, called BOOLEAN, call_status TEXT, "
            "call_cost_usd DOUBLE PRECISION, call_latency_s DOUBLE PRECISION, call_output_chars BIGINT)")
        conn.execute("INSERT INTO shadow_decisions (request_id, ts, live_model, shadow_model, agree, live_candidate, "
                     "shadow_candidate, called) VALUES ('old', 1.0, 'm1', 'm2', false, '{}', '{}', false)")
    log = open_feedback_log(pg_url)  # the gateway's next start
    try:
        log.add_shadow(ShadowRecord("new", None, "m1", "m2", {}, {}, None, call_status=SKIPPED_BY_CAP, call_reserved_usd=0.5))
        rows = {r["request_id"]: r for r in log.shadows()}
    finally:
        log.close()
    assert rows["old"]["call_reserved_usd"] is None
    assert rows["new"]["call_reserved_usd"] == 0.5 and rows["new"]["call_status"] == SKIPPED_BY_CAP
