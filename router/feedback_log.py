"""Feedback and shadow decisions, stored beside the outcome log (same database).

Two tables next to `outcomes`:

* `feedback` — one row per signal about a request: explicit (a client's score or thumbs via
  `POST /v1/feedback`) or implicit (an upstream error, an empty or truncated answer, the
  client regenerating the same prompt). Several rows may exist for one request; readers
  take explicit over implicit, latest first (`latest_rewards`).
* `shadow_decisions` — what a candidate router would have chosen on each live request,
  with the predictions of both routers, and the shadow call's outcome when one was made
  (`call_status` `ok` or `error: ...`), or why a call drawn to be made was not
  (`SKIPPED_BY_CAP`: reserving what it could cost would have passed the shadow spend cap).

Writes are small and rare next to the outcome log's, so they go straight to the database,
unbatched. The backend follows the outcome log's URL scheme (`STORES`, as in
`router.outcome_log`): SQLite here (WAL mode, so the gateway and a reporting job can use the
file at the same time), PostgreSQL in `router.feedback_store_pg`.
"""
from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from router.outcome_log import open_by_scheme, sqlite_path
from router.retention import create_incremental, sqlite_prune

FEEDBACK_COLUMNS = ("request_id", "ts", "score", "source", "signal", "label", "comment")
SHADOW_COLUMNS = (
    "request_id", "ts", "profile", "live_model", "shadow_model", "agree", "live_candidate", "shadow_candidate",
    "shadow_on_live_choice", "shadow_propensity", "called", "call_status", "call_cost_usd", "call_latency_s",
    "call_output_chars", "call_reserved_usd",
)
# `call_status` of a shadow call drawn (`call_share`) but not made: the most it could be billed,
# reserved beside the calls made or in flight, passed `learning.shadow.max_call_cost_usd`.
SKIPPED_BY_CAP = "skipped: spend cap"


@dataclass(frozen=True)
class Feedback:
    request_id: str
    score: float  # reward in [0, 1]
    source: str = "explicit"  # explicit | implicit
    signal: str = "score"  # score | thumbs | error | empty | truncated | regenerated
    label: str | None = None
    comment: str | None = None
    ts: float = field(default_factory=time.time)


@dataclass
class ShadowRecord:
    request_id: str
    profile: str | None
    live_model: str
    shadow_model: str
    live_candidate: dict[str, Any]  # the live router's prediction for the model served; its own choice under ROUTER_CHOICE
    shadow_candidate: dict[str, Any]  # the shadow router's prediction for its choice
    shadow_on_live_choice: dict[str, Any] | None  # the shadow router's prediction for the live choice
    shadow_propensity: float = 1.0
    called: bool = False
    call_status: str | None = None
    call_cost_usd: float | None = None
    call_latency_s: float | None = None
    call_output_chars: int | None = None
    call_reserved_usd: float | None = None  # the most the call could be billed, held against the cap
    ts: float = field(default_factory=time.time)

    @property
    def agree(self) -> bool:
        return self.live_model == self.shadow_model


# The key of the live router's own choice (before the bandit explored or refined it, or a tool loop
# kept its turn's model) inside a shadow row's `live_candidate`: `live_model` is the model served.
ROUTER_CHOICE = "router_choice"
JSON_COLUMNS = ("live_candidate", "shadow_candidate", "shadow_on_live_choice")
PRUNED = ("feedback", "shadow_decisions")  # the tables `server.retention_days` applies to, beside `outcomes`


def feedback_insert(mark: str) -> str:
    """The INSERT of one feedback row, its values in `FEEDBACK_COLUMNS` order; `mark` is the
    driver's placeholder (`?` for sqlite3, `%s` for psycopg)."""
    return f"INSERT INTO feedback ({', '.join(FEEDBACK_COLUMNS)}) VALUES ({', '.join(mark for _ in FEEDBACK_COLUMNS)})"


def feedback_query(mark: str, request_id: str | None = None) -> tuple[str, list[Any]]:
    """`FeedbackStore.feedback` as SQL and its arguments: every row, or one request's, in the
    order they were added."""
    sql, args = "SELECT * FROM feedback", []
    if request_id is not None:
        sql, args = sql + f" WHERE request_id = {mark}", [request_id]
    return sql + " ORDER BY id", args


class FeedbackStore(Protocol):
    def add_feedback(self, fb: Feedback) -> None: ...
    def feedback(self, request_id: str | None = None) -> list[dict[str, Any]]: ...
    def add_shadow(self, rec: ShadowRecord) -> None: ...
    def shadows(self) -> list[dict[str, Any]]: ...
    def prune(self, cutoff: float, limit: int) -> int: ...  # router/retention.py
    def close(self) -> None: ...


