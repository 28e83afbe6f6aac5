"""Key store and budget ledger on every backend: SQLite, PostgreSQL, Redis (real services)."""
from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from service.governance.budgets import BudgetStore, SqlLedger, Usage, session_line, window
from service.governance.db import migrate, open_database
from service.governance.keys import KeyStore, to_nusd
from service.governance.ratelimit import MemoryRateLimiter


@pytest.fixture(params=["sqlite", "postgres"])
def db(request, tmp_path):
    url = f"sqlite:///{tmp_path}/gov.sqlite" if request.param == "sqlite" else request.getfixturevalue("pg_url")
    database = open_database(url)
    yield database
    database.close()


@pytest.fixture(params=["sql", "redis"])
def ledger(request, db):
    if request.param == "sql":
        return SqlLedger(db)
    from service.governance.redis_state import RedisLedger, connect

    url, prefix = request.getfixturevalue("redis_url")
    return RedisLedger(connect(url), db, prefix=prefix)


def test_migrations_apply_once(db):
    assert migrate(db) == []


def test_key_lifecycle(db):
    store = KeyStore(db)
    key, secret = store.create("ci", team="infra", project="p1", user="ana", allowed_models=["m-small"], rpm=5,
                               max_request_usd=0.5, metadata={"ticket": "T-1"})
    assert secret.startswith("sk-ocr-") and len(secret) > 40
    # Only a hash is stored: the secret appears nowhere in the database.
    with db.tx() as tx:
        dump = repr(tx.all("SELECT * FROM gov_keys")) + repr(tx.all("SELECT * FROM gov_key_secrets"))
    assert secret not in dump and secret[8:] not in dump
    assert store.authenticate(secret) == (key, "active")
    assert store.authenticate(secret + "x") == (None, "unknown")
    assert key.to_dict()["allowed_models"] == ["m-small"] and key.max_request_usd == 0.5
    assert key.prefix == secret[:11] and "secret" not in key.to_dict()

    updated = store.update(key.id, rpm=10, allowed_profiles=["auto:cheap"])
    assert updated.rpm == 10 and updated.allowed_profiles == ("auto:cheap",) and updated.team == "infra"
    with pytest.raises(ValueError):
        store.update(key.id, password="x")

    rotated, new_secret = store.rotate(key.id)
    assert new_secret != secret and rotated.id == key.id
    assert store.authenticate(secret)[1] == "unknown"
    assert store.authenticate(new_secret)[1] == "active"

    store.revoke(key.id)
    assert store.authenticate(new_secret)[1] == "revoked"
    assert [k.status() for k in store.list()] == ["revoked"]
    with pytest.raises(ValueError):
        store.rotate(key.id)


def test_rotation_grace_and_expiry(db):
    store = KeyStore(db)
    now = time.time()
    key, old = store.create("svc", expires_at=now + 100)
    _, new = store.rotate(key.id, grace_s=30, now=now)
    assert store.authenticate(old, now=now + 10)[1] == "active"
    assert store.authenticate(old, now=now + 31)[1] == "unknown"
    assert store.authenticate(new, now=now + 31)[1] == "active"
    assert store.authenticate(new, now=now + 101)[1] == "expired"


@pytest.mark.parametrize("grace_s", [0.0, 30.0])
def test_concurrent_rotations_leave_one_secret_and_each_its_own_prefix(db, grace_s):
    # On PostgreSQL each rotation had deleted only the secrets it saw: several stayed valid, unseen.
    store = KeyStore(db)
    key, _ = store.create("rotated")
    now = time.time()
    with ThreadPoolExecutor(8) as pool:
        rotated = list(pool.map(lambda _: store.rotate(key.id, grace_s=grace_s, now=now), range(8)))
    assert all(k.prefix == secret[:len(k.prefix)] for k, secret in rotated)
    later = now + grace_s + 1
    assert sum(store.authenticate(secret, now=later)[1] == "active" for _, secret in rotated) == 1


def test_concurrent_puts_of_a_team_limit_all_succeed(db):
    store = KeyStore(db)
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda n: store.set_team_parallel("infra", n), range(1, 9)))
    assert store.team_parallel("infra") in range(1, 9)


def test_pepper_shared_through_store(db):
    a, b = KeyStore(db), KeyStore(db)
    _, secret = a.create("x")
    assert b.authenticate(secret)[1] == "active"


