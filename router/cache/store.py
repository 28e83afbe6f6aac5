"""Persistence of cache entries: SQLite in WAL mode, one row per entry.

SQLite is the source of truth: a write is one transaction, so a crash (kill -9, power loss)
leaves either the old or the new entry, never half of one. The FAISS indexes are derived
data: rebuilt from these rows on start, or read from the snapshot a clean shutdown wrote where it
holds exactly these rows' vectors (router/cache/semantic.py). A file that
is not a valid database on start is moved aside and the cache starts empty: a cache may
forget, but the gateway must not fail to start or restart in a loop because of it. A database
another process holds locked is no such file: opening waits for it, and one still locked after
`OPEN_TIMEOUT_S` is an error, never moved aside.

A cache without a folder keeps its answers in a `MemoryStore` instead: packed in a dict, since
the entries' other fields live in the cache and their vectors in its index. An in-memory SQLite
database held each key, vector and answer a second time, one agent-shaped row per 4 KB page.
"""
from __future__ import annotations

import json
import logging
import os
import sqlite3
import sys
import time
import zlib
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from router.cache.entry import Entry
from router.private_files import private_file, private_folder

log = logging.getLogger(__name__)

# AUTOINCREMENT: an id is never handed out twice, even after the row holding the highest one is
# deleted. A cache holds its entries' ids in memory, and another process on the same folder (an
# overlapping restart, two gateways on one config) deletes and inserts rows under it: with reused
# ids, an id one process held could name another question's answer stored by the other.
COLUMNS = """(
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    exact TEXT NOT NULL UNIQUE,
    fingerprint TEXT NOT NULL,
    tenant TEXT NOT NULL,
    route TEXT NOT NULL,
    text TEXT NOT NULL,
    model TEXT NOT NULL,
    cost_usd REAL NOT NULL,
    created REAL NOT NULL,
    expires REAL NOT NULL,
    vector BLOB,
    response TEXT NOT NULL
)"""
SCHEMA = f"CREATE TABLE IF NOT EXISTS entries {COLUMNS}"
FIELDS = "exact, fingerprint, tenant, route, text, model, cost_usd, created, expires, vector, response"
DB_NAME = "cache.sqlite"
# How long opening waits for another process on the same folder (a second gateway, an
# overlapping restart) that holds the database: long enough for its upgrade of a full table.
OPEN_TIMEOUT_S = 30.0
# How long a write waits afterwards: it holds the cache's lock, so every lookup waits with it.
WRITE_TIMEOUT_S = 5.0


class CacheStoreError(ValueError):
    """The cache folder cannot be used at all (not writable, not a folder, held by another process)."""


