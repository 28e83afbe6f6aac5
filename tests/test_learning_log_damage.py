"""The jobs that read the outcome log (`retrain`, `shadow-report`) given a database that is not
one, or a log whose rows were edited or damaged by hand: a one-line error naming the request and
the column, exit code 2, nothing written, never a traceback or a verdict computed from them."""
from __future__ import annotations

import shutil
import sqlite3

import httpx
import pytest

from router.feedback_log import latest_rewards
from router.outcome_log import from_row
from service.cli import main
from tests.fake_upstream import FakeUpstream
from tests.gateway_harness import QualityRouter, Running, fake_config


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    """An outcome log of four answered, rated requests."""
    path = tmp_path_factory.mktemp("log") / "log.sqlite"
    with FakeUpstream() as up:
        gw = Running(fake_config(up.base_url, f"sqlite:///{path}"), router=QualityRouter({"m1": 0.9, "m2": 0.6, "m3": 0.5}))
        try:
            for i in range(4):
                r = httpx.post(f"{gw.base_url}/chat/completions", timeout=10,
                               json={"model": "auto", "messages": [{"role": "user", "content": f"Name a prime above {i}0."}]})
                assert r.status_code == 200
                fb = httpx.post(f"{gw.url}/v1/feedback", json={"request_id": r.headers["x-request-id"], "score": 0.75})
                assert fb.status_code == 200
            gw.outcomes(at_least=4)
        finally:
            gw.stop()
    return path


def _tables(path) -> list[str]:
    with sqlite3.connect(path) as conn:
        return sorted(name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'"))


@pytest.mark.parametrize("command", ["retrain", "shadow-report"])
def test_a_database_without_an_outcome_log_is_refused_and_left_as_it_was(tmp_path, capsys, command):
    other = tmp_path / "other.sqlite"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE notes (x)")
    empty = tmp_path / "empty.sqlite"
    empty.touch()
    for db in (other, empty):
        assert main([command, "--db", f"sqlite:///{db}", "--out", str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err
        assert "holds no 'outcomes' table" in err and "Traceback" not in err
    assert _tables(other) == ["notes"] and empty.stat().st_size == 0  # the readers created no table
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("damage, says", [
    ("UPDATE feedback SET score = NULL", "its score None is no number in [0, 1]"),
    ("UPDATE feedback SET score = 5", "its score 5.0 is no number in [0, 1]"),
    ("UPDATE feedback SET score = 'abc'", "its score 'abc' is no number in [0, 1]"),
    ("UPDATE outcomes SET extras = '[1,2'", "its 'extras' column holds no JSON"),
    ("UPDATE outcomes SET propensity = 0", "its propensity 0.0 is no number in (0, 1]"),
    ("UPDATE outcomes SET propensity = 'abc'", "its propensity 'abc' is no number in (0, 1]"),
])
def test_a_damaged_log_is_refused_before_training_naming_the_request(logged, tmp_path, capsys, damage, says):
    db = tmp_path / "damaged.sqlite"
    shutil.copy(logged, db)
    with sqlite3.connect(db) as conn:
        conn.execute(damage)
        ids = [rid for (rid,) in conn.execute("SELECT request_id FROM outcomes")]
    out = tmp_path / "candidate"
    rc = main(["retrain", "--db", f"sqlite:///{db}", "--out", str(out), "--min-requests", "1",
               "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"])
    err = capsys.readouterr().err
    assert rc == 2 and says in err and any(rid in err for rid in ids) and "Traceback" not in err
    assert not out.exists() and not (tmp_path / "mlflow.db").exists()


def test_the_readers_name_what_is_wrong_in_one_row():
    with pytest.raises(ValueError, match=r"request r7: its score nan is no number"):
        latest_rewards([{"request_id": "r7", "score": float("nan"), "source": "explicit"}])
    with pytest.raises(ValueError, match=r"request r7: its score True is no number"):
        latest_rewards([{"request_id": "r7", "score": True, "source": "explicit"}])
    assert latest_rewards([{"request_id": "r7", "score": 1, "source": "explicit"}]) == {"r7": 1.0}
    with pytest.raises(ValueError, match=r"logged request r7: its 'candidates' column holds no JSON"):
        from_row({"request_id": "r7", "candidates": "{not json"})
