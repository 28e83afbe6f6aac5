"""Client keys on every client endpoint (/v1/models, /v1/route, /v1/feedback, chat), feedback
scoped to the key that made the request, one admin rule for every /admin endpoint, and no
secret in logs, errors or /metrics — through running gateways, real HTTP and SQLite."""
from __future__ import annotations

import json
import logging
import time

import httpx
import openai
import pytest

from service.governance.runtime import Governance, GovernanceSettings
from tests.gateway_harness import DEFAULT_QUALITY, QualityRouter, Running, fake_config

MASTER = "mk-auth-" + "7" * 24
LEARNING = "learning: {bandit: {enabled: true}}"
CHAT = {"model": "auto", "messages": [{"role": "user", "content": "hello there"}]}


def _governance(config, tmp_path, master: str | None = MASTER) -> Governance:
    return Governance(config, GovernanceSettings(db_url=f"sqlite:///{tmp_path}/gov.sqlite", master_key=master))


@pytest.fixture
def gw(upstream, tmp_path):
    config = fake_config(upstream.base_url, f"sqlite:///{tmp_path}/outcomes.sqlite", extra=LEARNING)
    running = Running(config, router=QualityRouter(DEFAULT_QUALITY), governance=_governance(config, tmp_path))
    running.admin = httpx.Client(base_url=running.url, headers={"authorization": f"Bearer {MASTER}"}, timeout=10)
    yield running
    running.admin.close()
    running.stop()


def new_key(gw: Running, **fields) -> tuple[dict, str]:
    r = gw.admin.post("/admin/keys", json={"name": fields.pop("name", "k"), **fields})
    assert r.status_code == 201, r.text
    return r.json()["key"], r.json()["secret"]


def bearer(secret: str | None) -> dict[str, str]:
    return {} if secret is None else {"authorization": f"Bearer {secret}"}


def ask(gw: Running, secret: str, **body) -> str:
    r = httpx.post(f"{gw.base_url}/chat/completions", json={**CHAT, **body}, headers=bearer(secret), timeout=10)
    assert r.status_code == 200, r.text
    return r.headers["x-request-id"]


def call(gw: Running, endpoint: str, secret: str | None, request_id: str = "req_x") -> httpx.Response:
    headers = bearer(secret)
    if endpoint == "models":
        return httpx.get(f"{gw.base_url}/models", headers=headers)
    if endpoint == "route":
        return httpx.post(f"{gw.base_url}/route", json=CHAT, headers=headers)
    return httpx.post(f"{gw.base_url}/feedback", json={"request_id": request_id, "thumbs": "up"}, headers=headers)


@pytest.mark.parametrize("endpoint", ["models", "route", "feedback"])
def test_client_endpoints_refuse_like_chat(gw, endpoint):
    key, secret = new_key(gw, name="client")
    rid = ask(gw, secret)
    assert call(gw, endpoint, secret, rid).status_code == 200
    assert call(gw, endpoint, MASTER, rid).status_code == 200

    missing = call(gw, endpoint, None, rid)
    assert missing.status_code == 401 and missing.json()["error"]["code"] == "missing_api_key"
    assert missing.json()["error"]["type"] == "authentication_error"
    wrong = call(gw, endpoint, secret[:-3] + "zzz", rid)
    assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "invalid_api_key"

    _, short = new_key(gw, name="short-lived", expires_in_s=0.3)
    assert call(gw, endpoint, short, rid).status_code in (200, 404)  # feedback: not its request
    time.sleep(0.4)
    expired = call(gw, endpoint, short, rid)
    assert expired.status_code == 403 and expired.json()["error"]["code"] == "key_expired"

    gw.admin.post(f"/admin/keys/{key['id']}/revoke").raise_for_status()
    revoked = call(gw, endpoint, secret, rid)
    assert revoked.status_code == 403 and revoked.json()["error"]["code"] == "key_revoked"
    assert revoked.json()["error"]["type"] == "permission_error"


def test_the_sdk_sees_auth_errors_on_models(gw):
    new_key(gw, name="someone")
    with pytest.raises(openai.AuthenticationError) as wrong:
        openai.OpenAI(base_url=gw.base_url, api_key="sk-ocr-not-a-key", max_retries=0).models.list()
    assert wrong.value.body["code"] == "invalid_api_key"


