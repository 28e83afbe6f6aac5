"""Reports on the spend log: the same numbers as the rows say, computed in SQL; never in the way
of a request's budget reserve and settle; the session counters the SQL ledger sweeps; which
refusals leave a spend row. SQLite and PostgreSQL (real services), the gateway over real HTTP."""
from __future__ import annotations

import math
import random
import threading
import time

import httpx
import openai
import pytest

from service.governance.attribution import USD, Attribution
from service.governance.budgets import IDLE_SESSION_S, SESSION_SWEEP_S, BudgetStore, SqlLedger, session_line
from service.governance.db import Tx
from service.governance.keys import KeyStore, to_nusd
from tests import test_governance_store as store
from tests.governance_harness import chat, client, new_key, settled


db = store.db  # the store tests' fixture: SQLite and PostgreSQL


def _rows(n: int, now: float, seed: int = 7) -> list[tuple]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        refused = i % 9 == 0
        ts = now - rng.uniform(0, 3 * 86400)
        if i % 13 == 0:  # a float just below a bucket's start: it belongs to the bucket before
            ts = math.nextafter(math.floor(ts / 3600) * 3600.0, 0)
        model = None if refused else rng.choice(["m1", "m2", "m3"])
        key_name = rng.choice(["alpha", "beta", "", None])
        cost = 0 if refused else rng.randrange(0, 5_000_000)
        latency = None if i % 7 == 0 else round(rng.uniform(0.01, 9.0), rng.choice([2, 4]))  # ties, too
        ttft = None if i % 3 == 0 else rng.uniform(0.01, 2.0)
        status = "refused" if refused else rng.choice(["ok", "ok", "error"])
        rows.append((f"r{i}", ts, time.strftime("%Y-%m-%d", time.gmtime(ts)), key_name, model, status,
                     rng.choice(["hit", "miss", "semantic-hit", None]), cost, latency, ttft))
    return rows


def _insert(db, rows: list[tuple]) -> None:
    with db.tx() as tx:
        for r in rows:
            tx.execute("INSERT INTO gov_spend (request_id, ts, day, key_name, model, status, cache_status, cost_nusd, "
                       "latency_s, ttft_s) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", r)


def _expected_percentiles(values: list[float]) -> dict:
    """What the dashboard has always shown: the value at rank round(p × (n − 1)) of the sorted values."""
    if not values:
        return {"p50": None, "p95": None, "count": 0}
    s = sorted(values)
    return {"p50": s[min(len(s) - 1, int(round(0.5 * (len(s) - 1))))],
            "p95": s[min(len(s) - 1, int(round(0.95 * (len(s) - 1))))], "count": len(s)}


