"""What the learning loop remembers from one request to a conversation's next: the model a user
turn's tool loop is on (with the probability the turn drew it), and which answer a repeated
prompt would regenerate.

One gateway keeps this in its own memory. Replicas behind a load balancer keep it in Redis
(`server.redis_url`), since an agent's next tool-loop step or a client's regeneration may reach
any replica: kept per replica, a step landing elsewhere was routed afresh (and could switch
model half-way through the loop), and a regeneration sent elsewhere went unnoticed.

In Redis the keys are digests (no prompt text leaves the process) and expire on their own: a
turn after `TURN_TTL_S`, an answer after the regeneration window. Reads take one round trip
at route time; writes go through one background thread, so no request waits on them. Redis
being down loses only this memory (no pin, no regeneration noticed), never a request: a read
gives up after `TIMEOUT_S`, and after a failure Redis is left alone for `RETRY_AFTER_S`, so a
dead or blackholed Redis costs requests nothing beyond the one that found it so.
"""
from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

from service.recent import Recent

log = logging.getLogger(__name__)
TURN_TTL_S = 3600.0  # how long a turn's tool loop keeps the model it began on
RECENT = 100_000  # prompt keys and turns one process remembers
TIMEOUT_S = 0.25  # a read on the request path waits no longer for Redis
RETRY_AFTER_S = 30.0


class SessionMemory(Protocol):
    remote: bool  # a read is a network round trip: callers keep it off the event loop

    def turn_model(self, turn: str) -> tuple[str, float] | None:
        """The model that answered this user turn's latest step, and the probability it was
        drawn with, within TURN_TTL_S."""

    def turn_answered(self, turn: str, model: str, propensity: float) -> None: ...

    def repeated(self, key: str) -> str | None:
        """The answered request with this repeat key, if the client got it within the window
        (forgotten once asked: a third ask regenerates the second answer, not the first)."""

    def answered(self, key: str, request_id: str) -> None: ...

    def close(self) -> None: ...


class LocalMemory:
    remote = False

    def __init__(self, window_s: float, size: int = RECENT):
        self.window_s = window_s
        self._prompts: Recent[str, tuple[str, float]] = Recent(size)
        # user turn -> (model answering it, the probability that model had when the turn drew it, when)
        self._turns: Recent[str, tuple[str, float, float]] = Recent(size)
        self._lock = threading.Lock()

    def turn_model(self, turn: str) -> tuple[str, float] | None:
        with self._lock:
            seen = self._turns.get(turn)
        return (seen[0], seen[1]) if seen is not None and time.time() - seen[2] <= TURN_TTL_S else None

    def turn_answered(self, turn: str, model: str, propensity: float) -> None:
        with self._lock:
            self._turns.put(turn, (model, propensity, time.time()))

    def repeated(self, key: str) -> str | None:
        with self._lock:
            previous = self._prompts.pop(key, None)
        return previous[0] if previous is not None and time.time() - previous[1] <= self.window_s else None

    def answered(self, key: str, request_id: str) -> None:
        now = time.time()
        with self._lock:
            self._prompts.put(key, (request_id, now))
            # Oldest first: answers past the window can no longer be regenerated.
            while now - next(iter(self._prompts.values()))[1] > self.window_s:
                self._prompts.popitem(last=False)

    def close(self) -> None:
        pass


class RedisMemory:
    remote = True

    def __init__(self, client: Any, prefix: str, window_s: float):
        self.r = client  # with socket timeouts of TIMEOUT_S
        self.prefix = prefix
        self.window_s = window_s
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="session-memory")
        self._down_until = 0.0

    def _key(self, kind: str, raw: str) -> str:
        return f"{self.prefix}:{kind}:{hashlib.sha256(raw.encode('utf-8', 'replace')).hexdigest()[:40]}"

    def _up(self) -> bool:
        return time.monotonic() >= self._down_until

    def _failed(self, exc: Exception) -> None:
        if self._up():
            log.warning("session memory in Redis unavailable for %.0f s (tool-loop pins and regenerations "
                        "not shared meanwhile): %s", RETRY_AFTER_S, exc)
        self._down_until = time.monotonic() + RETRY_AFTER_S

    def _write(self, fn: Any, *args: Any, **kwargs: Any) -> None:
        def run() -> None:
            try:
                fn(*args, **kwargs)
            except Exception as exc:  # redis errors, a closed pool at shutdown: memory only, never a request
                self._failed(exc)

        if not self._up():
            return
        try:
            self._writer.submit(run)
        except RuntimeError:  # shut down: the process is stopping
            pass

    def turn_model(self, turn: str) -> tuple[str, float] | None:
        if not self._up():
            return None
        try:
            value = self.r.get(self._key("turn", turn))
        except Exception as exc:
            self._failed(exc)
            return None
        if value is None:
            return None
        try:
            model, propensity = json.loads(value)
            return str(model), float(propensity)
        except (ValueError, TypeError):
            return None  # not ours to trust

    def turn_answered(self, turn: str, model: str, propensity: float) -> None:
        self._write(self.r.set, self._key("turn", turn), json.dumps([model, propensity]), ex=int(TURN_TTL_S))

    def repeated(self, key: str) -> str | None:
        if not self._up():
            return None
        name = self._key("regen", key)
        try:
            # GET and DEL in one transaction: of two replicas seeing the same repeat, one counts it.
            pipe = self.r.pipeline(transaction=True)
            pipe.get(name)
            pipe.delete(name)
            value, _ = pipe.execute()
        except Exception as exc:
            self._failed(exc)
            return None
        return value if isinstance(value, str) and value else None

    def answered(self, key: str, request_id: str) -> None:
        if self.window_s > 0:
            self._write(self.r.set, self._key("regen", key), request_id, px=max(1, int(self.window_s * 1000)))

    def close(self) -> None:
        self._writer.shutdown(wait=True)
