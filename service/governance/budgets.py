"""Budgets and the spend ledger: admission on predicted cost, atomic reserve, settle to real cost.

A request is admitted when its *predicted* cost fits the headroom (limit − spent − reserved)
of every budget it falls under. It then reserves its *maximum* cost (its prompt at one token
per UTF-8 byte and its max output tokens, × price), capped by that headroom, in one atomic
step; after the upstream call it settles: the reservation is released and the real cost added
to `spent`. A reservation never exceeds the smallest headroom, so only a request whose maximum
did not fit (a *partial* reservation) can overshoot; at most one partial reservation per budget
is in flight at a time, and while it is, everything else stays within headroom. So total spend
stays within the limit plus one request's maximum cost however many requests race, on one
replica or many.

Money is kept in integer nano-USD (1e-9 $) so sums are exact in SQL and Redis alike.
"""
from __future__ import annotations

import calendar
import json
import secrets
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any, Mapping, Protocol, Sequence

from router.request_view import content_text
from service.governance.db import Database, owner_gone
from service.governance.keys import VirtualKey, to_nusd, to_usd

PERIODS = ("day", "month", "total")
SCOPES = ("key", "team", "project")
# Which spend-log column a scope's budget is charged by.
SCOPE_COLUMN = {"key": "key_id", "team": "team", "project": "project"}
SESSION_PREFIX = "session:"
# A session's counter unused this long leaves the SQL ledger, as one leaves Redis
# (redis_state.IDLE_COUNTER_S); how often the ledger looks for them.
IDLE_SESSION_S = 7 * 86400
SESSION_SWEEP_S = 3600.0


def window(period: str, now: float) -> tuple[str, float, float]:
    """(window name, start ts, end ts) of the period containing `now`, in UTC."""
    t = datetime.fromtimestamp(now, tz=timezone.utc)
    if period == "day":
        start = datetime(t.year, t.month, t.day, tzinfo=timezone.utc).timestamp()
        return t.strftime("%Y-%m-%d"), start, start + 86400.0
    if period == "month":
        start = datetime(t.year, t.month, 1, tzinfo=timezone.utc).timestamp()
        days = calendar.monthrange(t.year, t.month)[1]
        return t.strftime("%Y-%m"), start, start + days * 86400.0
    if period == "total":
        return "all", 0.0, float("inf")
    raise ValueError(f"period must be one of {PERIODS}, got {period!r}")