def test_models_lists_only_what_the_key_may_use(gw):
    config = gw.config
    _, scoped = new_key(gw, name="scoped", allowed_models=["m3"], allowed_profiles=["auto:cheap"])
    _, models_only = new_key(gw, name="models-only", allowed_models=["m2", "m3"])
    everything = {m.id for m in openai.OpenAI(base_url=gw.base_url, api_key=MASTER, max_retries=0).models.list()}
    assert everything == set(config.router.profiles) | set(config.model_names)

    seen = {m.id for m in openai.OpenAI(base_url=gw.base_url, api_key=scoped, max_retries=0).models.list()}
    assert seen == {"auto:cheap", "m3"}
    # Without a profile list every profile stays usable (auto routes inside the model scope).
    seen = {m.id for m in openai.OpenAI(base_url=gw.base_url, api_key=models_only, max_retries=0).models.list()}
    assert seen == set(config.router.profiles) | {"m2", "m3"}
    # What /v1/models lists is what chat accepts.
    c = openai.OpenAI(base_url=gw.base_url, api_key=scoped, max_retries=0)
    for name in seen - {"auto:cheap", "m3"}:
        with pytest.raises(openai.PermissionDeniedError):
            c.chat.completions.create(model=name, messages=CHAT["messages"])


def test_route_decides_inside_the_key_scope(gw):
    _, only_m3 = new_key(gw, name="m3-only", allowed_models=["m3"])
    _, cheap = new_key(gw, name="cheap", allowed_profiles=["auto:cheap"])
    assert httpx.post(f"{gw.base_url}/route", json=CHAT, headers=bearer(MASTER)).json()["model"] == "m1"
    assert httpx.post(f"{gw.base_url}/route", json=CHAT, headers=bearer(only_m3)).json()["model"] == "m3"
    denied = httpx.post(f"{gw.base_url}/route", json=CHAT, headers=bearer(cheap))
    assert denied.status_code == 403 and denied.json()["error"]["code"] == "profile_not_allowed"
    allowed = httpx.post(f"{gw.base_url}/route", json={**CHAT, "model": "auto:cheap"}, headers=bearer(cheap))
    assert allowed.status_code == 200 and allowed.json()["profile"] == "auto:cheap"


@pytest.mark.parametrize("endpoint", ["chat/completions", "route"])
def test_the_key_is_checked_before_the_body(gw, endpoint):
    _, scoped = new_key(gw, name="scoped", allowed_models=["m3"], allowed_profiles=["auto:cheap"])
    for body in ({"model": "auto"}, {**CHAT, "model": "gpt-17"}, {**CHAT, "temperature": 5}, b"{not json"):
        for headers, code in (({}, "missing_api_key"), (bearer("sk-ocr-wrong"), "invalid_api_key")):
            sent = {"content": body} if isinstance(body, bytes) else {"json": body}
            r = httpx.post(f"{gw.base_url}/{endpoint}", headers=headers, **sent)
            assert (r.status_code, r.json()["error"]["code"]) == (401, code), r.text
    # An unknown model's 404 lists what the caller's key may use, not the whole catalog.
    r = httpx.post(f"{gw.base_url}/{endpoint}", json={**CHAT, "model": "gpt-17"}, headers=bearer(scoped))
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    assert r.json()["error"]["message"].endswith("Use a routing profile or a model: auto:cheap, m3")
    r = httpx.post(f"{gw.base_url}/{endpoint}", json={**CHAT, "model": "gpt-17"}, headers=bearer(MASTER))
    assert r.status_code == 404 and "auto:best" in r.json()["error"]["message"] and "m1" in r.json()["error"]["message"]


def test_feedback_only_on_the_keys_own_requests(gw, upstream, tmp_path):
    key_a, a = new_key(gw, name="tenant-a")
    _, b = new_key(gw, name="tenant-b")
    rid = ask(gw, a)
    unknown = call(gw, "feedback", b, "req_does_not_exist")
    foreign = call(gw, "feedback", b, rid)
    # Another tenant's request looks exactly like one that does not exist.
    assert foreign.status_code == unknown.status_code == 404
    assert foreign.json()["error"]["code"] == "request_not_found"
    assert foreign.json()["error"]["message"] == unknown.json()["error"]["message"].replace("req_does_not_exist", rid)
    assert call(gw, "feedback", a, rid).status_code == 200
    assert call(gw, "feedback", MASTER, rid).status_code == 200
    # The tenant is the key, not its secret: a rotated key still owns its requests.
    a2 = gw.admin.post(f"/admin/keys/{key_a['id']}/rotate", json={}).json()["secret"]
    assert call(gw, "feedback", a2, rid).status_code == 200

    # Another replica knows the request only from the shared outcome log: same rule.
    assert gw.outcome(rid)["tenant"] == key_a["id"]
    replica = Running(gw.config, router=QualityRouter(DEFAULT_QUALITY), governance=_governance(gw.config, tmp_path))
    try:
        assert call(replica, "feedback", b, rid).status_code == 404
        assert call(replica, "feedback", a2, rid).status_code == 200
    finally:
        replica.stop()