def test_replicas_starting_together_on_a_new_database_share_one_pepper(pg_url, monkeypatch):
    # Both insert at once, each having found no pepper (the interleaving held by a barrier): the
    # second replica's start had died on the primary key.
    from service.governance.db import Tx

    monkeypatch.delenv("OPENCLAW_KEY_PEPPER", raising=False)
    databases = [open_database(pg_url) for _ in range(2)]
    together = threading.Barrier(2)
    insert = Tx.execute

    def execute(self, sql, params=()):
        if sql.startswith("INSERT INTO gov_settings"):
            together.wait(timeout=10)
        return insert(self, sql, params)

    monkeypatch.setattr(Tx, "execute", execute)
    try:
        with ThreadPoolExecutor(2) as pool:  # a start that fails raises here
            stores = list(pool.map(KeyStore, databases))
        _, secret = stores[0].create("made on one replica")
        assert stores[1].authenticate(secret)[1] == "active"
    finally:
        for database in databases:
            database.close()


def test_budget_windows():
    ts = 1_700_000_000.0  # 2023-11-14 22:13 UTC
    assert window("day", ts)[0] == "2023-11-14"
    name, start, end = window("month", ts)
    assert name == "2023-11" and end - start == 30 * 86400
    assert window("total", ts)[0] == "all"
    with pytest.raises(ValueError):
        window("week", ts)


def test_budget_store_scopes(db):
    keys, budgets = KeyStore(db), BudgetStore(db)
    key, _ = keys.create("k", team="t1", project="p1")
    other, _ = keys.create("o", team="t2")
    b_key = budgets.create("key", key.id, "day", 1.0)
    b_team = budgets.create("team", "t1", "month", 10.0, soft_threshold=0.5)
    budgets.create("project", "p2", "total", 3.0)
    assert {b.id for b in budgets.applicable(key)} == {b_key.id, b_team.id}
    assert budgets.applicable(other) == []
    with pytest.raises(ValueError):
        budgets.create("team", "t1", "month", 5.0)
    with pytest.raises(ValueError):
        budgets.create("galaxy", "x", "day", 1.0)
    assert budgets.update(b_team.id, limit_usd=20.0).limit_usd == 20.0


def _line(db, limit_usd: float):
    keys, budgets = KeyStore(db), BudgetStore(db)
    key, _ = keys.create("k")
    return key, budgets.create("key", key.id, "total", limit_usd).line(time.time())


def test_reserve_refuses_and_settles(ledger, db):
    key, line = _line(db, 1.0)
    r1 = ledger.reserve([line], to_nusd(0.3), to_nusd(0.6))
    assert r1.ok and r1.amount_nusd == to_nusd(0.6)
    # Predicted 0.3 fits the 0.4 left, the 0.6 maximum does not: reserve what is left.
    r2 = ledger.reserve([line], to_nusd(0.3), to_nusd(0.6))
    assert r2.ok and r2.amount_nusd == to_nusd(0.4)
    r3 = ledger.reserve([line], to_nusd(0.01), to_nusd(0.02))
    assert not r3.ok and r3.refused.counter == line.counter
    ledger.settle(r1.id, to_nusd(0.25), {"request_id": "a", "ts": time.time(), "day": "d", "key_id": key.id,
                                         "status": "ok", "cost_nusd": to_nusd(0.25)})
    ledger.settle(r1.id, to_nusd(0.25), None)  # a second settle of one reservation is a no-op
    u = ledger.usage([line])[line.counter]
    assert (u.spent_nusd, u.reserved_nusd) == (to_nusd(0.25), to_nusd(0.4))
    # Only one partial reservation at a time: r2 is one, so r4 (0.5 max > 0.35 left) waits.
    r4 = ledger.reserve([line], to_nusd(0.3), to_nusd(0.5))
    assert not r4.ok and r4.headroom_nusd == to_nusd(0.35)
    assert ledger.reserve([line], to_nusd(0.1), to_nusd(0.2)).ok  # a full reservation still fits
    ledger.settle(r2.id, to_nusd(0.1), None)
    r5 = ledger.reserve([line], to_nusd(0.1), to_nusd(0.5))
    assert r5.ok and r5.partial and r5.amount_nusd == to_nusd(0.45)
    assert ledger.release_stale(0.0, now=time.time() + 1) == 2
    assert ledger.usage([line])[line.counter] == Usage(to_nusd(0.35), 0, 0)


