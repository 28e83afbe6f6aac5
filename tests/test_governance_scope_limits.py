"""What a key may name, what a full minute tells the client, what the budget API accepts, and
which responses carry `x-cache`: through the real gateway over HTTP, with the `openai` SDK."""
from __future__ import annotations

import time

import httpx
import openai
import pytest

from router.config import CacheSection
from service.governance.runtime import Governance, GovernanceSettings
from service.hooks.cache_hook import CacheHook
from tests.fake_upstream import ok
from tests.gateway_harness import DEFAULT_QUALITY, QualityRouter, Running, fake_config
from tests.governance_harness import ANSWER, MASTER, MODELS, chat, client, new_key, settled, wait_for

HELLO = {"model": "m3", "max_tokens": 200, "messages": [{"role": "user", "content": "hello"}]}
MINUTE = 60.0 * 1000  # the start of some minute, for the limiter's clock


def test_a_key_given_only_profiles_names_no_model(env):
    gw, admin, *_ = env
    _, cheap = new_key(admin, name="cheap-only", allowed_profiles=["auto:cheap"])
    c = client(gw, cheap)
    assert [m.id for m in c.models.list()] == ["auto:cheap"]
    with pytest.raises(openai.NotFoundError):
        c.models.retrieve("m1")
    with pytest.raises(openai.PermissionDeniedError) as named:
        chat(c, model="m1")
    assert named.value.body["code"] == "model_not_allowed"
    assert "'cheap-only' may not use model 'm1': it may use the routing profiles auto:cheap" in named.value.body["message"]
    # Inside its profile the router may pick any model: that is what the profile is for.
    assert chat(c, model="auto:cheap").http_response.status_code == 200
    routed = httpx.post(f"{gw.base_url}/route", json={**HELLO, "model": "auto:cheap"},
                        headers={"authorization": f"Bearer {cheap}"}).json()
    assert {x["model"] for x in routed["candidates"]} == {"m1", "m2", "m3"}

    _, both = new_key(admin, name="both", allowed_models=["m1"], allowed_profiles=["auto:cheap"])
    c = client(gw, both)
    assert {m.id for m in c.models.list()} == {"auto:cheap", "m1"}
    assert chat(c, model="m1").parse().model == "m1"
    assert chat(c, model="auto:cheap").parse().model == "m1"  # a key's models bound its profiles
    with pytest.raises(openai.PermissionDeniedError) as other:
        chat(c, model="m2")
    assert "it may use the models m1 and the routing profiles auto:cheap" in other.value.body["message"]
    rows = settled(admin, 5)
    assert sorted(r["status"] for r in rows) == ["ok", "ok", "ok", "refused", "refused"]
    assert sum(r["cost_usd"] for r in rows if r["status"] == "refused") == 0


class Clock:
    """The limiter's time: frozen at `set`, or running from there at the wall clock's pace."""

    def __init__(self, now: float) -> None:
        self.set(now)

    def set(self, now: float, running: bool = False) -> None:
        self.base, self.started, self.running = now, time.monotonic(), running

    def __call__(self) -> float:
        return self.base + (time.monotonic() - self.started if self.running else 0.0)


@pytest.fixture(params=["memory", "redis"])
def clocked(request, env):
    """The governed gateway with its rate limiter (the process's own, or Redis) on a `Clock`."""
    gw, admin, gov, *_ = env
    if request.param == "redis":
        from service.governance.redis_state import RedisRateLimiter, connect

        url, prefix = request.getfixturevalue("redis_url")
        gov.limiter = RedisRateLimiter(connect(url), prefix=prefix)
    limiter, clock = gov.limiter, Clock(MINUTE + 15)
    admit, add_tokens = limiter.admit, limiter.add_tokens

    def admit_now(key_id, rpm, tpm, tokens):
        return admit(key_id, rpm, tpm, tokens, now=clock())

    def add_tokens_now(key_id, tokens):
        add_tokens(key_id, tokens, now=clock())

    limiter.admit, limiter.add_tokens = admit_now, add_tokens_now
    return gw, admin, clock


def _limits(response: httpx.Response, kind: str) -> tuple[str | None, ...]:
    return tuple(response.headers.get(f"x-ratelimit-{what}-{kind}") for what in ("limit", "remaining", "reset"))


