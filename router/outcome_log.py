"""The outcome log: one record per request, written by the gateway, read by retraining.

Writes happen off the latency path: `OutcomeLog.write` only journals and enqueues; a background thread
batches records into the store. `close()` drains the queue, so nothing accepted is lost on a clean
shutdown, and the journal (`OutcomeJournal`) keeps what a killed process had not committed for the next
open to write. Stores sit behind a small seam (`OutcomeStore`, chosen by URL scheme in `STORES`):
SQLite in WAL mode is the embedded default; a server database registers another scheme there.
"""
from __future__ import annotations

import base64
import json
import logging
import queue
import sqlite3
import threading
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, Protocol, Sequence

from router.outcome_journal import OutcomeJournal
from router.private_files import private_file, private_folder
from router.retention import create_incremental, sqlite_prune, sqlite_reclaim
from router.store_errors import redact_url, store_refuses_writes, store_unreachable

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)


@dataclass
class OutcomeRecord:
    request_id: str
    ts: float = field(default_factory=time.time)
    key_label: str | None = None
    tenant: str = "default"
    requested_model: str = "auto"
    profile: str | None = None
    stream: bool = False
    features_hash: str | None = None
    prompt: str | None = None  # only with prompt_storage=full
    prompt_hash: str | None = None  # with prompt_storage=hash or full
    embedding: bytes | None = None  # float32 routing embedding (not with prompt_storage=none)
    input_tokens_est: int = 0
    candidates: list[dict[str, Any]] | None = None  # the router's ranked candidate scores
    reason: str | None = None
    knob: float | None = None
    chosen_model: str | None = None
    propensity: float | None = None
    answered_model: str | None = None
    fallback_chain: list[str] = field(default_factory=list)  # models tried, in order
    attempts: list[dict[str, Any]] = field(default_factory=list)  # one entry per upstream call or skip
    ttft_s: float | None = None
    latency_s: float | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    cost_usd: float = 0.0
    saved_cost_usd: float = 0.0
    status: str = "ok"  # ok | error | cache_hit | truncated | client_closed
    error: str | None = None
    cache_status: str = "miss"
    cache_similarity: float | None = None
    simulated: bool = False
    extras: dict[str, Any] = field(default_factory=dict)


_JSON_FIELDS = ("candidates", "fallback_chain", "attempts", "extras")
# Upstream error kinds that are the request's own fault (invalid, too long for the model): a
# request that failed only with these says nothing about how good the routed model is.
CLIENT_FAULT_KINDS = frozenset({"bad_request", "unsupported", "context_length"})


def judges_chosen_model(status: str, chosen: str | None, answered: str | None, attempts: list[dict[str, Any]] | None) -> bool:
    """Does what happened to a request say something about the model the router chose? Not
    when a fallback answered, nor when the chosen model was skipped without a call, nor when it
    refused the request as the request's own fault (invalid, too long): then no reward, explicit
    or implicit, is about it. One rule for the live bandit and for retraining and off-policy
    evaluation."""
    if status in ("ok", "truncated", "client_closed"):
        return answered == chosen
    return any(a.get("model") == chosen and a.get("status") == "error" and a.get("kind") not in CLIENT_FAULT_KINDS
               for a in attempts or ())


def answering_attempt(attempts: list[dict[str, Any]] | None, model: str | None) -> dict[str, Any] | None:
    """The call of `model` that answered (its last successful attempt); None where no upstream call
    of it did (a cache hit, a pre-hook's answer, a failure)."""
    return next((a for a in reversed(attempts or []) if a.get("model") == model and a.get("status") == "ok"), None)


def failed_by_its_models(status: str, attempts: list[dict[str, Any]] | None) -> bool:
    """An error that counts against the models tried (reward 0), not a refused request."""
    failures = [a for a in attempts or () if a.get("status") == "error"]
    return status == "error" and bool(failures) and not all(a.get("kind") in CLIENT_FAULT_KINDS for a in failures)
_BOOL_FIELDS = ("stream", "simulated")
COLUMNS = [f.name for f in fields(OutcomeRecord)]
_SQL_TYPES = {
    "ts": "REAL", "stream": "INTEGER", "simulated": "INTEGER", "embedding": "BLOB", "input_tokens_est": "INTEGER",
    "knob": "REAL", "propensity": "REAL", "ttft_s": "REAL", "latency_s": "REAL", "input_tokens": "INTEGER",
    "output_tokens": "INTEGER", "cost_usd": "REAL", "saved_cost_usd": "REAL", "cache_similarity": "REAL",
}


