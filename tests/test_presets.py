"""Real-provider presets: `serve` without --config builds its catalog from the provider keys in the
environment, keeps the key out of every log and error, and answers through the keyed providers
(here a fake upstream standing in for OpenAI and Mistral through the *_BASE_URL overrides)."""
from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import openai
import pytest

from router.config import ConfigError
from router.outcome_log import read_outcomes
from service.presets import build_preset_config, load_presets, presets_path
from service.simulated_answers import MODELS as ROUTERBENCH_MODELS
from tests.fake_upstream import FakeUpstream, error

REPO = Path(__file__).resolve().parent.parent

PROVIDER_BY_VAR = {
    "OPENAI_API_KEY": "openai", "ANTHROPIC_API_KEY": "anthropic", "GEMINI_API_KEY": "gemini",
    "GOOGLE_API_KEY": "gemini", "MISTRAL_API_KEY": "mistral", "GROQ_API_KEY": "groq",
    "DEEPSEEK_API_KEY": "deepseek", "TOGETHER_API_KEY": "together", "OPENROUTER_API_KEY": "openrouter",
    "OLLAMA_BASE_URL": "ollama",
}
ALL_KEYS = {var: ("http://127.0.0.1:11434" if var == "OLLAMA_BASE_URL" else f"sk-test-{var.lower()}-0123456789")
            for var in PROVIDER_BY_VAR}


def test_shipped_presets_cover_every_provider_and_map_to_routerbench_models():
    presets = load_presets(presets_path())
    assert set(presets.providers) == set(PROVIDER_BY_VAR.values())
    config = build_preset_config(ALL_KEYS)
    assert config is not None and set(config.providers) == set(PROVIDER_BY_VAR.values())
    for spec in config.models:
        assert spec.predictor_name in ROUTERBENCH_MODELS, f"{spec.name} proxies an unknown router model {spec.predictor_name}"
        local = "local" in spec.tags
        assert local == (spec.provider == "ollama")
        assert (spec.price.input_per_1m == 0) == local and (spec.price.output_per_1m == 0) == local
        assert spec.max_output_tokens <= spec.context_window
    # Keys are referenced by variable name only.
    dumped = config.model_dump_json()
    assert not any(value in dumped for var, value in ALL_KEYS.items() if var != "OLLAMA_BASE_URL")


def test_no_key_blank_key_or_demo_flag_serves_the_demo(caplog):
    caplog.set_level(logging.INFO, "openclaw.presets")
    assert build_preset_config({}) is None
    assert "serving the simulated demo" in caplog.text
    assert build_preset_config({"OPENAI_API_KEY": "   "}) is None
    caplog.clear()
    assert build_preset_config({"OPENAI_API_KEY": "sk-test-demo-secret", "OPENCLAW_DEMO": "1"}) is None
    assert "OPENCLAW_DEMO" in caplog.text and "openai" in caplog.text and "sk-test-demo-secret" not in caplog.text
    assert build_preset_config({"OPENAI_API_KEY": "sk-test-demo-secret", "OPENCLAW_DEMO": "0"}) is not None


@pytest.mark.parametrize("var", sorted(PROVIDER_BY_VAR))
def test_only_the_keyed_provider_appears(var, caplog):
    caplog.set_level(logging.INFO, "openclaw.presets")
    config = build_preset_config({var: ALL_KEYS[var], "UNRELATED_API_KEY": "sk-other"})
    provider = PROVIDER_BY_VAR[var]
    assert config is not None and set(config.providers) == {provider}
    assert {m.provider for m in config.models} == {provider} and config.models
    spec = config.providers[provider]
    assert spec.api_key_env == (None if var == "OLLAMA_BASE_URL" else var)
    assert f"provider {provider} enabled by {var}" in caplog.text
    assert var == "OLLAMA_BASE_URL" or ALL_KEYS[var] not in caplog.text


def test_gemini_key_wins_over_google_key():
    config = build_preset_config({"GOOGLE_API_KEY": "g-key-1", "GEMINI_API_KEY": "g-key-2"})
    assert config.providers["gemini"].api_key_env == "GEMINI_API_KEY"


