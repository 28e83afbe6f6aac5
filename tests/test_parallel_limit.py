"""A key's (and its team's) `max_parallel_requests`: through the real gateway over HTTP with the
`openai` SDK, on the process's own counter and on the Redis one replicas share. A request past the
limit gets a 429 naming it; a slot is held from admission until the answer (a stream included)
has ended, whatever ends it, so one key cannot take a provider's whole connection pool."""
from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from importlib import resources
from pathlib import Path

import httpx
import openai
import pytest

from service.governance.db import open_database
from service.governance.keys import KeyStore
from service.governance.runtime import Governance, GovernanceSettings
from tests.fake_upstream import FakeUpstream, ok, server_error, stall_stream
from tests.gateway_harness import DEFAULT_QUALITY, QualityRouter, Running, fake_config
from tests.governance_harness import MASTER, MODELS, client, new_key, wait_for

ROOT = Path(__file__).resolve().parent.parent
MESSAGES = [{"role": "user", "content": "hello"}]
# A stream that has sent its first word and then waits for as long as the test runs: only its
# client or the gateway ends it, so a slot is given back by whatever the test does, never by time.
HELD = stall_stream(after_chunks=2, seconds=300)
TIMEOUT_S = 60  # the provider's wait for a chunk: longer than any of these tests
CODE = "parallel_requests_limit_exceeded"


@pytest.fixture(params=["memory", "redis"])
def gated(request, tmp_path):
    """A governed gateway whose model m3 streams HELD, counting on the process's own limiter or
    on Redis: (gateway, admin client, upstream). Not the shared `env`: its provider's 1 s timeout_s
    would end a held stream by itself, and give its slot back, within a second."""
    with contextlib.ExitStack() as running:
        up = FakeUpstream().start()
        running.callback(up.stop)
        up.default("m3", HELD)
        config = fake_config(up.base_url, f"sqlite:///{tmp_path}/outcomes.sqlite", models=MODELS, timeout_s=TIMEOUT_S)
        gov = Governance(config, GovernanceSettings(db_url=f"sqlite:///{tmp_path}/gov.sqlite", master_key=MASTER))
        if request.param == "redis":
            from service.governance.redis_state import RedisRateLimiter, connect

            url, prefix = request.getfixturevalue("redis_url")
            gov.limiter = RedisRateLimiter(connect(url), prefix=prefix)
        gw = Running(config, router=QualityRouter(DEFAULT_QUALITY), governance=gov)
        running.callback(gw.stop)
        admin = running.enter_context(httpx.Client(base_url=gw.url, headers={"authorization": f"Bearer {MASTER}"}, timeout=10))
        yield gw, admin, up


def open_stream(c: openai.OpenAI):
    """A stream whose first chunk has come: its request is in progress until it is read to the end or closed."""
    stream = c.chat.completions.create(model="m3", messages=MESSAGES, stream=True)
    next(iter(stream))
    return stream


def attempt(c: openai.OpenAI, **kw) -> tuple[int, httpx.Headers, dict]:
    try:
        answer = c.chat.completions.with_raw_response.create(model=kw.pop("model", "m3"), messages=MESSAGES, **kw)
        return answer.http_response.status_code, answer.http_response.headers, {}
    except openai.APIStatusError as exc:
        return exc.status_code, exc.response.headers, exc.body


def admitted_soon(c: openai.OpenAI, timeout: float = 5.0) -> int:
    """200 once a request is answered within `timeout` (a slot given back reaches Redis from a
    thread a moment later; a circuit the upstream's failures opened closes after its cooldown)."""
    return wait_for(lambda: attempt(c)[0] == 200, timeout) and 200


def opened_soon(c: openai.OpenAI, timeout: float = 5.0):
    """`open_stream` once the key has a slot free (see `admitted_soon`)."""
    def opened():
        try:
            return open_stream(c)
        except openai.RateLimitError:
            return None

    return wait_for(opened, timeout)


def test_a_key_past_its_parallel_limit_gets_a_429_and_other_keys_are_served(gated):
    gw, admin, up = gated
    _, alice = new_key(admin, name="alice", max_parallel_requests=2)
    _, bob = new_key(admin, name="bob")
    a, b = client(gw, alice), client(gw, bob)
    held = [open_stream(a), open_stream(a)]
    status, headers, body = attempt(a)
    assert status == 429 and body["code"] == CODE and body["type"] == "rate_limit_error"
    assert "key 'alice'" in body["message"] and "max_parallel_requests is 2" in body["message"]
    assert headers["retry-after"] == "1"
    # Another key is not held back by alice's streams.
    assert attempt(b)[0] == 200 and attempt(b, stream=False)[0] == 200
    # A stream closed by its client gives its slot back.
    held[1].close()
    assert admitted_soon(a) == 200
    # A stream that runs to its end gives its slot back: beside the one still held, the other is free.
    up.script("m3", ok("word word word"))
    finite = opened_soon(a)
    assert "".join(c.choices[0].delta.content or "" for c in finite if c.choices).strip() == "word word word"
    assert admitted_soon(a) == 200
    held[0].close()


