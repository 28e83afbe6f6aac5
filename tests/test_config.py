"""The YAML config: every mistake is an error that names the key and its line."""
from __future__ import annotations

from pathlib import Path

import pytest

from router.config import ConfigError, load_config, parse_config

GOOD = """\
models:
  - name: small
    provider: local
    price: {input_per_1m: 0.1, output_per_1m: 0.2}
  - name: big
    provider: local
    price: {input_per_1m: 1, output_per_1m: 2}
    fallbacks: [small]
providers:
  local: {kind: openai, base_url: "http://127.0.0.1:9/v1"}
"""


def error_of(text: str) -> str:
    with pytest.raises(ConfigError) as exc:
        parse_config(text, "router.yaml")
    return str(exc.value)


def test_a_valid_file_and_the_shipped_default_parse():
    config = parse_config(GOOD, "router.yaml")
    assert config.model("big").fallbacks == ("small",)
    assert config.router.default_profile == "auto" and config.cache.enabled
    shipped = load_config(Path(__file__).resolve().parent.parent / "service" / "default_config.yaml")
    assert len(shipped.models) == 11


@pytest.mark.parametrize("text, key, line, words", [
    (GOOD.replace("    fallbacks: [small]", "    fallback: [small]"), "models[1].fallback", 8, "unknown key: did you mean fallbacks?"),
    (GOOD.replace("input_per_1m: 1,", "input_per_1m: lots,"), "models[1].price.input_per_1m", 7, "number"),
    (GOOD.replace("input_per_1m: 0.1", "input_per_1m: -1"), "models[0].price.input_per_1m", 4, "greater than or equal to 0"),
    (GOOD.replace("kind: openai", "kind: opanai"), "providers.local.kind", 10, "'openai'"),
    (GOOD + "router: {default_profile: fast}\n", "router.default_profile", 11, "default_profile 'fast' is not one of profiles"),
    (GOOD.replace("  - name: big", "  - name: small"), "models[1].name", 5, "appears twice"),
    (GOOD.replace("  - name: big", "  - name: 'provider:local'"), "models[1].name", 5, "reserved"),
    (GOOD + "reliability: {max_retries: -1}\n", "reliability.max_retries", 11, "greater than or equal to 0"),
    (GOOD + "cache: {verifier_threshold: 1.5}\n", "cache.verifier_threshold", 11, "less than 1"),
    (GOOD + "learning: {bandit: {seed: -2}}\n", "learning.bandit.seed", 11, "greater than or equal to 0"),
    (GOOD + "learning: {bandit: {budget_horizon: 0.5}}\n", "learning.bandit.budget_horizon", 11, "greater than or equal to 1"),
    # YAML's yes/on are booleans, which would have been taken as 1: a port-1 server, a 1-token window
    (GOOD + "server: {port: yes}\n", "server.port", 11, "yes/no value"),
    (GOOD + "reliability: {max_retries: on}\n", "reliability.max_retries", 11, "yes/no value"),
    (GOOD + "cache: {ttl_s: .inf}\n", "cache.ttl_s", 11, "finite number"),
])
def test_a_bad_value_names_its_key_and_line(text, key, line, words):
    message = error_of(text)
    assert message.startswith("router.yaml: invalid configuration")
    assert f"line {line}, key {key}:" in message and words in message


def test_references_between_sections_are_checked():
    assert "model name 'small' appears twice" in error_of(GOOD.replace("name: big", "name: small"))
    assert "models[1].provider 'cloud' is not defined under providers" in error_of(GOOD.replace(
        "    provider: local\n    price: {input_per_1m: 1", "    provider: cloud\n    price: {input_per_1m: 1"))
    assert "models[1].fallbacks names 'tiny'" in error_of(GOOD.replace("fallbacks: [small]", "fallbacks: [tiny]"))
    assert "models[1].fallbacks names 'big'" in error_of(GOOD.replace("fallbacks: [small]", "fallbacks: [big]"))


def test_a_bad_reference_and_a_nested_typo_name_their_own_line():
    provider = error_of(GOOD.replace("    provider: local\n    price: {input_per_1m: 1", "    provider: cloud\n    price: {input_per_1m: 1"))
    assert "line 6, key models[1].provider:" in provider  # was "line 1, key <top>"
    assert "line 8, key models[1].fallbacks:" in error_of(GOOD.replace("fallbacks: [small]", "fallbacks: [tiny]"))
    profile = error_of(GOOD + "router:\n  profiles:\n    auto: {willingness_to_pay: 0.01, allowed_models: [smal]}\n")
    assert "line 13, key router.profiles.auto.allowed_models:" in profile and "'smal'" in profile
    nested = error_of(GOOD + "learning:\n  bandits:\n    enabled: true\n")
    assert "line 12, key learning.bandits:" in nested  # the key's line, not its value's (13)


