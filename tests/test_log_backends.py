"""The SQLite and PostgreSQL stores build their reads from one query text: each must give the
same rows for the same filters (`since`, `limit`, one request's feedback)."""
from __future__ import annotations

import pytest

from router.feedback_log import Feedback, open_feedback_log
from router.outcome_log import OutcomeRecord, open_store


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/log.sqlite"
    return request.getfixturevalue("pg_url")


def ids(rows: list[dict]) -> list[str]:
    return [r["request_id"] for r in rows]


def test_outcome_reads_filter_from_a_time_and_stop_at_a_limit(url):
    store = open_store(url)
    try:
        # written out of time order: reads come back oldest first whatever the insert order
        store.write_many([OutcomeRecord(request_id=f"r{i}", ts=1000.0 + i) for i in (3, 0, 4, 1, 2)])
        assert ids(store.read()) == ["r0", "r1", "r2", "r3", "r4"]
        assert ids(store.read(since=1002.0)) == ["r2", "r3", "r4"]
        assert ids(store.read(limit=2)) == ["r0", "r1"]
        assert ids(store.read(since=1001.0, limit=2)) == ["r1", "r2"]
    finally:
        store.close()


def test_feedback_reads_one_request_or_all_in_the_order_added(url):
    log = open_feedback_log(url)
    try:
        for fb in (Feedback("b", 0.5, ts=3.0), Feedback("a", 0.0, source="implicit", signal="error", ts=2.0),
                   Feedback("a", 1.0, label="good", comment="thanks", ts=1.0)):
            log.add_feedback(fb)
        rows = log.feedback()
        assert [(r["request_id"], r["score"]) for r in rows] == [("b", 0.5), ("a", 0.0), ("a", 1.0)]
        assert [(r["source"], r["signal"], r["label"], r["comment"], r["ts"]) for r in log.feedback("a")] == [
            ("implicit", "error", None, None, 2.0), ("explicit", "score", "good", "thanks", 1.0)]
        assert log.feedback("nobody") == []
    finally:
        log.close()


def test_a_read_of_some_columns_gives_the_full_reads_values_for_them(url):
    import math

    import numpy as np

    from router.outcome_log import read_outcomes, scan_outcomes

    store = open_store(url)
    try:
        store.write_many([
            OutcomeRecord(request_id="full", ts=1.0, prompt="p", embedding=np.arange(4, dtype=np.float32).tobytes(),
                          candidates=[{"model": "m1", "p_good": 0.8}], attempts=[{"model": "m1", "status": "ok"}],
                          latency_s=0.5, cost_usd=0.25, extras={"features": [1.5, 2.0]}, stream=True),
            OutcomeRecord(request_id="bare", ts=2.0, candidates=None, cost_usd=0.0),  # NULL JSON, latency and prompt
        ])
    finally:
        store.close()
    full = read_outcomes(url)
    for columns in (["request_id", "cost_usd", "latency_s"], ["request_id", "candidates", "embedding", "extras", "stream"]):
        some = read_outcomes(url, columns=columns)
        assert list(some.columns) == columns
        for col in columns:  # the same values, JSON decoded alike, a missing number NaN alike
            for a, b in zip(full[col], some[col]):
                assert a == b or (isinstance(a, float) and math.isnan(a) and math.isnan(b)), (col, a, b)
    # Streamed: the same rows, JSON as stored, a WHERE both backends read alike
    assert [tuple(r) for r in scan_outcomes(url, ["request_id", "cost_usd"])] == [("full", 0.25), ("bare", 0.0)]
    [(rid, embedding, candidates)] = scan_outcomes(url, ["request_id", "embedding", "candidates"], where="candidates IS NOT NULL")
    assert (rid, embedding, candidates) == ("full", full["embedding"][0], '[{"model": "m1", "p_good": 0.8}]')
    with pytest.raises(ValueError, match="no column"):
        read_outcomes(url, columns=["request_id", "cost_usd; DROP TABLE outcomes"])


def test_a_store_names_where_an_outcome_log_journals_its_rows(url, tmp_path, monkeypatch):
    from router.outcome_store_pg import journal_base

    monkeypatch.setenv("OPENCLAW_CACHE_DIR", str(tmp_path / "cache"))
    store = open_store(url)
    try:
        base = store.journal_base
    finally:
        store.close()
    if url.startswith("sqlite"):  # beside the database; one in memory dies with its process anyway
        assert base == tmp_path / "log.sqlite.journal"
        assert open_store("sqlite:///:memory:").journal_base is None
    else:  # the database is elsewhere: in the cache folder, named by the database and schema
        assert base.parent == tmp_path / "cache" / "journal"
        assert journal_base(url.replace("postgres@", "postgres:rotated@")) == base
        assert journal_base(url.replace("search_path%3D", "search_path%3Dother_")) != base
        # a restart with another timeout or application name still replays what the killed one journaled
        assert journal_base(f"{url}&connect_timeout=7&application_name=gw2&sslmode=prefer") == base
        assert journal_base(f"{url}&port=5999") != base


def test_a_sqlite_url_with_two_slashes_then_a_name_is_refused_by_every_store(tmp_path, monkeypatch):
    """`sqlite://x` names a host: it was opened as x in the working directory, while sqlite:///x
    in a config is beside the file; each store says which URL to write instead."""
    from router.feedback_log import read_feedback
    from service.governance.db import open_database

    monkeypatch.chdir(tmp_path)
    for what, open_ in [("outcome log URL", open_store), ("outcome log URL", open_feedback_log),
                        ("outcome log URL", read_feedback), ("governance database URL", open_database)]:
        with pytest.raises(ValueError) as refused:
            open_("sqlite://logs/o.sqlite")
        assert str(refused.value).startswith(f"{what} 'sqlite://logs/o.sqlite': after sqlite:// comes a host")
        assert f"write sqlite:///logs/o.sqlite or sqlite:///{tmp_path / 'logs' / 'o.sqlite'}" in str(refused.value)
    assert not (tmp_path / "logs").exists()
    # The forms that were read before are read alike: a bare sqlite:// is no outcome log file, and governance's in-memory database.
    with pytest.raises(ValueError, match="names no file"):
        open_store("sqlite://")
    for url in ("sqlite://", "sqlite://:memory:"):
        open_database(url).close()
    open_store(f"sqlite:///{tmp_path / 'a.sqlite'}").close()
    open_store("sqlite:///b.sqlite").close()  # relative: to the working directory
    assert (tmp_path / "a.sqlite").exists() and (tmp_path / "b.sqlite").exists()