def test_a_budget_limit_below_one_nano_usd_is_refused(db):
    budgets = BudgetStore(db)
    with pytest.raises(ValueError, match="limit_usd"):
        budgets.create("team", "t1", "day", 1e-12)
    b = budgets.create("team", "t1", "day", 1e-9)
    with pytest.raises(ValueError, match="limit_usd"):
        budgets.update(b.id, limit_usd=4e-10)


def test_budget_report_calls_a_soft_limit_reached_when_routing_does(ledger, db):
    from types import SimpleNamespace

    from service.governance.api_admin import budget_report

    key, line = _line(db, 1.0)  # soft threshold 0.8
    gov = SimpleNamespace(budgets=BudgetStore(db), ledger=ledger, keys=KeyStore(db))

    def spend(usd: float) -> None:
        r = ledger.reserve([line], to_nusd(usd), to_nusd(usd))
        ledger.settle(r.id, to_nusd(usd), {"request_id": r.id, "ts": time.time(), "day": "d", "key_id": key.id,
                                           "status": "ok", "cost_nusd": to_nusd(usd)}, counters=[line.counter])

    spend(0.5)
    assert ledger.reserve([line], to_nusd(0.1), to_nusd(0.4)).ok  # in flight: its worst case would pass 0.8
    (report,) = budget_report(gov)
    assert report["spent_usd"] == pytest.approx(0.5) and report["reserved_usd"] == pytest.approx(0.4)
    assert not report["soft_limit_reached"]  # routing reads settled spend, still below the threshold
    assert report["label"] == f"total budget of key 'k' ({key.id})"
    spend(0.3)
    assert budget_report(gov)[0]["soft_limit_reached"]


def test_concurrent_reservations_never_overspend(ledger, db):
    """64 threads race for a $1 budget with requests that may cost up to $0.05 each."""
    key, line = _line(db, 1.0)
    spent_by_me: list[int] = []
    lock = threading.Lock()

    def worker(i: int) -> None:
        for j in range(4):
            res = ledger.reserve([line], to_nusd(0.02), to_nusd(0.05))
            if not res.ok:
                continue
            actual = to_nusd(0.03 + 0.02 * ((i + j) % 2))  # real cost exceeds the prediction
            ledger.settle(res.id, actual, {"request_id": f"r{i}-{j}", "ts": time.time(), "day": "d",
                                           "key_id": key.id, "status": "ok", "cost_nusd": actual})
            with lock:
                spent_by_me.append(actual)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(64)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    u = ledger.usage([line])[line.counter]
    assert u.reserved_nusd == 0
    assert u.spent_nusd == sum(spent_by_me)
    assert u.spent_nusd <= to_nusd(1.0) + to_nusd(0.05)
    assert u.spent_nusd >= to_nusd(0.9)  # the budget was actually used, not refused wholesale
    with db.tx() as tx:
        row = tx.one("SELECT COUNT(*) AS n, SUM(cost_nusd) AS s FROM gov_spend WHERE key_id = ?", (key.id,))
    assert int(row["n"]) == len(spent_by_me) and int(row["s"]) == u.spent_nusd


def test_session_ceiling_line(ledger, db):
    store = KeyStore(db)
    key, _ = store.create("agent", max_session_usd=0.1)
    line = session_line(key, "sess-1", 0.8)
    assert ledger.reserve([line], to_nusd(0.08), to_nusd(0.08)).ok
    refused = ledger.reserve([line], to_nusd(0.05), to_nusd(0.05))
    assert not refused.ok and "session" in refused.refused.label
    other = session_line(key, "sess-2", 0.8)
    assert ledger.reserve([other], to_nusd(0.05), to_nusd(0.05)).ok


def test_stale_reservations_are_released(ledger, db):
    _, line = _line(db, 1.0)
    res = ledger.reserve([line], to_nusd(0.5), to_nusd(0.5), now=time.time() - 3600)
    assert res.ok
    assert ledger.release_stale(600) == 1
    assert ledger.usage([line])[line.counter].reserved_nusd == 0


