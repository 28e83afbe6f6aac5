"""One SQL seam for the governance store: SQLite (embedded default) or PostgreSQL.

Callers write SQL once with `?` placeholders and portable types; this module translates
placeholders for PostgreSQL, hands out connections (one shared SQLite connection behind a
lock, and a second one for reports; a psycopg pool for PostgreSQL) and applies the versioned
migration files in `migrations/<dialect>/NNN_*.sql` exactly once per database, even when
several replicas start at the same moment.
"""
from __future__ import annotations

import contextlib
import logging
import os
import secrets
import socket
import sqlite3
import threading
from importlib import resources
from pathlib import Path
from typing import Any, Iterator, Sequence

from router.outcome_log import sqlite_file
from router.private_files import private_file, private_folder
from router.retention import create_incremental
from router.store_errors import redact_url, setting_up

CONNECT_TIMEOUT_S = 10.0  # a PostgreSQL that does not answer at start-up: a clear error, not a 30 s hang and a traceback
# The longest a request waits for a pooled connection (psycopg_pool's default is 30 s): with the
# database away a request is answered 503 `store_unavailable` that much later, and each try of a
# spend settle gives up after it.
CONNECTION_WAIT_S = 10.0

log = logging.getLogger(__name__)

# Lock id for pg_advisory_xact_lock: any constant shared by every replica will do.
_MIGRATION_LOCK = 0x6F70656E636C6177


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


# The host an owner's pid means something on: after a reboot the same pids are other processes.
_NODE = f"{socket.gethostname()}/{_boot_id()}"
# Database objects open in this process, by owner token: a process may close one and open another.
_OPEN: set[str] = set()


def _process_start(pid: int) -> str | None:
    """When `pid` started (clock ticks since boot, Linux), so that a reused pid is not taken for
    the process that had it; '' where it runs and the system does not say when it started; None
    where no process has that pid."""
    if os.name == "nt":
        return ""  # os.kill(pid, 0) would send it a Ctrl-C there
    if os.path.isdir("/proc/self"):
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                return f.read().rsplit(b")", 1)[1].split()[19].decode()
        except (FileNotFoundError, ProcessLookupError):
            return None
        except (OSError, IndexError):
            return ""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except OSError:  # it exists, under another user
        pass
    return ""


def new_owner() -> str:
    """A token naming this open database in this process on this host: what a budget
    reservation records as its owner."""
    pid = os.getpid()
    owner = f"{_NODE}|{pid}|{_process_start(pid) or ''}|{secrets.token_hex(4)}"
    _OPEN.add(owner)
    return owner


def owner_gone(owner: str | None) -> bool:
    """Whether the owner of a reservation has ended without settling it: its process is dead (or
    its pid now another process's), or it is this process and has closed that database. An owner
    on another host, or one this system cannot check, is not known to be gone. Two containers
    sharing one file and one host name (but not their pids) would read each other's pids wrongly:
    give them distinct host names, or Redis."""
    try:
        node, pid_text, start, _ = (owner or "").rsplit("|", 3)
        pid = int(pid_text)
    except ValueError:
        return False
    if node != _NODE:
        return False
    if pid == os.getpid() and start == (_process_start(pid) or ""):
        return owner not in _OPEN
    now = _process_start(pid)
    return now is None or bool(now and start and now != start)


class Database:
    """A connection source plus the dialect; use `tx()` for everything."""

    dialect: str
    owner: str  # new_owner(), until close()

    @contextlib.contextmanager
    def tx(self, immediate: bool = False) -> Iterator["Tx"]:
        raise NotImplementedError

    @contextlib.contextmanager
    def read(self) -> Iterator["Tx"]:
        """A transaction for reports, which may read for seconds: it must never hold up the
        ledger's transactions (each governed request reserves and settles through `tx`)."""
        with self.tx() as tx:
            yield tx

    def close(self) -> None:
        raise NotImplementedError


class Tx:
    """A transaction: `execute` returns the cursor, `one`/`all` fetch rows as dicts."""

    def __init__(self, conn: Any, dialect: str):
        self._conn = conn
        self.dialect = dialect

    def _sql(self, sql: str) -> str:
        return sql.replace("?", "%s") if self.dialect == "postgres" else sql

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return self._conn.execute(self._sql(sql), tuple(params))

    def one(self, sql: str, params: Sequence[Any] = ()) -> dict[str, Any] | None:
        cur = self.execute(sql, params)
        row = cur.fetchone()
        return None if row is None else _as_dict(cur, row)

    def all(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        cur = self.execute(sql, params)
        return [_as_dict(cur, r) for r in cur.fetchall()]

    def script(self, text: str) -> None:
        if self.dialect == "sqlite":
            for stmt in _statements(text):
                self._conn.execute(stmt)
        else:
            self._conn.execute(text)


def _as_dict(cur: Any, row: Any) -> dict[str, Any]:
    if isinstance(row, dict):
        return row
    return {d[0]: v for d, v in zip(cur.description, row)}


def _statements(text: str) -> list[str]:
    lines = [ln for ln in text.splitlines() if not ln.strip().startswith("--")]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]