def test_every_way_a_request_ends_gives_its_slot_back(gated):
    gw, admin, up = gated
    _, secret = new_key(admin, name="solo", max_parallel_requests=1)
    c = client(gw, secret)
    # The client leaves mid-stream.
    open_stream(c).close()
    assert admitted_soon(c) == 200
    # The client gives up before the first token (its read timeout).
    up.script("m3", ok("late", delay_s=300))
    with pytest.raises(openai.APITimeoutError):
        client(gw, secret).with_options(timeout=0.5).chat.completions.create(model="m3", messages=MESSAGES, stream=True)
    assert admitted_soon(c) == 200
    # The upstream fails, streamed and not.
    up.script("m3", server_error(), server_error(), server_error(), server_error())
    assert attempt(c)[0] >= 500 and attempt(c, stream=True)[0] >= 500
    assert admitted_soon(c) == 200
    # Refused after its slot was taken (an unknown model's 404 comes before; a key's RPM after).
    admin.patch(f"/admin/keys/{_key_id(admin, 'solo')}", json={"rpm": 1})
    assert [attempt(c)[0] for _ in range(2)] == [200, 429]
    admin.patch(f"/admin/keys/{_key_id(admin, 'solo')}", json={"rpm": None})
    assert admitted_soon(c) == 200


def _key_id(admin: httpx.Client, name: str) -> str:
    return next(k["id"] for k in admin.get("/admin/keys").json()["data"] if k["name"] == name)


def test_a_team_limit_holds_its_keys_together(gated):
    gw, admin, _ = gated
    r = admin.put("/admin/teams/growth", json={"max_parallel_requests": 1})
    assert r.status_code == 200 and r.json()["max_parallel_requests"] == 1 and "no active key" in r.json()["note"]
    _, one = new_key(admin, name="one", team="growth")
    _, two = new_key(admin, name="two", team="growth")
    _, other = new_key(admin, name="other", team="infra")
    assert admin.get("/admin/teams").json()["data"][0]["team"] == "growth"
    stream = open_stream(client(gw, one))
    status, _, body = attempt(client(gw, two))
    assert status == 429 and body["code"] == CODE and "team 'growth'" in body["message"]
    assert attempt(client(gw, other))[0] == 200
    # null removes the team's cap: at once on this replica.
    assert admin.put("/admin/teams/growth", json={"max_parallel_requests": None}).json()["max_parallel_requests"] is None
    assert attempt(client(gw, two))[0] == 200 and admin.get("/admin/teams").json()["data"] == []
    stream.close()


def test_the_admin_api_checks_and_shows_max_parallel_requests(env):
    _, admin, *_ = env
    for bad in (0, -1, True, "2", 1.5, 10**7):
        r = admin.post("/admin/keys", json={"name": "x", "max_parallel_requests": bad})
        assert r.status_code == 400 and "max_parallel_requests" in r.text, (bad, r.text)
        assert admin.put("/admin/teams/t", json={"max_parallel_requests": bad}).status_code == 400
    assert admin.put("/admin/teams/t", json={}).status_code == 400  # say null to remove it
    blank = admin.put("/admin/teams/%20%20", json={"max_parallel_requests": 2})  # no key can carry a blank team
    assert blank.status_code == 400 and blank.json()["error"]["param"] == "team"
    key, _ = new_key(admin, name="k", max_parallel_requests=3)
    assert key["max_parallel_requests"] == 3
    assert admin.patch(f"/admin/keys/{key['id']}", json={"max_parallel_requests": 5}).json()["max_parallel_requests"] == 5
    assert admin.patch(f"/admin/keys/{key['id']}", json={"max_parallel_requests": None}).json()["max_parallel_requests"] is None
    assert new_key(admin, name="plain")[0]["max_parallel_requests"] is None  # unset: no cap
    assert httpx.put(f"{str(admin.base_url).rstrip('/')}/admin/teams/t", json={"max_parallel_requests": 1}).status_code == 401


def _migrations(dialect: str, below: int) -> list[str]:
    folder = resources.files("service.governance") / "migrations" / dialect
    return [f.read_text() for f in sorted(folder.iterdir(), key=lambda f: f.name) if f.name[:3].isdigit() and int(f.name[:3]) < below]


