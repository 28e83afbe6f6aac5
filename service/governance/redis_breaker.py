"""The circuit breakers' state in Redis, shared by the replicas (`service.breaker.CircuitBreaker`'s
interface): one replica's failures open a circuit for all of them, and only one replica sends the
half-open probe. Its calls run on the event loop, and go without Redis while it is away."""
from __future__ import annotations

import logging
import time
from typing import Any

from router.store_errors import store_refuses_writes, store_unreachable
from service.breaker import PASS, Claim, circuit_state, new_probe, state_available, waits

log = logging.getLogger(__name__)

_BREAKER_FAILURE = """
local now, threshold, retry_after = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
if retry_after > 0 then
  local b = tonumber(redis.call('HGET', KEYS[1], 'blocked_until') or 0)
  if now + retry_after > b then redis.call('HSET', KEYS[1], 'blocked_until', now + retry_after) end
end
local failures = redis.call('HINCRBY', KEYS[1], 'failures', 1)
local opened = redis.call('HGET', KEYS[1], 'opened_at')
local probe = redis.call('HGET', KEYS[1], 'probing')
if (probe and probe ~= '0') or ((not opened) and failures >= threshold) then
  redis.call('HSET', KEYS[1], 'opened_at', now, 'probing', '0')
  return 1
end
return 0
"""

# 0: refused; 1: the circuit is closed; 2: the caller holds the probe, under its token ARGV[3].
# A probe that reached no verdict within ARGV[4] seconds (its replica killed) lapses.
_BREAKER_ACQUIRE = """
local now, cooldown, lapse = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[4])
local v = redis.call('HMGET', KEYS[1], 'blocked_until', 'opened_at', 'probing', 'probe_at')
if now < tonumber(v[1] or 0) then return 0 end
if not v[2] then return 1 end
local probing = v[3] and v[3] ~= '0' and now - tonumber(v[4] or 0) < lapse
if probing or now - tonumber(v[2]) < cooldown then return 0 end
redis.call('HSET', KEYS[1], 'probing', ARGV[3], 'probe_at', now)
return 2
"""

_BREAKER_RELEASE = """
if redis.call('HGET', KEYS[1], 'probing') == ARGV[1] then redis.call('HSET', KEYS[1], 'probing', '0') end
"""


BREAKER_TIMEOUT_S = 0.25  # a local Redis answers in well under a millisecond


class WhileAway:
    """Calls to Redis that may go without it: while it cannot be reached or refuses every write
    (a replica after a failover, a full memory), the caller's default, Redis asked again `retry_s`
    after the last failed call, and the outage said once a minute."""

    def __init__(self, retry_s: float, meanwhile: str):
        self.retry_s = retry_s
        self.meanwhile = meanwhile  # what the log says happens until Redis is back
        self._away_until = float("-inf")  # monotonic: Redis is not asked before it
        self._said_at = float("-inf")

    def __call__(self, call: Any, default: Any) -> Any:
        if time.monotonic() < self._away_until:
            return default
        try:
            return call()
        except Exception as exc:
            if not (store_unreachable(exc) or store_refuses_writes(exc)):
                raise
            now = time.monotonic()  # after the call, which may have taken its whole timeout
            self._away_until = now + self.retry_s
            if now - self._said_at >= 60:
                self._said_at = now
                log.warning("Redis cannot be reached or refuses writes (%s); %s until it is back", exc, self.meanwhile)
            return default


