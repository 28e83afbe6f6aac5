"""What the cache reads back from its SQLite rows: a hit is only ever the entry's own row, even
with another process on the same folder deleting and inserting under it; a database from before
ids were AUTOINCREMENT still opens, and hands out no id twice from then on; and a row SQLite's
loose typing let through with a field of the wrong type is dropped on start, not a crash loop.
Real SQLite, real caches; two caches on one folder stand for two gateway processes."""
from __future__ import annotations

import json
import logging
import sqlite3

import numpy as np
import pytest

from router.cache.cache import ResponseCache
from router.cache.keys import request_keys
from router.cache.store import DB_NAME
from router.embedding import DIM
from tests import test_cache_core as core
from tests.test_cache_core import answer, body, get, new_cache, put

verifier, embed = core.verifier, core.embed  # the module's fixtures, shared

Q1, Q2, Q3 = "What is the capital of France?", "How do I delete my account?", "What is the capital of Spain?"

# The table as versions before AUTOINCREMENT created it: SQLite hands a freed id out again.
OLD_SCHEMA = """CREATE TABLE entries (
    id INTEGER PRIMARY KEY, exact TEXT NOT NULL UNIQUE, fingerprint TEXT NOT NULL, tenant TEXT NOT NULL,
    route TEXT NOT NULL, text TEXT NOT NULL, model TEXT NOT NULL, cost_usd REAL NOT NULL, created REAL NOT NULL,
    expires REAL NOT NULL, vector BLOB, response TEXT NOT NULL)"""


def keys(q: str):
    return request_keys(body(q), "auto", "t1")


def store(cache: ResponseCache, q: str, text: str):
    return cache.put(keys(q), tenant="t1", route="auto", response=answer(text), model="m1", cost_usd=0.0)


def served(hit) -> str | None:
    return hit.response["choices"][0]["message"]["content"] if hit is not None else None


def rows(folder) -> dict[int, str]:
    db = sqlite3.connect(folder / DB_NAME)
    try:
        return dict(db.execute("SELECT id, text FROM entries"))
    finally:
        db.close()


def test_two_caches_on_one_folder_never_serve_one_question_for_another(tmp_path):
    """Replica B replaces A's answer to Q1, its own is rejected, and B's next answer (to Q2) must
    not take the id A still holds for Q1: A served Q2's answer to Q1 as an exact hit."""
    a = ResponseCache(tmp_path, semantic=False)
    b = ResponseCache(tmp_path, semantic=False)
    ea = store(a, Q1, "Paris.")
    eb = store(b, Q1, "Paris (B).")
    assert b.forget(eb.id, eb.created)
    e2 = store(b, Q2, "Settings > Account > Delete.")
    assert e2.id not in (ea.id, eb.id)  # an id is never handed out twice
    assert served(a.lookup(keys(Q1))) is None  # A's row was replaced: a miss, never another answer
    assert len(a) == 0
    assert served(b.lookup(keys(Q2))) == "Settings > Account > Delete."
    assert served(a.lookup(keys(Q2))) is None  # stored by B after A started: A does not know it
    a.close()
    b.close()


def test_a_row_that_now_holds_another_question_is_a_miss_that_leaves_that_row(tmp_path):
    """What a process of an earlier version on the same folder does: delete the row an entry of
    this cache names and store another question under the same id."""
    cache = ResponseCache(tmp_path, semantic=False)
    e = store(cache, Q1, "Paris.")
    other = keys(Q2)
    db = sqlite3.connect(tmp_path / DB_NAME)
    db.execute("DELETE FROM entries WHERE id = ?", (e.id,))
    db.execute(
        "INSERT INTO entries (id, exact, fingerprint, tenant, route, text, model, cost_usd, created, expires, vector, response)"
        " VALUES (?, ?, ?, 't1', 'auto', ?, 'm1', 0, ?, ?, NULL, ?)",
        (e.id, other.exact, other.fingerprint, other.text, e.created, e.expires, json.dumps(answer("Settings."))),
    )
    db.commit()
    db.close()
    assert served(cache.lookup(keys(Q1))) is None
    assert len(cache) == 0  # the stale entry is dropped
    assert rows(tmp_path) == {e.id: other.text}  # and the row, another question's, is not this cache's to delete
    cache.close()
    reopened = ResponseCache(tmp_path, semantic=False)
    assert served(reopened.lookup(keys(Q2))) == "Settings."
    reopened.close()


def test_a_database_from_before_autoincrement_opens_with_its_entries_and_never_reuses_an_id(tmp_path):
    db = sqlite3.connect(tmp_path / DB_NAME)
    db.execute(OLD_SCHEMA)
    for i, (q, text) in enumerate([(Q1, "Paris."), (Q2, "Settings.")], start=1):
        k = keys(q)
        db.execute("INSERT INTO entries VALUES (?, ?, ?, 't1', 'auto', ?, 'm1', 0.01, ?, 1e300, NULL, ?)",
                   (i, k.exact, k.fingerprint, k.text, 1e9 + i, json.dumps(answer(text))))
    db.commit()
    db.close()
    cache = ResponseCache(tmp_path, semantic=False)
    assert len(cache) == 2 and served(cache.lookup(keys(Q1))) == "Paris."
    newest = cache.lookup(keys(Q2)).entry
    assert newest.id == 2 and newest.cost_usd == 0.01  # ids and fields kept across the upgrade
    assert cache.forget(newest.id, newest.created)
    assert store(cache, Q3, "Madrid.").id == 3  # the old table gave the freed id 2 again
    cache.close()
    reopened = ResponseCache(tmp_path, semantic=False)
    assert served(reopened.lookup(keys(Q1))) == "Paris." and served(reopened.lookup(keys(Q3))) == "Madrid."
    reopened.close()


