"""`serve` with a PostgreSQL URL it cannot reach: one line naming the setting that gave the URL
(`--db` / server.db for the outcome log, OPENCLAW_GOVERNANCE_DB for a governance store of its
own, the shared server.db otherwise), and none of the pool's retry warnings."""
from __future__ import annotations

import pytest

from service.cli import main
from tests.test_serve_lifecycle import UPSTREAM as CONFIG

UNREACHABLE = "postgresql://gw:secret@127.0.0.1:1/x"  # nothing listens on port 1
SHOWN = "postgresql://gw:***@127.0.0.1:1/x"


@pytest.fixture
def bare_env(monkeypatch, tmp_path):
    for var in ("OPENCLAW_MASTER_KEY", "OPENCLAW_GOVERNANCE_DB"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("OPENCLAW_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "config.yaml").write_text(CONFIG)
    return tmp_path


@pytest.mark.parametrize("governance_db, db, says", [
    (None, UNREACHABLE,
     f"error: governance database (--db / server.db: OPENCLAW_GOVERNANCE_DB is unset, so it shares the outcome log's "
     f"database) {SHOWN}: cannot connect: "),
    ("sqlite:///gov.sqlite", UNREACHABLE, f"error: outcome log (--db / server.db) {SHOWN}: cannot connect: "),
    (UNREACHABLE, "sqlite:///outcomes.sqlite", f"error: governance database (OPENCLAW_GOVERNANCE_DB) {SHOWN}: cannot connect: "),
], ids=["shared", "outcome-log", "governance"])
def test_an_unreachable_database_names_its_setting_in_one_line(bare_env, monkeypatch, capsys, caplog, governance_db, db, says):
    if governance_db:
        monkeypatch.setenv("OPENCLAW_GOVERNANCE_DB", governance_db)
    with caplog.at_level("WARNING"):
        assert main(["serve", "--config", str(bare_env / "config.yaml"), "--db", db, "--port", "0"]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1 and says in errors[0], err
    assert "secret" not in err and "Traceback" not in err
    assert "psycopg" not in err.replace(errors[0], "")
    assert not [r for r in caplog.records if r.name.startswith("psycopg")]
