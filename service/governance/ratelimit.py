"""Per-key RPM/TPM for a single gateway process (the embedded default), and what an admission
tells the client.

Same sliding-minute estimate as the Redis limiter (previous minute weighted by the share of
it still inside the window, plus the current minute), so behaviour does not change when a
deployment moves to Redis; only the sharing does. Both limiters answer with a `RateCheck` of
the counts they decided on, from which the 429's `retry-after` and the OpenAI-style
`x-ratelimit-*` headers are worked out here, the same way for both. A request's tokens are
counted at admission with its output allowance (`request_limits.output_allowance`); when it
settles, `add_tokens` counts what it used beyond that and `refund_tokens` gives back what it did
not use.

`max_parallel_requests` (a key's, its team's) is no rate but a count of requests in progress:
`hold` takes a slot of every such limit at once or none, `release` gives them back (the Redis
limiter keeps its slots as leases that lapse when their replica stops renewing them).
"""
from __future__ import annotations

import math
import secrets
import threading
import time
from collections import defaultdict, deque
from dataclasses import dataclass
from typing import Sequence


@dataclass(frozen=True)
class Window:
    """One limit's sliding minute as an admission found it, before counting the request."""

    limit: int
    current: int  # this fixed minute's count
    previous: int  # the previous minute's, of which the share still inside the window counts
    cost: int  # what the request counts against it: 1 request, or its input tokens and output allowance

    def used(self, frac: float) -> float:
        return self.current + self.previous * (1 - frac)

    def fits(self, frac: float) -> bool:
        return self.used(frac) + self.cost <= self.limit

    def wait_s(self, frac: float) -> float:
        """Seconds from `frac` into the minute until the request fits, if nothing else is counted
        meanwhile: the previous minute's share shrinks through this minute, and this minute's
        count through the next."""
        if self.fits(frac):
            return 0.0
        room = self.limit - self.cost - self.current
        if room >= 0:  # not fitting then means previous > 0: enough of it leaves the window this minute
            return (1 - room / self.previous - frac) * 60
        # This minute alone holds too much (current > 0): wait into the next one.
        return (1 - frac) * 60 + min(1.0, max(0.0, 1 - (self.limit - self.cost) / self.current)) * 60

    def remaining(self, frac: float, counted: bool) -> int:
        return max(0, math.floor(self.limit - self.used(frac) - (self.cost if counted else 0)))

    def reset_s(self, frac: float, counted: bool) -> float:
        """Seconds until the window is empty again (OpenAI's "resets to its initial state")."""
        if self.current or (counted and self.cost):
            return (2 - frac) * 60
        return (1 - frac) * 60 if self.previous else 0.0


def _duration(seconds: float) -> str:
    """OpenAI's form of a reset time: `20ms`, `6.5s`, `1m30s`."""
    if seconds < 1:
        return f"{math.ceil(seconds * 1000)}ms"
    minutes, rest = divmod(math.ceil(seconds * 1000) / 1000, 60)
    text = f"{rest:.3f}".rstrip("0").rstrip(".") + "s"
    return f"{int(minutes)}m{text}" if minutes else text


@dataclass(frozen=True)
class RateCheck:
    """One admission: which limit refused the request (None: admitted and counted), how far into
    its minute it ran, and the windows it was decided on (None where the key has no such limit)."""

    refused: str | None
    frac: float = 0.0
    requests: Window | None = None
    tokens: Window | None = None
    minute: int = 0  # the fixed minute it was counted in: where `refund_tokens` gives back what it did not use

    @classmethod
    def decide(cls, frac: float, requests: Window | None, tokens: Window | None, minute: int = 0) -> "RateCheck":
        """The rule both limiters apply (the Redis one in Lua: keep the two in step)."""
        refused = ("rpm" if requests is not None and not requests.fits(frac)
                   else "tpm" if tokens is not None and not tokens.fits(frac) else None)
        return cls(refused, frac, requests, tokens, minute)

    def retry_after_s(self) -> int:
        """Whole seconds until every limit of the key has room for this request (rounded up,
        at least 1): a client that waits that long is not refused again for the same reason
        unless other requests took the room first."""
        waits = [w.wait_s(self.frac) for w in (self.requests, self.tokens) if w is not None]
        # To the millisecond first: float noise (1.0000000000000009 s) must not add a second.
        return max(1, math.ceil(round(max(waits, default=0.0), 3)))

    def headers(self) -> dict[str, str]:
        """OpenAI's `x-ratelimit-{limit,remaining,reset}-{requests,tokens}` for the key's limits."""
        counted = self.refused is None
        out: dict[str, str] = {}
        for name, window in (("requests", self.requests), ("tokens", self.tokens)):
            if window is not None:
                out[f"x-ratelimit-limit-{name}"] = str(window.limit)
                out[f"x-ratelimit-remaining-{name}"] = str(window.remaining(self.frac, counted))
                out[f"x-ratelimit-reset-{name}"] = _duration(window.reset_s(self.frac, counted))
        return out


