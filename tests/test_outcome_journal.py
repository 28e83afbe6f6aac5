"""The outcome log's write-ahead journal: a row the log accepted survives its process being killed
(SIGKILL, as an OOM kill does) before the row's batch commits, and the next open writes it."""
from __future__ import annotations

import logging
import os
import signal
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from router.outcome_log import (OutcomeLog, OutcomeRecord, from_row, journal_line, journal_record, open_outcome_log, open_store,
                                to_row)

ROOT = Path(__file__).resolve().parents[1]
# Logs rows with a linger of an hour, so none is committed before the test kills it.
WRITER = """
import sys, time
from router.outcome_log import OutcomeLog, open_store
from tests.test_outcome_journal import sample
url, prefix, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
log = OutcomeLog(open_store(url), linger_s=3600)
for i in range(n):
    log.write(sample(prefix, i))
print("written", flush=True)
time.sleep(3600)
"""


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENCLAW_CACHE_DIR", str(tmp_path / "cache"))  # where the PostgreSQL store journals
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/log.sqlite"
    return request.getfixturevalue("pg_url")


def sample(prefix: str, i: int) -> OutcomeRecord:
    """A row with every kind of value the gateway logs: bytes, JSON columns, a numpy float, text."""
    return OutcomeRecord(
        request_id=f"{prefix}-{i}", ts=1000.0 + i, stream=bool(i % 2), prompt=f"héllo ✓ \"{i}\"\nnext line",
        embedding=np.linspace(-1, 1, 384, dtype=np.float32).tobytes(), knob=np.float64(0.25),
        candidates=[{"model": "m1", "p_good": 0.8, "excluded": None}], fallback_chain=["m1"],
        attempts=[{"model": "m1", "status": "ok", "retry": 0}], latency_s=0.5, cost_usd=1e-5 * i,
        extras={"features": [1.5, 2.0], "http_status": 200})


def expected(prefix: str, n: int) -> dict[str, dict]:
    return {f"{prefix}-{i}": from_row(to_row(sample(prefix, i))) for i in range(n)}


def start_writer(url: str, prefix: str, n: int) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", WRITER, url, prefix, str(n)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "written"
    return proc


def kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(30) == -signal.SIGKILL


def stored(url: str) -> list[dict]:
    store = open_store(url)
    try:
        return store.read()
    finally:
        store.close()


def journal_files(url: str) -> dict[Path, bytes]:
    store = open_store(url)
    base = store.journal_base
    store.close()
    return {p: p.read_bytes() for p in sorted(base.parent.glob(base.name + ".*.jsonl"))}


def test_rows_a_killed_process_had_not_committed_are_stored_at_the_next_open(url):
    kill(start_writer(url, "a", 20))
    assert stored(url) == []  # nothing committed: the journal alone holds the rows
    log = open_outcome_log(url)
    try:
        rows = stored(url)
        assert {r["request_id"]: r for r in rows} == expected("a", 20) and len(rows) == 20
        assert log.get("a-7") == expected("a", 20)["a-7"]
        assert journal_files(url) and not any(journal_files(url).values())  # emptied once written
    finally:
        log.close()


def test_a_row_committed_and_still_journaled_is_stored_once(url):
    log = OutcomeLog(open_store(url), linger_s=3600)
    for i in range(5):
        log.write(sample("b", i))
    [(path, journal)] = [(p, data) for p, data in journal_files(url).items() if data]
    assert journal.count(b"\n") == 5 and stored(url) == []  # journaled before anything is committed
    log.close()
    assert len(stored(url)) == 5 and not any(journal_files(url).values())
    path.write_bytes(journal)  # as if killed between the commit and the journal's truncation
    open_outcome_log(url).close()
    rows = stored(url)
    assert len(rows) == 5 and {r["request_id"]: r for r in rows} == expected("b", 5)


def test_a_journal_line_keeps_bytes_and_turns_numpy_numbers_into_the_plain_ones_a_store_takes(tmp_path):
    record = sample("g", 0)
    record.cache_similarity, record.input_tokens = np.float32(0.5), np.int64(7)
    record.candidates = [{"model": "m1", "p_good": np.float32(0.75)}]
    back = journal_record(journal_line(record))
    assert back.embedding == record.embedding and back.prompt == record.prompt and back.stream is False
    assert (back.cache_similarity, back.input_tokens, back.candidates) == (0.5, 7, [{"model": "m1", "p_good": 0.75}])
    assert type(back.cache_similarity) is float and type(back.input_tokens) is int
    store = open_store(f"sqlite:///{tmp_path}/log.sqlite")  # sqlite3 refuses numpy scalars
    try:
        store.write_many([back])
        assert store.get("g-0")["input_tokens"] == 7
    finally:
        store.close()


