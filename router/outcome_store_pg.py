"""PostgreSQL store for the outcome log (`postgresql://...` URLs), for replicas sharing one log.

The table mirrors `OutcomeRecord` column for column. At open, under an advisory lock so
replicas starting together do not race, the table is created if missing and any column a
newer `OutcomeRecord` has gained is added (`ADD COLUMN IF NOT EXISTS`), so old rows stay
readable by new code and retraining reads one table whatever the version that wrote it.

The database is not on this host, so an `OutcomeLog` journals the rows it has not committed yet in
the cache folder (`OPENCLAW_CACHE_DIR`, default `~/.cache/openclaw-router`), under `journal/`, in
files named by the database (`journal_base`); each process there holds a slot of its own.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Iterator, Sequence

from router.outcome_log import COLUMNS, OutcomeRecord, from_row, read_query, select_list, to_row
from router.pg_pool import connection_pool
from router.store_errors import redact_url, setting_up, setup_hint

_PG_TYPES = {
    "ts": "DOUBLE PRECISION", "stream": "BIGINT", "simulated": "BIGINT", "embedding": "BYTEA", "input_tokens_est": "BIGINT",
    "knob": "DOUBLE PRECISION", "propensity": "DOUBLE PRECISION", "ttft_s": "DOUBLE PRECISION",
    "latency_s": "DOUBLE PRECISION", "input_tokens": "BIGINT", "output_tokens": "BIGINT", "cost_usd": "DOUBLE PRECISION",
    "saved_cost_usd": "DOUBLE PRECISION", "cache_similarity": "DOUBLE PRECISION",
}
_LOCK = 0x6F7574636F6D65  # advisory lock id shared by every replica


def pg_text(row: dict[str, Any]) -> dict[str, Any]:
    """The row with NUL characters replaced: a client may send "\\u0000" in its JSON, and a
    PostgreSQL text column refuses it (the whole insert would fail)."""
    return {k: v.replace("\x00", "\ufffd") if isinstance(v, str) and "\x00" in v else v for k, v in row.items()}


def pg_prune(conn: Any, table: str, key: str, cutoff: float, limit: int) -> int:
    """One batch of `router.retention`'s sweep, in one transaction. SKIP LOCKED: replicas sweeping
    at once take different rows instead of waiting on each other's."""
    with conn.transaction():
        return conn.execute(f"DELETE FROM {table} WHERE {key} IN "
                            f"(SELECT {key} FROM {table} WHERE ts < %s LIMIT %s FOR UPDATE SKIP LOCKED)",
                            (cutoff, limit)).rowcount


# Connection parameters that change how the gateway talks to the database, not which table it
# writes: a restart that adds a connect_timeout still finds the journal the killed process left.
_TRANSPORT_PARAMS = frozenset({
    "password", "passfile", "connect_timeout", "application_name", "fallback_application_name", "keepalives",
    "keepalives_idle", "keepalives_interval", "keepalives_count", "tcp_user_timeout", "sslmode", "sslcompression",
    "sslcert", "sslkey", "sslrootcert", "sslcrl", "sslpassword", "gssencmode", "target_session_attrs",
    "load_balance_hosts", "client_encoding",
})


def journal_base(url: str) -> Path:
    """Where an `OutcomeLog` on `url` journals: named by the connection parameters that pick the
    table (host, port, database, user, options such as a search_path), not by the password or
    the transport's settings, so that a restart after a rotation or a timeout change finds its
    journal and a gateway on another database never writes this one's rows into its own. (A URL
    with none of those settings is named as it was before they were left out.)"""
    from psycopg.conninfo import conninfo_to_dict

    from router.embedding import cache_dir

    params = {k: str(v) for k, v in conninfo_to_dict(url).items() if k not in _TRANSPORT_PARAMS}
    digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]
    return cache_dir() / "journal" / f"outcomes-pg-{digest}"


READER_CONNECT_TIMEOUT_S = 5
# Where the gateway's outcome log URL comes from: what a start that cannot reach it names.
GATEWAY_SETTING = "--db / server.db"


def _connect(url: str) -> Any:
    """One connection of its own, made within READER_CONNECT_TIMEOUT_S (libpq's connect_timeout,
    unless the URL sets one)."""
    import psycopg
    from psycopg.conninfo import conninfo_to_dict

    timeout = {} if "connect_timeout" in conninfo_to_dict(url) else {"connect_timeout": READER_CONNECT_TIMEOUT_S}
    return psycopg.connect(url, autocommit=True, **timeout)


def check_reachable(url: str, what: str) -> None:
    """One connection before a store opens its pool: a server that cannot be reached (or refuses
    the login) is one line at once naming `what`, not the pool's retries in the background, each
    logged as a warning, until a timeout that blames whatever waited on it first."""
    import psycopg

    try:
        _connect(url).close()
    except psycopg.Error as exc:
        raise ValueError(f"{what} {redact_url(url)}: cannot connect: {setup_hint(exc, url)}") from None