def test_base_url_overrides_and_model_selection():
    env = {"OPENAI_API_KEY": "sk-a", "OPENAI_BASE_URL": "http://127.0.0.1:9/v1",
           "OPENCLAW_OPENAI_BASE_URL": "https://proxy.example/v1/", "OPENCLAW_OPENAI_MODELS": "gpt-4o-mini, gpt-4.1"}
    config = build_preset_config(env)
    assert config.providers["openai"].base_url == "https://proxy.example/v1"
    assert config.model_names == ["gpt-4o-mini", "gpt-4.1"]
    with pytest.raises(ConfigError, match="OPENCLAW_OPENAI_MODELS.*'gpt-99'"):
        build_preset_config({**env, "OPENCLAW_OPENAI_MODELS": "gpt-99"})
    with pytest.raises(ConfigError, match="OPENAI_BASE_URL"):
        build_preset_config({"OPENAI_API_KEY": "sk-a", "OPENAI_BASE_URL": "api.openai.com"})


def test_ollama_models_context_and_url():
    config = build_preset_config({"OLLAMA_BASE_URL": "http://10.0.0.5:11434/", "OPENCLAW_OLLAMA_MODELS": "qwen2.5:7b,phi4:14b",
                                  "OLLAMA_CONTEXT_LENGTH": "16384"})
    assert config.providers["ollama"].base_url == "http://10.0.0.5:11434/v1"
    assert config.providers["ollama"].api_key_env is None
    qwen, phi = config.models
    assert (qwen.name, qwen.upstream_name, qwen.context_window) == ("ollama/qwen2.5:7b", "qwen2.5:7b", 16384)
    # A model without a preset gets the local template: free, tagged local, a small-model proxy.
    assert (phi.name, phi.upstream_name, phi.context_window) == ("ollama/phi4:14b", "phi4:14b", 16384)
    assert "local" in phi.tags and phi.price.input_per_1m == 0 and phi.predictor_name in ROUTERBENCH_MODELS
    default = build_preset_config({"OLLAMA_BASE_URL": "http://127.0.0.1:11434"})
    assert default.model_names == ["ollama/llama3.1:8b"] and default.models[0].context_window == 4096
    for bad in ("lots", "0", "-4096"):  # 0 and below were a 1-token window that refused every request
        with pytest.raises(ConfigError, match="OLLAMA_CONTEXT_LENGTH"):
            build_preset_config({"OLLAMA_BASE_URL": "http://127.0.0.1:11434", "OLLAMA_CONTEXT_LENGTH": bad})


def test_presets_file_errors_name_the_key(tmp_path):
    text = presets_path().read_text().replace("router_model: gpt-4-1106-preview, price:", "router_model: gpt-4-1106-preview, prise:", 1)
    bad = tmp_path / "presets.yaml"
    bad.write_text(text)
    line = next(i for i, text in enumerate(bad.read_text().splitlines(), 1) if "prise:" in text)
    with pytest.raises(ConfigError) as invalid:
        build_preset_config({"OPENCLAW_PRESETS": str(bad), "ANTHROPIC_API_KEY": "sk-b"})
    # the main config's wording: the line, the key, the key meant
    assert f"line {line}, key providers.openai.models[0].prise: unknown key: did you mean price?" in str(invalid.value)
    bad.write_text(presets_path().read_text().replace("    key_env: [DEEPSEEK_API_KEY]", "    key_evn: [DEEPSEEK_API_KEY]", 1))
    with pytest.raises(ConfigError, match=r"line \d+, key providers\.deepseek\.key_evn: unknown key: did you mean key_env\?"):
        load_presets(bad)
    # a key written twice would silently win: the same error as in a config file
    bad.write_text(presets_path().read_text().replace("price: {input_per_1m: ", "price: {input_per_1m: 99, input_per_1m: ", 1))
    with pytest.raises(ConfigError, match="written twice"):
        build_preset_config({"OPENCLAW_PRESETS": str(bad), "ANTHROPIC_API_KEY": "sk-b"})


def test_deepseek_bills_a_cached_prompt_prefix_at_a_tenth_of_its_input_price():
    config = build_preset_config({"DEEPSEEK_API_KEY": "sk-d"})
    assert config.model_names and all(m.provider == "deepseek" for m in config.models)
    for model in config.models:
        assert model.price.cached_input_per_1m == pytest.approx(model.price.input_per_1m / 10), model.name


