"""The circuit breaker's state in Redis, shared by replicas: one replica's failures open it for
all, one half-open probe across them, owned by its holder (a real Redis)."""
from __future__ import annotations

import threading
import time

def test_redis_breaker_state_read_from_threads_while_the_loop_changes_it(redis_url):
    import sys

    from service.breaker import new_probe
    from service.governance.redis_breaker import RedisCircuitBreaker
    from service.governance.redis_state import connect

    url, prefix = redis_url
    breaker = RedisCircuitBreaker(connect(url), 3, 5.0, prefix=prefix)
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # switch threads as often as possible: the race shows within a second
    errors, stop = [], threading.Event()

    def reader():  # the governance hook's alerts, in a worker thread
        while not stop.is_set():
            try:
                breaker.state("m1")
            except KeyError as exc:
                errors.append(exc)

    def changer():  # the dispatcher, on the event loop
        while not stop.is_set():
            breaker.release("m1", new_probe())

    threads = [threading.Thread(target=reader) for _ in range(3)] + [threading.Thread(target=changer)]
    try:
        for t in threads:
            t.start()
        time.sleep(2)
    finally:
        stop.set()
        for t in threads:
            t.join()
        sys.setswitchinterval(interval)
    assert errors == []


def test_redis_circuit_breaker_shared(redis_url):
    from service.governance.redis_breaker import RedisCircuitBreaker
    from service.governance.redis_state import connect

    url, prefix = redis_url
    clock = [1000.0]
    a = RedisCircuitBreaker(connect(url), failures=2, cooldown_s=10, prefix=prefix, clock=lambda: clock[0])
    b = RedisCircuitBreaker(connect(url), failures=2, cooldown_s=10, prefix=prefix, clock=lambda: clock[0])
    assert a.failure("m") is False
    assert b.failure("m") is True  # the second failure, on another replica, opens it for both
    assert a.state("m") == "open" and not b.available("m")
    clock[0] += 11
    assert a.state("m") == "half_open"
    assert a.acquire("m").probe and b.acquire("m") is None  # one probe across replicas
    b.success("m")
    assert a.state("m") == "closed"
    a.failure("x", retry_after_s=5)
    assert b.state("x") == "blocked" and b.blocked_for("x") == 5.0 and a.blocked_for("m") == 0.0
    # 429s without Retry-After that open the circuit: rate limited for the cooldown, on every
    # replica (the client is told 429, not 503); a circuit opened by 5xx is not.
    a.failure("y", rate_limited=True)
    b.failure("y", rate_limited=True)
    a.failure("z")
    b.failure("z")
    clock[0] += 4
    assert a.blocked_for("y") == b.blocked_for("y") == 6.0 and b.blocked_for("z") == 0.0


def test_redis_probe_is_given_back_only_by_its_holder_and_lapses_with_a_killed_replica(redis_url):
    from service.breaker import PASS
    from service.governance.redis_breaker import RedisCircuitBreaker
    from service.governance.redis_state import connect

    url, prefix = redis_url
    clock = [1000.0]
    a, b, c = (RedisCircuitBreaker(connect(url), failures=1, cooldown_s=10, prefix=prefix, clock=lambda: clock[0],
                                   refresh_s=0) for _ in range(3))
    assert a.failure("m") is True
    clock[0] += 11
    probe = a.acquire("m")
    assert probe.probe
    # A call on another replica that began while the circuit was closed is cut: it held no probe.
    b.release("m", PASS)
    assert b.state("m") == "open" and c.acquire("m") is None
    a.release("m", probe)  # the probe itself is cut: the next caller probes
    assert b.state("m") == "half_open"
    second = b.acquire("m")
    assert second.probe and second != probe
    a.release("m", probe)  # a stale claim gives back nothing
    assert c.acquire("m") is None
    # b's replica is killed holding the probe: after one more cooldown another replica probes.
    clock[0] += 9
    assert c.acquire("m") is None
    clock[0] += 1.5
    assert c.state("m") == "half_open" and c.acquire("m").probe


def test_redis_circuit_breaker_reads_a_local_copy_at_most_refresh_s_old(redis_url):
    """Every routed request reads every model's circuit: those reads are served locally, and a
    circuit another replica opened shows here within `refresh_s`."""
    import time

    from service.governance.redis_breaker import RedisCircuitBreaker
    from service.governance.redis_state import connect

    url, prefix = redis_url
    a = RedisCircuitBreaker(connect(url), failures=1, cooldown_s=60, prefix=prefix, refresh_s=2.0)
    b = RedisCircuitBreaker(connect(url), failures=1, cooldown_s=60, prefix=prefix, refresh_s=2.0)
    assert a.state("m") == "closed" and a.acquire("m")
    assert b.failure("m") is True  # opened by the other replica
    assert a.state("m") == "closed"  # a's copy is still younger than refresh_s
    time.sleep(2.1)
    assert a.state("m") == "open" and not a.available("m") and not a.acquire("m")
    b.success("m")
    a.failure("m")  # a change made here is never hidden by the local copy
    assert a.state("m") == "open"


def test_with_redis_away_the_breaker_fails_open_and_keeps_what_it_last_saw(redis_url):
    """Raised, a Redis error after an answer had turned it into a 503 and lost its outcome row."""
    from service.governance.redis_breaker import RedisCircuitBreaker
    from service.governance.redis_state import connect

    import socket

    from service.governance.redis_breaker import BREAKER_TIMEOUT_S

    url, prefix = redis_url
    breaker = RedisCircuitBreaker(connect(url), 2, 30.0, prefix=prefix, refresh_s=0.0, retry_s=1.0)
    for _ in range(2):
        breaker.failure("m1")
    assert breaker.state("m1") == "open" and breaker.state("m2") == "closed"
    breaker.r = connect("redis://127.0.0.1:1/0")  # nothing listens there: every call fails to connect
    assert breaker.state("m1") == "open"  # as last seen
    assert breaker.state("m3") == "closed" and breaker.acquire("m3") is not None  # never seen: passes
    assert breaker.failure("m2") is False  # unrecorded, not raised
    breaker.success("m1")
    breaker.release("m1", breaker.acquire("m2"))
    breaker.r = connect(url)
    time.sleep(breaker._redis.retry_s)  # asked again once its pause is over
    assert breaker.state("m1") == "open"
    # A Redis that takes the connection and never answers: one call waits out the short timeout,
    # the calls in the pause after it (every routed request reads every circuit) wait for nothing.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        breaker.r = connect(f"redis://127.0.0.1:{silent.getsockname()[1]}/0", timeout_s=BREAKER_TIMEOUT_S)
        started = time.monotonic()
        assert breaker.state("m1") == "open"
        for model in ("m1", "m2", "m3", "m4"):
            breaker.state(model)
        assert time.monotonic() - started < 5 * BREAKER_TIMEOUT_S  # not one timeout per read