def to_row(record: OutcomeRecord) -> dict[str, Any]:
    row = {name: getattr(record, name) for name in COLUMNS}  # shallow: asdict's deep copy is wasted work here
    for name in _JSON_FIELDS:
        row[name] = None if row[name] is None else json.dumps(row[name], default=str)
    for name in _BOOL_FIELDS:
        row[name] = int(bool(row[name]))
    return row


def from_row(row: dict[str, Any]) -> dict[str, Any]:
    out = dict(row)
    for name in _JSON_FIELDS:
        if out.get(name) is not None:
            try:
                out[name] = json.loads(out[name])
            except ValueError as exc:  # a row edited or damaged by hand: say which, not only where in the text
                raise ValueError(f"logged request {out.get('request_id', '?')}: its {name!r} column holds no JSON ({exc})") from None
    for name in _BOOL_FIELDS:
        if name in out and out[name] is not None:
            out[name] = bool(out[name])
    return out


def select_list(columns: Sequence[str] | None) -> str:
    """The columns to read (every one for None), refused unless they are the table's: they go
    into the SQL text."""
    unknown = sorted(set(columns or ()) - set(COLUMNS))
    if unknown:
        raise ValueError(f"the outcome log has no column {', '.join(unknown)}")
    return ", ".join(columns or COLUMNS)


def read_query(select: str, mark: str, since: float | None = None, limit: int | None = None,
               where: str | None = None) -> tuple[str, list[Any]]:
    """`OutcomeStore.read` as SQL and its arguments, one text for every backend: `select` is what
    the store selects, `mark` its driver's placeholder (`?` for sqlite3, `%s` for psycopg),
    `where` a condition in SQL both backends read alike."""
    conditions, args = [f"({where})"] if where else [], []
    if since is not None:
        conditions.append(f"ts >= {mark}")
        args.append(since)
    sql = f"SELECT {select} FROM outcomes" + (f" WHERE {' AND '.join(conditions)}" if conditions else "")
    sql += " ORDER BY ts, request_id"  # ties in one order on every backend: retrain's time split depends on it
    if limit is not None:
        sql += f" LIMIT {mark}"
        args.append(limit)
    return sql, args


class OutcomeStore(Protocol):
    journal_base: Path | None  # where an OutcomeLog journals this store's rows (None: no journal)

    def write_many(self, records: Sequence[OutcomeRecord]) -> None: ...
    def read(self, since: float | None = None, limit: int | None = None,
             columns: Sequence[str] | None = None) -> list[dict[str, Any]]: ...
    def scan(self, columns: Sequence[str], where: str | None = None) -> Iterator[tuple]: ...
    def get(self, request_id: str) -> dict[str, Any] | None: ...
    def prune(self, cutoff: float, limit: int) -> int: ...  # router/retention.py
    def close(self) -> None: ...


