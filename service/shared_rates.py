"""A model's own RPM/TPM window (`models[].limits`) shared by the replicas of one Redis.

`service.breaker.RateWindow` counts one process's calls: N replicas together sent N times a
model's limit. This keeps `RateWindow`'s interface, with each limited model's minute in Redis, as
the per-key limits keep theirs (`RedisRateLimiter`: the same sliding minute, the previous fixed
minute weighted by the share of it still inside the window). A call is counted and checked there
in one script; the routing decision, which asks every model whether it has room on every request,
reads a local copy of the limited models' minutes refreshed in one round trip at most every
`refresh_s`. Models without limits stay in the process's own window.

With Redis away it falls back to the process's own window, and asks Redis again after `retry_s`:
each replica holds to the limit by itself meanwhile.
"""
from __future__ import annotations

import math
import time
from typing import Any, Mapping

from router.config import Limits
from service.breaker import RateWindow
from service.governance.ratelimit import Window
from service.governance.redis_breaker import WhileAway
from service.governance.redis_state import RedisRateLimiter

_LIMITED = "model:"  # the limiter's key id of a model's window: key ids are `key_<hex>`


def _limited(limits: Limits | None) -> bool:
    return limits is not None and (limits.rpm is not None or limits.tpm is not None)


class SharedRateWindow:
    def __init__(self, client: Any, limits: Mapping[str, Limits | None], prefix: str = "openclaw",
                 refresh_s: float = 0.25, retry_s: float = 5.0, clock=time.time):
        self.limiter = RedisRateLimiter(client, prefix=prefix)
        self.r = client
        self.prefix = prefix
        self.limits = {m: lim for m, lim in limits.items() if _limited(lim)}
        self.local = RateWindow()
        self.refresh_s = refresh_s
        self._clock = clock
        self._view: dict[str, tuple[int, int, int, int]] = {}  # model: this and the previous minute's requests, tokens
        self._view_minute = -1
        self._read_at = float("-inf")
        self._redis = WhileAway(retry_s, "each replica counts its own calls to models with limits")

    # RateWindow's interface -----------------------------------------------------------------
    def add(self, model: str, tokens: int, request: bool = True, limits: Limits | None = None) -> bool:
        limits = limits if _limited(limits) else self.limits.get(model)
        if not _limited(limits):
            return self.local.add(model, tokens, request, limits)
        key = _LIMITED + model
        if request:
            check = self._redis(lambda: self.limiter.admit(key, limits.rpm, limits.tpm, tokens, now=self._clock()), None)
            if check is None:  # Redis away: this replica's own count
                return self.local.add(model, tokens, request, limits)
            # The counts the admission found go into the local copy: refused, the wait the caller
            # asks next reads the count another replica filled (the copy had shown room and sent a
            # 429 without Retry-After); admitted, the next decision sees this call, without a read.
            counts = self._counts(model, check.minute)
            if counts is not None:
                admitted = check.refused is None
                if check.requests is not None:
                    counts[0:2] = [check.requests.current + admitted, check.requests.previous]
                if check.tokens is not None:
                    counts[2:4] = [check.tokens.current + (check.tokens.cost if admitted else 0), check.tokens.previous]
                self._keep(model, counts)
            if check.refused is not None:
                return False
        elif tokens > 0:
            now = self._clock()

            def count_output() -> bool:
                self.limiter.add_tokens(key, tokens, now=now)
                return True

            if self._redis(count_output, None) is None:
                return self.local.add(model, tokens, request)
            counts = self._counts(model, int(now // 60))
            if counts is not None:
                counts[2] += tokens
                self._keep(model, counts)
        self.local.add(model, tokens, request)  # what /healthz shows of this replica's own calls
        return True

    def usage(self, model: str) -> tuple[int, int]:
        return self.local.usage(model)

    def wait_s(self, model: str, limits: Limits, tokens: int) -> float:
        if limits.tpm is not None and tokens > limits.tpm:
            return math.inf  # no minute's window takes it, shared or not
        windows = self._windows(model, limits, tokens)
        if windows is None:
            return self.local.wait_s(model, limits, tokens)
        frac, found = windows
        return max((w.wait_s(frac) for w in found), default=0.0)

    def has_room(self, model: str, limits: Limits, tokens: int) -> bool:
        if limits.rpm is None and limits.tpm is None:
            return True
        windows = self._windows(model, limits, tokens)
        if windows is None:
            return self.local.has_room(model, limits, tokens)
        frac, found = windows
        return all(w.fits(frac) for w in found)

    # ------------------------------------------------------------------------------------------
    def _windows(self, model: str, limits: Limits, tokens: int) -> tuple[float, list[Window]] | None:
        """(how far into its minute, the model's windows as a request of `tokens` would find
        them), from the local copy; None where Redis has no answer (the local window decides)."""
        if model not in self.limits:
            return None
        now = self._clock()
        minute, frac = int(now // 60), (now % 60) / 60
        if minute != self._view_minute or time.monotonic() - self._read_at > self.refresh_s:
            view = self._redis(lambda: self._read(minute), None)
            if view is None:
                return None
            self._view, self._view_minute, self._read_at = view, minute, time.monotonic()
        r_cur, r_prev, t_cur, t_prev = self._view.get(model, (0, 0, 0, 0))
        found = []
        if limits.rpm is not None:
            found.append(Window(limits.rpm, r_cur, r_prev, 1))
        if limits.tpm is not None:
            found.append(Window(limits.tpm, t_cur, t_prev, tokens))
        return frac, found

    def _counts(self, model: str, minute: int) -> list[int] | None:
        """The local copy's counts of `model`, to update with what Redis answered at `minute`;
        None where the copy is of another minute (the next decision reads Redis)."""
        if minute != self._view_minute:
            self._read_at = float("-inf")
            return None
        return list(self._view.get(model, (0, 0, 0, 0)))

    def _keep(self, model: str, counts: list[int]) -> None:
        self._view = {**self._view, model: tuple(counts)}  # replaced, not changed: read from other threads

    def _read(self, minute: int) -> dict[str, tuple[int, int, int, int]]:
        pipe = self.r.pipeline(transaction=False)
        models = list(self.limits)
        for model in models:
            pipe.mget(*self.limiter.window_keys(_LIMITED + model, minute))
        return {m: tuple(int(v or 0) for v in values) for m, values in zip(models, pipe.execute())}
