"""Governance through the running gateway: admin API, keys, scopes, rate limits, attribution,
alerts, open mode — real HTTP, the real openai SDK. Budgets and reservations:
tests/test_governance_budgets.py."""
from __future__ import annotations

import csv
import io
import json
import logging
import time

import httpx
import openai
import pytest

from service.governance.runtime import Governance, GovernanceSettings
from tests.fake_upstream import FakeUpstream, ok, server_error
from tests.gateway_harness import DEFAULT_QUALITY, QualityRouter, Running, fake_config
from tests.governance_harness import ANSWER, MASTER, MODELS, chat, client, new_key, settled, wait_for


def test_admin_api_needs_the_master_key(env):
    gw, admin, *_ = env
    assert httpx.get(f"{gw.url}/admin/keys").status_code == 401
    bad = httpx.get(f"{gw.url}/admin/keys", headers={"authorization": "Bearer nope"})
    assert bad.status_code == 401 and bad.json()["error"]["code"] == "invalid_api_key"
    assert admin.get("/admin/keys").status_code == 200
    assert admin.post("/admin/keys", json={"name": "x", "colour": "red"}).status_code == 400
    misspelt = admin.post("/admin/keys", json={"name": "x", "max_request_usdd": 1}).json()["error"]
    assert misspelt["param"] == "max_request_usdd" and "did you mean max_request_usd?" in misspelt["message"]
    assert admin.post("/admin/keys", json={"name": "x", "allowed_models": ["gpt-9"]}).status_code == 400
    broken = admin.post("/admin/keys", content=b'{"name": ', headers={"content-type": "application/json"})
    assert broken.status_code == 400 and broken.json()["error"]["code"] == "invalid_json"
    assert admin.get("/admin/keys/key_missing").status_code == 404


def test_admin_input_out_of_range_is_a_400_not_a_500(env):
    _, admin, *_ = env
    key, _ = new_key(admin, name="k")
    for method, path, body, param in [
        ("patch", f"/admin/keys/{key['id']}", {"name": None}, "name"),
        ("post", "/admin/keys", {"name": "big", "rpm": 10**30}, "rpm"),
        ("post", "/admin/keys", {"name": "big", "max_request_usd": 1e10}, "max_request_usd"),
        ("post", "/admin/budgets", {"scope": "key", "scope_id": key["id"], "period": "day", "limit_usd": 1e10}, "limit_usd"),
        ("post", "/admin/keys", {"name": "bool", "rpm": True}, "rpm"),  # was taken as rpm 1
        # below one nano-USD it was stored as 0: every later budget listing divided by it (a 500)
        ("post", "/admin/budgets", {"scope": "key", "scope_id": key["id"], "period": "day", "limit_usd": 1e-12}, "limit_usd"),
        # Python's JSON reads NaN and Infinity; stored, they made every later key listing a 500.
        # The body reader refuses them as no JSON (400 invalid_json), wherever they are.
        ("post", "/admin/keys", {"name": "inf", "expires_in_s": float("inf")}, None),
        ("post", "/admin/keys", {"name": "nan", "expires_at": float("nan")}, None),
        ("post", "/admin/keys", {"name": "nan", "metadata": {"x": float("nan")}}, None),
        # PostgreSQL's text columns refuse a NUL: a 500 there, stored on SQLite.
        ("post", "/admin/keys", {"name": "a\x00b"}, "name"),
        ("patch", f"/admin/keys/{key['id']}", {"team": "t\x00"}, "team"),
        ("post", "/admin/budgets", {"scope": "team", "scope_id": "t\x00", "period": "day", "limit_usd": 1}, "scope_id"),
        # A blank name, team, project or user is no name: a team "" or " " was a group of its own.
        ("post", "/admin/keys", {"name": "   "}, "name"),
        ("post", "/admin/keys", {"name": "blank team", "team": ""}, "team"),
        ("patch", f"/admin/keys/{key['id']}", {"project": " \t"}, "project"),
        ("patch", f"/admin/keys/{key['id']}", {"user": ""}, "user"),
        ("post", "/admin/budgets", {"scope": "team", "scope_id": "  ", "period": "day", "limit_usd": 1}, "scope_id"),
        # A string had been taken for a number where a count refused it; an empty model list
        # allowed nothing; an expiry past the year 3000 or before 1970 is a unit mistake.
        ("post", "/admin/budgets", {"scope": "key", "scope_id": key["id"], "period": "day", "limit_usd": "5"}, "limit_usd"),
        ("post", "/admin/keys", {"name": "str", "max_request_usd": "0.5"}, "max_request_usd"),
        ("post", "/admin/keys", {"name": "none", "allowed_models": []}, "allowed_models"),
        ("post", "/admin/keys", {"name": "far", "expires_at": 1e300}, "expires_at"),
        ("post", "/admin/keys", {"name": "past", "expires_at": -1e300}, "expires_at"),
        ("post", "/admin/keys", {"name": "far by duration", "expires_in_s": 32503680000}, "expires_in_s"),  # past year 3000 from now
    ]:
        # json.dumps writes NaN and Infinity, as a JavaScript or Python client may send them.
        r = admin.request(method, path, content=json.dumps(body), headers={"content-type": "application/json"})
        assert r.status_code == 400 and r.json()["error"]["param"] == param, (path, body, r.text)
        assert r.json()["error"]["code"] == ("invalid_request" if param else "invalid_json"), r.text
    listed = admin.get("/admin/keys")
    assert listed.status_code == 200 and [k["name"] for k in listed.json()["data"]] == ["k"]
    budget = admin.post("/admin/budgets", json={"scope": "key", "scope_id": key["id"], "period": "day", "limit_usd": 1}).json()
    assert admin.patch(f"/admin/budgets/{budget['id']}", json={"limit_usd": 4e-10}).status_code == 400
    removed = admin.patch(f"/admin/budgets/{budget['id']}", json={"limit_usd": None})  # had been a 200 that did nothing
    assert removed.status_code == 400 and removed.json()["error"]["param"] == "limit_usd"
    assert admin.get("/admin/budgets").status_code == 200
    for bad in ("nan", "inf", "soon"):
        r = admin.get("/admin/spend", params={"since": bad})
        assert r.status_code == 400 and r.json()["error"]["param"] == "since"


