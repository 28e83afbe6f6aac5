"""Config errors in plain words: an unknown key names the key meant, a wrong shape says what
goes there, and an error blames the key the user wrote (router/config_errors.py)."""
from __future__ import annotations


import pytest

from router.config import ConfigError, load_config, parse_config

from tests.test_config import GOOD, error_of

JARGON = ("frozenset", "tuple", "dictionary", "instance of", "Value error", "Extra inputs", "Field required", "pattern")


def problems(text: str) -> list[str]:
    """The problem lines of an invalid configuration, each without pydantic's words."""
    message = error_of(text)
    assert message.startswith("router.yaml: invalid configuration:\n  "), message
    lines = [line.strip() for line in message.splitlines()[1:]]
    assert not any(word in line for line in lines for word in JARGON), message
    return lines


def problem(text: str) -> str:
    """The one problem line of an invalid configuration."""
    lines = problems(text)
    assert len(lines) == 1, lines
    return lines[0]


@pytest.mark.parametrize("text, expected", [
    (GOOD.replace("    fallbacks: [small]", "    context_windw: 100"),
     "line 8, key models[1].context_windw: unknown key: did you mean context_window?"),
    (GOOD.replace("output_per_1m: 2}", "output_per_1m: 2, cached_input_per_m: 1}"),
     "line 7, key models[1].price.cached_input_per_m: unknown key: did you mean cached_input_per_1m?"),
    (GOOD + "reliabilty: {max_retries: 2}\n", "line 11, key reliabilty: unknown key: did you mean reliability?"),
    (GOOD + "server:\n  prot: 9000\n", "line 12, key server.prot: unknown key: did you mean port?"),
    (GOOD + "learning: {bandit: {enable: true}}\n", "line 11, key learning.bandit.enable: unknown key: did you mean enabled?"),
    # no close spelling: the section's keys (not the loader's own `source`)
    (GOOD + "cache: {colour: blue}\n",
     "line 11, key cache.colour: unknown key; the keys of cache are: enabled, path, ttl_s, max_entries, max_bytes, semantic, "
     "cache_tool_calls, cache_nonzero_temperature, route_ttl_s, verifier, verifier_threshold"),
    (GOOD + "router_settings: {}\n",
     "line 11, key router_settings: unknown key; the keys of the top level are: models, providers, router, reliability, cache, "
     "server, learning"),
    # LiteLLM's names
    (GOOD.replace('base_url: "http://127.0.0.1:9/v1"', 'api_base: "http://127.0.0.1:9/v1"'),
     "line 10, key providers.local.api_base: unknown key: here it is base_url"),
])
def test_an_unknown_key_names_the_key_meant_or_the_keys_there_are(text, expected):
    assert any(line.startswith(expected) for line in problems(text)), problems(text)


def test_governance_is_not_a_section_and_says_where_it_is_set():
    message = problem(GOOD + "governance:\n  master_key_env: OPENCLAW_MASTER_KEY\n")
    assert message.startswith("line 11, key governance: unknown key: there is no governance section")
    assert "environment variables" in message and "OPENCLAW_MASTER_KEY" in message and "docs/GOVERNANCE.md" in message


def test_litellms_api_key_says_to_name_the_variable_and_echoes_no_key():
    message = problem(GOOD.replace('base_url: "http://127.0.0.1:9/v1"}', 'base_url: "http://127.0.0.1:9/v1", api_key: sk-SECRET9}'))
    assert message.startswith("line 10, key providers.local.api_key: unknown key: API keys never go in this file")
    assert "api_key_env: OPENAI_API_KEY" in message and "SECRET9" not in message


