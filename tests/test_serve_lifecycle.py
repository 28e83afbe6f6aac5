"""`openclaw-router serve` as an operator runs it: a start it refuses leaves nothing on disk, a
SIGTERM (docker stop, Kubernetes, systemd) after a graceful shutdown is a clean exit, and its
logs, the app's and uvicorn's, are one format on stderr. Also `shadow-report`'s refusal."""
from __future__ import annotations

import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from service.cli import main

REPO = Path(__file__).resolve().parent.parent
ONE_SIMULATED = """
providers:
  sim: {kind: simulated, base_url: "simulated://"}
models:
  - {name: mistral-7b-chat, provider: sim, price: {input_per_1m: 0.2, output_per_1m: 0.2}, context_window: 32000}
cache: {enabled: false, semantic: false}
"""
UPSTREAM = """
models:
  - {name: m1, provider: up, price: {input_per_1m: 1, output_per_1m: 2}, context_window: 1000}
providers:
  up: {kind: openai, base_url: "http://127.0.0.1:9/v1"}
cache: {enabled: false, semantic: false}
"""
# What the cli's logging writes: every line of serve's stderr, uvicorn's included.
LOG_LINE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) [\w.]+: ")


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.fixture
def bare_env(monkeypatch, tmp_path):
    for var in ("OPENCLAW_MASTER_KEY", "OPENCLAW_GOVERNANCE_DB"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def busy_port():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1)
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


@pytest.mark.parametrize("config, args", [
    (UPSTREAM, ["--host", "0.0.0.0"]),  # no key: refused on a non-loopback address
    (UPSTREAM, ["--port", "{busy}"]),
    (UPSTREAM, ["--port", "{busy}", "--db", "sqlite:///new/folder/outcomes.sqlite"]),
    (UPSTREAM + "server: {redis_url: 'redis://127.0.0.1:1/0'}\n", ["--port", "0"]),  # nothing listens on port 1
    (ONE_SIMULATED.replace("chat, provider", "chat, upstream: no-such-model, provider"), ["--port", "0"]),
], ids=["open-host", "busy-port", "busy-port-db-folder", "redis-unreachable", "unknown-simulated-model"])
def test_a_refused_start_leaves_nothing_on_disk(bare_env, busy_port, capsys, config, args):
    (bare_env / "config.yaml").write_text(config)
    before = _files(bare_env)
    argv = ["serve", "--config", str(bare_env / "config.yaml"), *(a.format(busy=busy_port) for a in args)]
    assert main(argv) == 2
    assert "error:" in capsys.readouterr().err
    assert _files(bare_env) == before


def test_a_refused_demo_start_leaves_nothing_in_the_working_directory(bare_env, busy_port, monkeypatch):
    for var in [v for v in os.environ if v.endswith(("_API_KEY", "_BASE_URL"))]:
        monkeypatch.delenv(var)
    assert main(["serve", "--port", str(busy_port)]) == 2
    assert _files(bare_env) == set()