def test_key_lifecycle_over_http(env):
    gw, admin, *_ = env
    key, secret = new_key(admin, name="ci-bot", team="infra", project="router", user="ana")
    assert secret not in admin.get("/admin/keys").text
    assert secret not in admin.get(f"/admin/keys/{key['id']}").text
    resp = chat(client(gw, secret))
    assert resp.http_response.status_code == 200 and resp.parse().model == "m1"

    with pytest.raises(openai.AuthenticationError) as wrong:
        chat(client(gw, secret[:-2] + "zz"))
    assert wrong.value.body["code"] == "invalid_api_key"
    r = httpx.post(f"{gw.base_url}/chat/completions", json={"model": "auto", "messages": [{"role": "user", "content": "x" * 5000}]})
    assert r.status_code == 401 and r.json()["error"]["code"] == "missing_api_key"
    # The refused request has its row, not its prompt: no one fills the log without a key.
    refused = gw.outcome(r.headers["x-request-id"])
    assert refused["prompt"] is None and refused["prompt_hash"] is None and refused["embedding"] is None

    rotated = admin.post(f"/admin/keys/{key['id']}/rotate", json={}).json()
    new_secret = rotated["secret"]
    with pytest.raises(openai.AuthenticationError):
        chat(client(gw, secret))
    assert chat(client(gw, new_secret)).http_response.status_code == 200

    assert admin.post(f"/admin/keys/{key['id']}/revoke").json()["status"] == "revoked"
    with pytest.raises(openai.PermissionDeniedError) as revoked:
        chat(client(gw, new_secret))
    assert revoked.value.body["code"] == "key_revoked"

    _, short = new_key(admin, name="temp", expires_in_s=0.3)
    assert chat(client(gw, short)).http_response.status_code == 200
    time.sleep(0.4)
    with pytest.raises(openai.PermissionDeniedError) as expired:
        chat(client(gw, short))
    assert expired.value.body["code"] == "key_expired"


