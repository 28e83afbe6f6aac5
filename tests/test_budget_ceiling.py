"""What a budget reservation holds for a prompt is a ceiling, not an estimate: settled spend stays
below limit + one request's maximum however densely the prompt tokenizes (hex, base64, CJK), and
a gateway starting on a SQLite ledger frees only the reservations of processes that have ended.
Real gateway and governance objects, real SQLite; the fake upstream bills as a dense tokenizer."""
from __future__ import annotations

import secrets
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from service.governance.budgets import Line
from service.governance.keys import to_nusd
from service.governance.runtime import Governance, GovernanceSettings
from tests.fake_upstream import ok
from tests.gateway_harness import fake_config
from tests.governance_harness import new_key, settled, wait_for

HEX = "Decode: " + secrets.token_hex(3000)  # 6,008 bytes
CJK = "翻译：" + "漢字仮名한글" * 400  # 2,403 characters, 7,209 bytes


@pytest.mark.parametrize("prompt, billed", [
    (HEX, 4005),  # BPE on hex: ~1.5 characters a token, where the estimate counts 4
    (CJK, 3 * 2403),  # CJK characters a tokenizer has no merge for: a token per byte, the estimate counts one
], ids=["hex", "cjk"])
def test_dense_prompts_racing_on_a_budget_end_below_limit_plus_one_maximum(env, prompt, billed):
    gw, admin, _, up, _ = env
    key, secret = new_key(admin, name="dense")
    limit = 0.10
    admin.post("/admin/budgets", json={"scope": "key", "scope_id": key["id"], "period": "total", "limit_usd": limit})
    up.default("m1", ok("ok", delay_s=0.3, usage_fields={"prompt_tokens": billed}))
    body = {"model": "m1", "max_tokens": 5, "messages": [{"role": "user", "content": prompt}]}

    def call(_):
        return httpx.post(f"{gw.base_url}/chat/completions", json=body, timeout=30,
                          headers={"authorization": f"Bearer {secret}"}).status_code

    with ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(call, range(20)))
    assert 200 in answers and set(answers) <= {200, 402, 429}
    settled(admin, len(answers))
    # m1 bills $10 per million tokens in and out. The most one request can cost: a token per byte
    # of its text, 8 per message and 16 per request, and its 5 output tokens.
    most = (len(prompt.encode()) + 8 + 16 + 5) * 10e-6
    budget = wait_for(lambda: (b := admin.get("/admin/budgets").json()["data"][0]) and b["reserved_usd"] == 0 and b)
    assert answers.count(200) * billed * 10e-6 == pytest.approx(budget["spent_usd"], rel=1e-3)
    assert budget["spent_usd"] <= limit + most  # the old 4-characters estimate: about twice the limit


HOLDER = """
import sys
from service.governance.budgets import Line, SqlLedger
from service.governance.db import open_database
line = Line("budget:b1:all", limit_nusd=150_000_000, label="total budget")
held = SqlLedger(open_database(sys.argv[1])).reserve([line], 50_000_000, 120_000_000)
print(held.amount_nusd, flush=True)
sys.stdin.read()  # a request in flight until the test ends this process
"""


def test_a_gateway_starting_on_a_sqlite_ledger_frees_only_what_ended_processes_reserved(tmp_path):
    url = f"sqlite:///{tmp_path}/gov.sqlite"
    config = fake_config("http://127.0.0.1:9", f"sqlite:///{tmp_path}/outcomes.sqlite")
    line = Line("budget:b1:all", limit_nusd=150_000_000, label="total budget")

    def holder() -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, "-c", HOLDER, url], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert int(proc.stdout.readline()) == 120_000_000
        return proc

    running = holder()
    try:
        # A second gateway on the same file (a restart that overlaps the old one's drain): the first
        # one's request is still in flight, and its reservation must keep holding the budget.
        second = Governance(config, GovernanceSettings(db_url=url))
        try:
            assert second.ledger.usage([line])[line.counter].reserved_nusd == 120_000_000
            assert not second.ledger.reserve([line], to_nusd(0.1), to_nusd(0.12)).ok  # $0.03 free, not $0.15
            second.maybe_sweep()  # its periodic sweep keeps it too
            assert second.ledger.usage([line])[line.counter].reserved_nusd == 120_000_000
            # The first process is killed before it settles: the running gateway's sweep frees it.
            running.kill()
            running.wait()
            second._last_sweep = 0.0
            second.maybe_sweep()
            assert second.ledger.usage([line])[line.counter].reserved_nusd == 0
        finally:
            second.close()
    finally:
        running.kill()
        running.wait()
    dead = holder()
    dead.kill()
    dead.wait()
    restarted = Governance(config, GovernanceSettings(db_url=url))  # and so does a gateway's start
    try:
        assert restarted.ledger.usage([line])[line.counter].reserved_nusd == 0
    finally:
        restarted.close()