def test_a_malformed_governance_database_url_is_named_as_that_setting(bare_env, capsys, monkeypatch):
    (bare_env / "config.yaml").write_text(UPSTREAM)
    monkeypatch.setenv("OPENCLAW_GOVERNANCE_DB", "sqlite://gov.db")
    assert main(["serve", "--config", str(bare_env / "config.yaml"), "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert "error: governance database URL 'sqlite://gov.db': after sqlite:// comes a host" in err
    assert "outcome log URL" not in err


@pytest.mark.parametrize("governance_db, says", [
    (None, "governance database config.yaml/outcomes.db: cannot open it as an SQLite database"),
    ("sqlite:///gov.sqlite", "outcome log sqlite:///config.yaml/outcomes.db: cannot open it as an SQLite database"),
], ids=["shared-file", "own-governance-file"])
def test_a_database_under_a_regular_file_is_refused_by_its_store(bare_env, capsys, monkeypatch, governance_db, says):
    (bare_env / "config.yaml").write_text(UPSTREAM)
    if governance_db:
        monkeypatch.setenv("OPENCLAW_GOVERNANCE_DB", governance_db)
    before = _files(bare_env)
    assert main(["serve", "--config", "config.yaml", "--port", "0", "--db", "sqlite:///config.yaml/outcomes.db"]) == 2
    err = capsys.readouterr().err
    assert says in err
    if governance_db is None:  # named as the setting to fix, as a PostgreSQL one is (it had named only the path)
        assert err.rstrip().endswith("(--db / server.db: OPENCLAW_GOVERNANCE_DB is unset, so it shares the outcome log's database)")
    assert _files(bare_env) == before  # gov.sqlite, which the refused start made, included


def test_a_refused_start_removes_the_stores_files_and_no_other_file_named_alike(bare_env, capsys, monkeypatch):
    import service.app

    (bare_env / "config.yaml").write_text(UPSTREAM)
    before = _files(bare_env)
    others = {"outcomes.sqlite.2026-11-27.bak", "outcomes.sqlite-export.csv", "outcomes.sqlite.journal.0.0.jsonl.bak"}
    opened = service.app.open_outcome_log

    def refused_after_opening(url):
        # Another process writes beside the new log while this start opens it, then the start is refused.
        outcome_log = opened(url)
        outcome_log.close()
        made = _files(bare_env) - before
        assert {"outcomes.sqlite", "outcomes.sqlite-wal", "outcomes.sqlite.journal.0.0.jsonl", "outcomes.sqlite.journal.0.1.jsonl"} <= made
        for name in others:
            (bare_env / name).write_text("not the gateway's")
        raise ValueError("refused after opening the outcome log")

    monkeypatch.setattr(service.app, "open_outcome_log", refused_after_opening)
    assert main(["serve", "--config", "config.yaml", "--port", "0", "--db", "sqlite:///outcomes.sqlite"]) == 2
    assert "refused after opening the outcome log" in capsys.readouterr().err
    assert _files(bare_env) == before | others


def test_shadow_report_without_shadow_decisions_makes_no_out_folder(bare_env, capsys):
    from router.feedback_log import open_feedback_log
    from router.outcome_log import open_outcome_log

    open_outcome_log(f"sqlite:///{bare_env}/outcomes.sqlite").close()  # a gateway's log, without shadow decisions
    open_feedback_log(f"sqlite:///{bare_env}/outcomes.sqlite").close()
    before = _files(bare_env)
    assert main(["shadow-report", "--db", f"sqlite:///{bare_env}/outcomes.sqlite", "--out", "reports/shadow"]) == 2
    assert "no shadow decisions" in capsys.readouterr().err
    assert _files(bare_env) == before


def _serve(tmp_path: Path, *args: str) -> tuple[subprocess.Popen, str]:
    (tmp_path / "config.yaml").write_text(ONE_SIMULATED)
    env = {**os.environ, "OPENCLAW_SIM_TIME_SCALE": "0.01", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    env.pop("OPENCLAW_MASTER_KEY", None)
    proc = subprocess.Popen([sys.executable, "-m", "service.cli", "serve", "--config", "config.yaml", "--port", "0", *args],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    if not line.startswith("openclaw-router listening on http://"):
        proc.kill()
        pytest.fail(line + proc.communicate(timeout=30)[1])
    return proc, line.split()[3]


@pytest.fixture
def serve(tmp_path):
    started = []

    def start(*args: str) -> tuple[subprocess.Popen, str]:
        started.append(_serve(tmp_path, *args))
        return started[-1]

    yield start
    for proc, _ in started:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=30)


def _chat(url: str) -> httpx.Response:
    return httpx.post(f"{url}/v1/chat/completions", timeout=60,
                      json={"model": "mistral-7b-chat", "messages": [{"role": "user", "content": "hi"}]})


def test_sigterm_after_a_graceful_shutdown_exits_0(serve):
    proc, url = serve()
    assert httpx.get(f"{url}/healthz", timeout=60).status_code == 200
    assert _chat(url).status_code == 200
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "Application shutdown complete" in err


def test_app_and_uvicorn_log_in_one_format_on_stderr(serve):
    proc, url = serve("--access-log")
    assert _chat(url).status_code == 200
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert out == "", out  # stdout holds the listening line only, which _serve read
    lines = err.splitlines()
    assert [line for line in lines if not LOG_LINE.match(line)] == []
    loggers = {LOG_LINE.match(line).group(0).split()[-1].rstrip(":") for line in lines}
    assert {"openclaw.serve", "uvicorn.error", "uvicorn.access"} <= loggers
    assert any("POST /v1/chat/completions" in line for line in lines)
    assert err.count("Finished server process") == 1  # the gateway's, not the simulator's beside it


def test_a_one_model_demo_says_one_simulated_model(serve):
    proc, _ = serve()
    proc.send_signal(signal.SIGTERM)
    err = proc.communicate(timeout=60)[1]
    assert "demo mode: 1 simulated model (mistral-7b-chat) answered" in err


def test_a_failed_application_start_up_exits_3(tmp_path, monkeypatch):
    # uvicorn's own status for it (sys.exit in its start-up), which the signal handling above keeps.
    # The embedder's folder is a file: loading it fails in the app's start-up, after the listening line.
    (tmp_path / "not-a-folder").write_text("")
    monkeypatch.setenv("OPENCLAW_CACHE_DIR", str(tmp_path / "not-a-folder"))
    proc, _ = _serve(tmp_path)
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == 3, err
    assert "Application startup failed" in err


def test_an_app_refused_after_opening_its_outcome_log_closes_it(tmp_path, monkeypatch):
    import service.app
    from router.config import parse_config

    logs = []
    opened = service.app.open_outcome_log
    monkeypatch.setattr(service.app, "open_outcome_log", lambda url: logs.append(opened(url)) or logs[-1])

    def refused(*args, **kwargs):
        raise ValueError("cache folder unusable")

    monkeypatch.setattr(service.app, "pipeline_hooks", refused)
    config = parse_config(UPSTREAM, str(tmp_path / "config.yaml"))
    config = config.model_copy(update={"server": config.server.model_copy(update={"db": f"sqlite:///{tmp_path / 'o.sqlite'}"})})
    with pytest.raises(ValueError, match="cache folder unusable"):
        service.app.create_app(config, load_artifact=False)
    assert len(logs) == 1 and logs[0]._closed and not logs[0]._thread.is_alive()


def _config_in(tmp_path: Path):
    from router.config import parse_config

    config = parse_config(UPSTREAM, str(tmp_path / "config.yaml"))
    return config.model_copy(update={"server": config.server.model_copy(
        update={"db": f"sqlite:///{tmp_path / 'o.sqlite'}"})})


def test_a_shadow_artifact_that_does_not_load_closes_the_feedback_log_it_followed(tmp_path, monkeypatch):
    import service.app
    import service.hooks.learning_hook as learning_hook

    logs = []
    opened = learning_hook.open_feedback_log
    monkeypatch.setattr(learning_hook, "open_feedback_log", lambda url: logs.append(opened(url)) or logs[-1])
    config = _config_in(tmp_path)
    shadow = config.learning.shadow.model_copy(update={"artifact": str(tmp_path / "no-such-router")})
    config = config.model_copy(update={"learning": config.learning.model_copy(update={"shadow": shadow})})
    with pytest.raises(Exception, match="no-such-router"):
        service.app.create_app(config, load_artifact=False)
    assert len(logs) == 1
    with pytest.raises(sqlite3.ProgrammingError, match="closed"):
        logs[0]._conn.execute("SELECT 1")


def test_an_app_refused_after_opening_its_response_cache_closes_it(tmp_path, monkeypatch):
    import service.app
    from service.hooks.cache_hook import CacheHook

    hooks = []
    opened = CacheHook.from_config.__func__
    monkeypatch.setattr(CacheHook, "from_config", classmethod(lambda cls, c: hooks.append(opened(cls, c)) or hooks[-1]))

    def refused(*args, **kwargs):
        raise ValueError("no provider for that kind")

    monkeypatch.setattr(service.app, "build_gateway", refused)
    config = _config_in(tmp_path)
    config = config.model_copy(update={"cache": config.cache.model_copy(
        update={"enabled": True, "semantic": False, "path": str(tmp_path / "cache")})})
    with pytest.raises(ValueError, match="no provider for that kind"):
        service.app.create_app(config, load_artifact=False)
    assert len(hooks) == 1
    with pytest.raises(sqlite3.ProgrammingError, match="closed"):
        hooks[0].cache._store._db.execute("SELECT 1")