def test_prefixed_host_models_reach_the_upstream_under_their_upstream_id(tmp_path, monkeypatch):
    from router.config import CacheSection
    from tests.gateway_harness import Running

    # Adapters read the key from the process environment on every call.
    monkeypatch.setenv("TOGETHER_API_KEY", "tg-key")
    with FakeUpstream() as upstream:
        config = build_preset_config({"TOGETHER_API_KEY": "tg-key", "TOGETHER_BASE_URL": upstream.base_url,
                                      "OLLAMA_BASE_URL": upstream.url, "OPENCLAW_OLLAMA_MODELS": "llama3.1:8b"})
        server = config.server.model_copy(update={"db": f"sqlite:///{tmp_path}/outcomes.sqlite"})
        running = Running(config.model_copy(update={"server": server, "cache": CacheSection(enabled=False)}))
        try:
            client = running.client()
            for name, upstream_id in (("ollama/llama3.1:8b", "llama3.1:8b"),
                                      ("together/meta-llama/Llama-3.3-70B-Instruct-Turbo", "meta-llama/Llama-3.3-70B-Instruct-Turbo")):
                answer = client.chat.completions.create(model=name, messages=[{"role": "user", "content": "hi"}])
                assert answer.model == name and answer.choices[0].message.content == f"Hello from {upstream_id}."
            assert "authorization" not in {k.lower() for k in upstream.requests_for("llama3.1:8b")[0].headers}
            assert upstream.requests_for("meta-llama/Llama-3.3-70B-Instruct-Turbo")[0].headers["authorization"] == "Bearer tg-key"
        finally:
            running.stop()


def test_mistral_gets_openclaw_requests_in_the_form_it_accepts(tmp_path, monkeypatch):
    from router.config import CacheSection
    from tests.gateway_harness import Running

    # Mistral refuses (422) every body field outside its schema: OpenClaw's max_completion_tokens,
    # the stream_options the gateway adds, store, metadata, a developer turn.
    monkeypatch.setenv("MISTRAL_API_KEY", "mi-key")
    with FakeUpstream() as upstream:
        config = build_preset_config({"MISTRAL_API_KEY": "mi-key", "MISTRAL_BASE_URL": upstream.base_url})
        server = config.server.model_copy(update={"db": f"sqlite:///{tmp_path}/outcomes.sqlite"})
        running = Running(config.model_copy(update={"server": server, "cache": CacheSection(enabled=False)}))
        try:
            tool = {"type": "function", "function": {"name": "read", "parameters": {"type": "object", "properties": {}}}}
            stream = running.client().chat.completions.create(
                model="mistral-small-latest", stream=True, stream_options={"include_usage": True},
                messages=[{"role": "developer", "content": "You are an agent."}, {"role": "user", "content": "hi"}],
                tools=[tool], max_completion_tokens=50000, store=False, metadata={"session": "s1"}, seed=7, temperature=0.2)
            chunks = list(stream)
            assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello from mistral-small-latest."
            assert chunks[-1].usage is not None  # the client's include_usage still answered
            (sent,) = upstream.requests_for("mistral-small-latest")
            assert set(sent.body) == {"model", "messages", "stream", "tools", "max_tokens", "random_seed", "temperature"}
            assert sent.body["max_tokens"] == 8192 and sent.body["random_seed"] == 7  # capped at the model's own limit
            assert [m["role"] for m in sent.body["messages"]] == ["system", "user"]

            # A tool loop another provider began (Claude's ids) goes on on Mistral, which answers 400
            # to an id that is not 9 letters and digits: rewritten alike in the call and its result.
            call = {"id": "toolu_01A09q90qw90lq917835lq9", "type": "function", "function": {"name": "read", "arguments": "{}"}}
            own = {"id": "D681PevKs", "type": "function", "function": {"name": "read", "arguments": "{}"}}
            running.client().chat.completions.create(model="mistral-small-latest", tools=[tool], messages=[
                {"role": "user", "content": "read it"}, {"role": "assistant", "content": None, "tool_calls": [call, own]},
                {"role": "tool", "tool_call_id": call["id"], "content": "a"}, {"role": "tool", "tool_call_id": own["id"], "content": "b"}])
            sent = upstream.requests_for("mistral-small-latest")[-1].body["messages"]
            ids = [c["id"] for c in sent[1]["tool_calls"]]
            assert ids[1] == "D681PevKs" and re.fullmatch(r"[a-zA-Z0-9]{9}", ids[0])
            assert [m["tool_call_id"] for m in sent[2:]] == ids
        finally:
            running.stop()