def test_a_request_that_outlives_its_reservation_still_counts(ledger, db):
    _, line = _line(db, 1.0)
    res = ledger.reserve([line], to_nusd(0.1), to_nusd(0.5), now=time.time() - 3600)  # a stream started an hour ago
    assert ledger.release_stale(600) == 1  # another request's sweep frees it while it still runs
    ledger.settle(res.id, to_nusd(0.4), None, counters=[line.counter])
    assert ledger.usage([line])[line.counter] == Usage(to_nusd(0.4), 0, 0)


def test_redis_counter_rebuilt_from_spend_log(db, redis_url):
    from service.governance.redis_state import RedisLedger, connect

    url, prefix = redis_url
    key, line = _line(db, 1.0)
    first = RedisLedger(connect(url), db, prefix=prefix)
    res = first.reserve([line], to_nusd(0.2), to_nusd(0.2))
    first.settle(res.id, to_nusd(0.2), {"request_id": "x1", "ts": time.time(), "day": "d", "key_id": key.id,
                                        "status": "ok", "cost_nusd": to_nusd(0.2)})
    client = connect(url)
    client.delete(f"{prefix}:ctr:{line.counter}")  # Redis restarted or evicted the counter
    again = RedisLedger(client, db, prefix=prefix)
    assert again.usage([line])[line.counter].spent_nusd == to_nusd(0.2)


def test_an_idle_session_counter_leaves_redis_and_comes_back_whole(db, redis_url):
    from service.governance.redis_state import IDLE_COUNTER_S, RedisLedger, connect

    url, prefix = redis_url
    client = connect(url)
    ledger = RedisLedger(client, db, prefix=prefix)
    key, _ = KeyStore(db).create("agent", max_session_usd=0.1)
    line = session_line(key, "sess-idle", 0.8)
    budget_line = BudgetStore(db).create("key", key.id, "day", 5.0).line(time.time())
    res = ledger.reserve([line, budget_line], to_nusd(0.06), to_nusd(0.06))
    ledger.settle(res.id, to_nusd(0.06), {"request_id": "s1", "ts": time.time(), "day": "d", "key_id": key.id,
                                          "session_id": "sess-idle", "status": "ok", "cost_nusd": to_nusd(0.06)},
                  counters=[line.counter, budget_line.counter])
    # One counter per agent conversation: each must leave Redis once idle, or they pile up for good.
    assert 0 < client.ttl(f"{prefix}:ctr:{line.counter}") <= IDLE_COUNTER_S
    # A window's counter keeps its expiry at the window's end, not the idle one.
    assert client.ttl(f"{prefix}:ctr:{budget_line.counter}") > IDLE_COUNTER_S
    client.delete(f"{prefix}:ctr:{line.counter}")  # what the idle expiry does
    refused = ledger.reserve([line], to_nusd(0.05), to_nusd(0.05))
    assert not refused.ok and refused.headroom_nusd == to_nusd(0.04)  # the $0.06 spent still counts


def test_a_budget_counts_from_its_creation_on_every_backend(ledger, db):
    keys, budgets = KeyStore(db), BudgetStore(db)
    key, _ = keys.create("k", team="growth")
    with db.tx() as tx:  # the team spent $4 earlier in the day, before the budget existed
        tx.execute("INSERT INTO gov_spend (request_id, ts, day, key_id, team, cost_nusd, status) VALUES (?, ?, ?, ?, ?, ?, ?)",
                   ("req_old", time.time() - 60, "d", key.id, "growth", to_nusd(4.0), "ok"))
    line = budgets.create("team", "growth", "day", 5.0).line(time.time())
    assert ledger.reserve([line], to_nusd(2.0), to_nusd(2.0)).ok  # SQL and Redis alike: $5 left, not $1


@pytest.mark.parametrize("backend", ["memory", "redis"])
def test_rate_limits(backend, request):
    if backend == "memory":
        limiter = MemoryRateLimiter()
    else:
        from service.governance.redis_state import RedisRateLimiter, connect

        url, prefix = request.getfixturevalue("redis_url")
        limiter = RedisRateLimiter(connect(url), prefix=prefix)
    t = 600.0  # start of a minute: the previous minute is empty
    assert [limiter.admit("k", 3, None, 10, now=t).refused for _ in range(4)] == [None, None, None, "rpm"]
    assert limiter.admit("other", 3, None, 10, now=t).refused is None
    assert limiter.admit("tok", None, 100, 60, now=t).refused is None
    assert limiter.admit("tok", None, 100, 60, now=t).refused == "tpm"
    limiter.add_tokens("tok2", 95, now=t)
    assert limiter.admit("tok2", None, 100, 10, now=t).refused == "tpm"
    # Two minutes later the window has slid past everything.
    assert limiter.admit("k", 3, None, 10, now=t + 120).refused is None