@dataclass(frozen=True)
class Budget:
    id: str
    scope: str
    scope_id: str
    period: str
    limit_usd: float
    soft_threshold: float
    created_at: float = 0.0

    @property
    def label(self) -> str:
        return f"{self.period} budget of {self.scope} '{self.scope_id}'"

    def line(self, now: float) -> "Line":
        name, start, end = window(self.period, now)
        return Line(
            counter=f"budget:{self.id}:{name}",
            limit_nusd=to_nusd(self.limit_usd) or 0,
            label=self.label,
            soft_threshold=self.soft_threshold,
            budget_id=self.id,
            seed=((SCOPE_COLUMN[self.scope], self.scope_id),),
            # A budget counts what is spent from its creation on (SQL counters start at zero
            # then): a rebuilt Redis counter must not count the window's earlier spend.
            start=max(start, self.created_at),
            end=end,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Line:
    """One limit a request is charged against: a budget window or a session ceiling."""

    counter: str
    limit_nusd: int
    label: str
    soft_threshold: float = 1.0
    budget_id: str | None = None
    # Spend-log filter that rebuilds this counter if a volatile store (Redis) lost it: spend
    # of these columns from `start` (the window's start, or the budget's creation if later).
    seed: tuple[tuple[str, str], ...] = ()
    start: float = 0.0
    end: float = float("inf")


def session_line(key: VirtualKey, session_id: str, soft_threshold: float) -> Line | None:
    if key.max_session_usd is None:
        return None
    return Line(
        counter=f"{SESSION_PREFIX}{key.id}:{session_id}",
        limit_nusd=to_nusd(key.max_session_usd) or 0,
        label=f"session cost ceiling of key '{key.name}' (session '{session_id[:64]}')",
        soft_threshold=soft_threshold,
        seed=(("key_id", key.id), ("session_id", session_id)),
    )


@dataclass(frozen=True)
class Usage:
    spent_nusd: int = 0
    reserved_nusd: int = 0
    partial: int = 0  # partial reservations in flight

    def headroom(self, limit_nusd: int) -> int:
        return limit_nusd - self.spent_nusd - self.reserved_nusd


@dataclass(frozen=True)
class Reservation:
    id: str
    ok: bool
    amount_nusd: int = 0
    refused: Line | None = None
    headroom_nusd: int | None = None  # of the refusing line
    partial: bool = False


def reservation_amount(lines: Sequence[Line], usage: Mapping[str, Usage], predicted: int, maximum: int) -> tuple[int, Line | None, int | None]:
    """The admission rule every ledger applies atomically: (amount, refusing line, its headroom).

    The Redis ledger runs the same rule in Lua; keep the two in step.
    """
    smallest: int | None = None
    smallest_line: Line | None = None
    for line in lines:
        room = usage.get(line.counter, Usage()).headroom(line.limit_nusd)
        if room < predicted or room <= 0:
            return 0, line, room
        if smallest is None or room < smallest:
            smallest, smallest_line = room, line
    want = max(predicted, maximum)
    if smallest is None or want <= smallest:
        return want, None, None
    if any(usage.get(line.counter, Usage()).partial > 0 for line in lines):
        return 0, smallest_line, smallest
    return smallest, None, None


def _utf8(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


def prompt_bytes(body: Mapping[str, Any]) -> int:
    """The UTF-8 bytes of the text a chat body sends: what `router.request_view` counts as its
    input, images and attachments aside. Byte-level BPE tokenizers (OpenAI's and most current
    models') start from bytes and only merge them, SentencePiece falls back to bytes (Llama's,
    Gemini's): none makes more tokens than bytes, so this bounds what the text is billed however
    densely it tokenizes (hex, base64, minified JSON, CJK), where 4 characters a token undercounts
    it 2-3 times."""
    total = 0
    for m in body.get("messages") or ():
        total += _utf8(content_text(m.get("content")))
        for fn in [call.get("function") or {} for call in m.get("tool_calls") or []] + [m.get("function_call") or {}]:
            total += _utf8(str(fn.get("name", ""))) + _utf8(str(fn.get("arguments", "")))
    parts = [*(body.get("tools") or []), *(body.get("functions") or [])]
    parts += [body[f] for f in ("response_format", "prediction") if body.get(f)]
    return total + sum(_utf8(json.dumps(part, ensure_ascii=False, default=str)) for part in parts)


class Ledger(Protocol):
    def usage(self, lines: Sequence[Line]) -> dict[str, Usage]: ...

    def reserve(self, lines: Sequence[Line], predicted_nusd: int, max_nusd: int, now: float | None = None) -> Reservation: ...

    def settle(self, reservation_id: str, actual_nusd: int, spend_row: Mapping[str, Any] | None,
               counters: Sequence[str] = ()) -> None: ...

    def release_stale(self, older_than_s: float, now: float | None = None) -> int: ...


def new_reservation_id() -> str:
    return "res_" + secrets.token_hex(10)


SPEND_COLUMNS = (
    "request_id", "ts", "day", "key_id", "key_name", "team", "project", "user_tag", "session_id", "model", "profile",
    "status", "cache_status", "cost_nusd", "predicted_nusd", "reserved_nusd", "input_tokens", "output_tokens",
    "latency_s", "ttft_s", "reason",
)


def insert_spend(tx: Any, row: Mapping[str, Any]) -> bool:
    """Write a request's spend row; False when it is there already (an earlier try of the same
    settle wrote it, and only its acknowledgement was lost)."""
    cols = [c for c in SPEND_COLUMNS if c in row]
    conflict = "ON CONFLICT (request_id) DO NOTHING"
    cur = tx.execute(
        f"INSERT INTO gov_spend ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))}) {conflict}",
        [row[c] for c in cols],
    )
    return cur.rowcount != 0


def seeded_spent(db: Database, line: Line) -> int:
    """What the durable spend log says this line has spent (to rebuild a lost counter)."""
    with db.tx() as tx:
        return _logged_spend(tx, line)


def _logged_spend(tx: Any, line: Line) -> int:
    where = " AND ".join(f"{col} = ?" for col, _ in line.seed) or "1 = 1"
    params: list[Any] = [v for _, v in line.seed]
    where += " AND ts >= ?"
    params.append(line.start)
    if line.end != float("inf"):
        where += " AND ts < ?"
        params.append(line.end)
    row = tx.one(f"SELECT COALESCE(SUM(cost_nusd), 0) AS s FROM gov_spend WHERE {where}", params)
    return int(row["s"]) if row else 0


def _expires(line: Line) -> bool:
    """A session's counter: swept once idle, so one that is missing is rebuilt from the spend
    log. A budget's counts from zero where it has no row yet (the budget is new, or so is its window)."""
    return line.counter.startswith(SESSION_PREFIX)


class SqlLedger:
    """Counters in the governance database: SQLite BEGIN IMMEDIATE or PostgreSQL row locks."""

    def __init__(self, db: Database):
        self.db = db
        self._last_session_sweep = 0.0

    def usage(self, lines: Sequence[Line]) -> dict[str, Usage]:
        if not lines:
            return {}
        counters = [ln.counter for ln in lines]
        with self.db.tx() as tx:
            rows = tx.all(
                f"SELECT counter, spent_nusd, reserved_nusd, partial FROM gov_counters WHERE counter IN ({', '.join('?' * len(counters))})",
                counters,
            )
            usage = {r["counter"]: Usage(int(r["spent_nusd"]), int(r["reserved_nusd"]), int(r["partial"])) for r in rows}
            for line in lines:
                if line.counter not in usage and _expires(line):
                    usage[line.counter] = Usage(_logged_spend(tx, line))
        return usage

    def reserve(self, lines: Sequence[Line], predicted_nusd: int, max_nusd: int, now: float | None = None) -> Reservation:
        now = time.time() if now is None else now
        rid = new_reservation_id()
        # Sorted order: two transactions locking the same rows never deadlock.
        counters = sorted({ln.counter for ln in lines})
        by_counter = {ln.counter: ln for ln in lines}
        with self.db.tx(immediate=True) as tx:
            usage: dict[str, Usage] = {}
            lock = " FOR UPDATE" if tx.dialect == "postgres" else ""
            read = f"SELECT spent_nusd, reserved_nusd, partial FROM gov_counters WHERE counter = ?{lock}"
            for counter in counters:
                row = tx.one(read, (counter,))
                if row is None:
                    line = by_counter[counter]
                    # DO UPDATE, not NOTHING: on PostgreSQL it locks a row another request created
                    # meanwhile, which the session sweep then cannot delete under this one.
                    tx.execute("INSERT INTO gov_counters (counter, spent_nusd, used_at) VALUES (?, ?, ?) "
                               "ON CONFLICT (counter) DO UPDATE SET used_at = excluded.used_at",
                               (counter, _logged_spend(tx, line) if _expires(line) else 0, now))
                    row = tx.one(read, (counter,))
                usage[counter] = Usage(int(row["spent_nusd"]), int(row["reserved_nusd"]), int(row["partial"]))
            amount, refused, room = reservation_amount(lines, usage, predicted_nusd, max_nusd)
            if refused is not None:
                return Reservation(rid, False, refused=refused, headroom_nusd=room)
            partial = int(amount < max(predicted_nusd, max_nusd))
            for counter in counters:
                tx.execute(
                    "UPDATE gov_counters SET reserved_nusd = reserved_nusd + ?, partial = partial + ?, used_at = ? WHERE counter = ?",
                    (amount, partial, now, counter),
                )
            tx.execute(
                "INSERT INTO gov_reservations (id, counters, amount_nusd, partial, created_at, owner) VALUES (?, ?, ?, ?, ?, ?)",
                (rid, json.dumps(counters), amount, partial, now, self.db.owner),
            )
        return Reservation(rid, True, amount_nusd=amount, partial=bool(partial))

    def settle(self, reservation_id: str, actual_nusd: int, spend_row: Mapping[str, Any] | None,
               counters: Sequence[str] = ()) -> None:
        """Release the reservation and count the real cost. `counters` are the request's budget
        counters: its spend still counts when its reservation was released as stale meanwhile
        (a stream longer than `stale_reservation_s`). Safe to try again after an error: the spend
        row and the counters are written in one transaction, so a row already there means a
        committed try."""
        now = time.time()
        with self.db.tx(immediate=True) as tx:
            if spend_row is not None and not insert_spend(tx, spend_row):
                return
            lock = " FOR UPDATE" if tx.dialect == "postgres" else ""
            res = tx.one(f"SELECT counters, amount_nusd, partial FROM gov_reservations WHERE id = ?{lock}", (reservation_id,))
            if res is not None:
                tx.execute("DELETE FROM gov_reservations WHERE id = ?", (reservation_id,))
                for counter in json.loads(res["counters"]):
                    tx.execute(
                        "UPDATE gov_counters SET reserved_nusd = reserved_nusd - ?, spent_nusd = spent_nusd + ?, "
                        "partial = partial - ?, used_at = ? WHERE counter = ?",
                        (int(res["amount_nusd"]), actual_nusd, int(res["partial"]), now, counter),
                    )
            elif actual_nusd:
                # A session counter swept meanwhile has no row to update: the spend row written
                # above is what rebuilds it.
                for counter in sorted(set(counters)):
                    tx.execute("UPDATE gov_counters SET spent_nusd = spent_nusd + ?, used_at = ? WHERE counter = ?",
                               (actual_nusd, now, counter))

    def release_stale(self, older_than_s: float, now: float | None = None) -> int:
        """Free reservations whose request died before settling (crash, killed worker); at most
        once every `SESSION_SWEEP_S`, drop the session counters idle for `IDLE_SESSION_S` too."""
        now = time.time() if now is None else now
        with self.db.tx(immediate=True) as tx:
            stale = tx.all("SELECT id FROM gov_reservations WHERE created_at < ?", (now - older_than_s,))
        for r in stale:
            self.settle(r["id"], 0, None)
        if now - self._last_session_sweep >= SESSION_SWEEP_S:
            self._last_session_sweep = now
            self.drop_idle_sessions(now)
        return len(stale)

    def release_orphans(self) -> int:
        """Free at once the reservations whose owner has ended without settling them (a killed
        gateway, on this host: `db.owner_gone`); a live gateway's in-flight ones stay. Only a
        ledger on one host can tell (SQLite): elsewhere the stale sweep frees them."""
        with self.db.tx() as tx:
            held = tx.all("SELECT id, owner FROM gov_reservations WHERE owner IS NOT NULL")
        gone = [r["id"] for r in held if owner_gone(r["owner"])]
        for rid in gone:
            self.settle(rid, 0, None)
        return len(gone)

    def drop_idle_sessions(self, now: float | None = None) -> int:
        """Delete the counters of sessions with no reservation or settle for `IDLE_SESSION_S` and
        none in flight: the session's next request rebuilds its counter from the spend log."""
        now = time.time() if now is None else now
        with self.db.tx(immediate=True) as tx:
            cur = tx.execute("DELETE FROM gov_counters WHERE counter LIKE ? AND used_at < ? AND reserved_nusd = 0 "
                             "AND partial = 0", (SESSION_PREFIX + "%", now - IDLE_SESSION_S))
            return max(cur.rowcount, 0)


def _check_limit(limit_usd: float) -> None:
    # Limits are stored in nano-USD: one that rounds to 0 would refuse everything and divide by zero.
    if not limit_usd > 0 or to_nusd(limit_usd) < 1:
        raise ValueError("limit_usd must be at least $0.000000001")


class BudgetStore:
    def __init__(self, db: Database):
        self.db = db

    def create(self, scope: str, scope_id: str, period: str, limit_usd: float, soft_threshold: float = 0.8, now: float | None = None) -> Budget:
        if scope not in SCOPES:
            raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
        window(period, 0.0)
        _check_limit(limit_usd)
        if not 0 < soft_threshold <= 1:
            raise ValueError("soft_threshold must be in (0, 1]")
        budget = Budget("bud_" + secrets.token_hex(8), scope, scope_id, period, float(limit_usd), float(soft_threshold),
                        time.time() if now is None else now)
        with self.db.tx() as tx:
            if tx.one("SELECT id FROM gov_budgets WHERE scope = ? AND scope_id = ? AND period = ?", (scope, scope_id, period)):
                raise ValueError(f"a {period} budget for {scope} {scope_id!r} already exists; update it instead")
            tx.execute(
                "INSERT INTO gov_budgets (id, scope, scope_id, period, limit_nusd, soft_threshold, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (budget.id, scope, scope_id, period, to_nusd(limit_usd), soft_threshold, budget.created_at),
            )
        return budget

    @staticmethod
    def _row(r: Mapping[str, Any]) -> Budget:
        return Budget(r["id"], r["scope"], r["scope_id"], r["period"], to_usd(r["limit_nusd"]) or 0.0,
                      float(r["soft_threshold"]), r["created_at"])

    def list(self) -> list[Budget]:
        with self.db.tx() as tx:
            return [self._row(r) for r in tx.all("SELECT * FROM gov_budgets ORDER BY created_at")]

    def get(self, budget_id: str) -> Budget:
        with self.db.tx() as tx:
            r = tx.one("SELECT * FROM gov_budgets WHERE id = ?", (budget_id,))
        if r is None:
            raise LookupError(budget_id)
        return self._row(r)

    def update(self, budget_id: str, limit_usd: float | None = None, soft_threshold: float | None = None) -> Budget:
        self.get(budget_id)
        if limit_usd is not None:
            _check_limit(limit_usd)
        if soft_threshold is not None and not 0 < soft_threshold <= 1:
            raise ValueError("soft_threshold must be in (0, 1]")
        with self.db.tx() as tx:
            if limit_usd is not None:
                tx.execute("UPDATE gov_budgets SET limit_nusd = ? WHERE id = ?", (to_nusd(limit_usd), budget_id))
            if soft_threshold is not None:
                tx.execute("UPDATE gov_budgets SET soft_threshold = ? WHERE id = ?", (soft_threshold, budget_id))
        return self.get(budget_id)

    def delete(self, budget_id: str) -> None:
        self.get(budget_id)
        with self.db.tx() as tx:
            tx.execute("DELETE FROM gov_budgets WHERE id = ?", (budget_id,))

    def applicable(self, key: VirtualKey | None) -> list[Budget]:
        """The budgets a request made with `key` is charged against."""
        if key is None:
            return []
        pairs = [("key", key.id)] + [(s, v) for s, v in (("team", key.team), ("project", key.project)) if v]
        where = " OR ".join("(scope = ? AND scope_id = ?)" for _ in pairs)
        with self.db.tx() as tx:
            rows = tx.all(f"SELECT * FROM gov_budgets WHERE {where}", [x for p in pairs for x in p])
        return [self._row(r) for r in rows]
