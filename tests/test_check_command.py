"""`openclaw-router check`: what serve would refuse at start is an error (exit 2), what would fail
requests later a warning (exit 0, or 2 with --strict), each naming its key; nothing is started."""
from __future__ import annotations

from service.cli import main

CONFIG = """
providers:
  p: {{kind: openai, base_url: "{url}", api_key_env: OPENCLAW_TEST_CHECK_KEY}}
models:
  - {{name: m1, provider: p, price: {{input_per_1m: 1, output_per_1m: 2}}}}
router: {{artifact: {artifact}}}
server: {server}
cache: {{enabled: false}}
{extra}"""


def check(tmp_path, capsys, *flags, url="https://api.example.com/v1", artifact="models/default", server="{port: 8123}", extra=""):
    (tmp_path / "c.yaml").write_text(CONFIG.format(url=url, artifact=artifact, server=server, extra=extra))
    code = main(["check", "--config", str(tmp_path / "c.yaml"), *flags])
    out = capsys.readouterr()
    return code, out.out + out.err


def test_a_config_serve_would_start_with_passes_and_its_warnings_are_said(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("OPENCLAW_TEST_CHECK_KEY", "sk-test")
    code, text = check(tmp_path, capsys)
    assert code == 0 and "1 model on 1 provider (m1 via p)" in text and "serve would start" in text
    assert "no training data for m1" in text  # m1 is no RouterBench model: the unseen-model prior
    monkeypatch.delenv("OPENCLAW_TEST_CHECK_KEY")
    code, text = check(tmp_path, capsys)
    assert code == 0 and "warning: providers.p.api_key_env: OPENCLAW_TEST_CHECK_KEY is not set" in text
    assert check(tmp_path, capsys, "--strict")[0] == 2


def test_a_router_artifact_the_file_names_must_be_there_the_default_need_not(tmp_path, capsys, monkeypatch):
    from router.config import parse_config
    from service.check_command import findings

    monkeypatch.setenv("OPENCLAW_TEST_CHECK_KEY", "sk-test")
    monkeypatch.chdir(tmp_path)
    code, text = check(tmp_path, capsys, artifact="models/defualt")
    assert code == 2 and "serve would not start" in text
    assert f"error: router.artifact 'models/defualt': no router artifact (manifest.json) at {tmp_path / 'models' / 'defualt'}" in text
    # The presets' and the demo's router (models/default, which a wheel lacks) only warns where it is missing.
    config = parse_config(CONFIG.format(url="https://api.example.com/v1", artifact="models/defualt", server="{}", extra=""), "t")
    errors, warnings = findings(config, "127.0.0.1", 0, from_file=False)
    assert errors == [] and any("auto answers 503 router_unavailable" in w for w in warnings)


def test_a_sqlite_url_that_names_a_host_is_an_error_naming_server_db(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("OPENCLAW_TEST_CHECK_KEY", "sk-test")
    code, text = check(tmp_path, capsys, server='{db: "sqlite://o.sqlite"}')
    assert code == 2 and "error: server.db 'sqlite://o.sqlite': after sqlite:// comes a host" in text
    assert "sqlite:///o.sqlite (relative to the config file)" in text


def test_what_serve_would_refuse_is_an_error_naming_its_key(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("OPENCLAW_TEST_CHECK_KEY", "sk-te\nst")  # serve starts; calls to p's models fail
    monkeypatch.setenv("OPENCLAW_ALERT_THRESHOLDS", "80")
    code, text = check(tmp_path, capsys, url="http://127.0.0.1:8123/v1",
                       extra=f"learning: {{shadow: {{artifact: {tmp_path / 'no_candidate'}}}}}\n")
    assert code == 2 and "serve would not start" in text
    assert "warning: providers.p.api_key_env: OPENCLAW_TEST_CHECK_KEY holds a line break" in text
    assert "error: provider p: base_url http://127.0.0.1:8123/v1 is this gateway's own address" in text
    assert "error: learning.shadow.artifact" in text and "no_candidate" in text
    assert "error: OPENCLAW_ALERT_THRESHOLDS='80'" in text


def test_an_open_gateway_on_a_public_address_is_said(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("OPENCLAW_MASTER_KEY", raising=False)
    monkeypatch.setenv("OPENCLAW_TEST_CHECK_KEY", "sk-test")
    code, text = check(tmp_path, capsys, "--host", "0.0.0.0")
    assert code == 0 and "warning: server.host 0.0.0.0: serve refuses to listen there without a key" in text


def test_a_schema_error_names_the_key_and_line(tmp_path, capsys):
    code, text = check(tmp_path, capsys, extra="learning: {bandit: {enabeld: true}}\n")
    assert code == 2 and "line 9, key learning.bandit.enabeld: unknown key: did you mean enabled?" in text
    assert "Traceback" not in text


def test_an_address_serve_cannot_listen_on_is_an_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("OPENCLAW_TEST_CHECK_KEY", "sk-test")
    code, text = check(tmp_path, capsys, "--host", "999.1.1.1")
    assert code == 2 and "error: server.host 999.1.1.1: serve cannot listen there" in text


def test_serve_names_the_key_check_names_when_it_refuses_to_start(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("OPENCLAW_TEST_CHECK_KEY", "sk-test")
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder")
    for extra, key in ((f"learning: {{shadow: {{artifact: {tmp_path / 'no_candidate'}}}}}\n", "learning.shadow.artifact"),
                       (f"cache: {{enabled: true, verifier: {tmp_path / 'no_verifier'}}}\n", "cache.verifier"),
                       (f"cache: {{enabled: true, path: {a_file}}}\n", "cache.path")):
        config = CONFIG.format(url="https://api.example.com/v1", artifact="models/default", server="{port: 0}", extra="")
        (tmp_path / "c.yaml").write_text(config.replace("cache: {enabled: false}\n", "") + extra)
        code = main(["serve", "--config", str(tmp_path / "c.yaml"), "--port", "0", "--db", f"sqlite:///{tmp_path / 'o.sqlite'}"])
        err = capsys.readouterr().err
        assert code == 2 and f"error: {key}" in err and "Traceback" not in err, (key, err)