def _quarantine(path: Path) -> Path:
    """Move a broken database (and its WAL files) aside, keeping it for inspection."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = path.with_name(f"{path.name}.corrupt-{stamp}-{os.getpid()}")
    for suffix in ("", "-wal", "-shm"):
        p = Path(str(path) + suffix)
        if p.exists():
            os.replace(p, Path(str(target) + suffix))
    return target


def _locked(exc: sqlite3.DatabaseError) -> bool:
    """Busy or locked: another connection holds the database, which says nothing of its health."""
    return (getattr(exc, "sqlite_errorcode", 0) & 0xFF) in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


def _ids_never_reused(db: sqlite3.Connection) -> bool:
    row = db.execute("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'entries'").fetchone()
    return row is not None and "AUTOINCREMENT" in row[0].upper()


def _upgrade(db: sqlite3.Connection) -> None:
    """A database written before ids were AUTOINCREMENT: its rows are copied, ids kept (the
    index snapshot names them), into a table that never hands an id out twice. One transaction:
    a crash leaves the old table, and another process opening the folder meanwhile waits for it
    (or finds the work done). A table without these columns fails here, and is moved aside."""
    if _ids_never_reused(db):
        return
    db.execute("BEGIN IMMEDIATE")
    try:
        if not _ids_never_reused(db):
            db.execute(f"CREATE TABLE entries_upgraded {COLUMNS}")
            db.execute(f"INSERT INTO entries_upgraded (id, {FIELDS}) SELECT id, {FIELDS} FROM entries")
            db.execute("DROP TABLE entries")
            db.execute("ALTER TABLE entries_upgraded RENAME TO entries")
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise


def _entry(row: tuple, dim: int) -> Entry | None:
    """The entry a row holds, or None where a field has the wrong type or shape: SQLite's loose
    typing keeps text in a REAL column or a BLOB one, and `PRAGMA quick_check` does not look."""
    entry_id, exact, fingerprint, tenant, route, text, model, cost_usd, created, expires, blob = row
    if not all(isinstance(v, str) for v in (exact, fingerprint, tenant, route, text, model)):
        return None
    numbers = (cost_usd, created, expires)
    if not all(isinstance(v, (int, float)) and v == v for v in numbers):  # v == v: no NaN
        return None
    vector = None
    if blob is not None:
        if not isinstance(blob, bytes) or len(blob) != dim * 4:
            return None
        vector = np.frombuffer(blob, dtype=np.float32).copy()
        if not np.isfinite(vector).all():
            return None
    return Entry(entry_id, exact, fingerprint, tenant, route, text, model, *map(float, numbers), vector=vector)


def pack(response: dict[str, Any]) -> bytes:
    """An answer as compact JSON, zlib-compressed where that is shorter (English answers of
    0.4-2 KB: 1.6-1.8x)."""
    raw = json.dumps(response, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    packed = zlib.compress(raw, 6)
    return packed if len(packed) < len(raw) else raw


def unpack(blob: bytes) -> dict[str, Any]:
    # A JSON object starts with "{"; a zlib stream never does (its first byte is 0x78).
    return json.loads(blob if blob[:1] == b"{" else zlib.decompress(blob))


class MemoryStore:
    """The answers of a cache without a folder, packed, by entry id. Ids are never handed out
    twice. Not thread-safe: the cache holds a lock."""

    folder = None
    path = None

    def __init__(self) -> None:
        self._answers: dict[int, bytes] = {}
        self._last_id = 0

    def put(self, e: Entry, response: dict[str, Any]) -> tuple[int, int]:
        """(the new id, the bytes its answer holds in memory)."""
        self._last_id += 1
        blob = self._answers[self._last_id] = pack(response)
        return self._last_id, sys.getsizeof(blob)

    def response(self, entry_id: int, exact: str) -> dict[str, Any] | None:
        # One process's own ids, never handed out twice: an id names one entry for good.
        blob = self._answers.get(entry_id)
        return unpack(blob) if blob is not None else None

    def delete(self, entries: list[tuple[int, str]]) -> None:
        for entry_id, _ in entries:
            self._answers.pop(entry_id, None)

    def clear(self) -> None:
        self._answers.clear()

    def load(self, now: float, dim: int) -> Iterator[Entry]:
        return iter(())

    def count(self) -> int:
        return len(self._answers)

    def close(self) -> None:
        self._answers.clear()


class Store:
    """Entry rows in SQLite in `folder`. Not thread-safe: the cache holds a lock."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        try:
            private_folder(self.folder)  # every tenant's prompts and answers
        except OSError as exc:
            raise CacheStoreError(f"cache folder {self.folder} cannot be created: {exc.strerror}") from None
        self.path = self.folder / DB_NAME
        try:
            self._db = self._open(str(self.path))
        except sqlite3.DatabaseError as exc:
            if _locked(exc):
                raise CacheStoreError(f"cache database {self.path} is locked: another process holds it (still after "
                                      f"{OPEN_TIMEOUT_S:g} s); is a second gateway using this cache folder?") from None
            moved = _quarantine(self.path)
            log.error("cache database %s is unreadable (%s); moved it to %s and starting with an empty cache", self.path, exc, moved)
            self._db = self._open(str(self.path))

    @staticmethod
    def _open(target: str) -> sqlite3.Connection:
        private_file(target)
        db = sqlite3.connect(target, timeout=OPEN_TIMEOUT_S, check_same_thread=False, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable up to the last checkpointed commit, never corrupt
            row = db.execute("PRAGMA quick_check").fetchone()
            if row is None or row[0] != "ok":
                raise sqlite3.DatabaseError(f"integrity check failed: {row[0] if row else 'no answer'}")
            db.execute(SCHEMA)
            _upgrade(db)
            db.execute("CREATE INDEX IF NOT EXISTS entries_expires ON entries(expires)")
            db.execute(f"PRAGMA busy_timeout = {int(WRITE_TIMEOUT_S * 1000)}")
        except sqlite3.DatabaseError:
            db.close()
            raise
        return db

    def put(self, e: Entry, response: dict[str, Any]) -> tuple[int, int]:
        """Insert or replace the entry with the same exact key: (the row id, 0 bytes held in memory)."""
        vector = e.vector.astype(np.float32).tobytes() if e.vector is not None else None
        cur = self._db.execute(
            f"INSERT OR REPLACE INTO entries ({FIELDS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (e.exact, e.fingerprint, e.tenant, e.route, e.text, e.model, e.cost_usd, e.created, e.expires, vector, json.dumps(response)),
        )
        return int(cur.lastrowid), 0

    def response(self, entry_id: int, exact: str) -> dict[str, Any] | None:
        """The answer of the entry with this id and exact key; None if there is no such row.

        The key is checked, not only the id: another process on the same folder replaces and
        deletes rows under this one's entries (and a database from before AUTOINCREMENT hands a
        freed id out again), so the row an id names may be gone, or be another question's."""
        row = self._db.execute("SELECT exact, response FROM entries WHERE id = ?", (entry_id,)).fetchone()
        if row is None or row[0] != exact:
            return None
        try:
            response = json.loads(row[1])
        except (ValueError, TypeError):  # TypeError: a number where the text belongs
            response = None
        # Only a chat.completion with its choices can be served: anything else is damage.
        if not isinstance(response, dict) or not isinstance(response.get("choices"), list) or not response["choices"] \
                or not all(isinstance(c, dict) and isinstance(c.get("message"), dict) for c in response["choices"]):
            log.warning("cache entry %d has an unreadable response; dropping it", entry_id)
            self.delete([(entry_id, exact)])
            return None
        return response

    def delete(self, entries: list[tuple[int, str]]) -> None:
        """Delete these (id, exact key) rows: a row that now holds another key is not this
        entry's (see `response`), and stays."""
        if entries:
            self._db.executemany("DELETE FROM entries WHERE id = ? AND exact = ?", entries)

    def clear(self) -> None:
        self._db.execute("DELETE FROM entries")

    def load(self, now: float, dim: int) -> Iterator[Entry]:
        """Live entries, oldest first (eviction order after a restart); expired rows, and rows
        that cannot be used (a field of the wrong type, a vector of another size), are deleted."""
        self._db.execute("DELETE FROM entries WHERE expires <= ?", (now,))
        bad = []
        rows = self._db.execute(
            "SELECT id, exact, fingerprint, tenant, route, text, model, cost_usd, created, expires, vector FROM entries ORDER BY created, id"
        )
        for row in rows.fetchall():
            e = _entry(row, dim)
            if e is None:
                bad.append((row[0],))
                continue
            yield e
        if bad:
            log.warning("cache: dropped %d unusable rows from %s (a field of the wrong type, or a vector of another "
                        "size than this embedder's %d)", len(bad), self.path, dim)
            self._db.executemany("DELETE FROM entries WHERE id = ?", bad)

    def count(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM entries").fetchone()[0])

    def close(self) -> None:
        try:
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error as exc:  # a full disk: the WAL stays beside the file, and is replayed on open
            log.warning("cache: could not checkpoint %s at shutdown: %s", self.path, exc)
        finally:
            self._db.close()
