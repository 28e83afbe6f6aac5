"""The config file as YAML: a syntax error is one line naming the file, line and column; a yes/no
value where none goes quotes what the file says; top-level `x-` keys hold anchors; `check` warns
only about the keys of providers some model uses (router/config_yaml.py, service/check_command.py)."""
from __future__ import annotations

import pytest

from router.config import ConfigError, load_config, parse_config
from service.cli import main

from tests.test_config import GOOD
from tests.test_config_errors import problem


@pytest.mark.parametrize("text, expected", [
    # a key without its colon: YAML notices on the next line, and says where the key began
    ("models:\n  - name: small\n    provider local\n    price: {input_per_1m: 1, output_per_1m: 1}\n",
     "line 4, column 5: not valid YAML: could not find expected ':' (while scanning a simple key at line 3, column 5)"),
    # a line indented out of step
    ("models:\n  - name: small\n    provider: local\n   price: {input_per_1m: 1, output_per_1m: 1}\n",
     "line 4, column 4: not valid YAML: expected <block end>, but found '<block mapping start>' "
     "(while parsing a block collection at line 2, column 3)"),
    # a quote never closed, at the end of the file and before another quote
    ('models:\n  - name: "small\n    provider: local\n',
     "line 4, column 1: not valid YAML: found unexpected end of stream (while scanning a quoted scalar at line 2, column 11); "
     "the quote on line 2 is not closed on that line"),
    ('models:\n  - name: "small\n    provider: local\nproviders:\n  local: {kind: openai, base_url: "http://127.0.0.1:9/v1"}\n',
     "line 5, column 36: not valid YAML: expected <block end>, but found '<scalar>' (while parsing a block mapping at line 2, "
     "column 5); the quote on line 2 is not closed on that line"),
    ("models: []\nserver:\n  host: a: b\n", "line 3, column 10: not valid YAML: mapping values are not allowed here"),
    ("models: []\nserver:\n\tport: 1\n", "line 3, column 1: not valid YAML: found character '\\t' that cannot start any token"),
    ("models: [\x07]\n", "line 1, column 10: not valid YAML: special characters are not allowed (character #x0007)"),
])
def test_a_yaml_syntax_error_is_one_line_naming_the_file_line_and_column(tmp_path, text, expected):
    path = tmp_path / "config.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    assert str(exc.value) == f"{path} {expected}"


@pytest.mark.parametrize("command", ["check", "serve"])
def test_check_and_serve_print_a_yaml_syntax_error_as_one_line(tmp_path, capsys, command):
    path = tmp_path / "config.yaml"
    path.write_text(GOOD + "server:\n  host: a: b\n")
    assert main([command, "--config", str(path)]) == 2
    out = capsys.readouterr()
    assert out.err == f"openclaw-router {command}: error: {path} line 12, column 10: not valid YAML: mapping values are not allowed here\n"


@pytest.mark.parametrize("text, expected", [
    (GOOD.replace("  - name: big", "  - name: yes"),
     'line 5, key models[1].name: the file says yes, which YAML reads as true, a yes/no value; text goes here: '
     'write "yes" in quotes if you mean the word'),
    (GOOD + "server: {port: on}\n",
     "line 11, key server.port: the file says on, which YAML reads as true, a yes/no value; a whole number goes here"),
    (GOOD + "server: {port: true}\n", "line 11, key server.port: the file says true, a yes/no value; a whole number goes here"),
    (GOOD.replace("kind: openai", "kind: Yes"),
     "line 10, key providers.local.kind: the file says Yes, which YAML reads as true, a yes/no value; "
     "one of openai, anthropic, gemini, simulated goes here"),
    (GOOD.replace("    fallbacks: [small]", "    fallbacks: no"),
     'line 8, key models[1].fallbacks: the file says no, which YAML reads as false, a yes/no value; a name or a list of names '
     'goes here: write "no" in quotes if you mean the word'),
    (GOOD.replace("    fallbacks: [small]", "    fallbacks: []\n    capabilities: yes"),
     "line 9, key models[1].capabilities: the file says yes, which YAML reads as true, a yes/no value; "
     "a list out of tools, json, vision, files, audio, logprobs goes here"),
    (GOOD + "cache: off\n",
     "line 11, key cache: the file says off, which YAML reads as false, a yes/no value; a mapping of keys goes here "
     "(to turn it off: cache: {enabled: false})"),
    (GOOD + "router: {profiles: no}\n",
     "line 11, key router.profiles: the file says no, which YAML reads as false, a yes/no value; a mapping goes here"),
    # inside a mapping: once taken as a 1-second TTL
    (GOOD + "cache: {route_ttl_s: {auto: yes}}\n",
     "line 11, key cache.route_ttl_s.auto: the file says yes, which YAML reads as true, a yes/no value; a number of seconds goes here"),
    # merged in from an anchor: still the word the file wrote
    ("x-defaults: &defaults {timeout_s: off}\n" + GOOD.replace('base_url: "http://127.0.0.1:9/v1"}', 'base_url: "http://127.0.0.1:9/v1", <<: *defaults}'),
     "line 11, key providers.local.timeout_s: the file says off, which YAML reads as false, a yes/no value; a number goes here"),
])
def test_a_yes_no_value_where_none_goes_says_what_the_file_says_and_what_goes_there(text, expected):
    assert problem(text) == expected