def _admin_calls(url: str, headers: dict[str, str]) -> dict[str, httpx.Response]:
    return {
        "keys": httpx.get(f"{url}/admin/keys", headers=headers),
        "bandit": httpx.get(f"{url}/admin/router/bandit", headers=headers),
        "reload": httpx.post(f"{url}/admin/router/reload", json={"path": "/nowhere"}, headers=headers),
    }


def test_one_admin_rule_for_governance_and_learning_endpoints(gw):
    _, client_secret = new_key(gw, name="not-an-admin")
    for headers, status, code in [({}, 401, "missing_api_key"), (bearer("wrong"), 401, "invalid_api_key"),
                                  (bearer(client_secret), 401, "invalid_api_key")]:
        for name, r in _admin_calls(gw.url, headers).items():
            assert (r.status_code, r.json()["error"]["code"]) == (status, code), name
    ok = _admin_calls(gw.url, bearer(MASTER))
    assert ok["keys"].status_code == 200 and ok["bandit"].status_code == 200
    assert ok["reload"].status_code == 400 and ok["reload"].json()["error"]["code"] == "invalid_artifact"


def test_without_a_master_key_admin_is_off_even_on_loopback(upstream, tmp_path, monkeypatch):
    monkeypatch.delenv("OPENCLAW_MASTER_KEY", raising=False)
    config = fake_config(upstream.base_url, f"sqlite:///{tmp_path}/o.sqlite", extra=LEARNING)
    with_gov = Running(config, router=QualityRouter(DEFAULT_QUALITY), governance=_governance(config, tmp_path, None))
    without_gov = Running(fake_config(upstream.base_url, f"sqlite:///{tmp_path}/o2.sqlite", extra=LEARNING),
                          router=QualityRouter(DEFAULT_QUALITY))
    try:
        for running in (with_gov, without_gov):
            for name, r in _admin_calls(running.url, bearer("anything")).items():
                assert (r.status_code, r.json()["error"]["code"]) == (403, "admin_disabled"), name
        # Governance off, master key in the environment: the same rule guards the learning endpoints.
        monkeypatch.setenv("OPENCLAW_MASTER_KEY", MASTER)
        calls = _admin_calls(without_gov.url, {})
        assert calls["bandit"].status_code == 401 and calls["reload"].status_code == 401
        assert _admin_calls(without_gov.url, bearer(MASTER))["bandit"].status_code == 200
    finally:
        with_gov.stop()
        without_gov.stop()


def test_secrets_stay_out_of_logs_errors_and_metrics(gw, caplog):
    caplog.set_level(logging.DEBUG)
    key, secret = new_key(gw, name="watched")
    seen: list[str] = []
    rid = ask(gw, secret)
    for endpoint in ("models", "route", "feedback"):
        seen.append(call(gw, endpoint, secret, rid).text)
    wrong = secret[:-4] + "abcd"
    for endpoint in ("models", "route", "feedback"):
        r = call(gw, endpoint, wrong, rid)
        assert r.status_code == 401
        seen.append(r.text)
    r = httpx.post(f"{gw.base_url}/chat/completions", json=CHAT, headers={"x-api-key": wrong})
    assert r.status_code == 401
    seen.append(r.text)
    seen.append(httpx.get(f"{gw.url}/admin/keys", headers=bearer(wrong)).text)
    gw.admin.post(f"/admin/keys/{key['id']}/revoke").raise_for_status()
    seen.append(call(gw, "route", secret).text)
    gw.outcome(rid)
    seen.append(json.dumps(gw.outcome(rid), default=str))
    seen.append(httpx.get(f"{gw.url}/metrics").text)
    seen.append(gw.admin.get("/admin/requests").text + gw.admin.get("/admin/keys").text)
    seen.append(caplog.text)
    text = "".join(seen)
    # The scrape counted the refusals, by reason only.
    assert 'openclaw_governance_refusals_total{reason="invalid_key"} 4.0' in text
    for s in (secret, wrong, MASTER):
        assert s not in text and s[-16:] not in text


def test_a_key_store_that_fails_is_a_clean_500_with_its_outcome_row(upstream, tmp_path, caplog):
    config = fake_config(upstream.base_url, f"sqlite:///{tmp_path}/outcomes.sqlite")
    gov = _governance(config, tmp_path)
    gw = Running(config, router=QualityRouter(DEFAULT_QUALITY), governance=gov)
    try:
        admin = httpx.Client(base_url=gw.url, headers={"authorization": f"Bearer {MASTER}"}, timeout=10)
        key = admin.post("/admin/keys", json={"name": "tenant-a"}).json()
        unseen = admin.post("/admin/keys", json={"name": "tenant-b"}).json()["secret"]  # not in the key cache
        r = httpx.post(f"{gw.base_url}/chat/completions", json={**CHAT, "temperature": 9}, headers=bearer(key["secret"]))
        assert r.status_code == 400
        rejected = gw.outcome(r.headers["x-request-id"])  # filed under the key it came with
        assert (rejected["status"], rejected["tenant"], rejected["key_label"]) == ("rejected", key["key"]["id"], "tenant-a")

        def unreachable(*args, **kwargs):
            raise RuntimeError("governance database unreachable")

        gov.keys.authenticate = unreachable
        with caplog.at_level(logging.ERROR):
            r = httpx.post(f"{gw.base_url}/chat/completions", json=CHAT, headers=bearer(unseen))
        assert r.status_code == 500 and r.json()["error"]["code"] == "internal_error"
        assert "unreachable" not in r.text  # the reason is in the log, not the answer
        row = gw.outcome(r.headers["x-request-id"])
        assert row["status"] == "error" and row["error"] == "internal: RuntimeError"
        admin.close()
    finally:
        gw.stop()