def test_a_full_minute_says_when_it_has_room_again(clocked):
    gw, admin, clock = clocked
    _, secret = new_key(admin, name="two-a-minute", rpm=2)

    def send() -> httpx.Response:
        return httpx.post(f"{gw.base_url}/chat/completions", json=HELLO, headers={"authorization": f"Bearer {secret}"})

    first, second, refused = send(), send(), send()
    assert (first.status_code, second.status_code, refused.status_code) == (200, 200, 429)
    # A quarter into the minute: the window is empty once both have slid out, 1m45s from now.
    assert _limits(first, "requests") == ("2", "1", "1m45s") and _limits(second, "requests") == ("2", "0", "1m45s")
    assert _limits(first, "tokens") == (None, None, None)  # the key has no TPM
    assert refused.json()["error"]["code"] == "rpm_limit_exceeded"
    # Both requests count in this minute: one more fits once half of them has slid out of the
    # window, 30 s into the next minute, 75 s from now.
    assert refused.headers["retry-after"] == "75" and "in 75 s" in refused.json()["error"]["message"]
    assert _limits(refused, "requests") == ("2", "0", "1m45s")
    clock.set(MINUTE + 15 + 74)
    early = send()
    assert early.status_code == 429 and early.headers["retry-after"] == "1"
    clock.set(MINUTE + 15 + 75)
    assert send().status_code == 200

    # The SDK honours the wait: one second before the window has room, it waits and gets in.
    _, one = new_key(admin, name="one-a-minute", rpm=1)
    clock.set(MINUTE + 30)
    assert chat(client(gw, one)).http_response.status_code == 200  # room again at the start of MINUTE + 120
    clock.set(MINUTE + 120 - 1.2, running=True)
    started = time.monotonic()
    answer = openai.OpenAI(base_url=gw.base_url, api_key=one, max_retries=2).chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": "hello"}], max_tokens=200)
    assert answer.http_response.status_code == 200 and time.monotonic() - started < 4.5


def test_a_full_token_minute_says_when_it_has_room_again(clocked):
    gw, admin, clock = clocked
    _, secret = new_key(admin, name="tokens", tpm=250)

    # Without max_tokens a request is admitted on its input alone, and its output counts once it
    # settles (with it, its allowance would count at admission: tests/test_tpm_allowance.py).
    body = {k: v for k, v in HELLO.items() if k != "max_tokens"}

    def send() -> httpx.Response:
        return httpx.post(f"{gw.base_url}/chat/completions", json=body, headers={"authorization": f"Bearer {secret}"})

    answered = 0
    while (last := send()).status_code == 200:  # ~100 output tokens each, counted once settled
        assert last.headers["x-ratelimit-limit-tokens"] == "250" and "x-ratelimit-limit-requests" not in last.headers
        answered += 1
        settled(admin, answered)
    assert answered >= 2 and last.status_code == 429 and last.json()["error"]["code"] == "tpm_limit_exceeded"
    assert _limits(last, "tokens")[:2] == ("250", "0")
    wait = int(last.headers["retry-after"])
    assert 45 < wait <= 105  # this minute alone holds too much: the room opens in the next one
    clock.set(MINUTE + 15 + wait - 1)
    assert send().headers["retry-after"] == "1"
    clock.set(MINUTE + 15 + wait)
    assert send().status_code == 200


def test_a_budget_names_what_exists_once(env):
    gw, admin, _, _, hook = env
    key, secret = new_key(admin, name="nightly", team="infra")

    def budget(**fields) -> httpx.Response:
        return admin.post("/admin/budgets", json={"period": "day", "limit_usd": 1, **fields})

    missing = budget(scope="key", scope_id="key_doesnotexist")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    assert "'key_doesnotexist'" in missing.json()["error"]["message"] and missing.json()["error"]["param"] == "scope_id"
    by_name = budget(scope="key", scope_id="nightly")
    assert by_name.status_code == 404 and key["id"] in by_name.json()["error"]["message"]
    assert admin.get("/admin/budgets").json()["data"] == []

    # A team no key carries yet is set up ahead of its keys (tests/test_team_budgets_first.py).
    assert budget(scope="team", scope_id="infra").status_code == 201
    made = budget(scope="key", scope_id=key["id"], limit_usd=0.0019)
    assert made.status_code == 201
    twice = budget(scope="key", scope_id=key["id"], limit_usd=5)
    assert twice.status_code == 409 and twice.json()["error"]["code"] == "conflict"
    assert made.json()["id"] in twice.json()["error"]["message"] and "'nightly'" in twice.json()["error"]["message"]
    label = f"day budget of key 'nightly' ({key['id']})"
    assert label in {b["label"] for b in admin.get("/admin/budgets").json()["data"]}

    # ~$0.001 an answer from m1: the first crosses 50 % of $0.0019, the next cannot be paid.
    c = client(gw, secret)
    c.chat.completions.create(model="m1", messages=[{"role": "user", "content": "hello"}], max_tokens=150)
    settled(admin, 1)
    with pytest.raises(openai.APIStatusError) as refused:
        c.chat.completions.create(model="m1", messages=[{"role": "user", "content": "hello"}], max_tokens=150)
    assert refused.value.status_code == 402 and label in refused.value.body["message"]
    alert = wait_for(lambda: next((a for a in hook.received if a["kind"] == "budget"), None))
    assert alert["message"].startswith(f"{label} has reached")


