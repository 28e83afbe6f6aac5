"""Two gateway processes sharing Redis and PostgreSQL enforce one budget together.

200 concurrent requests against one key with a $X budget, split across both replicas:
the total real spend stays within X plus one request's maximum cost, and every admitted
request is in the shared spend log and the shared outcome log.
"""
from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import psycopg
import pytest

from tests.fake_upstream import FakeUpstream, ok
from tests.governance_harness import ANSWER, MASTER

ROOT = Path(__file__).resolve().parent.parent
LIMIT_USD = 0.05
# The dearest request: m1 at $10/1M tokens, at most 200 output tokens + a prompt under 50 tokens.
MAX_REQUEST_USD = (200 + 50) * 10.0 / 1e6
N_REQUESTS = 200


def start_replica(upstream: str, pg_url: str, redis_url: str, prefix: str) -> tuple[subprocess.Popen, str]:
    env = {**os.environ, "OPENCLAW_MASTER_KEY": MASTER, "OPENCLAW_REDIS_PREFIX": prefix, "PYTHONPATH": str(ROOT)}
    env.pop("OPENCLAW_GOVERNANCE_DB", None)
    args = json.dumps({"upstream": upstream, "db": pg_url, "redis": redis_url})
    proc = subprocess.Popen([sys.executable, "-m", "tests.governance_replica", args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    if not line.startswith("READY "):
        proc.kill()
        raise AssertionError(f"replica did not start: {line!r} {proc.stderr.read()[-3000:]}")
    return proc, f"http://127.0.0.1:{int(line.split()[1])}"


async def fire(urls: list[str], secret: str) -> list[tuple[int, str, str | None]]:
    """All requests at once, alternating replicas: (status, replica, answering model)."""
    clients = [openai.AsyncOpenAI(base_url=f"{u}/v1", api_key=secret, max_retries=0, timeout=120) for u in urls]

    async def one(i: int) -> tuple[int, str, str | None]:
        c = clients[i % len(clients)]
        try:
            r = await c.chat.completions.create(model="auto", max_tokens=200,
                                                messages=[{"role": "user", "content": f"question {i}"}])
            return 200, urls[i % len(urls)], r.model
        except openai.APIStatusError as exc:
            return exc.status_code, urls[i % len(urls)], exc.body.get("code") if isinstance(exc.body, dict) else None

    try:
        return await asyncio.gather(*(one(i) for i in range(N_REQUESTS)))
    finally:
        for c in clients:
            await c.close()


@pytest.mark.needs_services
def test_two_replicas_share_one_budget(pg_url, redis_url):
    redis_base, prefix = redis_url
    up = FakeUpstream().start()
    for m in ("m1", "m2", "m3"):
        up.default(m, ok(ANSWER, delay_s=0.05))  # slow enough that many requests are in flight at once
    procs = []
    try:
        for _ in range(2):
            procs.append(start_replica(up.base_url, pg_url, redis_base, prefix))
        (_, a), (_, b) = procs
        admin_a = httpx.Client(base_url=a, headers={"authorization": f"Bearer {MASTER}"}, timeout=30)
        admin_b = httpx.Client(base_url=b, headers={"authorization": f"Bearer {MASTER}"}, timeout=30)
        created = admin_a.post("/admin/keys", json={"name": "shared", "team": "ops"}).json()
        key_id, secret = created["key"]["id"], created["secret"]
        # Made on replica B, enforced on both: keys and budgets live in the shared database.
        budget = admin_b.post("/admin/budgets", json={"scope": "key", "scope_id": key_id, "period": "total",
                                                      "limit_usd": LIMIT_USD}).json()

        results = asyncio.run(fire([a, b], secret))
        statuses = [s for s, _, _ in results]
        assert set(statuses) <= {200, 402, 429}, statuses
        answered = [r for r in results if r[0] == 200]
        # Each replica alone would admit up to X; that the two together stay within X (below)
        # is what shows they enforce one shared budget. Which replica admits more is timing.
        assert {u for _, u, _ in results} == {a, b}
        print(f"\n{len(answered)} answered ({sum(1 for r in answered if r[1] == a)} by A), "
              f"{statuses.count(402)} refused 402, {statuses.count(429)} asked to retry (429)")
        assert statuses.count(402) > 0  # the budget did run out

        with psycopg.connect(pg_url, autocommit=True) as conn:
            def spend_rows() -> list[tuple]:
                return conn.execute("SELECT status, cost_nusd FROM gov_spend WHERE key_id = %s", (key_id,)).fetchall()

            deadline = time.monotonic() + 60
            while len(spend_rows()) < N_REQUESTS and time.monotonic() < deadline:
                time.sleep(0.2)
            rows = spend_rows()
            assert len(rows) == N_REQUESTS  # one spend-log row per request, refused ones included
            ok_rows = [c for s, c in rows if s == "ok"]
            assert len(ok_rows) == len(answered)  # none lost
            total_usd = sum(ok_rows) / 1e9
            outcomes = conn.execute("SELECT COUNT(*) FROM outcomes WHERE tenant = %s", (key_id,)).fetchone()[0]
        deadline = time.monotonic() + 30
        while outcomes < N_REQUESTS and time.monotonic() < deadline:
            time.sleep(0.2)
            with psycopg.connect(pg_url, autocommit=True) as conn:
                outcomes = conn.execute("SELECT COUNT(*) FROM outcomes WHERE tenant = %s", (key_id,)).fetchone()[0]
        assert outcomes == N_REQUESTS  # the shared outcome log has every request too

        assert total_usd <= LIMIT_USD + MAX_REQUEST_USD, (total_usd, LIMIT_USD)
        assert total_usd >= 0.8 * LIMIT_USD  # the budget was spent, not refused wholesale
        report = next(x for x in admin_b.get("/admin/budgets").json()["data"] if x["id"] == budget["id"])
        assert report["spent_usd"] == pytest.approx(total_usd, abs=1e-9)  # Redis counter == durable log
        assert report["reserved_usd"] == 0
        print(f"spent ${total_usd:.6f} of ${LIMIT_USD} (bound ${LIMIT_USD + MAX_REQUEST_USD:.4f})")
        admin_a.close()
        admin_b.close()
    finally:
        for proc, _ in procs:
            proc.terminate()
        for proc, _ in procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
        up.stop()
