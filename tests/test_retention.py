"""`server.retention_days`: the outcome log's rows (outcomes, feedback, shadow decisions) older than the
window are deleted by a sweep in the serving gateway, in batches, on SQLite and PostgreSQL; newer rows,
and rows written while a sweep runs, stay; a new SQLite file gives the freed space back."""
from __future__ import annotations

import json
import sqlite3
import threading
import time

import httpx
import numpy as np
import pytest

from router.config import parse_config
from router.feedback_log import Feedback, ShadowRecord, open_feedback_log
from router.outcome_log import OutcomeLog, OutcomeRecord, open_store
from router.retention import DAY_S, RetentionSweep
from tests.test_config import GOOD

NOW = 1_750_000_000.0
OLD, NEW = NOW - 8 * DAY_S, NOW - 6 * DAY_S  # either side of a 7-day window


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/log.sqlite"
    return request.getfixturevalue("pg_url")


def shadow(request_id: str, ts: float) -> ShadowRecord:
    return ShadowRecord(request_id, "auto", "m1", "m2", {"p_good": 0.8}, {"p_good": 0.7}, None, ts=ts)


def fill(url: str, old: int, new: int) -> None:
    store, fb = open_store(url), open_feedback_log(url)
    try:
        store.write_many([OutcomeRecord(request_id=f"old{i}", ts=OLD + i) for i in range(old)]
                         + [OutcomeRecord(request_id=f"new{i}", ts=NEW + i) for i in range(new)])
        for i in range(old):
            fb.add_feedback(Feedback(f"old{i}", 1.0, ts=OLD + i))
            fb.add_shadow(shadow(f"old{i}", OLD + i))
        for i in range(new):
            fb.add_feedback(Feedback(f"new{i}", 0.0, ts=NEW + i))
            fb.add_shadow(shadow(f"new{i}", NEW + i))
        # feedback given after the window's edge on a request from before it: it goes by its own time
        fb.add_feedback(Feedback("old0", 0.5, ts=NEW))
    finally:
        store.close()
        fb.close()


def sweep(url: str, days: int = 7, batch_rows: int = 3) -> int:
    store, fb = open_store(url), open_feedback_log(url)
    try:
        return RetentionSweep(days, [store, fb], clock=lambda: NOW, batch_rows=batch_rows).run()
    finally:
        store.close()
        fb.close()


def left(url: str) -> tuple[list[str], list[tuple[str, float]], list[str]]:
    from router.feedback_log import read_feedback, read_shadows
    from router.outcome_log import read_outcomes

    return (sorted(read_outcomes(url, columns=["request_id"])["request_id"]),
            sorted((r["request_id"], r["score"]) for r in read_feedback(url)),
            sorted(r["request_id"] for r in read_shadows(url)))


def test_a_sweep_deletes_what_is_older_than_the_window_and_keeps_the_rest(url):
    fill(url, old=10, new=4)
    assert sweep(url) == 30  # 10 outcomes, 10 feedback and 10 shadow rows, 3 at a time
    outcomes, feedback, shadows = left(url)
    assert outcomes == shadows == ["new0", "new1", "new2", "new3"]
    assert feedback == [("new0", 0.0), ("new1", 0.0), ("new2", 0.0), ("new3", 0.0), ("old0", 0.5)]
    assert sweep(url) == 0
    assert sweep(url, days=1) == 13  # a shorter window takes the rest: 4 + 5 + 4


def test_deletes_find_their_rows_by_the_ts_index(tmp_path):
    path = tmp_path / "log.sqlite"
    # A log written before retention: the feedback tables had no index on ts
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE feedback (id INTEGER PRIMARY KEY AUTOINCREMENT, request_id TEXT NOT NULL, "
                 "ts REAL, score REAL, source TEXT, signal TEXT, label TEXT, comment TEXT)")
    conn.commit()
    url = f"sqlite:///{path}"
    open_store(url).close()
    open_feedback_log(url).close()
    for table in ("outcomes", "feedback", "shadow_decisions"):
        [plan] = conn.execute(f"EXPLAIN QUERY PLAN SELECT rowid FROM {table} WHERE ts < 1 LIMIT 5").fetchall()
        assert f"INDEX {table}_ts" in plan[3], plan
    conn.close()


def test_postgresql_has_the_ts_indexes(pg_url):
    import psycopg

    open_store(pg_url).close()
    open_feedback_log(pg_url).close()
    with psycopg.connect(pg_url) as conn:
        names = {r[0] for r in conn.execute("SELECT indexname FROM pg_indexes WHERE schemaname = current_schema()")}
    assert {"outcomes_ts", "feedback_ts", "shadow_decisions_ts"} <= names