class SQLiteStore:
    """Embedded store: one file, WAL mode so readers (training, dashboards) never block the writer."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        private_folder(self.path.parent)
        if str(path) != ":memory:":
            private_file(self.path)  # key hashes, the pepper, spend and (prompt_storage full) prompts
        # One connection for the writer thread and one for lookups, each under its lock: with WAL
        # a lookup reads while a write waits out another process's lock (a backup, a VACUUM).
        self._conn = sqlite3.connect(self.path, timeout=30, check_same_thread=False)
        self._conn.row_factory = sqlite3.Row
        self._lock = threading.Lock()
        with self._lock, self._conn:
            create_incremental(self._conn)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            cols = ", ".join(
                f"{c} {_SQL_TYPES.get(c, 'TEXT')}{' PRIMARY KEY' if c == 'request_id' else ''}" for c in COLUMNS
            )
            self._conn.execute(f"CREATE TABLE IF NOT EXISTS outcomes ({cols})")
            # A log written by an older version lacks the columns added since: add them, keep the rows.
            have = {row[1] for row in self._conn.execute("PRAGMA table_info(outcomes)")}
            for c in COLUMNS:
                if c not in have:
                    self._conn.execute(f"ALTER TABLE outcomes ADD COLUMN {c} {_SQL_TYPES.get(c, 'TEXT')}")
            self._conn.execute("CREATE INDEX IF NOT EXISTS outcomes_ts ON outcomes (ts)")
        self._reader = sqlite3.connect(self.path, timeout=30, check_same_thread=False)
        self._reader.row_factory = sqlite3.Row
        self._read_lock = threading.Lock()
        self.journal_base = None if str(path) == ":memory:" else self.path.with_name(self.path.name + ".journal")  # beside it

    def write_many(self, records: Sequence[OutcomeRecord]) -> None:
        rows = [to_row(r) for r in records]
        sql = f"INSERT OR REPLACE INTO outcomes ({', '.join(COLUMNS)}) VALUES ({', '.join(':' + c for c in COLUMNS)})"
        with self._lock, self._conn:
            self._conn.executemany(sql, rows)

    def prune(self, cutoff: float, limit: int) -> int:
        return sqlite_prune(self._conn, self._lock, "outcomes", cutoff, limit)

    def reclaim(self) -> int:
        return sqlite_reclaim(self._conn, self._lock)

    def read(self, since: float | None = None, limit: int | None = None,
             columns: Sequence[str] | None = None) -> list[dict[str, Any]]:
        sql, args = read_query(select_list(columns), "?", since, limit)
        with self._read_lock:
            return [from_row(dict(r)) for r in self._reader.execute(sql, args)]

    def scan(self, columns: Sequence[str], where: str | None = None) -> Iterator[tuple]:
        sql, args = read_query(select_list(columns), "?", where=where)
        with self._read_lock:
            cursor = self._reader.execute(sql, args)
        while True:
            with self._read_lock:  # per batch, not across the caller's work between them
                batch = cursor.fetchmany(1000)
            if not batch:
                return
            yield from batch

    def get(self, request_id: str) -> dict[str, Any] | None:
        with self._read_lock:
            row = self._reader.execute("SELECT * FROM outcomes WHERE request_id = ?", (request_id,)).fetchone()
        return from_row(dict(row)) if row is not None else None

    def close(self) -> None:
        with self._lock, self._read_lock:
            self._reader.close()
            self._conn.close()


def sqlite_file(url: str, key: str = "outcome log URL", relative_to: str = "") -> str:
    """The file a SQLite URL names, read as SQLAlchemy reads one: `sqlite:///relative/path`,
    `sqlite:////absolute/path`, `sqlite:///:memory:` (and `sqlite://:memory:`); '' for a bare
    `sqlite://`, which each store takes in its own way. `sqlite://name` is two slashes then a
    host: read as a file it would be relative to the working directory, while `sqlite:///name`
    in a config is relative to the file, so it is an error naming `key` and both right forms."""
    rest = url[len("sqlite://"):] if url.startswith("sqlite://") else None
    if rest is None:
        raise ValueError(f"{key} {url!r} is not a SQLite URL: write sqlite:///path/to/file.sqlite")
    if rest.startswith("/"):
        return rest[1:]
    if rest in ("", ":memory:"):
        return rest
    where = f" (relative to {relative_to})" if relative_to else ""
    raise ValueError(f"{key} {url!r}: after sqlite:// comes a host, not a file: write sqlite:///{rest}{where} "
                     f"or sqlite:///{Path(rest).expanduser().absolute()} (an absolute path)")


def sqlite_path(url: str) -> Path:
    """The file of a SQLite log URL; a URL naming none is an error."""
    path = sqlite_file(url)
    if not path:
        raise ValueError(f"outcome log URL {url!r} names no file: use sqlite:///path/to/outcomes.sqlite")
    return Path(path)


def _sqlite_store(url: str, create: bool = True) -> SQLiteStore:
    # For a reader (create False) too: its jobs refuse a file that is not there first
    # (`training.outputs.check_outcome_log`), and the gateway's file holds the tables.
    path = sqlite_path(url)
    try:
        return SQLiteStore(path)
    except (sqlite3.Error, OSError) as exc:  # a folder, a file that is not a database, no permission
        raise ValueError(f"outcome log {url}: cannot open it as an SQLite database: {exc}") from None


def _postgres_store(url: str, create: bool = True) -> OutcomeStore:
    from router.outcome_store_pg import PostgresStore

    return PostgresStore(url, create=create)


# URL scheme -> store factory. A server backend adds its scheme here.
STORES: dict[str, Callable[..., OutcomeStore]] = {  # (url, create=True)
    "sqlite": _sqlite_store, "postgresql": _postgres_store, "postgres": _postgres_store,
}


def open_by_scheme(url: str, stores: Mapping[str, Callable[..., Any]], what: str, **options: Any) -> Any:
    """The backend `stores` registers for the URL's scheme (`postgresql+psycopg` counts as `postgresql`),
    opened with `options`."""
    scheme = url.split(":", 1)[0].split("+", 1)[0] if ":" in url else ""
    factory = stores.get(scheme)
    if factory is None:
        raise ValueError(f"unsupported {what} URL {redact_url(url)!r}: expected one of {sorted(s + '://...' for s in stores)}")
    return factory(url, **options)


def open_store(url: str, create: bool = True) -> OutcomeStore:
    """The store at `url`; `create` False for a reader, which must not create an outcome log where
    the URL names none (a mistyped database or search_path): that is an error saying so."""
    return open_by_scheme(url, STORES, "outcome log", create=create)


def journal_line(record: OutcomeRecord) -> bytes:
    # The fields, lists and mappings nested (`to_row`'s JSON text in JSON escapes it all again).
    row = {name: getattr(record, name) for name in COLUMNS}
    row["embedding"] = None if record.embedding is None else base64.b64encode(record.embedding).decode()
    # A numpy scalar as the number it holds; anything else as text, as `to_row` does.
    return json.dumps(row, default=lambda v: v.item() if hasattr(v, "item") else str(v)).encode() + b"\n"


def journal_record(line: bytes) -> OutcomeRecord:
    row = json.loads(line)
    row["embedding"] = None if row.get("embedding") is None else base64.b64decode(row["embedding"])
    return OutcomeRecord(**{name: row[name] for name in COLUMNS if name in row})


def _replayed(write: Callable[[list[OutcomeRecord]], bool], batch_size: int) -> Callable[[list[bytes]], None]:
    """What writes the journal lines a killed process left: decoded, in batches."""
    def replay(lines: list[bytes]) -> None:
        records = []
        for line in lines:
            try:
                records.append(journal_record(line))
            except (ValueError, TypeError) as exc:  # cut short: its process was killed mid-write
                log.warning("outcome log journal: skipping a line that is no whole row (%s): %.80r", exc, line)
        if records:
            log.warning("outcome log: writing the %d rows a killed process left journaled", len(records))
        for start in range(0, len(records), batch_size):
            write(records[start:start + batch_size])
    return replay


_STOP = object()
UNREACHABLE_PAUSE_S = 5.0  # the longest pause between tries of a store that cannot be reached


class OutcomeLog:
    """Queue + background writer thread in front of a store.

    The queue is bounded (`max_queued`): a store that is down for long must not grow the
    gateway's memory without end; past the bound records are dropped, counted and logged.
    Records still queued are readable by `get`, so a lookup never waits for the writer (a
    slow store would otherwise hold every feedback request's worker thread)."""

    def __init__(self, store: OutcomeStore, batch_size: int = 256, linger_s: float = 0.05, max_queued: int = 50_000):
        self.store = store
        self.batch_size = batch_size
        self.linger_s = linger_s
        self._queue: queue.Queue = queue.Queue(maxsize=max_queued)
        self._unwritten: dict[str, OutcomeRecord] = {}
        self._lock = threading.Lock()
        self.dropped = 0
        self._closed = False
        self._unreachable = False
        # Before any new row is accepted, so a row replayed never replaces a newer one.
        self._journal = None if store.journal_base is None else OutcomeJournal(store.journal_base, _replayed(self._write, batch_size))
        self._thread = threading.Thread(target=self._run, name="outcome-log-writer", daemon=True)
        self._thread.start()

    def write(self, record: OutcomeRecord) -> None:
        if self._closed:
            raise RuntimeError("outcome log is closed")
        with self._lock:
            self._unwritten[record.request_id] = record
        side = self._journal.append(journal_line(record)) if self._journal is not None else 0
        try:
            self._queue.put_nowait((record, side))
        except queue.Full:
            if self._journal is not None:
                self._journal.done([side])
            with self._lock:
                self._unwritten.pop(record.request_id, None)
                self.dropped += 1
                dropped = self.dropped
            if dropped == 1 or dropped % 1000 == 0:
                log.error("outcome log: %d records dropped so far; the store has not kept up with %d queued",
                          dropped, self._queue.maxsize)

    def _run(self) -> None:
        stop = False
        while not stop:
            batch = [self._queue.get()]
            # Gather for a moment: one transaction per batch, and the writer thread wakes (and
            # takes the GIL from the event loop) a few times per second instead of per request.
            deadline = time.monotonic() + self.linger_s
            while len(batch) < self.batch_size and batch[-1] is not _STOP:
                remaining = deadline - time.monotonic()
                try:
                    batch.append(self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait())
                except queue.Empty:
                    break
            stop = any(item is _STOP for item in batch)
            records = [item[0] for item in batch if item is not _STOP]
            if records:
                written = self._write(records)
                with self._lock:
                    for record in records:
                        if self._unwritten.get(record.request_id) is record:
                            del self._unwritten[record.request_id]
                if self._journal is not None and written:  # before task_done: after a flush the journal is empty
                    self._journal.done([item[1] for item in batch if item is not _STOP])
                    self._journal.drain()
            for _ in batch:
                self._queue.task_done()

    def _write(self, batch: list[OutcomeRecord]) -> bool:
        """Commit a batch: True once each record is in the store or refused by it. While the store
        cannot be reached it tries again, pausing up to UNREACHABLE_PAUSE_S; it had given up after
        three tries, and a database away for a minute lost the rows, journal lines included. False
        when the log is closed meanwhile: the rows stay journaled for the next start to write."""
        pause = 0.1
        while not (self._closed and self._unreachable):
            try:
                self.store.write_many(batch)
            except Exception as exc:
                if not (store_unreachable(exc) or store_refuses_writes(exc)):
                    break  # refused: see below
                if not self._unreachable:
                    # A store refusing every write (a revoked privilege, a read-only standby) had had each
                    # row dropped, its journal line too: those wait like rows for a store away.
                    log.error("outcome log: the store cannot be reached or refuses every write (%s); %d rows wait, "
                              "journaled, and are tried again", exc, len(batch))
                self._unreachable = True
                time.sleep(pause)
                pause = min(pause * 2, UNREACHABLE_PAUSE_S)
                continue
            if self._unreachable:
                log.warning("outcome log: the store is back; the rows that waited are written")
            self._unreachable = False
            return True
        else:
            log.error("outcome log: closed while the store cannot be reached; %d rows are %s", len(batch),
                      "left in the journal for the next start to write" if self._journal is not None else "lost (no journal)")
            return False
        # The store refuses the batch: one bad record must not take the others with it.
        for record in batch:
            try:
                self.store.write_many([record])
            except Exception:
                log.exception("outcome log: dropping record %s, which the store refuses", record.request_id)
        return True

    def flush(self) -> None:
        """Block until every record written so far is in the store."""
        self._queue.join()

    def get(self, request_id: str) -> dict[str, Any] | None:
        with self._lock:
            queued = self._unwritten.get(request_id)
        return from_row(to_row(queued)) if queued is not None else self.store.get(request_id)

    def read(self, since: float | None = None, limit: int | None = None) -> list[dict[str, Any]]:
        self.flush()
        return self.store.read(since, limit)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._queue.put(_STOP)  # blocks while the queue is full: every accepted record is written first
        self._thread.join()
        if self._journal is not None:
            self._journal.close()
        self.store.close()


def open_outcome_log(url: str) -> OutcomeLog:
    return OutcomeLog(open_store(url))


def read_outcomes(url: str, since: float | None = None, columns: Sequence[str] | None = None) -> pd.DataFrame:
    """The outcome table for training: one row per request, JSON columns decoded; only `columns`
    when given (a job that reads three columns need not hold every prompt and embedding)."""
    import pandas as pd

    store = open_store(url, create=False)
    try:
        rows = store.read(since, columns=columns)
    finally:
        store.close()
    return pd.DataFrame(rows, columns=list(columns or COLUMNS))


def scan_outcomes(url: str, columns: Sequence[str], where: str | None = None) -> Iterator[tuple]:
    """`columns` of the rows matching `where` (SQL), oldest first, one tuple per row as the
    store returns it (JSON undecoded), streamed: a job can keep what it needs of each row instead
    of every row at once."""
    store = open_store(url, create=False)
    try:
        yield from store.scan(columns, where)
    finally:
        store.close()