class RedisCircuitBreaker:
    """`service.breaker.CircuitBreaker`'s interface with its state in Redis, so one replica's
    failures open the circuit for all of them, and only one replica sends the half-open probe.

    Every routed request asks for every model's state (the live view the policy reads), on the
    event loop: those reads come from a local copy refreshed for all models in one pipelined
    round trip at most every `refresh_s`, so a replica sees another's circuit open within that
    delay. A closed circuit needs no Redis call to pass a request or to record a success; what
    changes a circuit (a failure, claiming the half-open probe, closing it) goes to Redis at once
    and drops the local copy of that model.

    With Redis away it fails open: a circuit reads as its local copy last had it (closed where it
    had none), failures and probes go unrecorded, and Redis is asked again after `retry_s`. A
    breaker that raised had turned answers already given into 503s and dropped their outcome rows,
    and every routed request into a 503 while Redis restarted. Its calls run on the event loop:
    give it a client whose replies are bounded (`connect(..., timeout_s=BREAKER_TIMEOUT_S)`), or a
    Redis that stops answering holds every request for the client's timeout on each call."""

    FIELDS = ("blocked_until", "opened_at", "probing", "failures", "rate_limited", "probe_at")
    CLOSED = (None,) * len(FIELDS)

    def __init__(self, client: Any, failures: int, cooldown_s: float, prefix: str = "openclaw", clock=time.time,
                 refresh_s: float = 0.25, probe_lapse_s: float | None = None, retry_s: float = 5.0):
        self.r = client
        self._redis = WhileAway(retry_s, "circuits read as last seen, failures go unrecorded")
        self.threshold = failures
        self.cooldown_s = cooldown_s
        self.probe_lapse_s = probe_lapse_s or cooldown_s
        self.prefix = prefix
        self.refresh_s = refresh_s
        self._clock = clock
        self._failure = client.register_script(_BREAKER_FAILURE)
        self._acquire = client.register_script(_BREAKER_ACQUIRE)
        self._release = client.register_script(_BREAKER_RELEASE)
        self._view: dict[str, tuple[Any, ...]] = {}
        self._read_at = float("-inf")

    def _k(self, model: str) -> str:
        return f"{self.prefix}:cb:{model}"

    def _fields(self, model: str) -> tuple[Any, ...]:
        # The view is replaced, never changed in place, and read once: worker threads (alerts,
        # decisions) read it while the event loop forgets a model it has just changed.
        view = self._view
        if model not in view or time.monotonic() - self._read_at > self.refresh_s:
            models = list({*view, model})

            def read() -> dict[str, tuple[Any, ...]]:
                pipe = self.r.pipeline(transaction=False)
                for m in models:
                    pipe.hmget(self._k(m), *self.FIELDS)
                return {m: tuple(v) for m, v in zip(models, pipe.execute())}

            fresh = self._redis(read, None)
            if fresh is None:
                return view.get(model, self.CLOSED)
            view = fresh
            self._view = view
            self._read_at = time.monotonic()
        return view[model]

    def _forget(self, model: str) -> None:
        self._view = {m: v for m, v in self._view.items() if m != model}

    def _closed(self, v: tuple[Any, ...]) -> bool:
        return v[1] is None and self._clock() >= float(v[0] or 0)

    def state(self, model: str) -> str:
        blocked_until, opened_at, probe, _, _, probe_at = self._fields(model)
        return circuit_state(self._clock(), None if opened_at is None else float(opened_at), float(blocked_until or 0),
                             None if probe in (None, "0") else float(probe_at or 0), self.cooldown_s, self.probe_lapse_s)

    def available(self, model: str) -> bool:
        return state_available(self.state(model))

    def _waits(self, model: str) -> tuple[tuple[float, float], bool]:
        blocked_until, opened_at, _, _, rate_limited, _ = self._fields(model)
        held = waits(self._clock(), float(blocked_until or 0), None if opened_at is None else float(opened_at), self.cooldown_s)
        return held, rate_limited == "1"

    def blocked_for(self, model: str) -> float:
        (held, cooling), rate_limited = self._waits(model)
        return max(held, cooling if rate_limited else 0.0)

    def reopens_in(self, model: str) -> float:
        return max(self._waits(model)[0])

    def acquire(self, model: str) -> Claim | None:
        if self._closed(self._fields(model)):
            return PASS
        self._forget(model)
        probe = new_probe()
        got = int(self._redis(lambda: self._acquire(keys=[self._k(model)],
                                                    args=[self._clock(), self.cooldown_s, probe.probe, self.probe_lapse_s]), 1))
        return None if got == 0 else PASS if got == 1 else probe

    def success(self, model: str) -> None:
        v = self._fields(model)
        if v[1] is None and not int(v[3] or 0):
            return  # closed with no failures counted: nothing to reset
        self._forget(model)

        def close() -> None:
            pipe = self.r.pipeline()
            pipe.hdel(self._k(model), "opened_at", "probing", "probe_at")
            pipe.hset(self._k(model), "failures", 0)
            pipe.execute()

        self._redis(close, None)

    def failure(self, model: str, retry_after_s: float | None = None, rate_limited: bool = False) -> bool:
        self._forget(model)
        args = [self._clock(), self.threshold, retry_after_s or 0]

        def count() -> bool:
            pipe = self.r.pipeline()
            self._failure(keys=[self._k(model)], args=args, client=pipe)
            pipe.hset(self._k(model), "rate_limited", int(rate_limited))
            opened, _ = pipe.execute()
            return bool(int(opened))

        return self._redis(count, False)

    def release(self, model: str, claim: Claim) -> None:
        if claim.probe is None:
            return  # it held no probe: nothing of the circuit's is its to give back
        self._forget(model)
        self._redis(lambda: self._release(keys=[self._k(model)], args=[claim.probe]), None)