def _expected_timeseries(rows: list[tuple], since: float, col: int, bucket_s: float | None) -> dict:
    """The chart as it was computed before, from every row of the window in Python."""
    rows = [r for r in rows if r[1] >= since]
    if bucket_s is None:
        span = (max(r[1] for r in rows) - min(r[1] for r in rows)) if rows else 0.0
        bucket_s = next((b for b in (60.0, 300.0, 900.0, 3600.0, 21600.0) if span / b <= 48), 86400.0)
    buckets: dict[float, dict[str, float]] = {}
    for r in rows:
        if r[col] is None and not r[7]:
            continue
        b = (r[1] // bucket_s) * bucket_s
        buckets.setdefault(b, {}).setdefault(r[col] or "anonymous", 0.0)
        buckets[b][r[col] or "anonymous"] += r[7] / USD
    xs = sorted(buckets)
    names = sorted({n for v in buckets.values() for n in v})
    return {"bucket_s": bucket_s, "t": xs, "series": {n: [buckets[x].get(n, 0.0) for x in xs] for n in names}}


def test_reports_show_the_numbers_the_rows_hold(db):
    now = time.time()
    rows = _rows(1500, now)
    _insert(db, rows)
    reports = Attribution(db)
    for since in (now - 4 * 86400, now - 86400, now - 1800, now + 60):
        window = [r for r in rows if r[1] >= since]
        got = reports.summary(since)
        assert got["requests"] == len(window)
        assert got["cost_usd"] == sum(r[7] for r in window) / USD
        assert got["latency_s"] == _expected_percentiles([r[8] for r in window if r[8] is not None])
        assert got["ttft_s"] == _expected_percentiles([r[9] for r in window if r[9] is not None])
        for dim, col in (("model", 4), ("key", 3)):
            for bucket_s in (None, 3600.0, 60.0):
                want = _expected_timeseries(rows, since, col, bucket_s)
                have = reports.timeseries(dim, since, bucket_s)
                assert (have["bucket_s"], have["t"], sorted(have["series"])) == (want["bucket_s"], want["t"], sorted(want["series"]))
                for name, values in want["series"].items():
                    assert have["series"][name] == pytest.approx(values, rel=1e-12, abs=1e-15)
    assert reports.summary(None)["latency_s"] == _expected_percentiles([r[8] for r in rows if r[8] is not None])


def test_a_slow_report_does_not_hold_up_a_requests_reserve_and_settle(db, monkeypatch):
    """A report that reads for long (a week of spend rows) while requests reserve and settle
    their budgets: each one's reserve and settle complete while the report still runs."""
    key, _ = KeyStore(db).create("agent")
    line = BudgetStore(db).create("key", key.id, "month", 100.0).line(time.time())
    ledger = SqlLedger(db)
    _insert(db, _rows(50, time.time()))

    in_report, finish_report = threading.Event(), threading.Event()
    reporter: list[threading.Thread] = []
    execute = Tx.execute

    def slow_execute(self, sql, params=()):
        cursor = execute(self, sql, params)
        if threading.current_thread() in reporter:
            in_report.set()
            finish_report.wait(30)  # the report is still reading, inside its transaction
        return cursor

    monkeypatch.setattr(Tx, "execute", slow_execute)
    result: dict = {}
    reporter.append(threading.Thread(target=lambda: result.update(summary=Attribution(db).summary(0.0))))
    reporter[0].start()
    try:
        assert in_report.wait(10)

        def request() -> None:
            res = ledger.reserve([line], to_nusd(0.01), to_nusd(0.02))
            ledger.settle(res.id, to_nusd(0.015), {"request_id": "during-report", "ts": time.time(), "day": "d",
                                                   "key_id": key.id, "status": "ok", "cost_nusd": to_nusd(0.015)})
            result["settled"] = True

        worker = threading.Thread(target=request)
        worker.start()
        worker.join(10)
        assert not worker.is_alive() and result.get("settled"), "the request waited for the report"
        assert reporter[0].is_alive() and "summary" not in result
    finally:
        finish_report.set()
        reporter[0].join(30)
    assert result["summary"]["requests"] == 50  # counted before the settle
    assert ledger.usage([line])[line.counter].spent_nusd == to_nusd(0.015)


def test_idle_session_counters_leave_the_sql_ledger_and_come_back_whole(db):
    ledger = SqlLedger(db)
    key, _ = KeyStore(db).create("agent", max_session_usd=0.1)
    budget_line = BudgetStore(db).create("key", key.id, "total", 5.0).line(time.time())
    now = time.time()

    def spend(session: str, cost: float, at: float, request_id: str) -> None:
        line = session_line(key, session, 0.8)
        res = ledger.reserve([line, budget_line], to_nusd(cost), to_nusd(cost), now=at)
        assert res.ok
        ledger.settle(res.id, to_nusd(cost), {"request_id": request_id, "ts": at, "day": "d", "key_id": key.id,
                                              "session_id": session, "status": "ok", "cost_nusd": to_nusd(cost)},
                      counters=[line.counter, budget_line.counter])

    spend("sess-idle", 0.06, now, "s1")
    spend("sess-busy", 0.01, now, "s2")
    in_flight = ledger.reserve([session_line(key, "sess-in-flight", 0.8)], to_nusd(0.01), to_nusd(0.01), now=now)

    def counters() -> set[str]:
        with db.tx() as tx:
            return {r["counter"] for r in tx.all("SELECT counter FROM gov_counters")}

    assert len(counters()) == 4
    later = now + IDLE_SESSION_S + 60
    # sess-busy was settled an hour before the sweep (the `settle` stamps the wall clock, hence UPDATE)
    with db.tx() as tx:
        tx.execute("UPDATE gov_counters SET used_at = ? WHERE counter = ?",
                   (later - 3600, session_line(key, "sess-busy", 0.8).counter))
    # The gateway's periodic sweep (Governance.maybe_sweep) calls release_stale; the stale
    # limit is far off so that the in-flight reservation stays.
    assert ledger.release_stale(10 * IDLE_SESSION_S, now=later) == 0
    left = counters()
    assert session_line(key, "sess-idle", 0.8).counter not in left  # a week without a request
    assert {session_line(key, "sess-busy", 0.8).counter, session_line(key, "sess-in-flight", 0.8).counter,
            budget_line.counter} <= left  # used lately, a reservation in flight, a budget's counter
    # The next request of the idle session counts what it spent before.
    line = session_line(key, "sess-idle", 0.8)
    assert ledger.usage([line])[line.counter].spent_nusd == to_nusd(0.06)
    refused = ledger.reserve([line], to_nusd(0.05), to_nusd(0.05), now=later)
    assert not refused.ok and refused.headroom_nusd == to_nusd(0.04)
    assert ledger.reserve([line], to_nusd(0.03), to_nusd(0.03), now=later).ok
    # The sweep runs at most once every SESSION_SWEEP_S.
    with db.tx() as tx:
        tx.execute("UPDATE gov_counters SET used_at = 0 WHERE counter = ?", (session_line(key, "sess-busy", 0.8).counter,))
    ledger.release_stale(10 * IDLE_SESSION_S, now=later + 60)
    assert session_line(key, "sess-busy", 0.8).counter in counters()
    ledger.release_stale(10 * IDLE_SESSION_S, now=later + SESSION_SWEEP_S)
    assert session_line(key, "sess-busy", 0.8).counter not in counters()
    ledger.settle(in_flight.id, 0, None)


def test_the_dashboard_is_built_once_for_polls_close_together(env):
    gw, admin, *_ = env
    _, secret = new_key(admin, name="alpha")
    chat(client(gw, secret))
    settled(admin, 1)
    first = admin.get("/admin/dashboard").json()
    assert admin.get("/admin/dashboard").json()["generated_at"] == first["generated_at"]
    assert admin.get("/admin/dashboard", params={"since_s": 3600}).json()["generated_at"] != first["generated_at"]
    new_key(admin, name="beta")  # an admin change shows at once
    assert admin.get("/admin/dashboard").json()["generated_at"] != first["generated_at"]
    assert admin.get("/admin/dashboard", params={"since_s": "nan"}).status_code == 400


def test_which_refusals_leave_a_spend_row(env):
    """docs/GOVERNANCE.md, "Attribution and reports": a request refused by governance or after it
    has a row with status `refused`; one refused before governance runs (its key, its body, its
    model) has none."""
    gw, admin, gov, *_ = env
    _, secret = new_key(admin, name="scoped", allowed_models=["m3"], rpm=1)
    c = client(gw, secret)
    before = [
        (lambda: chat(c, model="no-such-model"), 404),
        (lambda: c.chat.completions.create(model="m3", messages=[]), 400),
        (lambda: chat(client(gw, "sk-ocr-not-a-key")), 401),
    ]
    for call, status in before:
        with pytest.raises(openai.APIStatusError) as refused:
            call()
        assert refused.value.status_code == status
    with pytest.raises(openai.APIStatusError) as out_of_scope:
        chat(c, model="m1")
    assert out_of_scope.value.status_code == 403
    chat(c, model="m3")
    with pytest.raises(openai.RateLimitError):
        chat(c, model="m3")
    rows = settled(admin, 3)
    time.sleep(0.3)  # what the requests before would have written by now
    rows = admin.get("/admin/requests", params={"limit": 100}).json()["data"]
    assert sorted((r["status"], r["cost_usd"] > 0) for r in rows) == [("ok", True), ("refused", False), ("refused", False)]
    assert all(r["key_name"] == "scoped" for r in rows)


def test_reports_name_a_key_as_it_is_called_now_and_keep_two_keys_of_one_name_apart(env):
    gw, admin, *_ = env
    renamed, renamed_secret = new_key(admin, name="zzz-old")
    chat(client(gw, renamed_secret))
    assert admin.patch(f"/admin/keys/{renamed['id']}", json={"name": "aaa-new"}).status_code == 200
    chat(client(gw, renamed_secret))
    twins = [new_key(admin, name="twin") for _ in range(2)]
    for _, secret in twins:
        chat(client(gw, secret))
    settled(admin, 4)
    spend = {r["key"]: r for r in admin.get("/admin/spend", params={"group_by": "key,key"}).json()["data"]}
    assert spend[renamed["id"]]["key_name"] == "aaa-new" and spend[renamed["id"]]["requests"] == 2  # was MAX(): zzz-old
    assert "aaa-new" in admin.get("/admin/spend.csv", params={"key": renamed["id"]}).text
    series = admin.get("/admin/dashboard").json()["spend_by_key"]["series"]
    twin_labels = [f"twin ({key['id'][:12]})" for key, _ in twins]
    assert set(series) == {"aaa-new", *twin_labels}  # the two twins were one series, their spend summed
    assert all(sum(series[label]) > 0 for label in twin_labels)
    refused = admin.get("/admin/spend", params={"group_by": "key,colour"})
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "group_by"
    for url in ("/admin/spend?team=a%00b", "/admin/keys/key_%00", "/admin/spend.csv?%00=1"):
        nul = admin.get(url)  # PostgreSQL text refuses a NUL: these had been 500s there
        assert nul.status_code == 400 and nul.json()["error"]["code"] == "invalid_request", url
        assert httpx.get(f"{gw.url}{url}").status_code == 401  # the key first, as everywhere


def test_a_key_named_like_the_master_keys_series_is_a_series_of_its_own(env):
    from tests.governance_harness import MASTER

    gw, admin, *_ = env
    key, secret = new_key(admin, name="master")
    chat(client(gw, secret))
    chat(client(gw, MASTER))
    settled(admin, 2)
    series = admin.get("/admin/dashboard").json()["spend_by_key"]["series"]
    assert set(series) == {"master", f"master ({key['id'][:12]})"}  # the two spends had been summed


def test_a_budget_made_mid_window_is_projected_from_when_it_was_made(env):
    from service.governance.api_admin import budget_report
    from service.governance.budgets import window

    gw, admin, gov, *_ = env
    _, secret = new_key(admin, name="k", team="growth")
    budget = admin.post("/admin/budgets", json={"scope": "team", "scope_id": "growth", "period": "month", "limit_usd": 5}).json()
    chat(client(gw, secret))
    settled(admin, 1)
    now = budget["created_at"] + 1.0  # a second into its life: its spend so far is a second's
    (report,) = budget_report(gov, now)
    _, _, end = window("month", now)
    assert report["spent_usd"] > 0
    # The window's share gone by (most of a month, late in it) had implied that little more would be spent.
    assert report["projected_window_end_usd"] == pytest.approx(report["spent_usd"] * (end - budget["created_at"]) / 1.0)
