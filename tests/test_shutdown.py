"""`openclaw-router serve` stopped with SIGTERM (docker stop, Kubernetes) while answers are still
on their way: past `server.shutdown_grace_s` every request still open is ended deliberately, so the
process exits before the orchestrator's SIGKILL with every request answered, logged and billed."""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from router.outcome_log import read_outcomes
from tests.fake_upstream import FakeUpstream, ok

REPO = Path(__file__).resolve().parent.parent
MASTER = "mk-shutdown-" + "5" * 24
GRACE_S = 1.0
LONG_S = 300.0  # how long the upstream would take to answer: far past the deadline, and past proc.wait below


@pytest.fixture
def upstream():
    up = FakeUpstream().start()
    up.default("slow", ok(" ".join(["word"] * 3000), chunk_delay_s=LONG_S / 3000))  # a stream, one word at a time
    up.default("late", ok("an answer that comes too late", delay_s=LONG_S))  # nothing at all until then
    try:
        yield up
    finally:
        up.stop()


@pytest.fixture
def served(tmp_path, upstream):
    (tmp_path / "config.yaml").write_text(f"""
models:
  - {{name: slow, provider: fake, price: {{input_per_1m: 10, output_per_1m: 30}}, context_window: 100000}}
  - {{name: late, provider: fake, price: {{input_per_1m: 10, output_per_1m: 30}}, context_window: 100000}}
providers:
  fake: {{kind: openai, base_url: "{upstream.base_url}", timeout_s: 600}}
cache: {{enabled: false, semantic: false}}
server: {{shutdown_grace_s: {GRACE_S}}}
""")
    db = tmp_path / "outcomes.sqlite"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO), "OPENCLAW_MASTER_KEY": MASTER}
    proc = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "serve", "--config", str(tmp_path / "config.yaml"), "--port", "0",
         "--db", f"sqlite:///{db}"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=open(tmp_path / "server.log", "w"), text=True,
    )
    try:
        line = proc.stdout.readline()
        assert line.startswith("openclaw-router listening on http://"), line + (tmp_path / "server.log").read_text()
        yield line.split()[3], db, proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)


def _key_with_budget(url: str) -> dict[str, str]:
    admin = {"authorization": f"Bearer {MASTER}"}
    created = httpx.post(f"{url}/admin/keys", headers=admin, json={"name": "k"}, timeout=60)
    assert created.status_code == 201, created.text
    budget = {"scope": "key", "scope_id": created.json()["key"]["id"], "period": "month", "limit_usd": 100}
    assert httpx.post(f"{url}/admin/budgets", headers=admin, json=budget, timeout=10).status_code == 201
    return {"authorization": f"Bearer {created.json()['secret']}"}


def _events(lines) -> list:
    return [line[len("data: "):] for line in lines if line.startswith("data: ")]


def test_sigterm_ends_open_requests_at_the_deadline_answered_logged_and_billed(served, upstream):
    url, db, proc = served
    headers = _key_with_budget(url)
    ask = {"messages": [{"role": "user", "content": "tell me a long story"}]}
    late: dict = {}

    def ask_late() -> None:
        late["response"] = httpx.post(f"{url}/v1/chat/completions", headers=headers, json={"model": "late", **ask},
                                      timeout=LONG_S)

    waiting = threading.Thread(target=ask_late)
    with httpx.stream("POST", f"{url}/v1/chat/completions", headers=headers, timeout=LONG_S,
                      json={"model": "slow", "stream": True, **ask}) as stream:
        lines = stream.iter_lines()
        before = []
        while not any('"content":"word' in event for event in before):  # the answer has begun
            before += _events([next(lines)])
        waiting.start()
        while not upstream.requests_for("late") and waiting.is_alive():  # the non-streamed request is at the upstream
            time.sleep(0.01)
        proc.send_signal(signal.SIGTERM)
        # Both requests would run for minutes: the process ends them and exits at the deadline.
        proc.wait(GRACE_S + 20)
        after = _events(lines)
    waiting.join(10)

    # The stream's client is told its answer is cut, in the error event an upstream failure gives.
    error = json.loads(after[-1])["error"]
    assert error["code"] == "stream_interrupted" and "shut down" in error["message"]
    assert "[DONE]" not in after and len(before) + len(after) > 3
    # Ended on purpose, so no traceback in the server's log for it.
    assert "Exception in ASGI application" not in (Path(db).parent / "server.log").read_text()
    # The non-streamed client gets an OpenAI-style 503 instead of a closed connection.
    assert late["response"].status_code == 503
    assert late["response"].json()["error"]["code"] == "shutting_down"

    log = read_outcomes(f"sqlite:///{db}").set_index("requested_model")
    assert log.loc["slow", "status"] == "truncated" and log.loc["slow", "output_tokens"] > 0
    assert log.loc["slow", "cost_usd"] > 0  # billed for the words it streamed
    assert log.loc["late", "status"] == "error" and log.loc["late", "error"].startswith("shutdown")
    # Its upstream call was cut, not failed: the model is not blamed, the prompt it read is billed.
    assert [(a["status"], a["reason"]) for a in log.loc["late", "attempts"]] == [("abandoned", "cancelled")]
    assert log.loc["late", "cost_usd"] > 0 and log.loc["late", "output_tokens"] == 0
    with sqlite3.connect(db) as con:
        spend = dict(con.execute("select request_id, cost_nusd from gov_spend").fetchall())
        open_reservations = con.execute("select count(*) from gov_reservations").fetchone()[0]
    assert set(spend) == set(log.request_id) and spend[log.loc["slow", "request_id"]] > 0
    assert spend[log.loc["late", "request_id"]] > 0
    assert open_reservations == 0