@pytest.fixture
def cached(tmp_path):
    """A governed gateway with its response cache on: (gateway, admin client)."""
    from tests.fake_upstream import FakeUpstream

    up = FakeUpstream().start()
    for m in ("m1", "m2", "m3"):
        up.default(m, ok(ANSWER))
    config = fake_config(up.base_url, f"sqlite:///{tmp_path}/outcomes.sqlite", models=MODELS)
    config = config.model_copy(update={"cache": CacheSection(enabled=True, path=str(tmp_path / "cache"), semantic=False)})
    gov = Governance(config, GovernanceSettings(db_url=f"sqlite:///{tmp_path}/gov.sqlite", master_key=MASTER))
    gw = Running(config, router=QualityRouter(DEFAULT_QUALITY), governance=gov)
    admin = httpx.Client(base_url=gw.url, headers={"authorization": f"Bearer {MASTER}"}, timeout=10)
    yield gw, admin
    admin.close()
    gw.stop()
    up.stop()


def test_only_what_the_cache_saw_has_an_x_cache_header(cached):
    gw, admin = cached

    def send(secret: str, body: dict = HELLO) -> httpx.Response:
        return httpx.post(f"{gw.base_url}/chat/completions", json=body, headers={"authorization": f"Bearer {secret}"})

    _, limited = new_key(admin, name="two-a-minute", rpm=2)
    assert send(limited).headers["x-cache"] == "miss"
    wait_for(lambda: len(next(h for h in gw.gateway.pipeline.hooks if isinstance(h, CacheHook)).cache) == 1)
    assert send(limited).headers["x-cache"] == "hit"
    refusals = [send(limited)]  # the minute is full

    key, spent = new_key(admin, name="spent", allowed_models=["m3"])
    budget = admin.post("/admin/budgets", json={"scope": "key", "scope_id": key["id"], "period": "day", "limit_usd": 1})
    assert send(spent).headers["x-cache"] == "miss"
    cost = wait_for(lambda: admin.get("/admin/budgets").json()["data"][0]["spent_usd"])
    admin.patch(f"/admin/budgets/{budget.json()['id']}", json={"limit_usd": cost})
    # Its answer is cached, but a key whose budget is used up gets no answer, cached or not.
    refusals += [send(spent), send(spent, {**HELLO, "model": "m1"}), send("sk-ocr-wrong"),
                 httpx.post(f"{gw.base_url}/chat/completions", content=b"{nope",
                            headers={"authorization": f"Bearer {spent}", "content-type": "application/json"})]
    assert [r.status_code for r in refusals] == [429, 402, 403, 401, 400]
    for r in refusals:
        assert "x-cache" not in r.headers, (r.status_code, r.text)


def test_a_named_model_refused_by_the_requests_own_limits_is_filed_under_the_key(env):
    # The refusal had come before governance knew the caller: its row had no key and no tenant.
    gw, admin, *_ = env
    _, secret = new_key(admin, name="careful")
    with pytest.raises(openai.BadRequestError) as refused:
        client(gw, secret).chat.completions.create(model="m1", messages=[{"role": "user", "content": "hi"}],
                                                   extra_body={"router": {"local_only": True}})
    assert refused.value.body["code"] == "model_not_allowed"
    row = gw.outcome(refused.value.response.headers["x-request-id"])
    assert row["key_label"] == "careful" and row["status"] == "error"