class SqliteDatabase(Database):
    dialect = "sqlite"

    def __init__(self, path: str):
        try:
            if path != ":memory:":
                private_folder(Path(path).parent)
                private_file(path)  # key hashes, the pepper, spend
            # autocommit mode: transactions are explicit so BEGIN IMMEDIATE can take the write lock.
            self._conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30.0)
            create_incremental(self._conn)  # the file the outcome log shares: its retention can shrink it
            mode = self._conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            self._conn.execute("PRAGMA busy_timeout=30000")
        except (sqlite3.Error, OSError) as exc:  # a folder, a file that is not a database, no permission
            raise ValueError(f"governance database {path}: cannot open it as an SQLite database: {exc}") from None
        self._path = path if path == ":memory:" else str(Path(path).absolute())
        self._lock = threading.RLock()
        # Only in WAL mode does a reader neither wait for the writer nor hold up its commits; in
        # any other journal mode (a :memory: database, a file system without shared memory) a
        # report on a second connection would stall every settle, so reports share the lock.
        self._wal = str(mode).lower() == "wal"
        if not self._wal and path != ":memory:":
            log.warning("governance database %s is not in WAL mode (%s): reports will hold up budget checks while they run",
                        path, mode)
        self._reader: sqlite3.Connection | None = None
        self._read_lock = threading.Lock()
        self.owner = new_owner()

    @contextlib.contextmanager
    def tx(self, immediate: bool = False) -> Iterator[Tx]:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE" if immediate else "BEGIN")
            try:
                yield Tx(self._conn, self.dialect)
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    @contextlib.contextmanager
    def read(self) -> Iterator[Tx]:
        if not self._wal:
            with self.tx() as tx:
                yield tx
            return
        with self._read_lock:
            if self._reader is None:
                self._reader = sqlite3.connect(self._path, check_same_thread=False, isolation_level=None, timeout=30.0)
                self._reader.execute("PRAGMA query_only=ON")
            # One read transaction: a report's queries see one snapshot of the spend log.
            self._reader.execute("BEGIN")
            try:
                yield Tx(self._reader, self.dialect)
            finally:
                if self._reader.in_transaction:
                    self._reader.execute("ROLLBACK")

    def close(self) -> None:
        _OPEN.discard(self.owner)
        with self._read_lock:
            if self._reader is not None:
                self._reader.close()
        with self._lock:
            self._conn.close()


def governance_setting(url: str) -> str:
    """Which setting gave the governance store `url` (`GovernanceSettings.from_env`): its own
    variable, or, while that is unset, the outcome log's server.db, which it then shares."""
    from router.outcome_store_pg import GATEWAY_SETTING

    own = os.environ.get("OPENCLAW_GOVERNANCE_DB")
    if own == url:
        return "OPENCLAW_GOVERNANCE_DB"
    if not own:
        return f"{GATEWAY_SETTING}: OPENCLAW_GOVERNANCE_DB is unset, so it shares the outcome log's database"
    return "not OPENCLAW_GOVERNANCE_DB's URL"


class PostgresDatabase(Database):
    dialect = "postgres"

    def __init__(self, url: str, max_size: int = 10):
        from psycopg_pool import PoolTimeout

        from router.outcome_store_pg import check_reachable
        from router.pg_pool import connection_pool

        what = f"governance database ({governance_setting(url)})"
        check_reachable(url, what)
        self._pool = connection_pool(url, min_size=1, max_size=max_size, open=False, kwargs={"autocommit": False},
                                    timeout=CONNECTION_WAIT_S)
        try:
            self._pool.open(wait=True, timeout=CONNECT_TIMEOUT_S)
        except PoolTimeout:
            self._pool.close()
            raise ValueError(f"{what} {redact_url(url)}: no connection within {CONNECT_TIMEOUT_S:.0f} s "
                             "(is PostgreSQL running there, and does the database exist?)") from None
        self.owner = new_owner()

    @contextlib.contextmanager
    def tx(self, immediate: bool = False) -> Iterator[Tx]:
        # Row locks (SELECT ... FOR UPDATE) give PostgreSQL the atomicity BEGIN IMMEDIATE gives SQLite.
        with self._pool.connection() as conn:
            with conn.transaction():
                yield Tx(conn, self.dialect)

    def close(self) -> None:
        _OPEN.discard(self.owner)
        self._pool.close()


def open_database(url: str) -> Database:
    """`sqlite:///relative/path`, `sqlite:////abs/path`, `sqlite://` or `sqlite://:memory:` (in
    memory) or `postgresql://...`."""
    if url.startswith(("postgresql://", "postgres://")):
        db: Database = PostgresDatabase(url)
    elif url.startswith("sqlite://"):
        try:
            db = SqliteDatabase(sqlite_file(url, "governance database URL") or ":memory:")
        except ValueError as exc:  # named as the PostgreSQL path names it: which setting to fix
            raise ValueError(f"{exc} ({governance_setting(url)})") from None
    else:
        raise ValueError(f"database URL must start with sqlite:// or postgresql://, got {redact_url(url)!r}")
    if db.dialect != "postgres":
        migrate(db)
        return db
    with setting_up("governance database", url, db.close):
        migrate(db)
    return db


def _migration_files(dialect: str) -> list[tuple[int, str, str]]:
    folder = resources.files("service.governance") / "migrations" / dialect
    found = []
    for entry in folder.iterdir():
        name = entry.name
        if name.endswith(".sql") and name[:3].isdigit():
            found.append((int(name[:3]), name, entry.read_text()))
    return sorted(found)


def migrate(db: Database) -> list[str]:
    """Apply the migrations this database has not seen yet; returns the names applied."""
    applied: list[str] = []
    with db.tx(immediate=True) as tx:
        if db.dialect == "postgres":
            tx.execute("SELECT pg_advisory_xact_lock(?)", (_MIGRATION_LOCK,))
        tx.execute("CREATE TABLE IF NOT EXISTS gov_schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL)")
        done = {r["version"] for r in tx.all("SELECT version FROM gov_schema_migrations")}
        for version, name, text in _migration_files(db.dialect):
            if version in done:
                continue
            tx.script(text)
            tx.execute("INSERT INTO gov_schema_migrations (version, name) VALUES (?, ?)", (version, name))
            applied.append(name)
    if applied:
        log.info("governance store: applied migrations %s", ", ".join(applied))
    return applied
