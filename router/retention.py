"""Retention of the outcome log (`server.retention_days`): rows older than the window are deleted.

Each store deletes in batches (`prune`), one short transaction each, so the gateway's writer thread
waits for one batch at most, never for the whole sweep; the rows go by their `ts` index. An
SQLite file created with `auto_vacuum=INCREMENTAL` (every file this version creates) then gives
the freed pages back to the file system (`reclaim`); a file created before keeps its size and
reuses them for new rows (docs/DEPLOYMENT.md says how to convert it).
"""
from __future__ import annotations

import logging
import sqlite3
import threading
import time
from typing import Callable, Protocol, Sequence

log = logging.getLogger(__name__)

BATCH_ROWS = 2000  # ~8 MB of outcome rows: tens of milliseconds of the writer's lock per batch
RECLAIM_PAGES = 2000
SWEEP_EVERY_S = 3600.0
DAY_S = 86400.0


class Prunable(Protocol):
    def prune(self, cutoff: float, limit: int) -> int:
        """Delete at most `limit` rows (per table) with `ts < cutoff` in one transaction; how many went."""
        ...


def create_incremental(conn: sqlite3.Connection) -> None:
    """Opening an SQLite file: one being created gets incremental auto-vacuum, so what retention
    deletes can be given back. It takes only before the first table, and before WAL mode writes the
    file's header; a file that has tables keeps the mode it was created with."""
    conn.execute("PRAGMA auto_vacuum=INCREMENTAL")


def sqlite_prune(conn: sqlite3.Connection, lock: threading.Lock, table: str, cutoff: float, limit: int) -> int:
    with lock, conn:
        return conn.execute(f"DELETE FROM {table} WHERE rowid IN (SELECT rowid FROM {table} WHERE ts < ? LIMIT ?)",
                            (cutoff, limit)).rowcount


def sqlite_reclaim(conn: sqlite3.Connection, lock: threading.Lock, pages: int = RECLAIM_PAGES) -> int:
    """Give the file's free pages back, `pages` at a time under `lock`; how many. Nothing on a file
    without incremental auto-vacuum (created before this version): its free pages are reused."""
    with lock:
        if conn.execute("PRAGMA auto_vacuum").fetchone()[0] != 2:
            return 0
    freed = 0
    while True:
        with lock:
            before = conn.execute("PRAGMA freelist_count").fetchone()[0]
            if not before:
                return freed
            # One page per step of the statement: all its rows must be read for it to run to the end.
            conn.execute(f"PRAGMA incremental_vacuum({pages})").fetchall()
            after = conn.execute("PRAGMA freelist_count").fetchone()[0]
        freed += before - after
        if after >= before:
            return freed


class RetentionSweep:
    """Deletes what `stores` hold older than `days` (by `clock`), batch after batch until none is
    left, pausing `pause_s` between batches so the writer thread gets the lock back; `stop` set
    ends it after the batch in hand."""

    def __init__(self, days: int, stores: Sequence[Prunable], clock: Callable[[], float] = time.time,
                 batch_rows: int = BATCH_ROWS, pause_s: float = 0.01):
        self.days = days
        self.stores = list(stores)
        self.clock = clock
        self.batch_rows = batch_rows
        self.pause_s = pause_s

    def run(self, stop: threading.Event | None = None) -> int:
        stop = stop or threading.Event()
        cutoff = self.clock() - self.days * DAY_S
        deleted = 0
        for store in self.stores:
            while not stop.is_set():
                n = store.prune(cutoff, self.batch_rows)
                deleted += n
                if n == 0:
                    break
                stop.wait(self.pause_s)
        if deleted and not stop.is_set():
            # Per file: a feedback log in the outcome log's SQLite file has none of its own.
            freed = sum(store.reclaim() for store in self.stores if hasattr(store, "reclaim"))
            log.info("retention: deleted %d rows older than %d days%s", deleted, self.days,
                     f", gave {freed} free pages back to the file system" if freed else "")
        return deleted