UNLIMITED = RateCheck(None)


@dataclass(frozen=True)
class Slot:
    """One `max_parallel_requests`: of a key (`scope` "key", `id` its id) or of a team."""

    scope: str
    id: str
    limit: int

    @property
    def name(self) -> str:
        return f"{self.scope}:{self.id}"


@dataclass(frozen=True)
class Held:
    """A `hold`: the lease to release, or the slot that was full and how many requests held it."""

    lease: str | None
    refused: Slot | None = None
    in_flight: int = 0


def new_lease() -> str:
    return secrets.token_hex(12)


class DroppedLeases:
    """Leases of requests collected before they finished, for both limiters to give back later.

    The garbage collector runs a finalizer in whatever thread allocates, also one inside the
    limiter holding its non-reentrant lock: a finalizer that took that lock would wait on its own
    thread for good. `release_later` therefore only queues (a deque's append and popleft are
    thread-safe without a lock); `hold` and `release` give the queue back before they lock."""

    def __init__(self) -> None:
        self._dropped: deque[str] = deque()

    def release_later(self, lease: str) -> None:
        self._dropped.append(lease)

    def _collected(self) -> list[str]:
        leases: list[str] = []
        try:
            while True:
                leases.append(self._dropped.popleft())
        except IndexError:  # empty, perhaps emptied by another thread between two pops
            return leases


class MemoryRateLimiter(DroppedLeases):
    def __init__(self) -> None:
        super().__init__()
        self._requests: dict[tuple[str, int], int] = defaultdict(int)
        self._tokens: dict[tuple[str, int], int] = defaultdict(int)
        self._lock = threading.Lock()
        self._trimmed = -1  # the minute the tables were last trimmed for
        self._parallel: dict[str, int] = {}  # requests in progress per Slot.name
        self._leases: dict[str, tuple[str, ...]] = {}

    def _window(self, table: dict[tuple[str, int], int], key_id: str, minute: int, limit: int | None,
                cost: int) -> Window | None:
        if limit is None:
            return None
        return Window(limit, table.get((key_id, minute), 0), table.get((key_id, minute - 1), 0), cost)

    def _trim(self, minute: int) -> None:
        # Once a minute, on either path: keys without limits only ever add tokens, and their
        # minutes would otherwise pile up until a limited key's request came by.
        if minute == self._trimmed:
            return
        self._trimmed = minute
        for table in (self._requests, self._tokens):
            for k in [k for k in table if k[1] < minute - 1]:
                del table[k]

    def admit(self, key_id: str, rpm: int | None, tpm: int | None, tokens: int, now: float | None = None) -> RateCheck:
        if rpm is None and tpm is None:
            return UNLIMITED
        now = time.time() if now is None else now
        minute, frac = int(now // 60), (now % 60) / 60
        with self._lock:
            self._trim(minute)
            check = RateCheck.decide(frac, self._window(self._requests, key_id, minute, rpm, 1),
                                     self._window(self._tokens, key_id, minute, tpm, tokens), minute)
            if check.refused is None:
                self._requests[(key_id, minute)] += 1
                self._tokens[(key_id, minute)] += tokens
        return check

    def add_tokens(self, key_id: str, tokens: int, now: float | None = None) -> None:
        if tokens <= 0:
            return
        now = time.time() if now is None else now
        minute = int(now // 60)
        with self._lock:
            self._trim(minute)
            self._tokens[(key_id, minute)] += tokens

    def refund_tokens(self, key_id: str, tokens: int, minute: int) -> None:
        """Give back tokens an admission counted in `minute` and the request did not use (the
        rest of its output allowance). A minute already trimmed is out of the window anyway, and
        a count never goes below zero."""
        with self._lock:
            count = self._tokens.get((key_id, minute))
            if count is not None:
                self._tokens[(key_id, minute)] = max(0, count - tokens)

    def hold(self, slots: Sequence[Slot]) -> Held:
        """A slot of each of `slots`, or none when one of them is full."""
        self._release_dropped()
        with self._lock:
            for slot in slots:
                count = self._parallel.get(slot.name, 0)
                if count >= slot.limit:
                    return Held(None, slot, count)
            lease = new_lease()
            self._leases[lease] = tuple(s.name for s in slots)
            for slot in slots:
                self._parallel[slot.name] = self._parallel.get(slot.name, 0) + 1
        return Held(lease)

    def release(self, lease: str) -> None:
        """Give a hold's slots back; a lease released already is nothing more to give."""
        self._release_dropped()
        self._give_back(lease)

    def _release_dropped(self) -> None:
        for lease in self._collected():
            self._give_back(lease)

    def _give_back(self, lease: str) -> None:
        with self._lock:
            for name in self._leases.pop(lease, ()):
                left = self._parallel[name] - 1
                if left:
                    self._parallel[name] = left
                else:
                    del self._parallel[name]
