"""Settling a request's spend when the store fails: the governance hook tries again, and a try
that follows one whose acknowledgement was lost counts nothing twice (SQLite, PostgreSQL, Redis)."""
from __future__ import annotations

import sqlite3
import time

from service.governance.keys import to_nusd
from tests import test_governance_store as store
from tests.governance_harness import chat, client, new_key, settled

db, ledger, _line = store.db, store.ledger, store._line  # the store tests' fixtures, shared


def _row(key_id: str, request_id: str, cost_usd: float) -> dict:
    return {"request_id": request_id, "ts": time.time(), "day": "d", "key_id": key_id, "status": "ok",
            "cost_nusd": to_nusd(cost_usd)}


def test_a_settle_tried_again_after_it_was_written_counts_once(ledger, db):
    key, line = _line(db, 1.0)
    held = ledger.reserve([line], to_nusd(0.1), to_nusd(0.2))
    for _ in range(2):  # the first settle's acknowledgement lost: the hook tries again
        ledger.settle(held.id, to_nusd(0.15), _row(key.id, "req_a", 0.15), counters=[line.counter])
    assert ledger.usage([line])[line.counter] == store.Usage(to_nusd(0.15), 0, 0)
    # Released as stale while it ran, then settled twice: counted once as well.
    late = ledger.reserve([line], to_nusd(0.1), to_nusd(0.2), now=time.time() - 3600)
    assert ledger.release_stale(600) == 1
    for _ in range(2):
        ledger.settle(late.id, to_nusd(0.05), _row(key.id, "req_b", 0.05), counters=[line.counter])
    assert ledger.usage([line])[line.counter].spent_nusd == to_nusd(0.2)


def test_a_spend_row_the_store_refused_for_a_moment_is_written_when_it_is_back(env, tmp_path, monkeypatch, caplog):
    from service.governance import hook

    monkeypatch.setattr(hook, "SETTLE_RETRY_S", (0.2,) * 25)
    gw, admin, *_ = env
    key, secret = new_key(admin, name="metered")
    admin.post("/admin/budgets", json={"scope": "key", "scope_id": key["id"], "period": "total", "limit_usd": 1.0})
    away = sqlite3.connect(tmp_path / "gov.sqlite")
    away.execute("ALTER TABLE gov_spend RENAME TO gov_spend_away")  # every spend write fails now
    away.commit()
    with caplog.at_level("WARNING", logger="service.governance.hook"):
        answered = chat(client(gw, secret), "m3")
        assert answered.http_response.status_code == 200
        deadline = time.monotonic() + 10
        while "trying again" not in caplog.text:
            assert time.monotonic() < deadline, "the settle never failed"
            time.sleep(0.02)
    # Meanwhile the outcome row is journaled and written: it had waited for the settle's retries
    # (minutes with a database away), and a replica killed in that time lost it.
    assert gw.gateway.outcome_log.get(answered.headers["x-request-id"])["status"] == "ok"
    away.execute("ALTER TABLE gov_spend_away RENAME TO gov_spend")
    away.commit()
    away.close()
    rows = settled(admin, 1)
    assert [(r["request_id"], r["status"]) for r in rows] == [(answered.headers["x-request-id"], "ok")]
    budget = admin.get("/admin/budgets").json()["data"][0]
    assert budget["spent_usd"] == rows[0]["cost_usd"] > 0 and budget["reserved_usd"] == 0


def test_a_restart_on_sqlite_frees_what_the_dead_process_had_reserved(tmp_path, pg_url):
    from service.governance.runtime import Governance, GovernanceSettings
    from tests.gateway_harness import fake_config

    config = fake_config("http://127.0.0.1:9", f"sqlite:///{tmp_path}/outcomes.sqlite")
    for url in (f"sqlite:///{tmp_path}/gov.sqlite", pg_url):
        killed = Governance(config, GovernanceSettings(db_url=url))
        key, line = _line(killed.db, 1.0)
        assert killed.ledger.reserve([line], to_nusd(0.5), to_nusd(0.9)).ok  # then SIGKILL: never settled
        killed.close()
        restarted = Governance(config, GovernanceSettings(db_url=url))
        held = restarted.ledger.usage([line])[line.counter].reserved_nusd
        restarted.close()
        # SQLite: this process's ledger alone. PostgreSQL without Redis may be shared by replicas
        # whose requests are still running: only the stale sweep frees it there.
        assert held == (0 if url.startswith("sqlite") else to_nusd(0.9)), url