def test_a_named_models_fallbacks_stay_inside_the_keys_scope(tmp_path):
    up = FakeUpstream().start()
    up.default("m1", server_error())
    up.default("m2", ok("from the expensive fallback"))
    models = [{"name": "m1", "in": 1.0, "out": 1.0, "context_window": 100000, "fallbacks": ["m2"]},
              {"name": "m2", "in": 60.0, "out": 60.0, "context_window": 100000}]
    config = fake_config(up.base_url, f"sqlite:///{tmp_path}/o.sqlite", models=models)
    gov = Governance(config, GovernanceSettings(db_url=f"sqlite:///{tmp_path}/gov.sqlite", master_key=MASTER))
    gw = Running(config, router=QualityRouter({"m1": 0.9, "m2": 0.8}), governance=gov)
    try:
        admin = httpx.Client(base_url=gw.url, headers={"authorization": f"Bearer {MASTER}"}, timeout=10)
        _, m1_only = new_key(admin, name="m1-only", allowed_models=["m1"])
        with pytest.raises(openai.APIError):
            chat(client(gw, m1_only), model="m1")  # m1 fails; its fallback m2 is outside the key's scope
        assert not up.requests_for("m2")
        # The per-request ceiling holds across failover: m1's worst case fits it, m2's (200 output
        # tokens at $60 per million) does not, so m2 is not tried...
        _, capped = new_key(admin, name="capped", max_request_usd=0.0015)
        with pytest.raises(openai.APIError):
            chat(client(gw, capped), model="m1")
        assert not up.requests_for("m2")
        # ...while a ceiling m2 fits lets it answer.
        _, roomy = new_key(admin, name="roomy", max_request_usd=0.05)
        assert chat(client(gw, roomy), model="m1").parse().model == "m2"
    finally:
        gw.stop()
        up.stop()


def test_a_session_id_with_a_nul_is_charged_on_postgres(tmp_path, pg_url):
    import psycopg

    up = FakeUpstream().start()
    up.default("m1", ok(ANSWER))
    config = fake_config(up.base_url, f"sqlite:///{tmp_path}/o.sqlite", models=MODELS)
    gov = Governance(config, GovernanceSettings(db_url=pg_url, master_key=MASTER))
    gw = Running(config, router=QualityRouter(DEFAULT_QUALITY), governance=gov)
    try:
        admin = httpx.Client(base_url=gw.url, headers={"authorization": f"Bearer {MASTER}"}, timeout=10)
        key, secret = new_key(admin, name="nul")
        assert admin.post("/admin/budgets", json={"scope": "key", "scope_id": key["id"], "period": "day", "limit_usd": 1}).status_code == 201
        for _ in range(3):
            chat(client(gw, secret), model="m1", extra_body={"prompt_cache_key": "s\x00x"})
        rows = settled(admin, 3)  # PostgreSQL refused the NUL and the whole settle rolled back: no rows
        with psycopg.connect(pg_url) as conn:
            assert conn.execute("SELECT DISTINCT session_id FROM gov_spend").fetchall() == [("sx",)]
        budget = wait_for(lambda: (b := admin.get("/admin/budgets").json()["data"][0]) and b["reserved_usd"] == 0 and b)
        assert budget["spent_usd"] == pytest.approx(sum(r["cost_usd"] for r in rows))
    finally:
        gw.stop()
        up.stop()


def test_scopes_and_rate_limits(env):
    gw, admin, *_ = env
    _, only_m3 = new_key(admin, name="m3-only", allowed_models=["m3"])
    c = client(gw, only_m3)
    assert chat(c).parse().model == "m3"  # auto routes inside the key's scope
    assert chat(c, model="m3").parse().model == "m3"
    with pytest.raises(openai.PermissionDeniedError) as denied:
        chat(c, model="m1")
    assert denied.value.body["code"] == "model_not_allowed"

    _, cheap_only = new_key(admin, name="cheap", allowed_profiles=["auto:cheap"])
    with pytest.raises(openai.PermissionDeniedError) as profile:
        chat(client(gw, cheap_only), model="auto")
    assert profile.value.body["code"] == "profile_not_allowed"
    assert chat(client(gw, cheap_only), model="auto:cheap").http_response.status_code == 200

    _, limited = new_key(admin, name="slow", rpm=2)
    c = client(gw, limited)
    chat(c)
    chat(c)
    with pytest.raises(openai.RateLimitError) as limited_exc:
        chat(c)
    assert limited_exc.value.body["code"] == "rpm_limit_exceeded"
    # Refused before the router ran: no routing reason is made up for it.
    assert limited_exc.value.response.headers["x-router-reason"] == "auto: not routed"

    _, small_tpm = new_key(admin, name="small-tpm", tpm=5)  # less than one request: never admissible
    with pytest.raises(openai.APIStatusError) as too_large:
        client(gw, small_tpm).chat.completions.create(model="auto", messages=[{"role": "user", "content": "hello " * 50}])
    assert too_large.value.status_code == 413 and too_large.value.body["code"] == "request_too_large"
    assert "retry-after" not in too_large.value.response.headers  # a retry could never succeed