def test_a_key_written_twice_is_an_error_not_a_silent_override():
    message = error_of(GOOD + "reliability: {max_retries: 0}\nreliability: {max_retries: 3}\n")
    assert message == "router.yaml: line 12, key reliability: written twice in one mapping (first on line 11)"


def test_a_key_that_is_a_list_is_a_clear_error():
    assert "line 11: a key must be a plain name" in error_of(GOOD + "? [x, y]\n: 1\n")


def test_not_yaml_or_not_a_mapping_is_a_clear_error(tmp_path):
    assert "not valid YAML" in error_of("models: [unclosed")
    assert "the top level must be a mapping" in error_of("- just\n- a list\n")
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "missing.yaml")


def test_cache_reads_are_billed_at_the_cached_price():
    from router.config import Price

    price = Price(input_per_1m=3.0, output_per_1m=15.0, cached_input_per_1m=0.3)
    usage = {"prompt_tokens": 100_000, "completion_tokens": 1_000, "prompt_tokens_details": {"cached_tokens": 90_000}}
    assert price.usage_cost(usage) == pytest.approx((10_000 * 3.0 + 90_000 * 0.3 + 1_000 * 15.0) / 1e6)
    # without a cached price, or without cache reads, every prompt token is at the input price
    assert Price(input_per_1m=3.0, output_per_1m=15.0).usage_cost(usage) == pytest.approx((100_000 * 3.0 + 1_000 * 15.0) / 1e6)
    assert price.usage_cost({"prompt_tokens": 10, "completion_tokens": 0}) == pytest.approx(10 * 3.0 / 1e6)


def test_cache_writes_are_billed_at_the_write_price():
    # Anthropic bills a prompt-cache write at 1.25x its input price; its adapter reports the
    # written tokens as prompt_tokens_details.cache_write_tokens.
    from router.config import Price

    price = Price(input_per_1m=3.0, output_per_1m=15.0, cached_input_per_1m=0.3, cache_write_per_1m=3.75)
    usage = {"prompt_tokens": 100_000, "completion_tokens": 1_000,
             "prompt_tokens_details": {"cached_tokens": 60_000, "cache_write_tokens": 30_000}}
    assert price.usage_cost(usage) == pytest.approx((10_000 * 3.0 + 60_000 * 0.3 + 30_000 * 3.75 + 1_000 * 15.0) / 1e6)
    # without a write price, written tokens are at the input price
    plain = Price(input_per_1m=3.0, output_per_1m=15.0, cached_input_per_1m=0.3)
    assert plain.usage_cost(usage) == pytest.approx((40_000 * 3.0 + 60_000 * 0.3 + 1_000 * 15.0) / 1e6)


def test_a_folder_the_gateway_creates_is_relative_to_the_config_file(tmp_path, monkeypatch):
    from router.config import resolve_path

    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "router.yaml").write_text(GOOD)
    config = load_config(tmp_path / "conf" / "router.yaml")
    monkeypatch.chdir(tmp_path)  # started from elsewhere: the same config must find the same cache
    assert resolve_path(config, "cachedir", created=True) == tmp_path / "conf" / "cachedir"
    assert resolve_path(config, "nothing-here") == Path("nothing-here")  # an input that does not exist stays as given