def test_keys_without_limits_leave_nothing_behind_in_the_memory_limiter():
    limiter = MemoryRateLimiter()
    for minute in range(60):  # an hour of traffic from ten keys without rpm/tpm
        for k in range(10):
            assert limiter.admit(f"key{k}", None, None, 50, now=60.0 * minute).refused is None
            limiter.add_tokens(f"key{k}", 50, now=60.0 * minute + 30)
    assert len(limiter._tokens) <= 20  # this minute and the last, not sixty


def test_outcome_log_in_postgres(pg_url):
    """The gateway's outcome log through its store seam, in PostgreSQL, read back for training."""
    from router.outcome_log import OutcomeRecord, open_outcome_log, read_outcomes

    log = open_outcome_log(pg_url)
    records = [OutcomeRecord(request_id=f"r{i}", ts=1000.0 + i, chosen_model="m1", cost_usd=0.001 * i,
                             candidates=[{"model": "m1", "p_good": 0.9}], embedding=b"\x00\x01", stream=bool(i % 2))
               for i in range(5)]
    for r in records:
        log.write(r)
    log.write(OutcomeRecord(request_id="r4", ts=1004.0, chosen_model="m2", cost_usd=0.5))  # same id: replaced
    rows = log.read()
    assert [r["request_id"] for r in rows] == ["r0", "r1", "r2", "r3", "r4"]
    assert rows[1]["candidates"] == [{"model": "m1", "p_good": 0.9}] and rows[1]["stream"] is True
    assert rows[0]["embedding"] == b"\x00\x01"
    assert log.get("r4")["chosen_model"] == "m2"
    # A NUL in a text field (a client may send "\u0000") cannot go into PostgreSQL text: it is
    # replaced, and never takes the rest of its batch down with it.
    for i in range(3):
        log.write(OutcomeRecord(request_id=f"n{i}", ts=2000.0 + i, prompt="before\x00after" if i == 1 else "fine"))
    log.flush()  # what the store wrote, not the record still queued
    assert log.get("n1")["prompt"] == "before\ufffdafter" and log.get("n2")["prompt"] == "fine"
    log.close()
    frame = read_outcomes(pg_url, since=1002.0)
    assert list(frame["request_id"]) == ["r2", "r3", "r4", "n0", "n1", "n2"]


def test_alerts_fire_once_across_replicas_and_rearm(db):
    from service.governance.alerts import Alerter
    from service.governance.budgets import Line, Usage

    a, b = Alerter(db), Alerter(db)  # two replicas sharing one database
    line = Line("budget:b1:2026-11", limit_nusd=1000, label="month budget of team 'x'", budget_id="b1")
    assert [x.details["threshold"] for x in a.budget_alerts([line], {line.counter: Usage(600)})] == [0.5]
    assert b.budget_alerts([line], {line.counter: Usage(650)}) == []
    # One settle past 80 % and 100 % at once: only where the budget is now, and 80 % never after.
    assert [x.details["threshold"] for x in b.budget_alerts([line], {line.counter: Usage(1000)})] == [1.0]
    assert a.budget_alerts([line], {line.counter: Usage(1200)}) == []
    next_month = Line("budget:b1:2026-12", limit_nusd=1000, label=line.label, budget_id="b1")
    assert len(a.budget_alerts([next_month], {next_month.counter: Usage(500)})) == 1  # a new window re-arms

    fired = [a.request_outcome("m", failed=True) for _ in range(10)]
    assert sum(len(f) for f in fired) == 1 and fired[-1][0].kind == "error_rate"
    assert sum(len(a.request_outcome("m", failed=True)) for _ in range(5)) == 0
    for _ in range(20):
        a.request_outcome("m", failed=False)  # recovered: re-armed
    assert sum(len(a.request_outcome("m", failed=True)) for _ in range(20)) == 1

    assert len(a.circuit_state("m2", "open")) == 1 and b.circuit_state("m2", "open") == []
    b.circuit_state("m2", "closed")
    assert len(a.circuit_state("m2", "open")) == 1
    kinds = {r["kind"] for r in a.recent()}
    assert kinds == {"budget", "error_rate", "circuit_open"}