def test_attribution_reports_and_metrics(env):
    gw, admin, *_ = env
    _, a = new_key(admin, name="alpha", team="t1", project="p1", user="ana")
    _, b = new_key(admin, name="beta", team="t2", project="p1", user="bo")
    for _ in range(3):
        chat(client(gw, a))
    for _ in range(2):
        chat(client(gw, b), model="m2")
    rows = settled(admin, 5)
    total = sum(r["cost_usd"] for r in rows)
    by_team = {r["team"]: r for r in admin.get("/admin/spend", params={"group_by": "team"}).json()["data"]}
    assert by_team["t1"]["requests"] == 3 and by_team["t2"]["requests"] == 2
    assert abs(by_team["t1"]["cost_usd"] + by_team["t2"]["cost_usd"] - total) < 1e-12
    by_user_model = admin.get("/admin/spend", params={"group_by": "user,model", "project": "p1"}).json()["data"]
    assert {(r["user"], r["model"]) for r in by_user_model} == {("ana", "m1"), ("bo", "m2")}
    day = admin.get("/admin/spend", params={"group_by": "day"}).json()["data"]
    assert day[0]["day"] == time.strftime("%Y-%m-%d", time.gmtime()) and day[0]["requests"] == 5

    text = admin.get("/admin/spend.csv", params={"group_by": "key"}).text
    parsed = list(csv.DictReader(io.StringIO(text)))
    assert {r["key_name"] for r in parsed} == {"alpha", "beta"}
    assert abs(sum(float(r["cost_usd"]) for r in parsed) - total) < 1e-8

    fc = admin.get("/admin/forecast").json()
    assert fc["spent_to_date_usd"] == pytest.approx(total) and fc["forecast_month_end_usd"] >= fc["spent_to_date_usd"]

    metrics = httpx.get(f"{gw.url}/metrics").text
    line = next(ln for ln in metrics.splitlines() if ln.startswith("openclaw_governed_spend_usd_total{") and 'key="alpha"' in ln)
    assert 'team="t1"' in line and 'user="ana"' in line and 'model="m1"' in line
    assert a not in metrics and b not in metrics and MASTER not in metrics


def test_refused_requests_are_not_errors_on_the_dashboard(env):
    gw, admin, *_ = env
    key, secret = new_key(admin, name="gamma")
    chat(client(gw, secret))
    admin.post("/admin/budgets", json={"scope": "key", "scope_id": key["id"], "period": "day", "limit_usd": 0.00002})
    with pytest.raises(openai.APIStatusError) as refused:  # the budget cannot pay for another answer
        chat(client(gw, secret))
    assert refused.value.status_code == 402
    rows = settled(admin, 2)
    assert sorted(r["status"] for r in rows) == ["ok", "refused"]
    board = admin.get("/admin/dashboard").json()
    assert board["summary"]["requests"] == 2 and board["summary"]["error_rate"] == 0.0
    assert set(board["spend_by_model"]["series"]) == {"m1"}  # no series for the refusal nobody answered


def test_secrets_never_in_logs_errors_or_metrics(env, caplog):
    gw, admin, *_ = env
    caplog.set_level(logging.DEBUG)
    key, secret = new_key(admin, name="leaky?")
    chat(client(gw, secret))
    wrong = secret[:-3] + "abc"
    bodies = []
    for s in (wrong, secret):
        try:
            chat(client(gw, s), model="gpt-nonexistent")
        except openai.APIStatusError as exc:
            bodies.append(json.dumps(exc.body))
    admin.post(f"/admin/keys/{key['id']}/revoke")
    try:
        chat(client(gw, secret))
    except openai.APIStatusError as exc:
        bodies.append(json.dumps(exc.body))
    settled(admin, 1)
    seen = caplog.text + "".join(bodies) + httpx.get(f"{gw.url}/metrics").text + admin.get("/admin/requests").text
    seen += admin.get("/admin/keys").text
    for s in (secret, wrong, MASTER):
        assert s not in seen and s[-20:] not in seen


