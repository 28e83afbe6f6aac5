"""What a client without the right key can learn or cost: /admin bodies are read only after the
master key, another key's request id looks like an unknown one (same answer, no sooner), a
scoped key's /v1/route and errors name no model outside its scope, and a key's requests per
minute hold on /v1/route and /v1/feedback too — through a running gateway, real HTTP and SQLite."""
from __future__ import annotations

import socket
import time
from urllib.parse import urlsplit

import httpx

from service import api_feedback
from tests.governance_harness import MASTER, chat, client, new_key

HELLO = {"model": "auto", "messages": [{"role": "user", "content": "hello"}]}
BODY_ROUTES = [("POST", "/admin/keys"), ("PATCH", "/admin/keys/{key}"), ("POST", "/admin/keys/{key}/rotate"),
               ("POST", "/admin/budgets"), ("PATCH", "/admin/budgets/{budget}"), ("POST", "/admin/router/reload")]


def _admin_paths(admin: httpx.Client) -> list[tuple[str, str]]:
    key, _ = new_key(admin, name="target")
    budget = admin.post("/admin/budgets", json={"scope": "key", "scope_id": key["id"], "period": "day", "limit_usd": 1})
    return [(m, p.format(key=key["id"], budget=budget.json()["id"])) for m, p in BODY_ROUTES]


def _status_before_the_body(url: str, method: str, path: str, headers: str = "") -> int:
    """Announce a 100 MiB body, send one byte of it, and read the status line: a server that
    waits for the body before answering never sends one (the socket times out)."""
    where = urlsplit(url)
    with socket.create_connection((where.hostname, where.port), timeout=10) as sock:
        sock.sendall(f"{method} {path} HTTP/1.1\r\nhost: {where.netloc}\r\ncontent-type: application/json\r\n"
                     f"content-length: {100 * 2**20}\r\n{headers}\r\n{{".encode())
        head = b""
        while b"\r\n" not in head:
            chunk = sock.recv(4096)
            assert chunk, "the connection closed without an answer"
            head += chunk
        return int(head.split(b" ", 2)[1])


def test_admin_bodies_are_read_only_after_the_master_key(env):
    gw, admin, *_ = env
    for method, path in _admin_paths(admin):
        # Without the key the answer comes before the body does: nothing of it is read.
        assert _status_before_the_body(gw.url, method, path) == 401, (method, path)
        # With it, the declared size alone is refused: the admin API reads at most 64 KiB.
        assert _status_before_the_body(gw.url, method, path, f"authorization: Bearer {MASTER}\r\n") == 413, path
        for body in (b"{not json", b"[" * 100_000 + b"]" * 100_000):
            r = httpx.request(method, gw.url + path, content=body, headers={"content-type": "application/json"})
            assert (r.status_code, r.json()["error"]["code"]) == (401, "missing_api_key"), (path, r.text)
    big = admin.post("/admin/keys", json={"name": "big", "metadata": {"x": "y" * 70_000}})
    assert big.status_code == 413 and big.json()["error"]["code"] == "request_too_large"
    # A bad body, once the key is right, is the same OpenAI-style 400 naming the field.
    bad = admin.post("/admin/budgets", json={"scope": "galaxy", "scope_id": "x", "period": "day", "limit_usd": 1})
    assert (bad.status_code, bad.json()["error"]["param"], bad.json()["error"]["type"]) == (400, "scope", "invalid_request_error")
    key, _ = new_key(admin, name="rotated")
    assert admin.post(f"/admin/keys/{key['id']}/rotate").status_code == 200  # the body stays optional
    chunked_empty = admin.post(f"/admin/keys/{key['id']}/rotate", content=iter([b""]))  # chunked, no bytes
    assert chunked_empty.status_code == 200, chunked_empty.text
    assert admin.post(f"/admin/keys/{key['id']}/rotate", content=b"null").status_code == 200
    assert admin.post(f"/admin/keys/{key['id']}/rotate", json={"grace_s": -1}).json()["error"]["param"] == "grace_s"