def test_a_key_yaml_reads_as_yes_no_or_a_number_names_what_the_file_says_on_its_line():
    with pytest.raises(ConfigError) as exc:
        parse_config(GOOD + "on: 1\n", "router.yaml")
    assert str(exc.value) == 'router.yaml: line 11, key on: YAML reads on as a yes/no value, not a name: write it in quotes, "on"'
    with pytest.raises(ConfigError) as exc:
        parse_config(GOOD.replace("  local: {", "  2: {"), "router.yaml")
    assert str(exc.value) == 'router.yaml: line 10, key 2: YAML reads 2 as a number, not a name: write it in quotes, "2"'


def test_a_provider_kind_written_as_a_list_is_a_config_error_not_a_crash():
    assert problem(GOOD.replace("kind: openai", "kind: [openai]")).startswith("line 10, key providers.local.kind: ")


ANCHORED = """\
x-provider: &provider {kind: openai, timeout_s: 30, headers: {X-Team: routing}}
x-price: &price {input_per_1m: 1, output_per_1m: 2}
x-notes: just a comment the schema ignores
providers:
  a: {<<: *provider, base_url: "http://127.0.0.1:9/v1"}
  b:
    <<: *provider
    base_url: "http://127.0.0.1:10/v1"
    timeout_s: 5
models:
  - {name: m1, provider: a, price: *price}
  - name: m2
    provider: b
    price: {<<: *price, output_per_1m: 3}
  - {name: m3, provider: b, price: *price, <<: [{context_window: 1000}, {ttft_s: 1}]}
"""


def test_top_level_x_keys_hold_anchors_that_merge_keys_reuse():
    config = parse_config(ANCHORED, "router.yaml")
    assert config.providers["a"].timeout_s == 30 and config.providers["b"].timeout_s == 5  # a key written beside `<<:` wins
    assert config.providers["b"].headers == {"X-Team": "routing"} and config.providers["b"].kind == "openai"
    assert config.model("m1").price.output_per_1m == 2 and config.model("m2").price.output_per_1m == 3
    # a list of mappings merges them all (which one wins a key they share differs between PyYAML releases)
    assert config.model("m3").context_window == 1000 and config.model("m3").ttft_s == 1
    assert "x-provider" not in config.model_dump()
    # any other unknown top-level key is still refused, naming it
    for key in ("common", "y-common", "X-common", "_x-common"):
        assert problem(ANCHORED.replace("x-notes:", f"{key}:")).startswith(f"line 3, key {key}: unknown key")


CHECKED = """\
providers:
  used: {{kind: openai, base_url: "https://api.example.com/v1", api_key_env: OPENCLAW_TEST_USED_KEY}}
  spare: {{kind: openai, base_url: "https://spare.example.com/v1", api_key_env: OPENCLAW_TEST_SPARE_KEY}}
models:
  - {{name: m1, provider: used, router_model: gpt-3.5-turbo-1106, price: {{input_per_1m: 1, output_per_1m: 2}}}}
server: {{port: 8123}}
cache: {{enabled: false}}
"""


