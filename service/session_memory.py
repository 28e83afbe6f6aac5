"""What the gateway remembers from one request to a conversation's next: the model a user
turn's tool loop is on (with the probability the turn drew it), which answer a repeated prompt
would regenerate, and which models' providers hold which starts of a conversation in their
prompt caches (service/hooks/prompt_cache_hook.py).

One gateway keeps this in its own memory. Replicas behind a load balancer also keep it in Redis
(`server.redis_url`), since an agent's next tool-loop step or a client's regeneration may reach
any replica: kept per replica only, a step landing elsewhere was routed afresh (and could switch
model half-way through the loop), a regeneration sent elsewhere went unnoticed, and a turn landing
elsewhere was priced as if no provider held its conversation.

The process's own memory stays the first level: what this replica answered it finds at once,
also before the Redis copy is written and while Redis is down. In Redis the keys are digests (no
prompt text leaves the process) and expire on their own: a turn after `TURN_TTL_S`, an answer
after the regeneration window, a served prompt after `PROMPT_TTL_S`. A Redis read waits at most
`TIMEOUT_S` in all (connection, retries and reply together) and Redis is then left alone for
`RETRY_AFTER_S`; writes go through one background thread in batches, from a bounded queue, so no
request waits on them. Redis being slow or down loses only what other replicas would have found,
never a request. A turn's step
replaces the one in Redis only if it is later (by the replicas' clocks), so a write that waited
in the queue does not undo a step another replica stored meanwhile.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol, Sequence

from service.recent import Recent

log = logging.getLogger(__name__)
TURN_TTL_S = 3600.0  # how long a turn's tool loop keeps the model it began on
PROMPT_TTL_S = 300.0  # how long a provider holds a prompt it served: the shortest of their cache lifetimes
PROMPTS_RECENT = 20_000  # served prompt starts one process remembers (~10 MB); they expire sooner anyway
RECENT = 100_000  # prompt keys and turns one process remembers
TIMEOUT_S = 0.25  # the longest a request waits for Redis
RETRY_AFTER_S = 30.0
WRITE_QUEUE = 10_000  # writes waiting for Redis; past it they are dropped (and counted)
WRITE_BATCH = 500


class SessionMemory(Protocol):
    async def find_turn(self, turn: str) -> tuple[str, float] | None:
        """The model that answered this user turn's latest step, and the probability it was
        drawn with, within TURN_TTL_S."""

    async def take_repeat(self, key: str) -> str | None:
        """The answered request with this repeat key, if the client got it within the window
        (taken once asked: a third ask regenerates the second answer, not the first)."""

    def turn_answered(self, turn: str, model: str, propensity: float) -> None: ...

    def answered(self, key: str, request_id: str) -> None: ...

    async def held_prompts(self, starts: Sequence[str]) -> dict[str, int]:
        """For each model that served one of these starts of a prompt (digests, shortest first)
        within PROMPT_TTL_S, the tokens of the longest one it served."""

    def prompt_served(self, starts: Sequence[tuple[str, int]], model: str) -> None:
        """`model` served these starts (digest, tokens) of a prompt just now."""

    def close(self) -> None: ...


Served = dict[str, tuple[float, int]]  # model -> (when it served a start, that start's tokens)


def longest_held(entries: Sequence[Served | None], now: float) -> dict[str, int]:
    """Per model, the tokens of the longest start it served within PROMPT_TTL_S (`entries` align
    with the starts, shortest first)."""
    found: dict[str, int] = {}
    for served in reversed(entries):
        for model, (at, tokens) in (served or {}).items():
            if model not in found and now - at < PROMPT_TTL_S:
                found[model] = tokens
    return found


class LocalMemory:
    def __init__(self, window_s: float, size: int = RECENT):
        self.window_s = window_s
        self._prompts: Recent[str, tuple[str, float]] = Recent(size)
        # user turn -> (model answering it, the probability that model had when the turn drew it, when)
        self._turns: Recent[str, tuple[str, float, float]] = Recent(size)
        self._served_prompts: Recent[str, Served] = Recent(min(size, PROMPTS_RECENT))
        self._lock = threading.Lock()

    def turn_entry(self, turn: str) -> tuple[str, float, float] | None:
        """(model, propensity, when) of the turn's latest answered step, within TURN_TTL_S."""
        with self._lock:
            seen = self._turns.get(turn)
        return seen if seen is not None and time.time() - seen[2] <= TURN_TTL_S else None

    def turn_model(self, turn: str) -> tuple[str, float] | None:
        seen = self.turn_entry(turn)
        return (seen[0], seen[1]) if seen is not None else None

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

    def prompt_entries(self, starts: Sequence[str]) -> list[Served | None]:
        with self._lock:
            return [self._served_prompts.get(start) for start in starts]

    async def held_prompts(self, starts: Sequence[str]) -> dict[str, int]:
        return longest_held(self.prompt_entries(starts), time.time())

    def prompt_served(self, starts: Sequence[tuple[str, int]], model: str) -> None:
        now = time.time()
        with self._lock:
            for start, tokens in starts:
                self._served_prompts.put(start, {**(self._served_prompts.get(start) or {}), model: (now, tokens)})
            # Oldest first (a put makes an entry the newest): what no provider holds any longer goes.
            while now - max(at for at, _ in next(iter(self._served_prompts.values())).values()) >= PROMPT_TTL_S:
                self._served_prompts.popitem(last=False)

    async def find_turn(self, turn: str) -> tuple[str, float] | None:
        return self.turn_model(turn)

    async def take_repeat(self, key: str) -> str | None:
        return self.repeated(key)

    def close(self) -> None:
        pass