@pytest.mark.parametrize("dialect", ["sqlite", "postgres"])
def test_a_database_from_before_gains_the_limit(dialect, tmp_path, request):
    """A store made by the previous version (migrations 001-004, a key in it) is migrated at start:
    its key has no cap until one is set."""
    row = ("key_old", "old", "sk-ocr-abcd", 1.0, 1.0)
    insert = "INSERT INTO gov_keys (id, name, prefix, created_at, updated_at) VALUES (?, ?, ?, ?, ?)"
    if dialect == "sqlite":
        url = f"sqlite:///{tmp_path}/gov.sqlite"
        conn = sqlite3.connect(tmp_path / "gov.sqlite")
        for text in _migrations("sqlite", 5):
            conn.executescript(text)
        conn.execute("CREATE TABLE gov_schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL)")
        conn.executemany("INSERT INTO gov_schema_migrations VALUES (?, ?)", [(v, f"{v:03d}") for v in range(1, 5)])
        conn.execute(insert, row)
        conn.commit()
        conn.close()
    else:
        import psycopg

        url = request.getfixturevalue("pg_url")
        with psycopg.connect(url, autocommit=True) as conn:
            for text in _migrations("postgres", 5):
                conn.execute(text)
            conn.execute("CREATE TABLE gov_schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL)")
            for v in range(1, 5):
                conn.execute("INSERT INTO gov_schema_migrations VALUES (%s, %s)", (v, f"{v:03d}"))
            conn.execute(insert.replace("?", "%s"), row)
    db = open_database(url)
    try:
        keys = KeyStore(db, pepper="p")
        assert keys.get("key_old").max_parallel_requests is None
        assert keys.update("key_old", max_parallel_requests=4).max_parallel_requests == 4
        assert keys.set_team_parallel("ops", 2)["max_parallel_requests"] == 2 and keys.team_parallel("ops") == 2
    finally:
        db.close()


HOLDER = """
import sys, time
from service.governance.ratelimit import Slot
from service.governance.redis_state import RedisRateLimiter, connect
limiter = RedisRateLimiter(connect(sys.argv[1]), prefix=sys.argv[2], lease_s=3)
print(limiter.hold([Slot("key", "k", 1)]).lease, flush=True)
time.sleep(600)
"""


@pytest.mark.needs_services
def test_a_killed_replicas_slots_come_back_and_a_living_ones_stay_held(redis_url):
    from service.governance.ratelimit import Slot
    from service.governance.redis_state import RedisRateLimiter, connect

    url, prefix = redis_url
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, url, prefix], cwd=ROOT, stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert holder.stdout.readline().strip()
        here = RedisRateLimiter(connect(url), prefix=prefix)
        time.sleep(6.0)  # twice its 3 s lease: the replica renews it while it lives
        refused = here.hold([Slot("key", "k", 1)])
        assert refused.lease is None and refused.in_flight == 1
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)
        lease = wait_for(lambda: here.hold([Slot("key", "k", 1)]).lease, timeout=10.0)  # its lease run out
        here.release(lease)
        assert wait_for(lambda: here.hold([Slot("key", "k", 1)]).lease, timeout=5.0)
    finally:
        holder.kill()
        holder.wait(10)
        holder.stdout.close()


@pytest.mark.needs_services
def test_two_replicas_share_a_keys_limit(pg_url, redis_url, tmp_path):
    """Two gateways (one shared PostgreSQL store, one Redis): a key's slots are counted across both."""
    redis_base, prefix = redis_url
    up = FakeUpstream().start()
    up.default("m3", HELD)
    gws = []
    try:
        for i in range(2):
            config = fake_config(up.base_url, f"sqlite:///{tmp_path}/outcomes{i}.sqlite", models=MODELS, timeout_s=TIMEOUT_S)
            gov = Governance(config, GovernanceSettings(db_url=pg_url, master_key=MASTER, redis_url=redis_base,
                                                        redis_prefix=prefix))
            gws.append(Running(config, router=QualityRouter(DEFAULT_QUALITY), governance=gov))
        admin = httpx.Client(base_url=gws[0].url, headers={"authorization": f"Bearer {MASTER}"}, timeout=10)
        _, secret = new_key(admin, name="shared", max_parallel_requests=2)
        a, b = client(gws[0], secret), client(gws[1], secret)
        streams = [open_stream(a), open_stream(b)]
        assert attempt(a)[0] == 429 and attempt(b)[0] == 429
        streams[0].close()
        assert admitted_soon(b) == 200
        streams[1].close()
        admin.close()
    finally:
        for gw in gws:
            gw.stop()
        up.stop()