class FeedbackLog:
    def __init__(self, url: str):
        path = sqlite_path(url)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(path, timeout=30, check_same_thread=False)
        self._conn.row_factory = sqlite3.Row
        self._lock = threading.Lock()
        with self._lock, self._conn:
            create_incremental(self._conn)  # the first store to open a new file creates it
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute(
                "CREATE TABLE IF NOT EXISTS feedback (id INTEGER PRIMARY KEY AUTOINCREMENT, request_id TEXT NOT NULL, "
                "ts REAL, score REAL, source TEXT, signal TEXT, label TEXT, comment TEXT)")
            self._conn.execute("CREATE INDEX IF NOT EXISTS feedback_request ON feedback (request_id)")
            self._conn.execute(
                "CREATE TABLE IF NOT EXISTS shadow_decisions (request_id TEXT PRIMARY KEY, ts REAL, profile TEXT, "
                "live_model TEXT, shadow_model TEXT, agree INTEGER, live_candidate TEXT, shadow_candidate TEXT, "
                "shadow_on_live_choice TEXT, shadow_propensity REAL, called INTEGER, call_status TEXT, "
                "call_cost_usd REAL, call_latency_s REAL, call_output_chars INTEGER, call_reserved_usd REAL)")
            # A file from before `call_reserved_usd`: its rows keep NULL there (never reserved, or not known).
            # Checked under the write lock: a process opening the file beside this one may add it first.
            self._conn.execute("BEGIN IMMEDIATE")
            if "call_reserved_usd" not in {r[1] for r in self._conn.execute("PRAGMA table_info(shadow_decisions)")}:
                self._conn.execute("ALTER TABLE shadow_decisions ADD COLUMN call_reserved_usd REAL")
            for table in PRUNED:  # retention deletes by age (router/retention.py)
                self._conn.execute(f"CREATE INDEX IF NOT EXISTS {table}_ts ON {table} (ts)")

    def add_feedback(self, fb: Feedback) -> None:
        row = asdict(fb)
        with self._lock, self._conn:
            self._conn.execute(feedback_insert("?"), [row[c] for c in FEEDBACK_COLUMNS])

    def feedback(self, request_id: str | None = None) -> list[dict[str, Any]]:
        sql, args = feedback_query("?", request_id)
        with self._lock:
            return [dict(r) for r in self._conn.execute(sql, args)]

    def add_shadow(self, rec: ShadowRecord) -> None:
        row = {**asdict(rec), "agree": int(rec.agree), "called": int(rec.called)}
        for c in JSON_COLUMNS:
            row[c] = None if row[c] is None else json.dumps(row[c])
        with self._lock, self._conn:
            self._conn.execute(
                f"INSERT OR REPLACE INTO shadow_decisions ({', '.join(SHADOW_COLUMNS)}) "
                f"VALUES ({', '.join('?' for _ in SHADOW_COLUMNS)})", [row[c] for c in SHADOW_COLUMNS])

    def shadows(self) -> list[dict[str, Any]]:
        with self._lock:
            rows = [dict(r) for r in self._conn.execute("SELECT * FROM shadow_decisions ORDER BY ts")]
        for r in rows:
            for c in JSON_COLUMNS:
                r[c] = None if r[c] is None else json.loads(r[c])
            r["agree"], r["called"] = bool(r["agree"]), bool(r["called"])
        return rows

    def prune(self, cutoff: float, limit: int) -> int:
        return sum(sqlite_prune(self._conn, self._lock, table, cutoff, limit) for table in PRUNED)

    def close(self) -> None:
        with self._lock:
            self._conn.close()


def latest_rewards(rows: list[dict[str, Any]]) -> dict[str, float]:
    """request_id -> reward: the latest explicit score, else the latest implicit one. A score that
    is no number in [0, 1] (the endpoint stores none; a row edited or damaged by hand) is an
    error naming its request, for every job that reads rewards alike."""
    best: dict[str, tuple[int, int, float]] = {}
    for i, r in enumerate(rows):
        score = r["score"]
        if isinstance(score, bool) or not isinstance(score, (int, float)) or not 0.0 <= score <= 1.0:
            raise ValueError(f"feedback for request {r['request_id']}: its score {score!r} is no number in [0, 1]")
        rank = (1 if r["source"] == "explicit" else 0, i)
        if r["request_id"] not in best or rank > best[r["request_id"]][:2]:
            best[r["request_id"]] = (*rank, float(score))
    return {k: v[2] for k, v in best.items()}


def _postgres_log(url: str, create: bool = True) -> FeedbackStore:
    from router.feedback_store_pg import PostgresFeedbackLog

    return PostgresFeedbackLog(url, create=create)


def _sqlite_log(url: str, create: bool = True) -> FeedbackLog:  # a reader's missing file is caught in `_read`
    try:
        return FeedbackLog(url)
    except (sqlite3.Error, OSError) as exc:  # a folder, a file that is not a database, no permission
        raise ValueError(f"feedback store {url}: cannot open it as an SQLite database: {exc}") from None


# URL scheme -> feedback store factory, the same schemes as the outcome log's STORES.
STORES: dict[str, Callable[..., FeedbackStore]] = {  # (url, create=True)
    "sqlite": _sqlite_log, "postgresql": _postgres_log, "postgres": _postgres_log,
}


def open_feedback_log(url: str, create: bool = True) -> FeedbackStore:
    """The store at `url`; `create` False for a reader: a PostgreSQL URL naming no outcome log is
    an error saying so, not tables created there."""
    return open_by_scheme(url, STORES, "feedback store (outcome log)", create=create)


def _read(url: str, read: Callable[[FeedbackStore], list[dict[str, Any]]]) -> list[dict[str, Any]]:
    # A SQLite file not written yet has no rows; opening it would create it.
    if url.startswith("sqlite:") and not sqlite_path(url).exists():
        return []
    log = open_feedback_log(url, create=False)
    try:
        return read(log)
    finally:
        log.close()


def read_feedback(url: str) -> list[dict[str, Any]]:
    """Every feedback row of the log at `url`, oldest first."""
    return _read(url, lambda log: log.feedback())


def read_shadows(url: str) -> list[dict[str, Any]]:
    return _read(url, lambda log: log.shadows())
