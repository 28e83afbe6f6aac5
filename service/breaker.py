"""Per-model circuit breaker and RPM/TPM accounting.

The breaker opens after `breaker_failures` consecutive failures and, after
`breaker_cooldown_s`, lets exactly one probe request through (half-open): a success closes
it, a failure re-opens it for another cooldown. An upstream 429 with `Retry-After` also
blocks the model until then, and a circuit that 429s without one opened counts as rate limited
until its cooldown ends: the client is told 429 (OpenClaw retries it), not 503 (it moves on).

The probe is owned: `acquire` hands the caller a `Claim`, and only the claim that holds the
probe can give it back (a call cut before its verdict), so another request's ended call cannot
free a probe still in flight. A probe that reaches no verdict within `probe_lapse_s` (longer than
any upstream call may wait: its caller is gone, or, with Redis, its replica was killed) lapses
and the next caller probes. A streamed probe's verdict is its first token.

The rate window counts requests and tokens sent to each model
over the last minute, so the router stops choosing a model before its configured RPM/TPM
is exhausted instead of learning about it from a 429.
"""
from __future__ import annotations

import math
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

from router.config import Config, Limits

Clock = Callable[[], float]


@dataclass(frozen=True)
class Claim:
    """The right to call a model, from `acquire`; `probe` is the token of the half-open probe
    when this call holds it (None when the circuit was closed), `key_probe` that of the model's
    provider's key circuit (see live_state)."""
    probe: str | None = None
    key_probe: str | None = None


PASS = Claim()


def new_probe() -> Claim:
    return Claim(uuid.uuid4().hex)


@dataclass
class _Circuit:
    failures: int = 0
    opened_at: float | None = None
    probe: str | None = None  # the token of the probe in flight
    probe_at: float = 0.0
    blocked_until: float = 0.0
    rate_limited: bool = False  # the latest failure was a 429


def circuit_state(now: float, opened_at: float | None, blocked_until: float, probe_at: float | None,
                  cooldown_s: float, probe_lapse_s: float) -> str:
    """The state of a circuit, kept here or in Redis: closed, blocked (closed but rate limited
    until `blocked_until`), open (cooling down, or its probe in flight) or half_open (the next
    caller probes). `probe_at`: when the probe in flight was claimed, None when there is none."""
    if opened_at is None:
        return "blocked" if now < blocked_until else "closed"
    if (probe_at is not None and now - probe_at < probe_lapse_s) or now - opened_at < cooldown_s:
        return "open"
    return "half_open"


def state_available(state: str) -> bool:
    """May the router choose a model whose circuit is in this state?"""
    return state in ("closed", "half_open")


def probe_lapse_s(config: Config) -> float:
    """How long a half-open probe may go without a verdict: past a stream's longest wait for its
    first byte (connecting, then its timeout), and at least a cooldown. Not a non-streamed call's
    `answer_timeout_s` (minutes): a probe whose replica was killed would hold the circuit open that
    long, where a slow answer only lets a second probe through."""
    rel = config.reliability
    longest = max((p.connect_timeout_s + p.timeout_s for p in config.providers.values()), default=0.0)
    return max(rel.breaker_cooldown_s, longest + 5.0)


def waits(now: float, blocked_until: float, opened_at: float | None, cooldown_s: float) -> tuple[float, float]:
    """(seconds the upstream's Retry-After still holds the model out, seconds until its open
    circuit's cooldown lets a probe through): what `blocked_for` and `reopens_in` read, alike for
    the process's breaker and the shared one."""
    return max(0.0, blocked_until - now), max(0.0, opened_at + cooldown_s - now) if opened_at is not None else 0.0