def test_a_line_cut_short_by_the_kill_is_skipped_with_a_warning(tmp_path, caplog):
    url = f"sqlite:///{tmp_path}/log.sqlite"
    kill(start_writer(url, "c", 4))
    [path] = [p for p, data in journal_files(url).items() if data]
    with path.open("ab") as f:
        f.write(journal_line(sample("c", 4))[:60])  # killed in the middle of the fifth row's line
    with caplog.at_level(logging.WARNING, logger="router.outcome_log"):
        open_outcome_log(url).close()
    assert {r["request_id"]: r for r in stored(url)} == expected("c", 4)
    assert any("no whole row" in r.getMessage() for r in caplog.records)
    assert not any(journal_files(url).values())


def test_each_process_journals_apart_and_a_live_ones_rows_are_left_to_it(tmp_path):
    url = f"sqlite:///{tmp_path}/log.sqlite"
    first, second = start_writer(url, "d", 3), start_writer(url, "e", 2)
    beside = open_outcome_log(url)  # a third process on the same store while both live
    try:
        journals = journal_files(url)
        assert sorted(data.count(b"\n") for data in journals.values() if data) == [2, 3]
        assert stored(url) == []  # it wrote none of the rows the live processes journaled
        kill(first)
        kill(second)
        open_outcome_log(url).close()  # a restart: its own slot and the other one left unheld
        assert {r["request_id"] for r in stored(url)} == {"d-0", "d-1", "d-2", "e-0", "e-1"}
        assert not any(journal_files(url).values())
    finally:
        beside.close()


class GatedStore:
    """A real store whose every commit waits for the test's go-ahead, so a test decides which rows
    arrive while a batch is being committed."""

    def __init__(self, store):
        self.store, self.journal_base = store, store.journal_base
        self.entered, self.go = threading.Semaphore(0), threading.Semaphore(0)

    def write_many(self, records):
        self.entered.release()
        self.go.acquire()
        self.store.write_many(records)

    def __getattr__(self, name):
        return getattr(self.store, name)


def test_rows_committed_leave_the_journal_while_others_keep_arriving(tmp_path):
    url = f"sqlite:///{tmp_path}/log.sqlite"
    store = GatedStore(open_store(url))
    log = OutcomeLog(store, batch_size=10, linger_s=3600)
    rows = iter(sample("f", i) for i in range(70))
    for _ in range(10):
        log.write(next(rows))
    for _ in range(6):
        store.entered.acquire()  # a batch is being committed ...
        for _ in range(10):  # ... while the next one arrives: after no commit is the queue empty
            log.write(next(rows))
        lines = sum(data.count(b"\n") for data in journal_files(url).values())
        # The batch committing and the next are journaled; of those before, one at most.
        assert 20 <= lines <= 30, f"{lines} rows journaled"
        store.go.release()
    store.go.release()  # the last batch
    log.close()
    assert len(stored(url)) == 70 and not any(journal_files(url).values())


CHILD = """
import os, sys
from pathlib import Path
from router.outcome_journal import OutcomeJournal
from router.outcome_log import OutcomeRecord, journal_line
j = OutcomeJournal(Path(sys.argv[1]), lambda lines: None)
other = j.append(journal_line(OutcomeRecord(request_id="other", ts=1.0)))  # file 0
j.drain()  # file 0 has a row pending: appends go to file 1 now
j.append(journal_line(OutcomeRecord(request_id="r", ts=1.0, status="first")))  # file 1
j.done([other])
j.drain()  # file 0 committed: emptied, and current again
j.append(journal_line(OutcomeRecord(request_id="r", ts=1.0, status="second")))  # file 0, after file 1's line
os._exit(9)  # killed before either commits
"""


def test_a_later_line_for_a_request_is_replayed_after_the_earlier_one_in_the_other_file(tmp_path):
    db = tmp_path / "outcomes.sqlite"
    store = open_store(f"sqlite:///{db}")
    base = store.journal_base
    store.close()
    subprocess.run([sys.executable, "-c", CHILD, str(base)], cwd=ROOT, check=False)
    log = open_outcome_log(f"sqlite:///{db}")
    try:
        assert log.get("r")["status"] == "second"
    finally:
        log.close()


class AwayStore:
    """A real store that cannot be reached (SQLite's error for a file locked past its busy timeout,
    as another process's long transaction gives), or that refuses every write with `error`, until
    the test brings it back."""

    def __init__(self, store, error: str = "database is locked"):
        self.store, self.journal_base, self.error = store, store.journal_base, error
        self.back = threading.Event()
        self.tries = 0

    def write_many(self, records):
        self.tries += 1
        if not self.back.is_set():
            raise sqlite3.OperationalError(self.error)
        self.store.write_many(records)

    def __getattr__(self, name):
        return getattr(self.store, name)