def test_check_warns_only_about_the_keys_of_providers_some_model_uses(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("OPENCLAW_TEST_SPARE_KEY", raising=False)
    monkeypatch.setenv("OPENCLAW_TEST_USED_KEY", "sk-test")
    (tmp_path / "c.yaml").write_text(CHECKED.format())
    code = main(["check", "--config", str(tmp_path / "c.yaml"), "--strict"])
    text = capsys.readouterr().out
    assert "OPENCLAW_TEST_SPARE_KEY" not in text and "note: providers.spare: no model uses it\n" in text
    assert ": 1 model on 1 provider (m1 via used)" in text  # the one its models use; the spare has the note
    assert code == 0 and "warning" not in text  # a note, which --strict does not fail on
    monkeypatch.delenv("OPENCLAW_TEST_USED_KEY")
    main(["check", "--config", str(tmp_path / "c.yaml")])
    text = capsys.readouterr().out
    assert "warning: providers.used.api_key_env: OPENCLAW_TEST_USED_KEY is not set" in text
    assert "OPENCLAW_TEST_SPARE_KEY" not in text


def test_serve_warns_only_about_the_keys_of_providers_some_model_uses(monkeypatch):
    from service.serve_command import key_warnings

    monkeypatch.delenv("OPENCLAW_TEST_SPARE_KEY", raising=False)
    monkeypatch.delenv("OPENCLAW_TEST_USED_KEY", raising=False)
    warnings = key_warnings(parse_config(CHECKED.format(), "c.yaml"))
    assert warnings == ["providers.used.api_key_env: OPENCLAW_TEST_USED_KEY is not set: calls to its models fail until it is"]


def _shape(node):
    """A composed YAML tree as plain data, each node with where it was written (libyaml writes a
    plain scalar's style as '' where PyYAML writes None: the same thing)."""
    import yaml

    where = (type(node).__name__, node.tag, node.start_mark.line, node.start_mark.column)
    if isinstance(node, yaml.ScalarNode):
        return (*where, node.value)
    if isinstance(node, yaml.SequenceNode):
        return (*where, [_shape(n) for n in node.value])
    return (*where, [(_shape(k), _shape(v)) for k, v in node.value])


MERGES = """x-defaults: &defaults {timeout_s: 5, headers: {x-a: "1"}}
models:
  - {name: small, provider: local, price: {input_per_1m: 0.1, output_per_1m: 0.2}}
providers:
  local: {kind: openai, base_url: "http://127.0.0.1:9/v1", <<: *defaults}
  other:
    <<: *defaults
    kind: openai
    base_url: http://127.0.0.1:8/v1
"""


@pytest.mark.parametrize("name", ["service/default_config.yaml", "service/presets.yaml", "merges"])
def test_libyaml_reads_the_same_tree_and_data_as_pyyaml(name):
    from pathlib import Path

    from router import config_yaml

    assert config_yaml.CParser is not None, "PyYAML here is built with libyaml"
    text = MERGES if name == "merges" else (Path(__file__).parents[1] / name).read_text()
    fast_tree, fast_data = config_yaml._read(config_yaml._FastLoader, text)
    tree, data = config_yaml._read(config_yaml._Loader, text)
    assert _shape(fast_tree) == _shape(tree)
    assert fast_data == data
    if name == "merges":  # the tree still says where the merged keys were written, after the data was built
        assert [k.value for k, _ in fast_tree.value[2][1].value[0][1].value][-1] == "<<"


def test_a_config_nested_a_hundred_thousand_deep_is_an_error_not_a_crash(tmp_path):
    import subprocess
    import sys

    # libyaml's own composer recurses in C and kills the process at this depth.
    path = tmp_path / "deep.yaml"
    path.write_text("models: " + "[" * 100_000 + "]" * 100_000 + "\n")
    proc = subprocess.run([sys.executable, "-c", "import sys\nfrom router.config import load_config\n"
                           f"try:\n    load_config({str(path)!r})\nexcept Exception as exc:\n    sys.exit(str(exc))"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.strip().endswith("deep.yaml: config nested too deeply")
