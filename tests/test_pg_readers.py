"""The read-only jobs (retrain, shadow-report and the readers under them) on PostgreSQL: pointed at a
database or search_path without an outcome log, they say so, as for a SQLite file that is not there,
and create nothing there; an unreachable server is one line within seconds."""
from __future__ import annotations

import time
from argparse import Namespace

import pytest

from router.feedback_log import Feedback, open_feedback_log, read_feedback, read_shadows
from router.outcome_log import OutcomeRecord, open_store, read_outcomes, scan_outcomes


def _tables(pg_url: str) -> list[str]:
    import psycopg

    with psycopg.connect(pg_url, autocommit=True) as conn:
        return sorted(r[0] for r in conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()"))


def test_readers_create_nothing_where_there_is_no_outcome_log_and_read_one_as_before(pg_url, tmp_path):
    from training import retrain, shadow_report

    readers = {"read_feedback": read_feedback, "read_shadows": read_shadows, "read_outcomes": read_outcomes,
               "scan_outcomes": lambda url: list(scan_outcomes(url, ["request_id"])),
               "logged_routers": retrain.logged_routers,
               "shadow-report": lambda url: shadow_report.run(Namespace(db=url, out=str(tmp_path / "r"), seed=0))}
    for name, read in readers.items():
        with pytest.raises(FileNotFoundError) as missing:
            read(pg_url)
        assert "no outcome log there" in str(missing.value), name
        assert "shadow decisions" not in str(missing.value), name
    assert _tables(pg_url) == []  # shadow-report left feedback and shadow_decisions, retrain outcomes

    # Another application's `feedback` table (where a forgotten search_path points) is no outcome log.
    import psycopg

    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE feedback (request_id TEXT, ts DOUBLE PRECISION, body TEXT)")
    with pytest.raises(FileNotFoundError, match="no outcome log there"):
        shadow_report.run(Namespace(db=pg_url, out=str(tmp_path / "r"), seed=0))
    assert _tables(pg_url) == ["feedback"]
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("DROP TABLE feedback")

    # Beside a log, a reader reads it, bringing it up to date as before: here an older gateway's,
    # with fewer columns and no feedback tables yet.
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE outcomes (request_id TEXT PRIMARY KEY, ts DOUBLE PRECISION)")
        conn.execute("INSERT INTO outcomes VALUES ('old', 1.0)")
    assert read_outcomes(pg_url, columns=["request_id", "ts", "extras"]).request_id.tolist() == ["old"]
    assert read_feedback(pg_url) == [] and read_shadows(pg_url) == []
    assert _tables(pg_url) == ["feedback", "outcomes", "shadow_decisions"]  # as the gateway's next start makes them
    store, fb = open_store(pg_url), open_feedback_log(pg_url)
    try:
        store.write_many([OutcomeRecord(request_id="new", ts=2.0)])
        fb.add_feedback(Feedback("new", 1.0))
    finally:
        store.close()
        fb.close()
    assert [tuple(r) for r in scan_outcomes(pg_url, ["request_id"])] == [("old",), ("new",)]
    assert [r["request_id"] for r in read_feedback(pg_url)] == ["new"]


def test_an_unreachable_server_is_one_line_within_seconds(caplog):
    # Nothing listens on port 1: the pool retried for 30 s, logging a warning at each try.
    url = "postgresql://postgres@127.0.0.1:1/test"
    for what, read in (("outcome log", lambda u: list(scan_outcomes(u, ["request_id"]))),
                       ("feedback log", read_feedback)):
        caplog.clear()
        t0 = time.monotonic()
        with caplog.at_level("WARNING"), pytest.raises(ValueError) as refused:
            read(url)
        assert time.monotonic() - t0 < 5
        assert str(refused.value).startswith(f"{what} {url}: cannot connect: ") and "\n" not in str(refused.value)
        assert not [r for r in caplog.records if r.name.startswith("psycopg")]


def test_a_user_who_may_not_read_the_log_is_one_line_not_a_traceback(pg_url, capsys, tmp_path):
    import secrets

    import psycopg

    from service.cli import main

    open_store(pg_url).close()
    role = "r_" + secrets.token_hex(5)
    schema = pg_url.rsplit("%3D", 1)[1]
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN")
        conn.execute(f"GRANT USAGE ON SCHEMA {schema} TO {role}")  # the tables, not their rows
    try:
        url = pg_url.replace("postgres@", f"{role}@", 1)
        for command in (["retrain", "--db", url], ["shadow-report", "--db", url, "--out", str(tmp_path / "report")]):
            assert main(command) == 2
            err = capsys.readouterr().err
            assert "permission denied" in err and "Traceback" not in err, err
    finally:
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute(f"DROP OWNED BY {role}")
            conn.execute(f"DROP ROLE {role}")