@pytest.mark.parametrize("extra, key, words", [
    # a key pasted where its variable's name goes would be echoed in every logged error
    ('providers:\n  local: {kind: openai, base_url: "http://127.0.0.1:9/v1", api_key_env: "sk-proj-SECRET123"}\n',
     "providers.local.api_key_env", "write the name of the environment variable"),
    ('providers:\n  local: {kind: openai, base_url: "api.openai.com/v1"}\n', "providers.local.base_url", "not an http"),
    ("router: {profiles: {auto: {willingness_to_pay: 0.01}, small: {willingness_to_pay: 1}}}\n",
     "router.profiles.small", "has a model's name"),
    ("router: {profiles: {auto: {willingness_to_pay: 0.01, required_tags: [locl]}}}\n",
     "router.profiles.auto.required_tags", "a tag no model"),
    ("router: {profiles: {auto: {willingness_to_pay: 0.01, allowed_models: []}}}\n",
     "router.profiles.auto.allowed_models", "at least 1 item"),
    ("cache: {route_ttl_s: {auto:cheep: 60}}\n", "cache.route_ttl_s.auto:cheep", "neither a routing profile nor a model"),
    ("cache: {route_ttl_s: {small: -5}}\n", "cache.route_ttl_s.small", "greater than 0"),
])
def test_mistakes_that_used_to_pass_and_break_every_request(extra, key, words):
    text = GOOD.replace('providers:\n  local: {kind: openai, base_url: "http://127.0.0.1:9/v1"}\n', "") if extra.startswith("providers") else GOOD
    msg = error_of(text + extra)
    assert f"key {key}" in msg and words in msg, msg
    assert "SECRET123" not in msg  # nor in the error that refuses it


def test_yaml_merge_keys_are_yaml_not_an_error():
    text = GOOD.replace("  - name: big\n    provider: local\n", "  - <<: &base {provider: local}\n    name: big\n")
    assert parse_config(text, "router.yaml").model("big").provider == "local"
    assert "written twice" in error_of(GOOD.replace("    fallbacks: [small]", "    fallbacks: [small]\n    fallbacks: []"))


def test_paths_in_a_config_file_follow_the_file_and_expand_home(tmp_path, monkeypatch):
    from router.config import resolve_path, resolve_sqlite_url

    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "router.yaml").write_text(GOOD)
    config = load_config(tmp_path / "conf" / "router.yaml")
    monkeypatch.chdir(tmp_path)  # started from elsewhere: the same log, and with it the same keys
    assert resolve_sqlite_url(config, "sqlite:///logs/outcomes.sqlite") == f"sqlite:///{tmp_path / 'conf' / 'logs' / 'outcomes.sqlite'}"
    assert resolve_sqlite_url(config, "sqlite:////abs/o.sqlite") == "sqlite:////abs/o.sqlite"
    assert resolve_sqlite_url(config, "postgresql://db/x") == "postgresql://db/x"
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert resolve_path(config, "~/cache", created=True) == tmp_path / "home" / "cache"


def test_a_config_that_is_not_utf8_is_named(tmp_path):
    (tmp_path / "latin1.yaml").write_bytes("providers: {}\nmodels: []  # café\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin1.yaml: not UTF-8 .*at byte 31, line 2\)"):
        load_config(tmp_path / "latin1.yaml")


def test_a_request_shape_is_only_for_a_passed_through_body():
    base = """
models:
  - {name: a, provider: p, price: {input_per_1m: 1, output_per_1m: 1}}
providers:
  p: {kind: KIND, base_url: "https://example.com", request: {rename: {max_completion_tokens: max_tokens}}}
"""
    assert parse_config(base.replace("KIND", "openai"), "ok.yaml").providers["p"].request.rename == {"max_completion_tokens": "max_tokens"}
    with pytest.raises(ConfigError, match=r"providers\.p.*only an `openai` provider's body"):
        parse_config(base.replace("KIND", "anthropic"), "bad.yaml")
    with pytest.raises(ConfigError, match=r"providers\.p\.request\.developer_role"):
        parse_config(base.replace("KIND", "openai").replace("rename: {max_completion_tokens: max_tokens}", "developer_role: admin"), "bad.yaml")


def test_a_request_shape_keeps_the_clients_cap_and_refuses_renames_that_never_arrive():
    from router.config import RequestShape
    from service.providers.openai_compat import shaped

    shape = RequestShape(rename={"max_completion_tokens": "max_tokens"}, keep_only={"max_tokens"})
    # The openai SDK sends a null beside the real cap: the cap is what reaches the upstream.
    sent = shaped({"model": "m", "messages": [], "stream": False, "max_tokens": None, "max_completion_tokens": 100}, shape)
    assert sent == {"model": "m", "messages": [], "stream": False, "max_tokens": 100}
    for bad in ({"rename": {"model": "engine"}}, {"rename": {"seed": "random_seed"}, "keep_only": ["max_tokens"]},
                {"rename": {"seed": "random_seed"}, "drop": ["random_seed"]}):
        with pytest.raises(ValueError, match="rename"):
            RequestShape(**bad)