def rows_of(n: int, ts: float, prefix: str) -> list[OutcomeRecord]:
    embedding = np.random.default_rng(0).random(384, dtype=np.float32).tobytes()
    candidates = [{"model": f"m{k}", "p_good": 0.8, "utility": 0.7, "cost_usd": 0.001} for k in range(6)]
    return [OutcomeRecord(request_id=f"{prefix}{i}", ts=ts + i, embedding=embedding, candidates=candidates) for i in range(n)]


@pytest.mark.parametrize("first", ["outcomes", "feedback"])
def test_a_new_sqlite_file_shrinks_after_a_sweep(tmp_path, first):
    path = tmp_path / "log.sqlite"
    url = f"sqlite:///{path}"
    if first == "feedback":  # whichever store creates the file, it is created to give space back
        open_feedback_log(url).close()
    store = open_store(url)
    store.write_many(rows_of(3000, OLD, "old"))
    store.close()
    sqlite3.connect(path).execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    full = path.stat().st_size
    assert full > 5_000_000
    assert sweep(url, batch_rows=500) == 3000
    sqlite3.connect(path).execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    assert path.stat().st_size < full / 20


def test_a_file_created_before_keeps_its_size_and_reuses_the_space(tmp_path):
    path = tmp_path / "log.sqlite"
    url = f"sqlite:///{path}"
    sqlite3.connect(path).execute("CREATE TABLE outcomes (request_id TEXT PRIMARY KEY)").connection.commit()
    store = open_store(url)
    store.write_many(rows_of(2000, OLD, "old"))
    store.close()
    sqlite3.connect(path).execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    full = path.stat().st_size
    assert sweep(url, batch_rows=500) == 2000
    store = open_store(url)
    store.write_many(rows_of(2000, NEW, "new"))  # into the pages the sweep freed
    store.close()
    sqlite3.connect(path).execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    assert full * 0.9 < path.stat().st_size < full * 1.1


def test_a_sweep_during_concurrent_writes_loses_no_new_row(url):
    store, fb = open_store(url), open_feedback_log(url)
    for start in range(0, 4000, 500):
        store.write_many([OutcomeRecord(request_id=f"old{i}", ts=OLD + i) for i in range(start, start + 500)])
    log = OutcomeLog(store, linger_s=0.001)
    stop, written = threading.Event(), []

    def write() -> None:  # the gateway's traffic: rows of now, through the writer thread, and feedback
        i = 0
        while not stop.is_set() or i < 200:
            log.write(OutcomeRecord(request_id=f"live{i}", ts=NOW + i))
            fb.add_feedback(Feedback(f"live{i}", 1.0, ts=NOW + i))
            written.append(f"live{i}")
            i += 1
            time.sleep(0.0005)

    writer = threading.Thread(target=write)
    writer.start()
    try:
        deleted = RetentionSweep(7, [store, fb], clock=lambda: NOW, batch_rows=50, pause_s=0.0).run()
    finally:
        stop.set()
        writer.join()
        log.close()  # drains the queue and closes the store
        fb.close()
    assert deleted == 4000
    outcomes, feedback, _ = left(url)
    assert outcomes == sorted(written)
    assert sorted(r for r, _ in feedback) == sorted(written)


def test_a_sweep_asked_to_stop_ends_after_the_batch_in_hand(tmp_path):
    url = f"sqlite:///{tmp_path}/log.sqlite"
    fill(url, old=10, new=0)
    store = open_store(url)
    stop = threading.Event()

    class Stopping:  # the gateway shutting down while the first batch is deleted
        def prune(self, cutoff: float, limit: int) -> int:
            stop.set()
            return store.prune(cutoff, limit)

    try:
        assert RetentionSweep(7, [Stopping()], clock=lambda: NOW, batch_rows=3).run(stop) == 3
    finally:
        store.close()


def test_the_window_is_a_whole_number_of_days_or_none():
    base = GOOD + "server: {retention_days: %s}\n"
    assert parse_config(base % "null", "t").server.retention_days is None
    assert parse_config(base % "30", "t").server.retention_days == 30
    for bad in ("0", "-1", "1.5", "true"):
        with pytest.raises(ValueError, match="retention_days"):
            parse_config(base % bad, "t")