# SET the turn unless Redis holds a later step of it (the third element of its JSON is when).
SET_IF_NEWER = """
local held = redis.call('GET', KEYS[1])
if held then
  local ok, step = pcall(cjson.decode, held)
  if ok and type(step) == 'table' and tonumber(step[3]) and tonumber(step[3]) > tonumber(ARGV[2]) then
    return 0
  end
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[3])
return 1
"""


def redis_client(url: str) -> Any:
    """A client whose commands give up soon: no retries, no idle health-check PING before a
    command (the request's whole wait is bounded by `RedisMemory._read` in any case)."""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    return redis.Redis.from_url(url, decode_responses=True, socket_timeout=TIMEOUT_S, socket_connect_timeout=TIMEOUT_S,
                                health_check_interval=0, retry=Retry(NoBackoff(), 0))


class RedisMemory:
    def __init__(self, client: Any, prefix: str, window_s: float):
        self.r = client
        self.prefix = prefix
        self.window_s = window_s
        self.local = LocalMemory(window_s)
        self.dropped = 0  # writes given up: the queue was full, or Redis was down
        self._down_until = 0.0
        self._closed = False
        # (key, value, expiry, when, field): `when` set for a turn, written only over an older one;
        # `field` set for a served prompt, one field per model of a hash
        self._writes: queue.Queue[tuple[str, str, dict, float | None, str | None] | None] = queue.Queue(WRITE_QUEUE)
        self._set_if_newer = client.register_script(SET_IF_NEWER)
        self._writer = threading.Thread(target=self._drain, name="session-memory", daemon=True)
        self._writer.start()
        # Reads get threads of their own: waiting behind the gateway's other work in the shared
        # pool would count against TIMEOUT_S and mark a healthy Redis down.
        self._readers = ThreadPoolExecutor(max_workers=4, thread_name_prefix="session-memory-read")

    def _key(self, kind: str, raw: str) -> str:
        return f"{self.prefix}:{kind}:{hashlib.sha256(raw.encode('utf-8', 'replace')).hexdigest()[:40]}"

    def _up(self) -> bool:
        return time.monotonic() >= self._down_until

    def _failed(self, exc: BaseException) -> None:
        if self._up():
            log.warning("session memory in Redis unavailable for %.0f s (tool-loop pins, regenerations and prompt-cache prices "
                        "not shared meanwhile): %s", RETRY_AFTER_S, str(exc) or type(exc).__name__)
        self._down_until = time.monotonic() + RETRY_AFTER_S

    async def _read(self, fn: Any, *args: Any) -> Any:
        """One Redis command off the event loop, given up after TIMEOUT_S whatever holds it."""
        if self._closed or not self._up():
            return None
        try:
            return await asyncio.wait_for(asyncio.get_running_loop().run_in_executor(self._readers, fn, *args), TIMEOUT_S)
        except Exception as exc:  # a Redis error, or no answer within TIMEOUT_S
            self._failed(exc)
            return None

    def _get_and_delete(self, name: str) -> str | None:
        # In one transaction: of two replicas seeing the same repeat, one takes it.
        pipe = self.r.pipeline(transaction=True)
        pipe.get(name)
        pipe.delete(name)
        return pipe.execute()[0]

    async def find_turn(self, turn: str) -> tuple[str, float] | None:
        # The newer of the two: a loop that moved on another replica since this one answered it
        # is on the model it moved to.
        seen = [e for e in (self.local.turn_entry(turn), self._parse_turn(await self._read(self.r.get, self._key("turn", turn))))
                if e is not None]
        if not seen:
            return None
        model, propensity, _ = max(seen, key=lambda e: e[2])
        return model, propensity

    @staticmethod
    def _parse_turn(value: str | None) -> tuple[str, float, float] | None:
        if value is None:
            return None
        try:
            model, propensity, when = json.loads(value)
            return str(model), float(propensity), float(when)
        except (ValueError, TypeError):
            return None  # not ours to trust

    def _hashes(self, names: Sequence[str]) -> list[dict[str, str]]:
        pipe = self.r.pipeline(transaction=False)
        for name in names:
            pipe.hgetall(name)
        return pipe.execute()

    async def held_prompts(self, starts: Sequence[str]) -> dict[str, int]:
        entries = self.local.prompt_entries(starts)
        remote = await self._read(self._hashes, [self._key("prompt", s) for s in starts])
        for i, fields in enumerate(remote or []):
            merged = dict(entries[i] or {})
            for model, value in (fields or {}).items():
                seen = self._parse_served(value)
                if seen is not None and seen[0] > merged.get(model, (float("-inf"), 0))[0]:
                    merged[model] = seen
            entries[i] = merged
        return longest_held(entries, time.time())

    @staticmethod
    def _parse_served(value: str) -> tuple[float, int] | None:
        try:
            when, tokens = value.split(",")
            return float(when), int(tokens)
        except (ValueError, AttributeError):
            return None  # not ours to trust

    def prompt_served(self, starts: Sequence[tuple[str, int]], model: str) -> None:
        self.local.prompt_served(starts, model)
        now = time.time()
        for start, tokens in starts:
            self._queue(self._key("prompt", start), f"{now},{tokens}", {"ex": int(PROMPT_TTL_S)}, field=model)

    async def take_repeat(self, key: str) -> str | None:
        local = self.local.repeated(key)
        if self.window_s <= 0:
            return None
        taken = await self._read(self._get_and_delete, self._key("regen", key))
        # This replica's own answer counts even when its Redis copy is not written yet; another
        # replica taking it too at the same moment records the same 0 twice, which changes nothing.
        return taken if isinstance(taken, str) and taken else local

    def turn_answered(self, turn: str, model: str, propensity: float) -> None:
        self.local.turn_answered(turn, model, propensity)
        when = time.time()
        self._queue(self._key("turn", turn), json.dumps([model, propensity, when]), {"ex": int(TURN_TTL_S)}, when)

    def answered(self, key: str, request_id: str) -> None:
        self.local.answered(key, request_id)
        if self.window_s > 0:
            self._queue(self._key("regen", key), request_id, {"px": max(1, int(self.window_s * 1000))})

    def _queue(self, name: str, value: str, expiry: dict, when: float | None = None, field: str | None = None) -> None:
        if self._closed or not self._up():
            self.dropped += 1
            return
        try:
            self._writes.put_nowait((name, value, expiry, when, field))
        except queue.Full:
            self.dropped += 1

    def _drain(self) -> None:
        while True:
            batch = [self._writes.get()]
            while len(batch) < WRITE_BATCH:
                try:
                    batch.append(self._writes.get_nowait())
                except queue.Empty:
                    break
            stop = None in batch
            writes = [w for w in batch if w is not None]
            if writes and self._up():
                try:
                    pipe = self.r.pipeline(transaction=False)
                    for name, value, expiry, when, field in writes:
                        if field is not None:
                            pipe.hset(name, field, value)
                            pipe.expire(name, expiry["ex"])
                        elif when is None:
                            pipe.set(name, value, **expiry)
                        else:  # a write queued late must not replace a later step another replica stored
                            self._set_if_newer(keys=[name], args=[value, when, expiry["ex"]], client=pipe)
                    pipe.execute()
                except Exception as exc:  # memory only, never a request
                    self._failed(exc)
                    self.dropped += len(writes)
            elif writes:
                self.dropped += len(writes)
            if stop:
                return

    def close(self, wait_s: float = 2.0) -> None:
        """Write what is queued (for at most `wait_s` in all), then close the connections."""
        self._closed = True
        deadline = time.monotonic() + wait_s
        try:
            self._writes.put(None, timeout=wait_s)
        except queue.Full:
            pass
        self._writer.join(max(0.0, deadline - time.monotonic()))
        self._readers.shutdown(wait=False, cancel_futures=True)
        self.r.close()
