"""The real-provider catalog `serve` builds from environment keys when no --config is given.

`build_preset_config(env)` reads service/presets.yaml (or the file named by OPENCLAW_PRESETS)
and keeps exactly the providers whose key variable is set (Ollama: whose base URL is set),
returning None when the simulated demo should run instead: no provider enabled, or
OPENCLAW_DEMO set. Per provider NAME (upper-cased):

  OPENCLAW_NAME_BASE_URL, else NAME_BASE_URL   replaces the preset base URL (proxies, tests)
  OPENCLAW_NAME_MODELS=a,b                     keeps only those models (upstream ids or names)

Keys stay in the environment: the config only names the variable (`api_key_env`), and
nothing here reads, logs or stores a key's value beyond testing that it is non-empty.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Literal, Mapping

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from router.config import Config, ConfigError, ModelSpec
from router.config_yaml import read_yaml
from router.config_errors import invalid, validation_problems

log = logging.getLogger("openclaw.presets")

DEMO_ENV = "OPENCLAW_DEMO"
PRESETS_ENV = "OPENCLAW_PRESETS"
_FALSE = {"", "0", "false", "no", "off"}


def presets_path() -> Path:
    return Path(__file__).resolve().parent / "presets.yaml"


class ProviderPreset(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["openai", "anthropic", "gemini"]
    base_url: str
    key_env: list[str] = Field(default_factory=list, description="key variables, first set one wins; empty: enabled by a base URL variable")
    source: str = Field(description="where the prices were read")
    url_suffix: str = Field(default="", description="appended to an overriding base URL that lacks it")
    context_env: str | None = Field(default=None, description="variable capping every context window")
    default_context: int | None = Field(default=None, gt=0, description="the cap when context_env is unset")
    default_models: list[str] | None = Field(default=None, description="models kept without OPENCLAW_NAME_MODELS; None: all")
    template: dict[str, Any] | None = Field(default=None, description="spec for a selected model that has no preset")
    headers: dict[str, str] = Field(default_factory=dict)
    request: dict[str, Any] = Field(default_factory=dict, description="the provider's body rewrites (router.config.RequestShape)")
    timeout_s: float = Field(default=60.0, gt=0)
    models: list[dict[str, Any]]


class PresetFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    prices_checked: str
    providers: dict[str, ProviderPreset]


def load_presets(path: str | Path) -> PresetFile:
    """Parse and validate a presets file, every model entry included (enabled or not)."""
    path = Path(path)
    try:
        text = path.read_text()
        tree, data = read_yaml(text)
        presets = PresetFile.model_validate(data)
    except OSError as exc:
        raise ConfigError(f"cannot read presets {path}: {exc.strerror}") from None
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    except ValidationError as exc:
        raise invalid(f"{path}: invalid presets", validation_problems(exc, tree, PresetFile)) from None
    for name, provider in presets.providers.items():
        entries = [(("models", i), entry) for i, entry in enumerate(provider.models)]
        entries += [(("template",), {"name": "template", **provider.template})] if provider.template else []
        for at, entry in entries:
            try:
                ModelSpec.model_validate({**entry, "provider": name})
            except ValidationError as exc:
                problems = validation_problems(exc, tree, ModelSpec, ("providers", name, *at))
                raise invalid(f"{path}: invalid presets", problems) from None
    return presets


def _set(env: Mapping[str, str], var: str) -> bool:
    return bool(env.get(var, "").strip())


def _env_prefix(name: str) -> str:
    return name.upper().replace("-", "_")


def _base_url(name: str, preset: ProviderPreset, env: Mapping[str, str]) -> tuple[str, str | None]:
    """The provider's base URL and the variable that overrode the preset one (None: preset)."""
    for var in (f"OPENCLAW_{_env_prefix(name)}_BASE_URL", f"{_env_prefix(name)}_BASE_URL"):
        if _set(env, var):
            url = env[var].strip().rstrip("/")
            if not url.startswith(("http://", "https://")):
                raise ConfigError(f"{var}={url!r} is not an http:// or https:// URL")
            if preset.url_suffix and not url.endswith(preset.url_suffix):
                url += preset.url_suffix
            return url, var
    return preset.base_url, None


def _enabled_by(name: str, preset: ProviderPreset, env: Mapping[str, str]) -> str | None:
    """The variable that turns the provider on: its first set key, or (keyless) its base URL."""
    if preset.key_env:
        return next((var for var in preset.key_env if _set(env, var)), None)
    return _base_url(name, preset, env)[1]