def test_the_serving_gateway_sweeps_its_log(upstream, tmp_path):
    """A gateway started with `server.retention_days` deletes what is older than the window from the
    log it serves with, from its start; one without it keeps everything."""
    from tests.gateway_harness import DEFAULT_QUALITY, QualityRouter, Running, ask, fake_config

    upstream.reset()
    url = f"sqlite:///{tmp_path}/outcomes.sqlite"
    now = time.time()
    store, fb = open_store(url), open_feedback_log(url)
    store.write_many([OutcomeRecord(request_id="ancient", ts=now - 3 * DAY_S), OutcomeRecord(request_id="recent", ts=now - 3600)])
    fb.add_feedback(Feedback("ancient", 1.0, ts=now - 3 * DAY_S))
    fb.add_feedback(Feedback("recent", 1.0, ts=now - 3600))
    store.close()
    fb.close()

    def serving(days: int | None) -> Running:
        config = fake_config(upstream.base_url, url)
        config = config.model_copy(update={"server": config.server.model_copy(update={"retention_days": days})})
        return Running(config, router=QualityRouter(DEFAULT_QUALITY))

    keeping = serving(None)
    try:
        _, first = ask(keeping)
        assert {r["request_id"] for r in keeping.outcomes(at_least=3)} == {"ancient", "recent", first["x-request-id"]}
    finally:
        keeping.stop()

    sweeping = serving(2)
    try:
        _, second = ask(sweeping)
        deadline = time.monotonic() + 10
        while "ancient" in {r["request_id"] for r in sweeping.outcomes()} and time.monotonic() < deadline:
            time.sleep(0.05)
        assert {r["request_id"] for r in sweeping.outcomes(at_least=3)} == {
            "recent", first["x-request-id"], second["x-request-id"]}
        feedback = {r["request_id"] for r in sweeping.app.state.learning.feedback_log.feedback()}
        assert "recent" in feedback and "ancient" not in feedback
    finally:
        sweeping.stop()


def test_serve_creates_a_new_log_file_that_can_shrink(tmp_path):
    """`openclaw-router serve` opens the governance store in the same file before the gateway: the
    file must still be created with the incremental auto-vacuum that retention shrinks it with."""
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    path = tmp_path / "outcomes.sqlite"
    env = {**os.environ, "OPENCLAW_SIM_TIME_SCALE": "0.01", "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    env = {k: v for k, v in env.items() if not k.endswith("_API_KEY")}
    log = tmp_path / "serve.log"  # a file, not a pipe nobody drains while the test waits
    proc = subprocess.Popen([sys.executable, "-m", "service.cli", "serve", "--port", "0", "--db", f"sqlite:///{path}"],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=log.open("w"), text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("openclaw-router listening on http://"), line + log.read_text()
        # Started up (as a client would find it) before it is stopped: the file is the gateway's by then.
        assert httpx.get(f"{line.split()[3]}/healthz", timeout=60).status_code == 200
        conn = sqlite3.connect(path)
        assert conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2  # INCREMENTAL
        assert {"outcomes", "gov_spend"} <= {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        conn.close()
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(60)


def test_offline_readers_take_the_rows_the_window_left(tmp_path):
    """`shadow-report` and OPE's traffic read whatever the sweep left, including feedback and a shadow
    decision written after the window's edge about a request whose row is gone."""
    from argparse import Namespace

    from training.offpolicy import load_traffic
    from training.shadow_report import run as shadow_report

    url = f"sqlite:///{tmp_path}/log.sqlite"
    embedding = np.random.default_rng(0).random(384, dtype=np.float32).tobytes()
    candidates = [{"model": m, "p_good": p, "utility": p - 0.1, "excluded": None} for m, p in (("m1", 0.9), ("m2", 0.8))]
    store, fb = open_store(url), open_feedback_log(url)
    try:
        for name, ts in [(f"old{i}", OLD + i) for i in range(5)] + [(f"new{i}", NEW + i) for i in range(5)]:
            store.write_many([OutcomeRecord(
                request_id=name, ts=ts, prompt=f"Question {name}: sort a list in Python", embedding=embedding,
                candidates=candidates, chosen_model="m1", answered_model="m1", propensity=1.0, knob=1.0,
                cost_usd=0.001, latency_s=0.5, input_tokens_est=10, attempts=[{"model": "m1", "status": "ok"}])])
            fb.add_feedback(Feedback(name, 1.0, label="code", ts=ts))
            fb.add_shadow(shadow(name, ts))
        fb.add_feedback(Feedback("old0", 0.0, ts=NEW))  # after the edge: it outlives its request's row
        fb.add_shadow(shadow("old1", NEW))
    finally:
        store.close()
        fb.close()
    assert sweep(url) == 5 + 5 + 4
    assert load_traffic(url).request_ids == [f"new{i}" for i in range(5)]
    out = tmp_path / "report"
    assert shadow_report(Namespace(db=url, out=str(out), seed=0)) == 0
    report = json.loads((out / "shadow_report.json").read_text())
    assert report["overall"]["requests"] == 6  # five new ones, and the one written after the edge
