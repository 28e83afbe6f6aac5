"""A key's TPM counts a request's output allowance when it admits it (its `max_tokens`; a request
without one, its input alone), as OpenAI's limiter does, and gives back what the answer did not
use when it settles: through the real gateway over HTTP with the `openai` SDK, on the process's
own limiter and on the Redis one replicas share."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from router.request_view import view_chat_request
from tests.fake_upstream import ok
from tests.governance_harness import client, governed_gateway, new_key, settled, wait_for

MESSAGES = [{"role": "user", "content": "hello"}]
ESTIMATE = view_chat_request({"model": "m3", "messages": MESSAGES}).input_tokens  # what admission counts of the prompt
MINUTE = 60.0 * 1000


@pytest.fixture
def env(tmp_path):
    """The conftest's governed gateway, with upstream answers allowed 5 s: a request is held in
    flight (3 s) while a second one is admitted or refused beside it."""
    with governed_gateway(tmp_path, timeout_s=5.0) as parts:
        yield parts


@pytest.fixture(params=["memory", "redis"])
def gated(request, env):
    """The governed gateway with its rate limiter (the process's own, or Redis) frozen a quarter
    into some minute, so that what each admission finds is known to the token."""
    gw, admin, gov, up, _ = env
    if request.param == "redis":
        from service.governance.redis_state import RedisRateLimiter, connect

        url, prefix = request.getfixturevalue("redis_url")
        gov.limiter = RedisRateLimiter(connect(url), prefix=prefix)
    limiter, now = gov.limiter, [MINUTE + 15]
    admit, add_tokens = limiter.admit, limiter.add_tokens
    limiter.admit = lambda key_id, rpm, tpm, tokens: admit(key_id, rpm, tpm, tokens, now=now[0])
    limiter.add_tokens = lambda key_id, tokens: add_tokens(key_id, tokens, now=now[0])
    return gw, admin, up, now


def ask(c: openai.OpenAI, **kw):
    return c.chat.completions.with_raw_response.create(model="m3", messages=MESSAGES, **kw)


def attempt(c: openai.OpenAI, **kw) -> tuple[int, httpx.Headers, dict]:
    """Status, headers and error body (empty for an answer) of one request."""
    try:
        answer = ask(c, **kw)
        return answer.http_response.status_code, answer.http_response.headers, {}
    except openai.APIStatusError as exc:
        return exc.status_code, exc.response.headers, exc.body


def test_a_burst_of_long_answers_is_held_at_the_limit(gated):
    gw, admin, up, now = gated
    # Answers as long as allowed (1,000 output tokens), all ten in flight at once: what settles
    # early only adds to the minute (the prompt billed above its estimate), so admissions stay exact.
    up.default("m3", ok("y" * 4000, delay_s=0.8))
    _, secret = new_key(admin, name="burst", tpm=5000)
    c = client(gw, secret)
    with ThreadPoolExecutor(10) as pool:
        results = list(pool.map(lambda _: attempt(c, max_tokens=1000), range(10)))
    answered = [r for r in results if r[0] == 200]
    refused = [r for r in results if r[0] != 200]
    # Each counts its prompt and its 1,000 tokens of allowance: four fit 5,000, not ten.
    per_request = ESTIMATE + 1000
    assert len(answered) == 5000 // per_request == 4 and len(up.requests_for("m3")) == 4
    assert {r[0] for r in refused} == {429} and {r[2]["code"] for r in refused} == {"tpm_limit_exceeded"}
    for _, headers, _ in refused:
        assert headers["x-ratelimit-limit-tokens"] == "5000"
        assert headers["x-ratelimit-remaining-tokens"] == str(5000 - 4 * per_request)
        # Too little room in this minute: 45 s to its end, then the part of the next that lets
        # enough of this one slide out (0.15 s), rounded up.
        assert headers["retry-after"] == "46"
    settled(admin, 10)
    now[0] += 46
    assert attempt(c, max_tokens=1000)[0] == 200

    # Without `max_tokens` a request is admitted on its input, as OpenAI's are: five fit at once,
    # and their ~1,000 output tokens each, counted as they settle, fill the minute for the next.
    _, unset = new_key(admin, name="unset", tpm=5000)
    c = client(gw, unset)
    with ThreadPoolExecutor(5) as pool:
        results = list(pool.map(lambda _: attempt(c), range(5)))
    assert [r[0] for r in results] == [200] * 5
    assert str(5000 - 5 * ESTIMATE) in {r[1]["x-ratelimit-remaining-tokens"] for r in results}
    settled(admin, 16)
    status, _, body = attempt(c)
    assert status == 429 and body["code"] == "tpm_limit_exceeded"


def test_what_an_answer_did_not_use_makes_room_for_the_next(gated):
    gw, admin, up, _ = gated
    # 100 output tokens of the 2,000 allowed; answered after 3 s, so that the second request below
    # is refused while this one is still in flight even on a loaded machine (0.5 s was not always).
    up.default("m3", ok("y" * 400, delay_s=3.0))
    _, secret = new_key(admin, name="short", tpm=2500)
    c = client(gw, secret)
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(ask, c, max_tokens=2000)
        wait_for(lambda: up.requests_for("m3"))
        # While the first is in flight its allowance holds the minute.
        status, headers, body = attempt(c, max_tokens=2000)
        assert status == 429 and body["code"] == "tpm_limit_exceeded"
        assert headers["x-ratelimit-remaining-tokens"] == str(2500 - ESTIMATE - 2000)
        usage = first.result().parse().usage
    settled(admin, 2)
    # Settled, it counts what it used (the prompt as billed, being above the estimate, and its
    # 100 tokens of output) and gives back the rest, in the minute it was counted in.
    used = max(usage.prompt_tokens, ESTIMATE) + usage.completion_tokens
    status, headers, _ = attempt(c, max_tokens=2000)
    assert status == 200 and headers["x-ratelimit-remaining-tokens"] == str(2500 - used - ESTIMATE - 2000)


def test_a_request_whose_max_tokens_exceed_the_tpm_is_too_large(gated):
    gw, admin, up, _ = gated
    _, secret = new_key(admin, name="small", tpm=1000)
    c = client(gw, secret)
    for asked, field, note in (({"max_tokens": 2000}, "max_tokens", " and the 2000 output tokens its `max_tokens` allows"),
                               ({"max_completion_tokens": 1500}, "max_completion_tokens",
                                " and the 1500 output tokens its `max_completion_tokens` allows"),
                               ({"max_tokens": 600, "n": 2}, "max_tokens",
                                " and the 1200 output tokens its `max_tokens` allows (for its 2 answers)")):
        status, headers, body = attempt(c, **asked)
        assert status == 413 and body["code"] == "request_too_large", asked
        assert body["message"] == (f"This request's ~{ESTIMATE} input tokens{note} exceed the 1000 tokens per "
                                   "minute of key 'small'.")
        assert "retry-after" not in headers  # no minute could ever admit it
    assert not up.requests_for("m3")
    # A client that set no limit is admitted on its input.
    status, headers, _ = attempt(c)
    assert status == 200 and headers["x-ratelimit-remaining-tokens"] == str(1000 - ESTIMATE)


@pytest.fixture(params=["memory", "redis"])
def limiter(request):
    from service.governance.ratelimit import MemoryRateLimiter

    if request.param == "memory":
        return MemoryRateLimiter()
    from service.governance.redis_state import RedisRateLimiter, connect

    url, prefix = request.getfixturevalue("redis_url")
    return RedisRateLimiter(connect(url), prefix=prefix)


def test_a_refund_never_takes_a_minute_below_zero(limiter):
    t = MINUTE + 30
    check = limiter.admit("k", None, 1000, 300, now=t)
    assert check.refused is None and check.minute == int(t // 60)
    limiter.refund_tokens("k", 200, check.minute)
    assert limiter.admit("k", None, 1000, 0, now=t).tokens.current == 100
    limiter.refund_tokens("k", 5000, check.minute)  # more than the minute holds
    assert limiter.admit("k", None, 1000, 1000, now=t).tokens.current == 0
    limiter.refund_tokens("other", 50, check.minute)  # a minute that counted nothing stays empty
    assert limiter.admit("other", None, 1000, 0, now=t).tokens.current == 0
    # Given back in the minute it was counted in, also once the next has begun.
    later = limiter.admit("k", None, 2000, 0, now=t + 60).tokens
    assert (later.current, later.previous) == (0, 1000)
    limiter.refund_tokens("k", 400, check.minute)
    later = limiter.admit("k", None, 2000, 0, now=t + 60).tokens
    assert (later.current, later.previous) == (0, 600)