@pytest.mark.parametrize("text, expected", [
    (GOOD + "server: [host, port]\n",
     "line 11, key server: should be a mapping of keys (its keys: host, port, "),
    (GOOD.replace("price: {input_per_1m: 1, output_per_1m: 2}", "price: [1, 2]"),
     "line 7, key models[1].price: should be a mapping of keys (its keys: input_per_1m, "),
    (GOOD.replace("    fallbacks: [small]", "    tags: local, fast"),
     "line 8, key models[1].tags: should be a list of strings, e.g. tags: [local]; not text; several go in brackets"),
    # words a space apart, or nothing, are not one name: no silent tag "local fast" or ""
    (GOOD.replace("    fallbacks: [small]", "    tags: local fast"),
     "line 8, key models[1].tags: should be a list of strings, e.g. tags: [local]; not text"),
    (GOOD.replace("    fallbacks: [small]", "    tags: ''"),
     "line 8, key models[1].tags: should be a list of strings, e.g. tags: [local]; not text"),
    (GOOD.replace("    fallbacks: [small]", "    capabilities: {tools: true}"),
     "line 8, key models[1].capabilities: should be a list out of tools, json, vision, files, audio, logprobs, "
     "e.g. capabilities: [tools, json]; not a mapping"),
    (GOOD.replace("    fallbacks: [small]", "    fallbacks: {small: 1}"),
     "line 8, key models[1].fallbacks: should be a list of strings, e.g. fallbacks: [gpt-4o-mini]; not a mapping"),
    (GOOD.replace("providers:\n  local: {", "providers:\n  - {name: local, "),
     "line 9, key providers: should be a mapping of keys, e.g. providers: {openai: {kind: openai, "),
    (GOOD.replace("input_per_1m: 1,", "input_per_1m: cheap,"), "line 7, key models[1].price.input_per_1m: should be a number"),
    (GOOD.replace("    fallbacks: [small]", "    context_window: 128k"),
     "line 8, key models[1].context_window: should be a whole number (digits only, e.g. 128000 for 128k), not text"),
    # a custom check's message, without pydantic's "Value error, "
    (GOOD.replace('base_url: "http://127.0.0.1:9/v1"', 'base_url: "127.0.0.1:9/v1"'),
     "line 10, key providers.local.base_url: '127.0.0.1:9/v1' is not an http:// or https:// URL"),
    (GOOD + "server: {port: yes}\n", "line 11, key server.port: the file says yes, which YAML reads as true, a yes/no value; a whole number goes here"),
])
def test_a_wrong_shape_says_what_goes_there_in_plain_words(text, expected):
    assert problem(text).startswith(expected), problem(text)


def test_a_literal_typo_names_the_value_meant():
    assert problem(GOOD.replace("kind: openai", "kind: opanai")).endswith("(did you mean openai?)")


def test_models_written_as_a_mapping_or_an_empty_entry_say_what_a_model_looks_like():
    as_mapping = "models:\n  small: {provider: local, price: {input_per_1m: 1, output_per_1m: 1}}\n" + GOOD[GOOD.index("providers:"):]
    assert problem(as_mapping).startswith("line 1, key models: should be a list of mappings, e.g. models: [{name: ")
    empty = GOOD.replace("  - name: small\n    provider: local\n    price: {input_per_1m: 0.1, output_per_1m: 0.2}\n", "  -\n")
    empty = empty.replace("fallbacks: [small]", "fallbacks: []")
    assert problem(empty).startswith("line 2, key models[0]: should be a mapping of keys (its keys: name, provider, ")
    assert problem(empty).endswith("not nothing (null)")


def test_a_single_name_where_a_list_of_names_goes_is_a_one_item_list():
    config = parse_config(GOOD.replace("    fallbacks: [small]", "    fallbacks: small\n    tags: local\n    capabilities: tools")
                          + "router: {profiles: {auto: {willingness_to_pay: 1, allowed_models: big, required_tags: local}}}\n",
                          "router.yaml")
    big = config.model("big")
    assert big.fallbacks == ("small",) and big.tags == {"local"} and big.capabilities == {"tools"}
    assert config.router.profiles["auto"].allowed_models == {"big"} and config.router.profiles["auto"].required_tags == {"local"}