NAN_VECTOR = np.full(DIM, np.nan, dtype=np.float32).tobytes()


@pytest.mark.parametrize("column, value", [
    ("vector", "x" * (4 * DIM)),  # TEXT of the right length: np.frombuffer raised a TypeError on start
    ("vector", NAN_VECTOR),
    ("expires", "never"),  # text in a REAL column: the expiry heap raised a TypeError on start
    ("created", b"\x00\x01"),
    ("cost_usd", "free"),
    ("text", b"\xff\xfe"),
    ("exact", b"\xff\xfe"),
], ids=["text-vector", "nan-vector", "text-expires", "blob-created", "text-cost", "blob-text", "blob-exact"])
def test_a_row_with_a_field_of_the_wrong_type_is_dropped_on_start(verifier, embed, tmp_path, caplog, column, value):
    cache = new_cache(verifier, tmp_path)
    put(cache, embed, body(Q1), "Paris.")
    put(cache, embed, body(Q3), "Madrid.")
    cache.close()
    db = sqlite3.connect(tmp_path / DB_NAME)
    db.execute(f"UPDATE entries SET {column} = ? WHERE text LIKE '%France%'", (value,))
    db.commit()
    assert db.execute("PRAGMA quick_check").fetchone()[0] == "ok"  # SQLite's own check lets it through
    db.close()
    with caplog.at_level(logging.WARNING, logger="router.cache.store"):
        reopened = new_cache(verifier, tmp_path)
    assert len(reopened) == 1
    assert "dropped 1 unusable rows" in caplog.text
    assert served(get(reopened, embed, body(Q3))) == "Madrid."
    assert get(reopened, embed, body(Q1)) is None
    reopened.close()
    assert list(rows(tmp_path).values()) == [keys(Q3).text]  # deleted, not met again at every start


def _rows_in(path) -> int:
    db = sqlite3.connect(path)
    try:
        return db.execute("SELECT COUNT(*) FROM entries").fetchone()[0]
    finally:
        db.close()


@pytest.mark.parametrize("old_schema, hold", [(True, "BEGIN IMMEDIATE"), (False, "BEGIN EXCLUSIVE")],
                         ids=["upgrade-waits-on-a-writer", "rollback-journal-held-exclusive"])
def test_a_database_another_process_holds_is_an_error_never_moved_aside(tmp_path, monkeypatch, old_schema, hold):
    """A second gateway holding the database (writing, or upgrading its table) made the first
    take it for a broken file and move every cached answer aside."""
    from router.cache import store as store_module
    from router.cache.store import CacheStoreError

    path = tmp_path / DB_NAME
    db = sqlite3.connect(path, isolation_level=None)
    if old_schema:  # the upgrade to AUTOINCREMENT takes the write lock: it must wait, then give up
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(OLD_SCHEMA)
    else:  # a database in rollback-journal mode: an exclusive lock stops even its reading
        db.execute(OLD_SCHEMA.replace("INTEGER PRIMARY KEY", "INTEGER PRIMARY KEY AUTOINCREMENT"))
    k = keys(Q1)
    db.execute("INSERT INTO entries VALUES (1, ?, ?, 't1', 'auto', ?, 'm1', 0.0, 1e9, 1e300, NULL, ?)",
               (k.exact, k.fingerprint, k.text, json.dumps(answer("Paris."))))
    db.execute(hold)
    monkeypatch.setattr(store_module, "OPEN_TIMEOUT_S", 0.2)
    try:
        with pytest.raises(CacheStoreError, match="another process holds it") as raised:
            ResponseCache(tmp_path, semantic=False)
        assert str(path) in str(raised.value)
    finally:
        db.execute("COMMIT")
        db.close()
    assert not [p.name for p in tmp_path.iterdir() if ".corrupt-" in p.name]
    assert _rows_in(path) == 1
    cache = ResponseCache(tmp_path, semantic=False)  # once the other process lets go, the answers are there
    assert served(cache.lookup(keys(Q1))) == "Paris."
    cache.close()


def test_opening_waits_for_another_process_to_let_go_and_a_write_then_waits_less(tmp_path, monkeypatch):
    """The wait is what keeps a held database from being an error: opening outlasts another
    process's upgrade, while a write, which holds the cache's lock for every lookup, waits less."""
    import threading
    import time

    from router.cache import store as store_module

    path = tmp_path / DB_NAME
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(OLD_SCHEMA)
    k = keys(Q1)
    db.execute("INSERT INTO entries VALUES (1, ?, ?, 't1', 'auto', ?, 'm1', 0.0, 1e9, 1e300, NULL, ?)",
               (k.exact, k.fingerprint, k.text, json.dumps(answer("Paris."))))
    db.execute("BEGIN IMMEDIATE")

    def let_go():
        time.sleep(0.5)
        db.execute("COMMIT")

    monkeypatch.setattr(store_module, "OPEN_TIMEOUT_S", 20.0)
    other = threading.Thread(target=let_go)
    other.start()
    cache = ResponseCache(tmp_path, semantic=False)
    other.join()
    db.close()
    assert served(cache.lookup(keys(Q1))) == "Paris."
    assert cache._store._db.execute("PRAGMA busy_timeout").fetchone()[0] == store_module.WRITE_TIMEOUT_S * 1000
    cache.close()