def test_alerts_fire_once_per_crossing(env):
    gw, admin, gov, up, hook = env
    key, secret = new_key(admin, name="alerted")
    # No soft threshold here: m1 answers ~$0.0011 against a prediction of ~$0.0005, so the
    # last admitted request overshoots and the 100 % crossing happens too.
    admin.post("/admin/budgets", json={"scope": "key", "scope_id": key["id"], "period": "day", "limit_usd": 0.004,
                                       "soft_threshold": 1.0})
    c = client(gw, secret)
    n = 0
    with pytest.raises(openai.APIStatusError):
        for _ in range(60):
            chat(c)
            n += 1
            settled(admin, n)
    for _ in range(3):  # more refused requests must not re-fire anything
        with pytest.raises(openai.APIStatusError):
            chat(c)
    budget_alerts = wait_for(lambda: [a for a in hook.received if a["kind"] == "budget"] if len(
        [a for a in hook.received if a["kind"] == "budget"]) >= 3 else None)
    time.sleep(0.3)
    budget_alerts = [a for a in hook.received if a["kind"] == "budget"]
    assert sorted(a["details"]["threshold"] for a in budget_alerts) == [0.5, 0.8, 1.0]
    assert all("day budget of key" in a["message"] for a in budget_alerts)

    # m2's upstream fails: three failures open its circuit (breaker_failures: 3) → one alert.
    up.default("m2", server_error())
    _, other = new_key(admin, name="breaker")
    for _ in range(4):
        with pytest.raises(openai.APIStatusError):
            chat(client(gw, other), model="m2")
    circuit = wait_for(lambda: [a for a in hook.received if a["kind"] == "circuit_open"])
    time.sleep(0.3)
    assert len([a for a in hook.received if a["kind"] == "circuit_open"]) == 1 and circuit[0]["details"]["model"] == "m2"
    assert circuit[0]["details"]["cause"].startswith("server") and "last error: server" in circuit[0]["message"]  # what to fix
    assert len([a for a in hook.received if a["kind"] == "budget"]) == 3
    stored = admin.get("/admin/alerts").json()["data"]
    assert {a["kind"] for a in stored} >= {"budget", "circuit_open"}


def test_open_mode_only_on_loopback(tmp_path):
    up = FakeUpstream().start()
    try:
        config = fake_config(up.base_url, f"sqlite:///{tmp_path}/o.sqlite", models=MODELS)
        gov = Governance(config, GovernanceSettings(db_url=f"sqlite:///{tmp_path}/g.sqlite"))
        assert "OPEN" in gov.startup_check("127.0.0.1")
        with pytest.raises(ValueError, match="refusing to serve"):
            gov.startup_check("0.0.0.0")
        gw = Running(config, router=QualityRouter(DEFAULT_QUALITY), governance=gov)
        try:
            assert chat(client(gw, "any-sdk-placeholder")).http_response.status_code == 200
            r = httpx.post(f"{gw.base_url}/chat/completions", json={"model": "auto", "messages": [{"role": "user", "content": "x"}]})
            assert r.status_code == 200
            assert httpx.get(f"{gw.url}/admin/keys").json()["error"]["code"] == "admin_disabled"
            first, secret = gov.keys.create("first")  # once a key exists, the gateway is closed
            time.sleep(2.1)
            r = httpx.post(f"{gw.base_url}/chat/completions", json={"model": "auto", "messages": [{"role": "user", "content": "x"}]})
            assert r.status_code == 401
            assert "client keys required" in gov.startup_check("0.0.0.0")
            gov.keys.revoke(first.id)  # ... and stays closed when the last key goes
            time.sleep(2.1)
            r = httpx.post(f"{gw.base_url}/chat/completions", json={"model": "auto", "messages": [{"role": "user", "content": "x"}]})
            assert r.status_code == 401
            r = httpx.post(f"{gw.base_url}/chat/completions", headers={"authorization": f"Bearer {secret}"},
                           json={"model": "auto", "messages": [{"role": "user", "content": "x"}]})
            assert r.status_code == 403 and r.json()["error"]["code"] == "key_revoked"  # refused, not waved through
        finally:
            gw.stop()
    finally:
        up.stop()


def test_serve_refuses_open_gateway_on_public_interface(tmp_path):
    """`serve` without any key: refuses 0.0.0.0 with a clear message (and binds nothing)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENCLAW_")}
    env["PYTHONPATH"] = str(root)
    done = subprocess.run([sys.executable, "-m", "service.cli", "serve", "--host", "0.0.0.0", "--port", "0",
                           "--db", f"sqlite:///{tmp_path}/o.sqlite"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "refusing to serve on 0.0.0.0 without any key" in done.stderr
    assert "listening" not in done.stdout