def test_a_store_away_leaves_open_mode_as_it_was_and_is_logged_in_one_line(upstream, tmp_path, caplog):
    import sqlite3

    config = fake_config(upstream.base_url, f"sqlite:///{tmp_path}/outcomes.sqlite")
    gov = _governance(config, tmp_path, master=None)  # no key anywhere: open, on loopback
    gw = Running(config, router=QualityRouter(DEFAULT_QUALITY), governance=gov)
    asked = []
    try:
        assert httpx.post(f"{gw.base_url}/chat/completions", json=CHAT).status_code == 200

        def away():
            asked.append(time.monotonic())
            raise sqlite3.OperationalError("unable to open database file")

        gov.open_mode = away
        time.sleep(2.1)  # past the open-mode answer's lifetime: asked again, and the store is away
        for _ in range(3):  # open as it was, rather than every request failing with the store
            assert httpx.post(f"{gw.base_url}/chat/completions", json=CHAT).status_code == 200
        assert len(asked) == 1  # and asked again only once its answer is old again

        # Keyed: once keys are required they stay required, so open mode is never asked again;
        # a key lookup with the store away is a 503 logged in one line, no traceback.
        gw.stop()
        gov = _governance(config, tmp_path)
        gw = Running(config, router=QualityRouter(DEFAULT_QUALITY), governance=gov)
        admin = httpx.Client(base_url=gw.url, headers={"authorization": f"Bearer {MASTER}"}, timeout=10)
        secret = admin.post("/admin/keys", json={"name": "k"}).json()["secret"]
        admin.close()
        assert httpx.post(f"{gw.base_url}/chat/completions", json=CHAT, headers=bearer(secret)).status_code == 200
        asked.clear()
        gov.open_mode = away

        def locked(*args, **kwargs):
            raise sqlite3.OperationalError("database is locked")

        gov.keys.authenticate = locked
        time.sleep(2.1)  # past both the open-mode and the key cache's lifetimes
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            r = httpx.post(f"{gw.base_url}/chat/completions", json=CHAT, headers=bearer(secret))
        assert r.status_code == 503 and r.json()["error"]["code"] == "store_unavailable" and asked == []
        said = [rec for rec in caplog.records if "cannot be reached" in rec.getMessage()]
        assert len(said) == 1 and said[0].exc_info is None and "database is locked" in said[0].getMessage()
    finally:
        gw.stop()


def test_a_store_away_on_any_endpoint_is_a_503_that_leaves_the_connection_open(upstream, tmp_path, caplog):
    """Starlette's handler for Exception raises the error again after answering: uvicorn had logged
    each such 503 with a traceback and closed the connection under the client's next request."""
    import socket
    import sqlite3

    from tests.serve_harness import read_response

    config = fake_config(upstream.base_url, f"sqlite:///{tmp_path}/outcomes.sqlite", extra=LEARNING)
    gw = Running(config, router=QualityRouter(DEFAULT_QUALITY))
    try:
        answered = gw.client().chat.completions.with_raw_response.create(**CHAT)
        request_id = answered.headers["x-request-id"]

        def locked(*args, **kwargs):
            raise sqlite3.OperationalError("database is locked")

        gw.gateway.outcome_log.get = locked
        body = json.dumps({"request_id": request_id, "score": 1.0}).encode()
        host, port = gw.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as conn, caplog.at_level(logging.WARNING):
            replies = []
            for path in ("/v1/feedback", "/healthz"):  # the second request on the same connection
                payload = body if path == "/v1/feedback" else b""
                method = "POST" if payload else "GET"
                conn.sendall(f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                             f"Content-Length: {len(payload)}\r\n\r\n".encode() + payload)
                head, rest = read_response(conn)
                replies.append((int(head.split()[1]), json.loads(rest)))
        assert replies[0][0] == 503 and replies[0][1]["error"]["code"] == "store_unavailable"
        assert replies[1][0] == 200  # the connection was still open
        assert not [r for r in caplog.records if r.exc_info]  # one line, no traceback
    finally:
        gw.stop()