class CircuitBreaker:
    def __init__(self, failures: int, cooldown_s: float, clock: Clock = time.monotonic, probe_lapse_s: float | None = None):
        self.threshold = failures
        self.cooldown_s = cooldown_s
        self.probe_lapse_s = probe_lapse_s or cooldown_s
        self._clock = clock
        self._circuits: dict[str, _Circuit] = {}
        self._lock = threading.Lock()

    def _get(self, model: str) -> _Circuit:
        return self._circuits.setdefault(model, _Circuit())

    def _state(self, c: _Circuit, now: float) -> str:
        probe_at = c.probe_at if c.probe is not None else None
        return circuit_state(now, c.opened_at, c.blocked_until, probe_at, self.cooldown_s, self.probe_lapse_s)

    def state(self, model: str) -> str:
        with self._lock:
            return self._state(self._get(model), self._clock())

    def available(self, model: str) -> bool:
        """May the router choose this model now? (No side effect: routing asks for every model.)"""
        return state_available(self.state(model))

    def blocked_for(self, model: str) -> float:
        """Seconds the model is rate limited for: until its upstream said it may be called again
        (its Retry-After), or, for a circuit that 429s without Retry-After opened, until the
        cooldown lets a probe through; 0 when not rate limited."""
        with self._lock:
            c = self._get(model)
            held, cooling = waits(self._clock(), c.blocked_until, c.opened_at, self.cooldown_s)
            return max(held, cooling if c.rate_limited else 0.0)

    def reopens_in(self, model: str) -> float:
        """Seconds until the model may be called again: its upstream's Retry-After, or the
        cooldown of its open circuit, after which a probe goes through; 0 when it may be now."""
        with self._lock:
            c = self._get(model)
            return max(waits(self._clock(), c.blocked_until, c.opened_at, self.cooldown_s))

    def acquire(self, model: str) -> Claim | None:
        """Claim the right to call the model (None: not now); in half-open state only one caller
        gets it, and its claim holds the probe."""
        with self._lock:
            c = self._get(model)
            now = self._clock()
            if now < c.blocked_until:
                return None
            state = self._state(c, now)
            if state == "closed":
                return PASS
            if state == "open":
                return None
            claim = new_probe()
            c.probe, c.probe_at = claim.probe, now
            return claim

    def success(self, model: str) -> None:
        with self._lock:
            c = self._get(model)
            c.failures = 0
            c.opened_at = None
            c.probe = None

    def failure(self, model: str, retry_after_s: float | None = None, rate_limited: bool = False) -> bool:
        """Record a failed call; True when this failure opened (or re-opened) the circuit."""
        with self._lock:
            c = self._get(model)
            now = self._clock()
            c.rate_limited = rate_limited
            if retry_after_s:
                c.blocked_until = max(c.blocked_until, now + retry_after_s)
            c.failures += 1
            if c.probe is not None or (c.opened_at is None and c.failures >= self.threshold):
                c.opened_at = now
                c.probe = None
                return True
            return False

    def release(self, model: str, claim: Claim) -> None:
        """A call that ended without a verdict (client went away): if it held the probe, let
        another caller probe."""
        with self._lock:
            c = self._get(model)
            if claim.probe is not None and c.probe == claim.probe:
                c.probe = None


@dataclass
class _Window:
    events: deque = field(default_factory=deque)  # (time, tokens, counts_as_request)
    requests: int = 0
    tokens: int = 0


class RateWindow:
    """Requests and tokens per model over a sliding minute."""

    def __init__(self, clock: Clock = time.monotonic, span_s: float = 60.0):
        self._clock = clock
        self.span_s = span_s
        self._windows: dict[str, _Window] = {}
        self._lock = threading.Lock()

    def _trim(self, w: _Window, now: float) -> None:
        while w.events and now - w.events[0][0] >= self.span_s:
            _, tokens, is_request = w.events.popleft()
            w.tokens -= tokens
            w.requests -= is_request

    def add(self, model: str, tokens: int, request: bool = True, limits: Limits | None = None) -> bool:
        """Count a request with its input tokens, or (request=False) output tokens learnt
        afterwards. With `limits`, only if the window has room, checked and counted in one step:
        concurrent requests that all saw room at decision time must not all go. Whether counted."""
        with self._lock:
            w = self._windows.setdefault(model, _Window())
            now = self._clock()
            self._trim(w, now)
            if limits is not None and _full(limits, w.requests, w.tokens, tokens):
                return False
            w.events.append((now, tokens, request))
            w.tokens += tokens
            w.requests += request
            return True

    def usage(self, model: str) -> tuple[int, int]:
        """(requests, tokens) in the current window."""
        with self._lock:
            w = self._windows.get(model)
            if w is None:
                return 0, 0
            self._trim(w, self._clock())
            return w.requests, w.tokens

    def wait_s(self, model: str, limits: Limits, tokens: int) -> float:
        """Seconds until the window has room for one more request of `tokens` input tokens
        (0: room now; infinity when no window could hold it: more tokens than the TPM limit)."""
        if _full(limits, 0, 0, tokens):
            return math.inf
        with self._lock:
            w = self._windows.get(model)
            if w is None:
                return 0.0
            now = self._clock()
            self._trim(w, now)
            requests, used = w.requests, w.tokens
            if not _full(limits, requests, used, tokens):
                return 0.0
            for at, counted, is_request in w.events:  # oldest first: the order they leave the window
                requests, used = requests - is_request, used - counted
                if not _full(limits, requests, used, tokens):
                    return max(0.0, at + self.span_s - now)
            return self.span_s  # not reached: an empty window holds it

    def has_room(self, model: str, limits: Limits, tokens: int) -> bool:
        if limits.rpm is None and limits.tpm is None:
            return True
        return not _full(limits, *self.usage(model), tokens)


def _full(limits: Limits, requests: int, used: int, tokens: int) -> bool:
    """Would one more request of `tokens` input tokens break the window's RPM or TPM?"""
    return (limits.rpm is not None and requests >= limits.rpm) or (limits.tpm is not None and used + tokens > limits.tpm)