def reader_tables(url: str, what: str, tables: Sequence[str]) -> dict[str, set[str]]:
    """Which of `tables` the database and search_path of `url` hold, each with its columns: what a
    reader (`create=False`) looks at before it opens its pool, on one connection of its own
    (`_connect`), so an unreachable server is one line at once, not the pool's 30 s of retries,
    each logged."""
    import psycopg

    try:
        with _connect(url) as conn:
            rows = conn.execute("SELECT t, a.attname FROM unnest(%s::text[]) AS t JOIN pg_attribute a "
                                "ON a.attrelid = to_regclass(t) AND a.attnum > 0 AND NOT a.attisdropped",
                                (list(tables),)).fetchall()
    except psycopg.Error as exc:
        step = "cannot connect" if isinstance(exc, psycopg.OperationalError) else "cannot read it"
        raise ValueError(f"{what} {redact_url(url)}: {step}: {setup_hint(exc, url)}") from None
    found: dict[str, set[str]] = {}
    for table, column in rows:
        found.setdefault(table, set()).add(column)
    return found


def no_outcome_log(url: str) -> FileNotFoundError:
    """What a reader says where the URL names no outcome log: as for a SQLite file that is not
    there (`training.outputs.check_outcome_log`), not an empty log it created itself."""
    return FileNotFoundError(f"{redact_url(url)}: no outcome log there (no outcomes table in that database and "
                             f"search_path; give the gateway's server.db)")


class PostgresStore:
    """`create=False` (a reader: retrain, shadow-report) creates nothing: a database without an
    outcomes table is `no_outcome_log`; one whose table lacks a newer column is brought up to date,
    as the gateway's next start would. The gateway's (`create=True`) names its setting,
    GATEWAY_SETTING, where it cannot connect."""

    def __init__(self, url: str, max_size: int = 4, create: bool = True):
        self._url = url
        if not create:
            columns = reader_tables(url, "outcome log", ["outcomes"]).get("outcomes")
            if not columns:
                raise no_outcome_log(url)
            create = not columns >= set(COLUMNS)
        else:
            check_reachable(url, f"outcome log ({GATEWAY_SETTING})")
        self._pool = connection_pool(url, min_size=1, max_size=max_size, open=True)
        if not create:
            return
        with setting_up("outcome log", url, self._pool.close), self._pool.connection() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK,))
            conn.execute("CREATE TABLE IF NOT EXISTS outcomes (request_id TEXT PRIMARY KEY)")
            for col in COLUMNS:
                if col != "request_id":
                    conn.execute(f"ALTER TABLE outcomes ADD COLUMN IF NOT EXISTS {col} {_PG_TYPES.get(col, 'TEXT')}")
            conn.execute("CREATE INDEX IF NOT EXISTS outcomes_ts ON outcomes (ts)")

    @property
    def journal_base(self) -> Path:  # looked up by an OutcomeLog only: a reader creates no folder
        return journal_base(self._url)

    def write_many(self, records: Sequence[OutcomeRecord]) -> None:
        rows = [pg_text(to_row(r)) for r in records]
        cols = ", ".join(COLUMNS)
        updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in COLUMNS if c != "request_id")
        sql = (f"INSERT INTO outcomes ({cols}) VALUES ({', '.join('%(' + c + ')s' for c in COLUMNS)}) "
               f"ON CONFLICT (request_id) DO UPDATE SET {updates}")
        with self._pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
            cur.executemany(sql, rows)

    def prune(self, cutoff: float, limit: int) -> int:
        with self._pool.connection() as conn:
            return pg_prune(conn, "outcomes", "request_id", cutoff, limit)

    def _rows(self, sql: str, args: Sequence[Any]) -> list[dict[str, Any]]:
        with self._pool.connection() as conn, conn.cursor() as cur:
            cur.execute(sql, args)
            names = [d[0] for d in cur.description]
            out = []
            for r in cur.fetchall():
                row = dict(zip(names, r))
                if isinstance(row.get("embedding"), memoryview):
                    row["embedding"] = bytes(row["embedding"])
                out.append(from_row(row))
            return out

    def read(self, since: float | None = None, limit: int | None = None,
             columns: Sequence[str] | None = None) -> list[dict[str, Any]]:
        return self._rows(*read_query(select_list(columns), "%s", since, limit))

    def scan(self, columns: Sequence[str], where: str | None = None) -> Iterator[tuple]:
        # A server-side cursor: the client holds one batch of rows at a time, not the whole result.
        with self._pool.connection() as conn, conn.transaction(), conn.cursor(name="outcome_scan") as cur:
            cur.itersize = 1000
            cur.execute(*read_query(select_list(columns), "%s", where=where))
            for row in cur:
                yield tuple(bytes(v) if isinstance(v, memoryview) else v for v in row)

    def get(self, request_id: str) -> dict[str, Any] | None:
        if "\x00" in request_id:  # no id of ours has one, and PostgreSQL refuses it in a query
            return None
        rows = self._rows(f"SELECT {', '.join(COLUMNS)} FROM outcomes WHERE request_id = %s", [request_id])
        return rows[0] if rows else None

    def close(self) -> None:
        self._pool.close()