def test_a_section_left_empty_is_the_section_as_if_not_written():
    # `cache:` with every key under it commented out is null
    text = GOOD.replace("    fallbacks: [small]", "    fallbacks: [small]\n    limits:\n    tags:\n    # - local")
    text += "cache:\n  # ttl_s: 60\nserver:\nreliability:\nlearning:\n  bandit:\n  shadow:\nrouter:\n  profiles:\n"
    text = text.replace('base_url: "http://127.0.0.1:9/v1"}', 'base_url: "http://127.0.0.1:9/v1", headers: , request: }')
    config = parse_config(text, "router.yaml")
    default = parse_config(GOOD, "router.yaml")
    assert config.cache == default.cache and config.server == default.server and config.learning == default.learning
    assert config.reliability == default.reliability and config.router.profiles == default.router.profiles
    assert config.model("big").limits == default.model("big").limits and config.model("big").tags == frozenset()
    assert config.providers == default.providers
    # a required one left empty is still an error
    assert "key models[1].price: should be a mapping of keys" in error_of(GOOD.replace(
        "    price: {input_per_1m: 1, output_per_1m: 2}", "    price:"))


@pytest.mark.parametrize("written, variable", [
    ("${OPENAI_API_KEY}", "OPENAI_API_KEY"), ("os.environ/OPENAI_API_KEY", "OPENAI_API_KEY"), ("$MY_KEY", "MY_KEY")])
def test_an_api_key_env_in_another_tools_syntax_says_to_write_the_name(written, variable):
    text = GOOD.replace('  local: {kind: openai, base_url: "http://127.0.0.1:9/v1"}',
                        f'  local:\n    kind: openai\n    base_url: "http://127.0.0.1:9/v1"\n    api_key_env: {written}')
    message = problem(text)
    assert message.startswith(f"line 13, key providers.local.api_key_env: write the name of the environment variable "
                              f"that holds the key (api_key_env: {variable})")
    assert "are not expanded" in message


def test_a_base_url_from_a_variable_says_it_is_not_expanded():
    text = GOOD.replace('  local: {kind: openai, base_url: "http://127.0.0.1:9/v1"}',
                        "  local:\n    kind: openai\n    base_url: os.environ/OPENAI_BASE_URL")
    assert problem(text) == ("line 12, key providers.local.base_url: ${...} and os.environ/... are not expanded in this "
                             "file: write the URL itself")
    # inside {...}, YAML reads ${ as a nested mapping: a syntax error, which says why
    flow = error_of(GOOD.replace('"http://127.0.0.1:9/v1"}', "${BASE_URL}}"))
    assert "not valid YAML" in flow and "${...} and os.environ/... are not expanded" in flow
    assert "are not expanded" not in error_of("# ${X} in a comment\nmodels: [unclosed")


def test_a_model_named_like_a_default_profile_blames_the_models_name(tmp_path):
    (tmp_path / "router.yaml").write_text(GOOD.replace("name: big", "name: auto").replace("fallbacks: [small]", "fallbacks: []"))
    with pytest.raises(ConfigError) as exc:
        load_config(tmp_path / "router.yaml")
    message = str(exc.value)
    assert "line 5, key models[1].name: models[1].name 'auto' is the name of a default routing profile" in message
    assert "router.profiles" not in message.split(":", 3)[2]  # the key blamed is the model's name


def test_custom_profiles_without_auto_say_they_replace_the_defaults():
    message = problem(GOOD + "router:\n  profiles:\n    auto:fast: {willingness_to_pay: 0.1}\n")
    assert message.startswith("line 12, key router.profiles: profiles replaces the default profiles (auto, auto:cheap, auto:best) "
                              "and defines no 'auto', the default profile: add an 'auto' profile, or set "
                              "router.default_profile to one of ['auto:fast']"), message
    assert problem(GOOD + "router: {profiles: {}}\n").endswith("add an 'auto' profile")
    # a default_profile the user wrote is still the key blamed
    assert problem(GOOD + "router: {default_profile: fast}\n").startswith("line 11, key router.default_profile:")


def test_a_provider_written_as_a_list_is_a_config_error_not_a_crash():
    message = problem(GOOD.replace("    provider: local\n    price: {input_per_1m: 1,", "    provider: [local]\n    price: {input_per_1m: 1,"))
    assert "models[1].provider: should be text, not a list" in message


def test_several_problems_are_listed_in_the_files_order():
    # The schema's order of fields had put router's line 12 before reliability's line 11.
    lines = problems(GOOD + "reliability: {max_retrys: 1}\nrouter: {artifcat: x}\n")
    assert [line.split(",")[0] for line in lines] == ["line 11", "line 12"], lines