def rows_written_while_away(tmp_path, prefix: str, n: int, tries: int,
                            error: str = "database is locked") -> tuple[str, AwayStore, OutcomeLog]:
    """A log over an away store, `n` rows written to it, once the writer has tried `tries` times."""
    url = f"sqlite:///{tmp_path}/log.sqlite"
    store = AwayStore(open_store(url), error)
    log = OutcomeLog(store, linger_s=0.01)
    for i in range(n):
        log.write(sample(prefix, i))
    while store.tries < tries:
        threading.Event().wait(0.01)
    return url, store, log


# A store that refuses every write for its own state (read-only, a full disk; on PostgreSQL also a
# revoked privilege, a read-only standby) had had each row dropped, its journal line too.
@pytest.mark.parametrize("error", ["database is locked", "attempt to write a readonly database", "database or disk is full"])
def test_rows_wait_for_a_store_that_cannot_be_reached_and_are_written_when_it_is_back(tmp_path, monkeypatch, error):
    # They were dropped after three tries (and their journal lines with them): a database away for
    # a minute lost the rows of every request answered meanwhile.
    monkeypatch.setattr("router.outcome_log.UNREACHABLE_PAUSE_S", 0.05)
    url, store, log = rows_written_while_away(tmp_path, "away", 5, tries=10, error=error)
    assert sum(data.count(b"\n") for data in journal_files(url).values()) == 5  # still journaled meanwhile
    store.back.set()
    log.flush()
    log.close()
    assert {r["request_id"] for r in stored(url)} == {f"away-{i}" for i in range(5)}
    assert not any(journal_files(url).values())


def test_rows_a_log_closed_while_its_store_is_away_could_not_write_are_written_at_the_next_open(tmp_path, monkeypatch):
    monkeypatch.setattr("router.outcome_log.UNREACHABLE_PAUSE_S", 0.05)
    url, _, log = rows_written_while_away(tmp_path, "shut", 3, tries=3)
    log.close()  # a shutdown during the outage: nothing to commit to, nothing dropped
    assert stored(url) == []
    open_outcome_log(url).close()  # the next start, the database back
    assert {r["request_id"] for r in stored(url)} == {f"shut-{i}" for i in range(3)}


def test_a_store_that_refuses_for_good_drops_the_row_and_does_not_hold_the_writer(tmp_path, caplog):
    # An OperationalError that waiting does not mend (a table gone) is a refusal: read as the store
    # being away, the writer retried it for ever and a flush never returned.
    store = open_store(f"sqlite:///{tmp_path}/log.sqlite")
    store._conn.execute("ALTER TABLE outcomes RENAME TO outcomes_gone")
    log = OutcomeLog(store, linger_s=0.01)
    log.write(sample("gone", 0))
    done = threading.Thread(target=log.flush, daemon=True)
    done.start()
    done.join(timeout=10)
    assert not done.is_alive(), "the writer is still retrying a refusal"
    assert "dropping record gone-0, which the store refuses" in caplog.text
    log.close()


def test_a_store_refusing_every_write_is_told_from_one_refusing_a_row():
    import psycopg

    from router.store_errors import store_refuses_writes

    # A revoked privilege and a read-only standby after a failover: the rows wait for them.
    assert store_refuses_writes(psycopg.errors.InsufficientPrivilege("permission denied for table outcomes"))
    assert store_refuses_writes(psycopg.errors.ReadOnlySqlTransaction("cannot execute INSERT in a read-only transaction"))
    # A row the store refuses for itself is dropped, the others written.
    assert not store_refuses_writes(psycopg.errors.UniqueViolation("duplicate key"))
    assert not store_refuses_writes(sqlite3.OperationalError("no such table: outcomes"))


def test_a_store_away_is_told_from_a_query_past_a_limit():
    import psycopg

    from router.store_errors import store_unreachable

    # a server restarting, a pool without a free connection, a deadlock: waiting mends them (a 503, rows kept)
    for away in (psycopg.errors.AdminShutdown("terminating connection"), psycopg.OperationalError("server closed the connection"),
                 psycopg.errors.DeadlockDetected("deadlock detected")):
        assert store_unreachable(away), away
    # 1,700 report columns had been answered "the database cannot be reached, retry in 5 s"
    assert not store_unreachable(psycopg.errors.TooManyColumns("target lists can have at most 1664 entries"))