# -- `openclaw-router serve` end to end ---------------------------------------------------------

OPENAI_SECRET = "sk-test-openai-SECRET-5f2c9a"
MISTRAL_SECRET = "mistral-test-SECRET-77d1e0"


@pytest.fixture
def served(tmp_path):
    with FakeUpstream() as upstream:
        db = f"sqlite:///{tmp_path}/outcomes.sqlite"
        env = {k: v for k, v in os.environ.items()
               if not (k.endswith(("_API_KEY", "_BASE_URL")) or k.startswith("OPENCLAW_") or k.startswith("OLLAMA_"))}
        env.update({"OPENAI_API_KEY": OPENAI_SECRET, "OPENAI_BASE_URL": upstream.base_url,
                    "MISTRAL_API_KEY": MISTRAL_SECRET, "MISTRAL_BASE_URL": upstream.base_url,
                    "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)})
        log_path = tmp_path / "serve.log"
        with open(log_path, "w") as log_file:
            proc = subprocess.Popen([sys.executable, "-m", "service.cli", "--verbose", "serve", "--port", "0", "--db", db],
                                    cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=log_file, text=True)
            try:
                line = proc.stdout.readline()
                assert line.startswith("openclaw-router listening on http://"), line + log_path.read_text()
                yield line.split()[3], db, proc, upstream, log_path
            finally:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGINT)
                    proc.wait(30)


def test_serve_with_keys_routes_to_preset_models_through_the_upstream(served):
    url, db, proc, upstream, log_path = served
    expected = {m.name for m in build_preset_config({"OPENAI_API_KEY": "k", "MISTRAL_API_KEY": "k"}).models}
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="client-key", max_retries=0)
    listed = {m.id: m for m in client.models.list().data if m.openclaw["type"] == "model"}
    assert set(listed) == expected and not any(m.openclaw["simulated"] for m in listed.values())

    messages = [{"role": "user", "content": "Write a Python function that reverses a string."}]
    answer = client.chat.completions.create(model="gpt-4o-mini", messages=messages)
    assert answer.model == "gpt-4o-mini" and answer.choices[0].message.content == "Hello from gpt-4o-mini."
    (sent,) = upstream.requests_for("gpt-4o-mini")
    assert sent.path == "/v1/chat/completions" and sent.headers["authorization"] == f"Bearer {OPENAI_SECRET}"

    stream = client.chat.completions.create(model="mistral-small-latest", messages=messages, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == "Hello from mistral-small-latest."
    assert upstream.requests_for("mistral-small-latest")[0].headers["authorization"] == f"Bearer {MISTRAL_SECRET}"

    # An upstream that echoes the key in its error body: the key must reach neither the client nor the
    # (debug-level) log.
    upstream.default("gpt-4.1", error(401, f"Incorrect API key provided: {OPENAI_SECRET}.", "invalid_api_key", "invalid_request_error"))
    probe = [{"role": "user", "content": "Summarise the plot of Hamlet in one line."}]
    rejected = httpx.post(f"{url}/v1/chat/completions", json={"model": "gpt-4.1", "messages": probe}, timeout=30)
    assert upstream.requests_for("gpt-4.1") and OPENAI_SECRET not in rejected.text

    # The shipped router is in the checkout: `auto` must route over the preset models.
    assert httpx.get(f"{url}/healthz").json()["router_loaded"]
    routed = client.chat.completions.create(model="auto", messages=[{"role": "user", "content": "Name three prime numbers."}])
    assert routed.model in expected and routed.choices[0].message.content == f"Hello from {routed.model}."

    proc.send_signal(signal.SIGINT)
    assert proc.wait(30) in (0, 130)  # a clean Ctrl-C (uvicorn re-raises the signal after shutdown: 128 + SIGINT)
    logs = log_path.read_text()
    assert "provider openai enabled by OPENAI_API_KEY" in logs and "provider mistral enabled by MISTRAL_API_KEY" in logs
    assert OPENAI_SECRET not in logs and MISTRAL_SECRET not in logs
    outcomes = read_outcomes(db)
    assert {"gpt-4o-mini", "mistral-small-latest"} <= set(outcomes.answered_model.dropna())
    assert not outcomes.simulated.any()


def test_a_key_variable_set_but_empty_is_said_not_skipped_in_silence(caplog):
    from service.presets import build_preset_config

    with caplog.at_level("WARNING", logger="openclaw.presets"):
        config = build_preset_config({"OPENAI_API_KEY": "", "ANTHROPIC_API_KEY": "sk-ant-x"})
    assert "OPENAI_API_KEY is set but empty: provider openai left out" in caplog.text
    assert {p for p in config.providers} == {"anthropic"}


def test_presets_of_models_that_do_not_reason_never_send_reasoning_effort():
    # OpenClaw sends it with a thinking level; gpt-4.1 and Groq's Llama answer it with a 400.
    from service.presets import build_preset_config
    from service.providers.openai_compat import shaped

    config = build_preset_config({"OPENAI_API_KEY": "sk-x", "GROQ_API_KEY": "gsk-x", "GEMINI_API_KEY": "g-x"})
    body = {"model": "gpt-4.1", "messages": [{"role": "user", "content": "hi"}], "reasoning_effort": "high"}
    for provider in ("openai", "groq"):
        assert "reasoning_effort" not in shaped(body, config.providers[provider].request)
    # Gemini 2.5's implicit cache reads are billed at a quarter of the input price, not in full.
    flash = next(m for m in config.models if m.name == "gemini-2.5-flash")
    usage = {"prompt_tokens": 1_000_000, "completion_tokens": 0, "prompt_tokens_details": {"cached_tokens": 1_000_000}}
    assert flash.price.usage_cost(usage) == pytest.approx(flash.price.input_per_1m / 4)


@pytest.mark.parametrize("env, model, sends_effort", [
    ({"OLLAMA_BASE_URL": "{url}", "OPENCLAW_OLLAMA_MODELS": "qwen2.5:7b"}, "ollama/qwen2.5:7b", False),
    ({"DEEPSEEK_API_KEY": "sk-d", "DEEPSEEK_BASE_URL": "{url}"}, "deepseek-chat", True),
    ({"TOGETHER_API_KEY": "sk-t", "TOGETHER_BASE_URL": "{url}"}, "together/Qwen/Qwen2.5-72B-Instruct-Turbo", True),
], ids=["ollama", "deepseek", "together"])
def test_providers_that_read_max_tokens_only_are_sent_it(env, model, sends_effort, monkeypatch, tmp_path):
    # OpenClaw's turn as it comes: these ignored max_completion_tokens (no limit at all). Ollama also
    # answers reasoning_effort on a model without thinking with a 400.
    from tests.gateway_harness import QualityRouter, Running

    with FakeUpstream() as up:
        env = {k: v.format(url=up.url) for k, v in env.items()}
        for name, value in env.items():
            monkeypatch.setenv(name, value)  # a key is read from the environment at each call
        config = build_preset_config(env)
        server = config.server.model_copy(update={"db": f"sqlite:///{tmp_path}/outcomes.sqlite"})
        gw = Running(config.model_copy(update={"server": server}), router=QualityRouter({}))
        try:
            gw.client().chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}],
                                                max_completion_tokens=256, reasoning_effort="low")
        finally:
            gw.stop()
        body = up.requests[-1].body
    assert body["max_tokens"] == 256 and "max_completion_tokens" not in body
    assert ("reasoning_effort" in body) == sends_effort


def test_ollamas_refusal_of_thinking_is_a_parameter_the_model_does_not_take():
    # A routed request fails over from it (an Ollama provider configured by hand keeps reasoning_effort).
    from service.providers.base import classify

    text = '"llama3.1:8b" does not support thinking'
    assert classify(400, {"error": {"message": text, "type": "invalid_request_error"}}, text) == "unsupported"
