"""`openclaw-router serve` end to end: a subprocess with no config and no keys serves the
simulated demo catalog to the `openai` SDK and logs outcomes labelled as simulated."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import openai
import pytest

from router.outcome_log import read_outcomes

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def served(tmp_path):
    db = f"sqlite:///{tmp_path}/outcomes.sqlite"
    env = {**os.environ, "OPENCLAW_SIM_TIME_SCALE": "0.01", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    env = {k: v for k, v in env.items() if not k.endswith("_API_KEY")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "serve", "--port", "0", "--db", db],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        line = proc.stdout.readline()
        assert line.startswith("openclaw-router listening on http://"), line + proc.stderr.read()
        url = line.split()[3]
        yield url, db, proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            proc.wait(30)


def test_serve_without_config_answers_from_simulated_models(served):
    url, db, proc = served
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    listed = {m.id: m for m in client.models.list().data}
    assert len([m for m in listed.values() if m.openclaw["type"] == "model"]) == 11
    assert all(m.openclaw["simulated"] for m in listed.values() if m.openclaw["type"] == "model")

    messages = [{"role": "user", "content": "Write a Python function that reverses a string."}]
    raw = client.chat.completions.with_raw_response.create(model="mistral-7b-chat", messages=messages)
    answer = raw.parse()
    assert answer.model == "mistral-7b-chat" and answer.choices[0].message.content.startswith("[simulated mistral-7b-chat]")
    stream = client.chat.completions.create(model="gpt-3.5-turbo-1106", messages=messages, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices).startswith("[simulated gpt-3.5-turbo-1106]")

    # `auto` routes with the shipped artifact (models/default) over the simulated catalog.
    assert httpx.get(f"{url}/healthz").json()["router_loaded"]
    raw = client.chat.completions.with_raw_response.create(model="auto:cheap", messages=messages)
    routed = raw.parse()
    assert routed.model in listed and listed[routed.model].openclaw["simulated"]
    assert raw.headers["x-router-reason"].startswith(f"{routed.model}: best utility")
    # The simulated upstream answers the n choices the router planned for, streamed or not.
    two = client.chat.completions.create(model="auto", messages=messages, n=2)
    assert [c.index for c in two.choices] == [0, 1] and two.choices[0].message.content == two.choices[1].message.content
    chunks = list(client.chat.completions.create(model="auto", messages=messages, n=2, stream=True))
    assert {c.choices[0].index for c in chunks if c.choices} == {0, 1}

    proc.send_signal(signal.SIGINT)
    assert proc.wait(30) == 130  # shut down cleanly on Ctrl-C (the usual 128 + SIGINT exit status)
    log = read_outcomes(db)
    assert {"mistral-7b-chat", "gpt-3.5-turbo-1106", routed.model} <= set(log.answered_model.dropna())
    auto = log[log.profile == "auto:cheap"].iloc[0]
    assert auto.chosen_model == routed.model and len(auto.candidates) == 11 and auto.propensity > 0
    assert log[log.answered_model.notna()].simulated.all()


def test_serving_never_imports_torch(tmp_path):
    # torch + transformers cost seconds to import and ~1 ms per routed request once loaded
    # (measured, docs/BENCHMARKS.md). An empty cache folder, as on a machine's first start:
    # the gateway has both ONNX graphs built by a child process and loads neither library.
    code = (
        "import sys\n"
        "from fastapi.testclient import TestClient\n"
        "from router.config import load_config\n"
        "from service.app import create_app\n"
        "from service.serve_command import default_config_path\n"
        "from service.simulator import attach_simulator\n"
        "config, stop = attach_simulator(load_config(default_config_path()))\n"
        "with TestClient(create_app(config)) as client:\n"
        "    r = client.post('/v1/chat/completions', json={'model': 'auto', 'messages': [{'role': 'user', 'content': 'What is 2 + 2?'}]})\n"
        "    assert r.status_code == 200, r.text\n"
        "stop()\n"
        "print(sorted(m for m in ('torch', 'transformers', 'sentence_transformers') if m in sys.modules))\n"
    )
    cache = tmp_path / "cache"
    env = {**os.environ, "OPENCLAW_SIM_TIME_SCALE": "0.01", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO),
           "OPENCLAW_CACHE_DIR": str(cache)}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"
    # the embedder and the cross-encoder, each in the default variant (fp32: no int8 graph beside them)
    cross, minilm = sorted(p.name for p in cache.glob("*.onnx"))
    assert cross.startswith("cross-encoder-") and cross.endswith("-fp32.onnx") and minilm.startswith("minilm-") and "int8" not in minilm


def test_serve_refuses_a_port_out_of_range_and_says_why_a_bind_fails(capsys):
    import socket

    from service.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["serve", "--port", "70000"])
    assert exit_.value.code == 2 and "not a port" in capsys.readouterr().err
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    try:
        assert main(["serve", "--port", str(busy.getsockname()[1])]) == 2
        assert "cannot listen on 127.0.0.1" in capsys.readouterr().err
    finally:
        busy.close()


def test_serve_names_a_store_it_cannot_open_instead_of_a_traceback(tmp_path, capsys):
    from service.cli import main

    default = (Path(__file__).resolve().parent.parent / "service" / "default_config.yaml").read_text()
    (tmp_path / "notes.txt").write_text("not a database")
    (tmp_path / "cache.yaml").write_text(default + "\ncache: {path: notes.txt}\n")
    (tmp_path / "redis.yaml").write_text(default + '\nserver: {redis_url: "redis://127.0.0.1:1/0"}\n')
    db = ["--db", f"sqlite:///{tmp_path / 'o.sqlite'}", "--port", "0"]
    for argv, says in [
        (["serve", "--db", f"sqlite:///{tmp_path}", "--port", "0"], "cannot open it as an SQLite database"),
        (["serve", "--db", f"sqlite:///{tmp_path / 'notes.txt'}", "--port", "0"], "file is not a database"),
        (["serve", "--config", str(tmp_path / "cache.yaml"), *db], "notes.txt"),
        # started fine, then a 500 on every request and on /healthz
        (["serve", "--config", str(tmp_path / "redis.yaml"), *db], "cannot reach Redis"),
    ]:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert says in err and "Traceback" not in err, err


def test_serve_takes_a_shutdown_deadline_of_zero_or_more_seconds(tmp_path, capsys):
    from service.cli import main

    default = (REPO / "service" / "default_config.yaml").read_text()
    (tmp_path / "c.yaml").write_text(default + "\nserver: {shutdown_grace_s: -1}\n")
    assert main(["serve", "--config", str(tmp_path / "c.yaml"), "--port", "0", "--db", f"sqlite:///{tmp_path / 'o.sqlite'}"]) == 2
    err = capsys.readouterr().err
    assert "key server.shutdown_grace_s: Input should be greater than or equal to 0" in err and "Traceback" not in err


def test_serve_warns_of_a_key_variable_that_is_not_set(tmp_path, capsys, caplog, monkeypatch):
    from service.cli import main

    monkeypatch.delenv("OPENCLAW_TEST_UNSET_KEY", raising=False)
    (tmp_path / "c.yaml").write_text(
        'providers:\n  real: {kind: openai, base_url: "https://api.example.com/v1", api_key_env: OPENCLAW_TEST_UNSET_KEY}\n'
        "models:\n  - {name: gpt-3.5-turbo-1106, provider: real, price: {input_per_1m: 1, output_per_1m: 2}}\n"
        'server: {redis_url: "redis://127.0.0.1:1/0"}\n')  # so that serve stops right after its checks
    with caplog.at_level("WARNING", logger="openclaw.serve"):
        assert main(["serve", "--config", str(tmp_path / "c.yaml"), "--port", "0"]) == 2
    assert "OPENCLAW_TEST_UNSET_KEY is not set" in caplog.text


def test_serve_says_what_it_routes_across_and_refuses_to_call_itself(tmp_path, capsys, caplog, monkeypatch):
    # An OPENAI_BASE_URL exported for the clients, in the shell that starts the gateway: every
    # call would come back to the gateway and hang until its timeout.
    import socket

    from service.cli import main

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("OPENCLAW_TEST_SELF_KEY", "sk-test")
    (tmp_path / "c.yaml").write_text(
        f'providers:\n  loop: {{kind: openai, base_url: "http://localhost:{port}/v1", api_key_env: OPENCLAW_TEST_SELF_KEY}}\n'
        "models:\n  - {name: m1, provider: loop, price: {input_per_1m: 1, output_per_1m: 2}}\n"
        'server: {redis_url: "redis://127.0.0.1:1/0"}\n')  # a serve that got past the check stops at once
    with caplog.at_level("INFO", logger="openclaw.serve"):
        assert main(["serve", "--config", str(tmp_path / "c.yaml"), "--port", str(port), "--db", f"sqlite:///{tmp_path / 'o.sqlite'}"]) == 2
    assert "1 model (m1 via loop)" in caplog.text
    err = capsys.readouterr().err
    assert f"provider loop: base_url http://localhost:{port}/v1 is this gateway's own address" in err and "Traceback" not in err


def test_only_an_address_that_reaches_the_gateway_counts_as_itself():
    from router.config import parse_config
    from service.serve_command import refuse_calling_itself

    def config(url):
        return parse_config(f'providers:\n  p: {{kind: openai, base_url: "{url}"}}\n'
                            "models:\n  - {name: m1, provider: p, price: {input_per_1m: 1, output_per_1m: 2}}\n", "t")

    for host, url in [("0.0.0.0", "http://127.0.0.1:8000/v1"), ("127.0.0.1", "http://localhost:8000/v1"),
                      ("10.0.0.5", "http://10.0.0.5:8000/v1")]:
        with pytest.raises(ValueError, match="this gateway's own address"):
            refuse_calling_itself(config(url), host, 8000)
    # another interface, or another port: another server
    for host, url in [("10.0.0.5", "http://127.0.0.1:8000/v1"), ("0.0.0.0", "http://127.0.0.1:8001/v1"),
                      ("0.0.0.0", "https://api.example.com/v1")]:
        refuse_calling_itself(config(url), host, 8000)


def test_serve_names_a_postgresql_schema_that_does_not_exist(pg_url, capsys):
    from service.cli import main

    missing = pg_url.rsplit("%3D", 1)[0] + "%3Dno_such_schema_here"
    assert main(["serve", "--db", missing, "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert "cannot set up its table" in err and "CREATE SCHEMA it first" in err and "Traceback" not in err


def test_store_urls_in_errors_and_logs_keep_no_password():
    from router.store_errors import redact_url

    assert redact_url("postgresql://app:s3cret@db:5432/prod") == "postgresql://app:***@db:5432/prod"
    assert redact_url("postgresql://app@db/prod?sslmode=require&password=s3cret&x=1") == \
        "postgresql://app@db/prod?sslmode=require&password=***&x=1"
    assert redact_url("sqlite:///var/lib/outcomes.sqlite") == "sqlite:///var/lib/outcomes.sqlite"
    # A libpq key=value string had been printed whole by `retrain --db` and `serve --db`.
    assert redact_url("host=db password=s3cret dbname=prod") == "host=db password=*** dbname=prod"
    assert redact_url("host=db password='s3 cret' dbname=prod") == "host=db password=*** dbname=prod"


def test_a_database_url_the_readers_cannot_use_is_named_without_its_password(capsys):
    from service.cli import main

    for db in ("host=127.0.0.1 password=s3cret dbname=test", "postgresql+psycopg://postgres:s3cret@127.0.0.1:1/test"):
        assert main(["retrain", "--db", db]) == 2
        err = capsys.readouterr().err
        assert "s3cret" not in err and "***" in err and "Traceback" not in err, err


# Checks that pass go on to an unreachable Redis, so a serve that got past them stops at once.
STOPS = 'server: {redis_url: "redis://127.0.0.1:1/0"}\n'
ONE_MODEL = ('providers:\n  p: {kind: openai, base_url: "https://api.example.com/v1"}\n'
             "models:\n  - {name: m1, provider: p, price: {input_per_1m: 1, output_per_1m: 2}}\n")


def test_serve_refuses_a_router_artifact_the_config_names_that_is_not_there(tmp_path, capsys, monkeypatch):
    from service.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "conf").mkdir()
    db = ["--port", "0", "--db", f"sqlite:///{tmp_path / 'o.sqlite'}"]
    (tmp_path / "conf" / "typo.yaml").write_text(ONE_MODEL + "router: {artifact: models/defualt}\n" + STOPS)
    assert main(["serve", "--config", str(tmp_path / "conf" / "typo.yaml"), *db]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()  # one line: the key, the path as written and where it was looked for
    assert line.startswith("openclaw-router serve: error: router.artifact 'models/defualt': no router artifact")
    assert f"at {tmp_path / 'models' / 'defualt'}:" in line
    # Not written, the shipped router: serve goes on (to the unreachable Redis).
    (tmp_path / "conf" / "unset.yaml").write_text(ONE_MODEL + STOPS)
    assert main(["serve", "--config", str(tmp_path / "conf" / "unset.yaml"), *db]) == 2
    err = capsys.readouterr().err
    assert "cannot reach Redis" in err and "router.artifact" not in err


def test_serve_refuses_a_sqlite_url_that_names_a_host_saying_which_key(tmp_path, capsys, monkeypatch):
    from service.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "c.yaml").write_text(ONE_MODEL + 'server: {db: "sqlite://logs/o.sqlite", redis_url: "redis://127.0.0.1:1/0"}\n')
    assert main(["serve", "--config", str(tmp_path / "c.yaml"), "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert "error: server.db 'sqlite://logs/o.sqlite': after sqlite:// comes a host" in err
    assert "sqlite:///logs/o.sqlite (relative to the config file)" in err and f"sqlite:///{tmp_path / 'logs' / 'o.sqlite'}" in err
    assert main(["serve", "--config", str(tmp_path / "c.yaml"), "--port", "0", "--db", "sqlite://o.sqlite"]) == 2
    err = capsys.readouterr().err
    assert "error: --db 'sqlite://o.sqlite'" in err and "sqlite:///o.sqlite (relative to the working directory)" in err
    assert not (tmp_path / "logs").exists() and not (tmp_path / "o.sqlite").exists()  # nothing opened