def test_a_healthy_replica_does_not_flap_another_replicas_alert(db):
    from service.governance.alerts import Alerter

    a, b = Alerter(db), Alerter(db)  # a's upstream fails, b's answers (say, another region's route)
    fired = []
    for _ in range(30):
        fired += a.request_outcome("m", failed=True)
        b.request_outcome("m", failed=False)
    # b clears what it has not seen once, then leaves a's alert alone: at most one re-fire,
    # not one per pair of requests
    assert 1 <= len(fired) <= 2
    assert [r["active"] for r in a.recent() if r["dedupe"] == "error_rate:m"] == [1]


def test_forecast_follows_the_daily_trend(db):
    """Daily spend 1, 2, 3 $ over the last three days: the line continues at +1 $/day."""
    from service.governance.attribution import Attribution
    from service.governance.budgets import insert_spend

    now = 1_700_006_400.0 + 0.5 * 86400  # 2023-11-15 12:00 UTC: noon of day 15 of a 30-day month
    day0 = int(now // 86400) * 86400.0
    with db.tx() as tx:
        for back, usd in ((2, 1.0), (1, 2.0)):
            ts = day0 - back * 86400 + 3600
            insert_spend(tx, {"request_id": f"d{back}", "ts": ts, "day": time.strftime("%Y-%m-%d", time.gmtime(ts)),
                              "status": "ok", "cost_nusd": to_nusd(usd)})
        # Today, half-way through: $1.5 so far, i.e. $3 at a full day's pace.
        insert_spend(tx, {"request_id": "d0", "ts": day0 + 3600, "day": time.strftime("%Y-%m-%d", time.gmtime(day0)),
                          "status": "ok", "cost_nusd": to_nusd(1.5)})
    fc = Attribution(db).forecast(now=now)
    assert fc["month"] == "2023-11" and fc["days_observed"] == 3
    assert fc["trend_usd_per_day"] == pytest.approx(1.0)
    assert fc["daily_rate_usd"] == pytest.approx(3.0)
    # So far: 1 + 2 + 1.5. Rest of today at 3 $/day for half a day, then days 16..30 at 4, 5, ..., 18 $.
    expected = 4.5 + 1.5 + sum(3.0 + j for j in range(1, 16))
    assert fc["forecast_month_end_usd"] == pytest.approx(expected)


def test_a_postgresql_schema_that_does_not_exist_is_named_at_start(pg_url):
    from service.governance.db import open_database

    with pytest.raises(ValueError, match="cannot set up its tables: .*CREATE SCHEMA it first"):
        open_database(pg_url.rsplit("%3D", 1)[0] + "%3Dno_such_schema_here")


@pytest.mark.parametrize("name, value, says", [
    ("OPENCLAW_ALERT_THRESHOLDS", "50%,80%", "'50%' is not a budget share"),
    ("OPENCLAW_ALERT_THRESHOLDS", "80", "'80' is not a budget share"),
    ("OPENCLAW_ALERT_THRESHOLDS", "0.5,,1", "'' is not a budget share"),
    ("OPENCLAW_ALERT_WEBHOOK", "hooks.example/openclaw", "is not an http:// or https:// URL"),
])
def test_alert_settings_from_the_environment_are_checked_by_name(monkeypatch, name, value, says):
    from router.config import load_config
    from service.governance.runtime import GovernanceSettings
    from service.serve_command import default_config_path

    monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=name) as info:
        GovernanceSettings.from_env(load_config(default_config_path()))
    assert says in str(info.value)


def test_alert_thresholds_are_read_as_shares(monkeypatch):
    from router.config import load_config
    from service.governance.runtime import GovernanceSettings
    from service.serve_command import default_config_path

    monkeypatch.setenv("OPENCLAW_ALERT_THRESHOLDS", " 1.0, 0.5 ")
    assert GovernanceSettings.from_env(load_config(default_config_path())).thresholds == (0.5, 1.0)
    monkeypatch.setenv("OPENCLAW_ALERT_THRESHOLDS", "")  # set empty: no budget alerts, as before
    assert GovernanceSettings.from_env(load_config(default_config_path())).thresholds == ()
