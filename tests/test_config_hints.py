"""Hints a new user's mistakes call for: a key written at the wrong level says where it belongs, a
misspelt provider name is said with the other errors and the name meant, and a model the router
artifact never saw is told which `router_model` would borrow a known model's predictions."""
from __future__ import annotations

import pytest

from router.config import Config, ConfigError, load_config, parse_config
from router.config_checks import unseen_model_warnings
from router.config_errors import key_places

from tests.test_config import GOOD


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        parse_config(text, "router.yaml")
    message = str(exc.value)
    assert message.startswith("router.yaml: invalid configuration:\n  "), message
    return [line.strip() for line in message.splitlines()[1:]]


@pytest.mark.parametrize("text, expected", [
    (GOOD + "profiles: {auto: {willingness_to_pay: 0.01}}\n",
     "line 11, key profiles: unknown key: it belongs under router: (router.profiles)"),
    (GOOD + "willingness_to_pay: 0.01\n",
     "line 11, key willingness_to_pay: unknown key: it belongs under router.profiles.<name>: "
     "(router.profiles.<name>.willingness_to_pay)"),
    (GOOD + "ttl_s: 3600\n", "line 11, key ttl_s: unknown key: it belongs under cache: (cache.ttl_s)"),
    (GOOD + "db: sqlite:///o.sqlite\n", "line 11, key db: unknown key: it belongs under server: (server.db)"),
    (GOOD + "enabled: true\n",
     "line 11, key enabled: unknown key: it belongs under cache: (cache.enabled) or under learning.bandit: (learning.bandit.enabled)"),
    (GOOD.replace("    provider: local\n    price: {input_per_1m: 0.1",
                  "    provider: local\n    base_url: http://x\n    price: {input_per_1m: 0.1"),
     "line 4, key models[0].base_url: unknown key: it belongs under providers.<name>: (providers.<name>.base_url)"),
    (GOOD + "router: {cache: {ttl_s: 5}}\n", "line 11, key router.cache: unknown key: it belongs at the top level (cache)"),
])
def test_a_key_written_at_the_wrong_level_says_where_it_belongs(text, expected):
    assert problems(text) == [expected]


def test_a_name_valid_elsewhere_beats_a_close_name_here_and_a_misspelling_keeps_did_you_mean():
    # `profiles` is close to the top level's `providers`, but is exactly router's key.
    assert problems(GOOD + "profiles: {}\n") == ["line 11, key profiles: unknown key: it belongs under router: (router.profiles)"]
    assert problems(GOOD + "reliabilty: {max_retries: 2}\n") == ["line 11, key reliabilty: unknown key: did you mean reliability?"]
    assert problems(GOOD + "router: {artifac: models/default}\n") == ["line 11, key router.artifac: unknown key: did you mean artifact?"]


def test_where_keys_belong_is_read_from_the_schema():
    places = key_places(Config)
    assert places["profiles"] == ("router.profiles",)
    assert places["router_model"] == ("models[].router_model",)
    assert places["input_per_1m"] == ("models[].price.input_per_1m",)
    assert places["drop"] == ("providers.<name>.request.drop",)
    assert "source" not in places  # filled in by the loader, never written in the file


def test_a_provider_name_typo_is_said_with_the_schema_errors_and_the_name_meant(tmp_path):
    typo = GOOD.replace("    provider: local\n    price: {input_per_1m: 1", "    provider: locl\n    price: {input_per_1m: 1")
    assert problems(typo) == [
        "line 6, key models[1].provider: models[1].provider 'locl' is not defined under providers: ['local'] (did you mean local?)"]
    (tmp_path / "c.yaml").write_text(typo + "server: {prot: 9000}\n")
    with pytest.raises(ConfigError) as exc:
        load_config(tmp_path / "c.yaml")
    assert str(exc.value) == (f"{tmp_path / 'c.yaml'}: invalid configuration:\n"
                              "  line 6, key models[1].provider: models[1].provider 'locl' is not defined under providers: "
                              "['local'] (did you mean local?)\n"
                              "  line 11, key server.prot: unknown key: did you mean port?")


def test_a_provider_name_nothing_like_any_is_said_without_a_guess_and_once():
    both = GOOD.replace("provider: local", "provider: elsewhere")
    assert problems(both + "server: {prot: 9000}\n") == [
        "line 3, key models[0].provider: models[0].provider 'elsewhere' is not defined under providers: ['local']",
        "line 6, key models[1].provider: models[1].provider 'elsewhere' is not defined under providers: ['local']",
        "line 11, key server.prot: unknown key: did you mean port?",
    ]
    # Valid otherwise: the schema's own check finds the first, the second is added, neither twice.
    assert problems(both) == [
        "line 3, key models[0].provider: models[0].provider 'elsewhere' is not defined under providers: ['local']",
        "line 6, key models[1].provider: models[1].provider 'elsewhere' is not defined under providers: ['local']",
    ]


def test_a_model_the_artifact_never_saw_is_told_which_router_model_to_borrow():
    more = ("  - {name: known, router_model: claude-v2, provider: local, price: {input_per_1m: 1, output_per_1m: 2}}\n"
            "  - {name: m9, provider: local, price: {input_per_1m: 1, output_per_1m: 2}}\nproviders:")
    config = parse_config(GOOD.replace("name: small", "name: claude-2").replace("fallbacks: [small]", "router_model: gpt-4-1106-previw")
                          .replace("providers:", more), "router.yaml")
    known = ["claude-v2", "gpt-4-1106-preview", "mixtral-8x7b-chat"]
    assert unseen_model_warnings(config.models, ["claude-2", "big", "m9"], known) == [
        "models[0].router_model: router.artifact has no training data for claude-2: it gets the unseen-model prior "
        "(P(good) = the training data's mean quality for every prompt, so at a low price it can take most auto traffic); "
        "set router_model: claude-v2 to borrow its predictions",
        "models[1].router_model: router.artifact has no model 'gpt-4-1106-previw': it gets the unseen-model prior "
        "(P(good) = the training data's mean quality for every prompt, so at a low price it can take most auto traffic); "
        "set router_model: gpt-4-1106-preview to borrow its predictions",
        "models[3].router_model: router.artifact has no training data for m9: it gets the unseen-model prior "
        "(P(good) = the training data's mean quality for every prompt, so at a low price it can take most auto traffic); "
        "set router_model to a model the artifact knows to borrow its predictions",
    ]


def test_check_says_the_router_model_to_set_for_the_shipped_artifact():
    from service.check_command import findings

    config = parse_config(GOOD.replace("name: small", "name: claude-2").replace("fallbacks: [small]", "router_model: claude-v2")
                          + "cache: {enabled: false}\n", "router.yaml")
    errors, warnings = findings(config, "127.0.0.1", 0, from_file=False)
    assert errors == []
    assert [w for w in warnings if "unseen-model prior" in w] == [
        "models[0].router_model: router.artifact has no training data for claude-2: it gets the unseen-model prior "
        "(P(good) = the training data's mean quality for every prompt, so at a low price it can take most auto traffic); "
        "set router_model: claude-v2 to borrow its predictions"]
