"""State shared by gateway replicas through Redis: budget ledger, rate limits (the circuit
breakers: `redis_breaker`).

Every check-and-update is one Lua script, so it is atomic across replicas without locks.
Redis holds the hot counters; the durable truth is the SQL spend log (PostgreSQL when
scaled out): a counter Redis does not have (restart, eviction, new window) is rebuilt from
that log before the first reservation touches it. All keys live under one prefix, so
several deployments (or test runs) can share one Redis.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any, Mapping, Sequence

from service.governance.budgets import IDLE_SESSION_S, Line, Reservation, Usage, insert_spend, new_reservation_id, seeded_spent
from service.governance.db import Database
from service.governance.ratelimit import UNLIMITED, DroppedLeases, Held, RateCheck, Slot, Window, new_lease

log = logging.getLogger(__name__)

# An open-ended counter (a session ceiling's, a `total` budget's) unused this long is dropped:
# one per agent conversation would otherwise pile up in Redis for good. The next request that
# needs it rebuilds it from the spend log, so a limit never forgets what was spent.
IDLE_COUNTER_S = IDLE_SESSION_S  # the SQL ledger's limit for the same counters

_RESERVE = """
local n = tonumber(ARGV[1])
local missing = {}
for i = 1, n do
  if redis.call('EXISTS', KEYS[i]) == 0 then missing[#missing + 1] = i end
end
if #missing > 0 then return {-1, unpack(missing)} end
local predicted = tonumber(ARGV[n + 2])
local want = math.max(predicted, tonumber(ARGV[n + 3]))
local smallest, smallest_i, partials = nil, nil, 0
for i = 1, n do
  local limit = tonumber(ARGV[1 + i])
  local v = redis.call('HMGET', KEYS[i], 'spent', 'reserved', 'partial')
  local room = limit - tonumber(v[1] or 0) - tonumber(v[2] or 0)
  if room < predicted or room <= 0 then return {0, i, room} end
  if smallest == nil or room < smallest then smallest, smallest_i = room, i end
  partials = partials + tonumber(v[3] or 0)
end
local amount, partial = want, 0
if smallest ~= nil and smallest < want then
  if partials > 0 then return {0, smallest_i, smallest} end
  amount, partial = smallest, 1
end
local counters = {}
local idle = tonumber(ARGV[n + 6])
for i = 1, n do
  redis.call('HINCRBY', KEYS[i], 'reserved', amount)
  redis.call('HINCRBY', KEYS[i], 'partial', partial)
  -- an open-ended counter (a session's, a total budget's) lives while it is used; a window's keeps its EXPIREAT
  if ARGV[n + 6 + i] == '1' then redis.call('EXPIRE', KEYS[i], idle) end
  counters[i] = KEYS[i]
end
redis.call('HSET', KEYS[n + 1], ARGV[n + 4], cjson.encode({a = amount, p = partial, c = counters, t = tonumber(ARGV[n + 5])}))
return {1, amount, partial}
"""

_SETTLE = """
local v = redis.call('HGET', KEYS[1], ARGV[1])
if not v then
  -- released as stale while the request ran: its cost still counts (KEYS[2..] are its counters),
  -- unless this is a second try whose first may have settled it already (ARGV[3] = '0')
  if ARGV[3] == '0' then return 0 end
  for i = 2, #KEYS do
    if redis.call('EXISTS', KEYS[i]) == 1 then redis.call('HINCRBY', KEYS[i], 'spent', tonumber(ARGV[2])) end
  end
  return 0
end
redis.call('HDEL', KEYS[1], ARGV[1])
local rec = cjson.decode(v)
local actual = tonumber(ARGV[2])
for _, c in ipairs(rec.c) do
  redis.call('HINCRBY', c, 'reserved', 0 - rec.a)
  redis.call('HINCRBY', c, 'spent', actual)
  redis.call('HINCRBY', c, 'partial', 0 - rec.p)  -- never -0: HINCRBY rejects it
end
return 1
"""

# Sliding-minute estimate from two fixed windows: prev * (1 - elapsed share) + current, the
# rule of ratelimit.RateCheck.decide. Returns the verdict and the four counts it was decided on
# (before counting the request), from which the 429's retry-after and the x-ratelimit-* headers come.
_RATE = """
local frac = tonumber(ARGV[4])
local c = {}
for i = 1, 4 do c[i] = tonumber(redis.call('GET', KEYS[i]) or 0) end
local rpm, tpm, tokens = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local verdict = 0
if rpm >= 0 and c[1] + c[2] * (1 - frac) + 1 > rpm then verdict = 1
elseif tpm >= 0 and c[3] + c[4] * (1 - frac) + tokens > tpm then verdict = 2 end
if verdict == 0 then
  redis.call('INCR', KEYS[1]); redis.call('EXPIRE', KEYS[1], 130)
  redis.call('INCRBY', KEYS[3], tokens); redis.call('EXPIRE', KEYS[3], 130)
end
return {verdict, c[1], c[2], c[3], c[4]}
"""

# Gives back what an admission counted and the request did not use, never below zero; a minute
# Redis has expired is out of the window and is not made again.
_REFUND = """
local c = tonumber(redis.call('GET', KEYS[1]) or 0)
local d = math.min(c, tonumber(ARGV[1]))
if d > 0 then redis.call('DECRBY', KEYS[1], d) end
return d
"""

# `max_parallel_requests`: one sorted set per limit, of leases scored by when they lapse (Redis's
# clock, the same for every replica). A lease lives `lease_s` unless its replica renews it: a
# replica killed mid-request gives its slots back within that.
_HOLD = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[1])
for i = 1, #KEYS do
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now)
  local n = redis.call('ZCARD', KEYS[i])
  if n >= tonumber(ARGV[2 + i]) then return {i, n} end
end
for i = 1, #KEYS do
  redis.call('ZADD', KEYS[i], now + ttl, ARGV[2])
  redis.call('PEXPIRE', KEYS[i], ttl)
end
return {0, 0}
"""

# Renews leases still in their sets (ARGV[1 + i] in KEYS[i]); one that lapsed meanwhile is not made again.
_RENEW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[1])
for i = 1, #KEYS do
  if redis.call('ZADD', KEYS[i], 'XX', 'CH', now + ttl, ARGV[1 + i]) == 1 then redis.call('PEXPIRE', KEYS[i], ttl) end
