"""Values `check` used to pass that `serve` refuses, or that fail every request: each is one
error naming the whole key path, exit 2 from `check --config` and `serve --config`."""
from __future__ import annotations

import pytest

from router.config import ConfigError, parse_config
from service.cli import main

FILE = """\
providers:
  sim: {{kind: simulated, base_url: "simulated://"}}
  o: {{kind: openai, base_url: "{url}"{headers}}}
models:
  - {{name: "{name}", upstream: mistral-7b-chat, provider: sim, price: {{input_per_1m: 1, output_per_1m: 2}}}}
  - {{name: b, provider: o, price: {{input_per_1m: 1, output_per_1m: 2}}}}
{extra}"""


def text(url="https://api.example.com/v1", headers="", name="a", extra=""):
    return FILE.format(url=url, headers=headers, name=name, extra=extra)


def error_of(config: str) -> str:
    with pytest.raises(ConfigError) as exc:
        parse_config(config, "router.yaml")
    return str(exc.value)


def test_the_file_these_tests_vary_is_valid():
    config = parse_config(text(headers=', headers: {X-Title: "my app\tv2"}', extra="server: {redis_url: rediss://r:6380/0}\n"))
    assert config.providers["o"].headers == {"X-Title": "my app\tv2"}
    for db in ("sqlite:///o.sqlite", "sqlite://", "postgresql://u@h/db", "postgres://u@h/db"):
        assert parse_config(text(extra=f'server: {{db: "{db}"}}\n')).server.db == db


@pytest.mark.parametrize("extra, expected", [
    ('server: {db: ""}', "line 7, key server.db: must start with sqlite:// or postgresql://"),
    ('server: {db: "hello"}', "line 7, key server.db: must start with sqlite:// or postgresql://"),
    ('server: {redis_url: "hello"}', "line 7, key server.redis_url: must be a redis://, rediss:// or unix:// URL"),
])
def test_urls_serve_refuses_name_their_key(extra, expected):
    assert expected in error_of(text(extra=extra + "\n"))


def test_the_simulators_address_is_only_for_a_simulated_provider():
    assert ("line 3, key providers.o.base_url: simulated:// is the built-in simulator's address, for a provider of kind: "
            "simulated, not 'openai'") in error_of(text(url="simulated://"))


@pytest.mark.parametrize("header, expected", [
    ('"X-Title": "a\\r\\nb"', 'key providers.o.headers.X-Title: holds a line break or another control character'),
    ('"Bad Header": "x"', 'key providers.o.headers."Bad Header": is not a header name'),
])
def test_a_header_no_request_can_carry_names_its_key(header, expected):
    assert expected in error_of(text(headers=f", headers: {{{header}}}"))


@pytest.mark.parametrize("config, expected", [
    (text(name=""), "line 5, key models[0].name: must not be empty"),
    (text(name="  "), "line 5, key models[0].name: must not be empty"),
    (text().replace("  o: {", '  "": {').replace("provider: o", 'provider: ""'), 'key providers."": must not be empty'),
    (text(url="http://"), "line 3, key providers.o.base_url: 'http://' names no host"),
    (text(url="https://api.example.com/v1 "), "line 3, key providers.o.base_url: 'https://api.example.com/v1 ' has spaces"),
])
def test_blank_names_and_urls_without_a_host_are_errors(config, expected):
    assert expected in error_of(config)


def test_a_key_written_twice_is_named_by_its_whole_path():
    doubled = text().replace("input_per_1m: 1, output_per_1m: 2}}\n  - {name: b",
                             "input_per_1m: 1, input_per_1m: 3, output_per_1m: 2}}\n  - {name: b")
    assert "line 5, key models[0].price.input_per_1m: written twice in one mapping (first on line 5)" in error_of(doubled)


def test_a_config_nested_too_deeply_is_one_line():
    assert error_of(text(extra="x: " + "[" * 3000 + "]" * 3000 + "\n")) == "router.yaml: config nested too deeply"


def run_cli(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out + out.err


@pytest.mark.parametrize("command", ["check", "serve"])
def test_an_empty_config_path_is_an_error_not_the_default(capsys, monkeypatch, command):
    # Where the path were taken as no path, the command would run (serve: until stopped).
    monkeypatch.setattr(f"service.{command}_command.run", lambda args: 0)
    code, said = run_cli(capsys, command, "--config", "")
    assert code == 2 and said.strip() == f"openclaw-router {command}: error: --config: empty path"


def test_check_refuses_a_simulated_model_the_simulator_does_not_serve(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text(text(name="a").replace("upstream: mistral-7b-chat, ", "") + "cache: {enabled: false}\n")
    code, said = run_cli(capsys, "check", "--config", str(path))
    assert code == 2 and "error: models[0].upstream: the simulator serves no model 'a'" in said
    assert "serve would not start" in said and "Traceback" not in said