def test_another_keys_request_id_is_answered_like_an_unknown_one_and_no_sooner(env, monkeypatch):
    gw, admin, *_ = env
    monkeypatch.setattr(api_feedback, "OWNER_WAIT_S", 1.0)
    _, a = new_key(admin, name="tenant-a")
    _, b = new_key(admin, name="tenant-b")
    rid = chat(client(gw, a)).headers["x-request-id"]
    answers = {}
    for label, request_id in (("foreign", rid), ("unknown", "req_" + "0" * 32)):
        started = time.monotonic()
        r = httpx.post(f"{gw.url}/v1/feedback", json={"request_id": request_id, "thumbs": "down"},
                       headers={"authorization": f"Bearer {b}"}, timeout=10)
        answers[label] = (r.status_code, r.json()["error"]["code"], time.monotonic() - started)
    # The gateway looks for an unknown id until OWNER_WAIT_S has passed; another key's id waits as long.
    for label, (status, code, waited) in answers.items():
        assert (status, code) == (404, "request_not_found") and waited >= api_feedback.OWNER_WAIT_S, (label, waited)
    own = httpx.post(f"{gw.url}/v1/feedback", json={"request_id": rid, "thumbs": "up"}, headers={"authorization": f"Bearer {a}"})
    assert own.status_code == 200


def test_a_scoped_key_hears_of_no_model_outside_its_scope(env):
    gw, admin, *_ = env
    _, scoped = new_key(admin, name="m3-only", allowed_models=["m3"])
    hidden = ("m1", "m2")
    route = httpx.post(f"{gw.url}/v1/route", json=HELLO, headers={"authorization": f"Bearer {scoped}"})
    assert route.status_code == 200
    assert [c["model"] for c in route.json()["candidates"]] == ["m3"]
    answer = chat(client(gw, scoped))
    impossible = httpx.post(f"{gw.base_url}/chat/completions", json=HELLO,
                            headers={"authorization": f"Bearer {scoped}", "x-router-max-cost": "1e-12"})
    assert impossible.status_code == 400 and impossible.json()["error"]["code"] == "no_eligible_model"
    assert "m3: predicted cost" in impossible.json()["error"]["message"]
    for text in (route.text, answer.headers["x-router-reason"], impossible.text):
        assert not any(m in text for m in hidden), text
    # The master key is scoped to nothing: it sees every candidate.
    everything = httpx.post(f"{gw.url}/v1/route", json=HELLO, headers={"authorization": f"Bearer {MASTER}"}).json()
    assert sorted(c["model"] for c in everything["candidates"]) == ["m1", "m2", "m3"]


def test_requests_per_minute_hold_on_route_and_feedback(env):
    gw, admin, *_ = env
    _, limited = new_key(admin, name="rpm-2", rpm=2)
    auth = {"authorization": f"Bearer {limited}"}
    rid = chat(client(gw, limited)).headers["x-request-id"]
    assert httpx.post(f"{gw.url}/v1/route", json=HELLO, headers=auth).status_code == 200
    # The minute is shared with chat: its request and the route above fill it.
    for refused in (httpx.post(f"{gw.url}/v1/route", json=HELLO, headers=auth),
                    httpx.post(f"{gw.url}/v1/feedback", json={"request_id": rid, "thumbs": "up"}, headers=auth),
                    httpx.post(f"{gw.base_url}/chat/completions", json=HELLO, headers=auth)):
        assert refused.status_code == 429 and refused.json()["error"]["code"] == "rpm_limit_exceeded", refused.text
        assert refused.json()["error"]["type"] == "rate_limit_error" and int(refused.headers["retry-after"]) >= 1
        assert (refused.headers["x-ratelimit-limit-requests"], refused.headers["x-ratelimit-remaining-requests"]) == ("2", "0")
    assert httpx.post(f"{gw.url}/v1/route", json=HELLO, headers={"authorization": f"Bearer {MASTER}"}).status_code == 200
