"""PostgreSQL feedback and shadow-decision tables, beside a `postgresql://...` outcome log.

Same tables and read API as the SQLite `FeedbackLog`, so the gateway, retraining and the
shadow report work the same whichever database holds the outcome log. The tables are
created at open under an advisory lock, so replicas starting together do not race; a reader
(`create=False`) creates none where there is no outcome log.
"""
from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

from router.feedback_log import (
    FEEDBACK_COLUMNS,
    JSON_COLUMNS,
    PRUNED,
    SHADOW_COLUMNS,
    Feedback,
    ShadowRecord,
    feedback_insert,
    feedback_query,
)
from router.outcome_store_pg import no_outcome_log, pg_prune, pg_text, reader_tables
from router.pg_pool import connection_pool
from router.store_errors import setting_up

_LOCK = 0x66656564626B  # advisory lock id shared by every replica, distinct from the outcome log's


class PostgresFeedbackLog:
    """`create=False` (a reader: retrain, shadow-report) creates nothing where the URL names no
    outcome log (`no_outcome_log`); beside one, the tables it lacks are created, as the gateway
    would (empty: the readers' joins then find no feedback)."""

    def __init__(self, url: str, max_size: int = 2, create: bool = True):
        if not create:
            present = reader_tables(url, "feedback log", ["outcomes", *PRUNED])
            # The outcome log itself, not a table of another application's that shares a name with
            # one of ours (a `feedback` in `public`, where a forgotten search_path points).
            if "outcomes" not in present:
                raise no_outcome_log(url)
            create = not set(PRUNED) <= set(present)
        self._pool = connection_pool(url, min_size=1, max_size=max_size, open=True)
        if not create:
            return
        with setting_up("feedback log", url, self._pool.close), self._pool.connection() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK,))
            conn.execute(
                "CREATE TABLE IF NOT EXISTS feedback (id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, "
                "request_id TEXT NOT NULL, ts DOUBLE PRECISION, score DOUBLE PRECISION, source TEXT, signal TEXT, "
                "label TEXT, comment TEXT)")
            conn.execute("CREATE INDEX IF NOT EXISTS feedback_request ON feedback (request_id)")
            conn.execute(
                "CREATE TABLE IF NOT EXISTS shadow_decisions (request_id TEXT PRIMARY KEY, ts DOUBLE PRECISION, "
                "profile TEXT, live_model TEXT, shadow_model TEXT, agree BOOLEAN, live_candidate TEXT, "
                "shadow_candidate TEXT, shadow_on_live_choice TEXT, shadow_propensity DOUBLE PRECISION, "
                "called BOOLEAN, call_status TEXT, call_cost_usd DOUBLE PRECISION, call_latency_s DOUBLE PRECISION, "
                "call_output_chars BIGINT, call_reserved_usd DOUBLE PRECISION)")
            # Tables from before `call_reserved_usd`: old rows keep NULL there, old replicas write on without it.
            conn.execute("ALTER TABLE shadow_decisions ADD COLUMN IF NOT EXISTS call_reserved_usd DOUBLE PRECISION")
            for table in PRUNED:  # retention deletes by age (router/retention.py)
                conn.execute(f"CREATE INDEX IF NOT EXISTS {table}_ts ON {table} (ts)")

    def _rows(self, sql: str, args: list[Any]) -> list[dict[str, Any]]:
        with self._pool.connection() as conn, conn.cursor() as cur:
            cur.execute(sql, args)
            names = [d[0] for d in cur.description]
            return [dict(zip(names, r)) for r in cur.fetchall()]

    def add_feedback(self, fb: Feedback) -> None:
        row = pg_text(asdict(fb))
        with self._pool.connection() as conn:
            conn.execute(feedback_insert("%s"), [row[c] for c in FEEDBACK_COLUMNS])

    def feedback(self, request_id: str | None = None) -> list[dict[str, Any]]:
        return self._rows(*feedback_query("%s", request_id))

    def add_shadow(self, rec: ShadowRecord) -> None:
        row = {**asdict(rec), "agree": rec.agree}
        for c in JSON_COLUMNS:
            row[c] = None if row[c] is None else json.dumps(row[c])
        row = pg_text(row)
        updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in SHADOW_COLUMNS if c != "request_id")
        with self._pool.connection() as conn:
            conn.execute(
                f"INSERT INTO shadow_decisions ({', '.join(SHADOW_COLUMNS)}) "
                f"VALUES ({', '.join('%s' for _ in SHADOW_COLUMNS)}) ON CONFLICT (request_id) DO UPDATE SET {updates}",
                [row[c] for c in SHADOW_COLUMNS])

    def shadows(self) -> list[dict[str, Any]]:
        rows = self._rows("SELECT * FROM shadow_decisions ORDER BY ts", [])
        for r in rows:
            for c in JSON_COLUMNS:
                r[c] = None if r[c] is None else json.loads(r[c])
        return rows

    def prune(self, cutoff: float, limit: int) -> int:
        with self._pool.connection() as conn:
            return (pg_prune(conn, "feedback", "id", cutoff, limit)
                    + pg_prune(conn, "shadow_decisions", "request_id", cutoff, limit))

    def close(self) -> None:
        self._pool.close()
