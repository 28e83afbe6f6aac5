"""Persistence of cache entries: SQLite in WAL mode, one row per entry.

SQLite is the source of truth: a write is one transaction, so a crash (kill -9, power loss)
leaves either the old or the new entry, never half of one. The FAISS indexes are derived
data: rebuilt from these rows on start, or read from the snapshot a clean shutdown wrote where it
holds exactly these rows' vectors (router/cache/semantic.py). A file that
is not a valid database on start is moved aside and the cache starts empty: a cache may
forget, but the gateway must not fail to start or restart in a loop because of it.

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

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    id INTEGER PRIMARY KEY,
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
)
"""
DB_NAME = "cache.sqlite"


class CacheStoreError(ValueError):
    """The cache folder cannot be used at all (not writable, not a folder)."""


def _quarantine(path: Path) -> Path:
    """Move a broken database (and its WAL files) aside, keeping it for inspection."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = path.with_name(f"{path.name}.corrupt-{stamp}-{os.getpid()}")
    for suffix in ("", "-wal", "-shm"):
        p = Path(str(path) + suffix)
        if p.exists():
            os.replace(p, Path(str(target) + suffix))
    return target


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

    def response(self, entry_id: int) -> dict[str, Any] | None:
        blob = self._answers.get(entry_id)
        return unpack(blob) if blob is not None else None

    def delete(self, ids: list[int]) -> None:
        for i in ids:
            self._answers.pop(i, None)

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
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CacheStoreError(f"cache folder {self.folder} cannot be created: {exc.strerror}") from None
        self.path = self.folder / DB_NAME
        try:
            self._db = self._open(str(self.path))
        except sqlite3.DatabaseError as exc:
            moved = _quarantine(self.path)
            log.error("cache database %s is unreadable (%s); moved it to %s and starting with an empty cache", self.path, exc, moved)
            self._db = self._open(str(self.path))

    @staticmethod
    def _open(target: str) -> sqlite3.Connection:
        db = sqlite3.connect(target, check_same_thread=False, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable up to the last checkpointed commit, never corrupt
            row = db.execute("PRAGMA quick_check").fetchone()
            if row is None or row[0] != "ok":
                raise sqlite3.DatabaseError(f"integrity check failed: {row[0] if row else 'no answer'}")
            db.execute(SCHEMA)
            db.execute("CREATE INDEX IF NOT EXISTS entries_expires ON entries(expires)")
        except sqlite3.DatabaseError:
            db.close()
            raise
        return db

    def put(self, e: Entry, response: dict[str, Any]) -> tuple[int, int]:
        """Insert or replace the entry with the same exact key: (the row id, 0 bytes held in memory)."""
        vector = e.vector.astype(np.float32).tobytes() if e.vector is not None else None
        cur = self._db.execute(
            "INSERT OR REPLACE INTO entries (exact, fingerprint, tenant, route, text, model, cost_usd, created, expires, vector, response)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (e.exact, e.fingerprint, e.tenant, e.route, e.text, e.model, e.cost_usd, e.created, e.expires, vector, json.dumps(response)),
        )
        return int(cur.lastrowid), 0

    def response(self, entry_id: int) -> dict[str, Any] | None:
        row = self._db.execute("SELECT response FROM entries WHERE id = ?", (entry_id,)).fetchone()
        if row is None:
            return None
        try:
            response = json.loads(row[0])
        except ValueError:
            response = None
        # Only a chat.completion with its choices can be served: anything else is damage.
        if not isinstance(response, dict) or not isinstance(response.get("choices"), list) or not response["choices"] \
                or not all(isinstance(c, dict) and isinstance(c.get("message"), dict) for c in response["choices"]):
            log.warning("cache entry %d has an unreadable response; dropping it", entry_id)
            self.delete([entry_id])
            return None
        return response

    def delete(self, ids: list[int]) -> None:
        if ids:
            self._db.executemany("DELETE FROM entries WHERE id = ?", [(i,) for i in ids])

    def clear(self) -> None:
        self._db.execute("DELETE FROM entries")

    def load(self, now: float, dim: int) -> Iterator[Entry]:
        """Live entries, oldest first (eviction order after a restart); expired and malformed rows are deleted."""
        self._db.execute("DELETE FROM entries WHERE expires <= ?", (now,))
        bad = []
        rows = self._db.execute(
            "SELECT id, exact, fingerprint, tenant, route, text, model, cost_usd, created, expires, vector FROM entries ORDER BY created, id"
        )
        for row in rows.fetchall():
            blob = row[10]
            if blob is not None and len(blob) != dim * 4:
                bad.append(row[0])  # written by another embedding model: useless for matching
                continue
            vector = np.frombuffer(blob, dtype=np.float32).copy() if blob is not None else None
            yield Entry(*row[:10], vector=vector)
        self.delete(bad)

    def count(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM entries").fetchone()[0])

    def close(self) -> None:
        try:
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error as exc:  # a full disk: the WAL stays beside the file, and is replayed on open
            log.warning("cache: could not checkpoint %s at shutdown: %s", self.path, exc)
        finally:
            self._db.close()