def _select(name: str, preset: ProviderPreset, env: Mapping[str, str]) -> list[dict[str, Any]]:
    var = f"OPENCLAW_{_env_prefix(name)}_MODELS"
    wanted = [w.strip() for w in env.get(var, "").split(",") if w.strip()] if _set(env, var) else preset.default_models
    if wanted is None:
        return list(preset.models)
    by_id = {m.get("upstream", m["name"]): m for m in preset.models} | {m["name"]: m for m in preset.models}
    chosen = []
    for model in wanted:
        if model in by_id:
            chosen.append(by_id[model])
        elif preset.template is not None:
            chosen.append({**preset.template, "name": f"{name}/{model}", "upstream": model})
        else:
            raise ConfigError(f"{var}: {model!r} is not among the {name} presets; known: {', '.join(sorted(by_id))} "
                              "(other models need a --config file)")
    return chosen


def _context_cap(preset: ProviderPreset, env: Mapping[str, str]) -> int | None:
    if preset.context_env and _set(env, preset.context_env):
        try:
            tokens = int(env[preset.context_env])
        except ValueError:
            raise ConfigError(f"{preset.context_env}={env[preset.context_env]!r} is not a whole number of tokens") from None
        if tokens <= 0:  # a 1-token window would refuse every request
            raise ConfigError(f"{preset.context_env}={env[preset.context_env]!r}: a context window is a positive number of tokens")
        return tokens
    return preset.default_context


def _models(name: str, preset: ProviderPreset, env: Mapping[str, str]) -> list[dict[str, Any]]:
    cap = _context_cap(preset, env)
    models = []
    for entry in _select(name, preset, env):
        model = {**entry, "provider": name}
        if cap is not None:
            window = min(model.get("context_window", cap), cap)
            model["context_window"] = window
            model["max_output_tokens"] = min(model.get("max_output_tokens", window), window)
        models.append(model)
    return models


def demo_forced(env: Mapping[str, str]) -> bool:
    return env.get(DEMO_ENV, "").strip().lower() not in _FALSE


def key_variables(presets: PresetFile) -> list[str]:
    """Every variable that can enable a provider, for the start-up message."""
    out = []
    for name, preset in presets.providers.items():
        out.extend(preset.key_env or [f"{_env_prefix(name)}_BASE_URL"])
    return out


def build_preset_config(env: Mapping[str, str] | None = None) -> Config | None:
    """The catalog of real models for the providers enabled in `env` (default os.environ), or
    None for the simulated demo. Logs which providers were enabled and by which variable."""
    env = os.environ if env is None else env
    path = Path(env[PRESETS_ENV]) if _set(env, PRESETS_ENV) else presets_path()
    presets = load_presets(path)
    enabled = {name: var for name, p in presets.providers.items() if (var := _enabled_by(name, p, env))}
    for name, preset in presets.providers.items():
        blank = [var for var in preset.key_env or () if var in env and not _set(env, var)]
        if blank and name not in enabled:  # exported empty by a template or an unset CI secret
            log.warning("%s is set but empty: provider %s left out", " and ".join(blank), name)
    if not enabled:
        log.info("no provider keys in the environment (%s): serving the simulated demo", ", ".join(key_variables(presets)))
        return None
    if demo_forced(env):
        log.info("%s is set: ignoring the keys for %s and serving the simulated demo", DEMO_ENV, ", ".join(enabled))
        return None
    providers: dict[str, dict[str, Any]] = {}
    models: list[dict[str, Any]] = []
    for name, var in enabled.items():
        preset = presets.providers[name]
        url, url_var = _base_url(name, preset, env)
        providers[name] = {"kind": preset.kind, "base_url": url, "headers": preset.headers, "timeout_s": preset.timeout_s,
                           "api_key_env": var if preset.key_env else None, "request": preset.request}
        chosen = _models(name, preset, env)
        models.extend(chosen)
        via = f"; base URL {url} from {url_var}" if url_var else ""
        log.info("provider %s enabled by %s (%d model(s): %s)%s", name, var, len(chosen), ", ".join(m["name"] for m in chosen), via)
    try:
        config = Config.model_validate({"models": models, "providers": providers, "router": {"artifact": "models/default"},
                                        "source": str(path)})
    except ValidationError as exc:
        raise invalid(f"{path}: presets for {', '.join(enabled)} do not make a valid catalog",
                       validation_problems(exc, None, Config)) from None
    log.info("real providers from environment keys: %d models on %s (list prices checked %s; quality predicted through "
             "RouterBench proxies until `openclaw-router retrain` learns from their logged outcomes)",
             len(config.models), ", ".join(enabled), presets.prices_checked)
    return config