end
"""

LEASE_S = 30.0  # renewed every third of it


def connect(url: str, check: bool = False, timeout_s: float | None = None) -> Any:
    """A client for `server.redis_url`. `check`: reach it at once, for what cannot work without it
    (governance's budgets and limits: an unreachable Redis is then an error at start-up, not a
    500 on every request afterwards); what only shares learning keeps serving without it.
    `timeout_s` bounds connecting and each reply (default: 5 s to connect, replies unbounded)."""
    import redis

    from router.store_errors import redact_url

    timeouts = {"socket_connect_timeout": 5} if timeout_s is None else {"socket_connect_timeout": timeout_s,
                                                                          "socket_timeout": timeout_s}
    client = redis.Redis.from_url(url, decode_responses=True, health_check_interval=30, **timeouts)
    if not check:
        return client
    try:
        client.ping()
    except redis.RedisError as exc:
        client.close()
        raise ValueError(f"server.redis_url {redact_url(url)}: cannot reach Redis: {exc}") from None
    return client


class RedisLedger:
    """Budget counters in Redis; the spend log row goes to the SQL store first, so it is never lost."""

    def __init__(self, client: Any, db: Database, prefix: str = "openclaw"):
        self.r = client
        self.db = db
        self.prefix = prefix
        self._reserve = client.register_script(_RESERVE)
        self._settle = client.register_script(_SETTLE)

    def _k(self, counter: str) -> str:
        return f"{self.prefix}:ctr:{counter}"

    @property
    def _res_key(self) -> str:
        return f"{self.prefix}:reservations"

    def _seed(self, line: Line) -> None:
        key = self._k(line.counter)
        spent = seeded_spent(self.db, line)
        pipe = self.r.pipeline()
        pipe.hsetnx(key, "spent", spent)
        pipe.hsetnx(key, "reserved", 0)
        pipe.hsetnx(key, "partial", 0)
        if line.end != float("inf"):
            # A finished window is kept a week for reports, then Redis may drop it.
            pipe.expireat(key, int(line.end + 7 * 86400))
        else:
            pipe.expire(key, IDLE_COUNTER_S)
        pipe.execute()

    def usage(self, lines: Sequence[Line]) -> dict[str, Usage]:
        pipe = self.r.pipeline(transaction=False)  # every line in one round trip
        for line in lines:
            pipe.hmget(self._k(line.counter), "spent", "reserved", "partial")
        out: dict[str, Usage] = {}
        for line, v in zip(lines, pipe.execute()):
            if v[0] is None:
                self._seed(line)
                v = self.r.hmget(self._k(line.counter), "spent", "reserved", "partial")
            out[line.counter] = Usage(int(v[0] or 0), int(v[1] or 0), int(v[2] or 0))
        return out

    def reserve(self, lines: Sequence[Line], predicted_nusd: int, max_nusd: int, now: float | None = None) -> Reservation:
        now = time.time() if now is None else now
        rid = new_reservation_id()
        keys = [self._k(ln.counter) for ln in lines] + [self._res_key]
        args = [len(lines), *[ln.limit_nusd for ln in lines], predicted_nusd, max_nusd, rid, now, IDLE_COUNTER_S,
                *[int(ln.end == float("inf")) for ln in lines]]
        for _ in range(3):
            result = [int(x) for x in self._reserve(keys=keys, args=args)]
            if result[0] == -1:
                for i in result[1:]:
                    self._seed(lines[i - 1])
                continue
            if result[0] == 0:
                return Reservation(rid, False, refused=lines[result[1] - 1], headroom_nusd=result[2])
            return Reservation(rid, True, amount_nusd=result[1], partial=bool(result[2]))
        raise RuntimeError("budget counters vanished from Redis while being rebuilt; is Redis evicting keys?")

    def settle(self, reservation_id: str, actual_nusd: int, spend_row: Mapping[str, Any] | None,
               counters: Sequence[str] = ()) -> None:
        """As the SQL ledger's; the spend row and Redis are two writes, so a try that finds the row
        written settles a reservation still held but counts nothing past a released one (the
        earlier try may have counted it)."""
        first = True
        if spend_row is not None:
            with self.db.tx() as tx:
                first = insert_spend(tx, spend_row)
        self._settle(keys=[self._res_key, *(self._k(c) for c in sorted(set(counters)))],
                     args=[reservation_id, actual_nusd, "1" if first else "0"])

    def release_stale(self, older_than_s: float, now: float | None = None) -> int:
        now = time.time() if now is None else now
        released = 0
        for rid, raw in self.r.hgetall(self._res_key).items():
            if json.loads(raw)["t"] < now - older_than_s:
                released += int(self._settle(keys=[self._res_key], args=[rid, 0, "1"]))
        return released


class RedisRateLimiter(DroppedLeases):
    """Per-key RPM/TPM shared by all replicas."""

    def __init__(self, client: Any, prefix: str = "openclaw", lease_s: float = LEASE_S):
        super().__init__()
        self.r = client
        self.prefix = prefix
        self.lease_ms = int(lease_s * 1000)
        self._script = client.register_script(_RATE)
        self._refund = client.register_script(_REFUND)
        self._hold = client.register_script(_HOLD)
        self._renew = client.register_script(_RENEW)
        self._held: dict[str, list[str]] = {}  # lease -> its sets, renewed by `_keeper` while held
        self._released: list[tuple[str, list[str]]] = []  # given back, not yet removed from Redis
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._keeper: threading.Thread | None = None

    def admit(self, key_id: str, rpm: int | None, tpm: int | None, tokens: int, now: float | None = None) -> RateCheck:
        """Admitted and counted (`refused` None), or which limit refused it, with the counts decided on."""
        if rpm is None and tpm is None:
            return UNLIMITED
        now = time.time() if now is None else now
        minute, frac = int(now // 60), (now % 60) / 60
        keys = self.window_keys(key_id, minute)
        args = [-1 if rpm is None else rpm, -1 if tpm is None else tpm, tokens, frac]
        verdict, r_cur, r_prev, t_cur, t_prev = (int(v) for v in self._script(keys=keys, args=args))
        return RateCheck({0: None, 1: "rpm", 2: "tpm"}[verdict], frac,
                         Window(rpm, r_cur, r_prev, 1) if rpm is not None else None,
                         Window(tpm, t_cur, t_prev, tokens) if tpm is not None else None, minute)

    def window_keys(self, key_id: str, minute: int) -> list[str]:
        """The counters of `key_id`'s sliding minute at `minute`: this and the previous fixed
        minute's requests, then their tokens."""
        base = f"{self.prefix}:rl:{key_id}"
        return [f"{base}:r:{minute}", f"{base}:r:{minute - 1}", f"{base}:t:{minute}", f"{base}:t:{minute - 1}"]

    def add_tokens(self, key_id: str, tokens: int, now: float | None = None) -> None:
        """Tokens learnt after the call beyond what admission counted (a longer answer than its
        allowance, a prompt billed above its estimate) count toward TPM too, in this minute."""
        if tokens <= 0:
            return
        now = time.time() if now is None else now
        key = self.window_keys(key_id, int(now // 60))[2]
        pipe = self.r.pipeline()
        pipe.incrby(key, tokens)
        pipe.expire(key, 130)
        pipe.execute()

    def refund_tokens(self, key_id: str, tokens: int, minute: int) -> None:
        """As the process-local limiter's, atomically: replicas may settle into the same minute."""
        if tokens > 0:
            self._refund(keys=[f"{self.prefix}:rl:{key_id}:t:{minute}"], args=[tokens])

    def hold(self, slots: Sequence[Slot]) -> Held:
        """As the process-local limiter's, across replicas: a slot of each of `slots`, or none."""
        self._let_go(self._collected())
        sets = [f"{self.prefix}:par:{slot.name}" for slot in slots]
        lease = new_lease()
        full, count = (int(v) for v in self._hold(keys=sets, args=[self.lease_ms, lease, *(s.limit for s in slots)]))
        if full:
            return Held(None, slots[full - 1], count)
        with self._lock:
            self._held[lease] = sets
            self._start_keeper()
        return Held(lease)

    def release(self, lease: str) -> None:
        """Never waits on Redis (it runs on the event loop, when a request ends): the keeper
        thread removes the lease at once; should Redis be away, the lease lapses by itself."""
        self._let_go([lease, *self._collected()])

    def _let_go(self, leases: list[str]) -> None:
        if leases:
            with self._lock:
                for lease in leases:
                    sets = self._held.pop(lease, None)
                    if sets is not None:
                        self._released.append((lease, sets))
                        self._start_keeper()
            self._wake.set()

    def _start_keeper(self) -> None:
        if self._keeper is None:  # under self._lock
            self._keeper = threading.Thread(target=self._keep, name="openclaw-parallel-leases", daemon=True)
            self._keeper.start()

    def _keep(self) -> None:
        """Removes released leases as they come and renews held ones every third of a lease; ends
        when nothing is held (the next `hold` starts it again)."""
        every = self.lease_ms / 3000
        renewed = time.monotonic()
        while True:
            self._wake.wait(max(0.0, every - (time.monotonic() - renewed)))
            self._wake.clear()
            self._let_go(self._collected())  # collected requests' leases: still held, so this thread runs
            with self._lock:
                released, self._released = self._released, []
                held = dict(self._held) if time.monotonic() - renewed >= every else {}
            try:
                if released:
                    pipe = self.r.pipeline(transaction=False)
                    for lease, sets in released:
                        for name in sets:
                            pipe.zrem(name, lease)
                    pipe.execute()
                if held:
                    renewed = time.monotonic()
                    pairs = [(name, lease) for lease, sets in held.items() for name in sets]
                    self._renew(keys=[n for n, _ in pairs], args=[self.lease_ms, *(lease for _, lease in pairs)])
            except Exception as exc:  # Redis away: leases lapse by themselves within a lease
                log.warning("governance: releasing or renewing parallel-request leases in Redis failed: %s", exc)
            with self._lock:
                if not self._held and not self._released:
                    self._keeper = None
                    return
