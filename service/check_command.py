"""`openclaw-router check`: validate what `serve` would start with, without starting it (for CI
and before a deploy).

The same configuration `serve` reads (`--config FILE`, else the providers whose keys are set,
else the simulated demo): the schema (errors name the key and its line), then what `serve`
would refuse at start (a router artifact the file names that is not there, a SQLite URL naming a
host, the cache verifier, the shadow candidate, a provider whose base URL is the gateway itself,
the alert and simulator settings in the environment) and what would fail later (the default
router artifact missing, the keys of providers some model uses not set or unusable, an open
gateway on a public address unless the governance store holds keys, which `check` does not
open; a `timeout_s` the file sets that no longer bounds non-streamed calls). Exit 0 when `serve`
would start, 2 when it would not; warnings alone do not fail, `--strict` makes them fail too. It
writes nothing; like `serve`, on a machine's first run it builds the cache's cross-encoder graph
(a few seconds).
"""
from __future__ import annotations

import argparse
import socket


def configure(parser: argparse.ArgumentParser) -> None:
    from service.serve_command import port_number

    parser.add_argument("--config", default=None, help="config YAML (default: as serve: providers whose keys are set, else the demo)")
    parser.add_argument("--host", default=None, help="the interface serve will bind (default: server.host)")
    parser.add_argument("--port", type=port_number, default=None, help="the port serve will listen on (default: server.port)")
    parser.add_argument("--strict", action="store_true", help="fail on warnings too (a key not set, no router artifact)")


def findings(config, host: str, port: int, from_file: bool) -> tuple[list[str], list[str]]:
    """(what would stop `serve`, what would fail requests later), in words naming the key;
    `from_file`: the user's --config, whose settings serve holds to (not the presets' or demo's)."""
    from router.cache.verifier import Verifier
    from router.config import resolve_path
    from router.config_checks import unseen_model_warnings
    from router.engine import LearnedRouter, find_artifact
    from service.gateway import NO_ROUTER, artifact_problem
    from service.governance.runtime import GovernanceSettings, is_loopback
    from service.serve_command import check_db_url, refuse_calling_itself, start_warnings, written_artifact_missing
    from service.simulator import MODELS, SIMULATED_URL, env_time_scale

    errors: list[str] = []
    warnings: list[str] = []
    try:
        check_db_url(config, None)
    except ValueError as exc:
        errors.append(str(exc))
    try:
        settings = GovernanceSettings.from_env(config)
    except ValueError as exc:
        errors.append(str(exc))
    else:
        if not settings.master_key and not is_loopback(host):
            warnings.append(f"server.host {host}: serve refuses to listen there without a key unless the governance store "
                            "holds virtual keys: set OPENCLAW_MASTER_KEY, or bind to 127.0.0.1")
    if any(p.kind == "simulated" for p in config.providers.values()):
        try:
            env_time_scale()
        except ValueError as exc:
            errors.append(str(exc))
        # serve's attach_simulator refuses these: each request would be a 404 from the simulator.
        errors += [f"models[{i}].upstream: the simulator serves no model {m.upstream_name!r}; set `upstream` to one of {sorted(MODELS)}"
                   for i, m in enumerate(config.models)
                   if config.providers[m.provider].kind == "simulated" and config.providers[m.provider].base_url.startswith(SIMULATED_URL)
                   and m.upstream_name not in MODELS]
    missing = written_artifact_missing(config) if from_file else None
    problem = artifact_problem(config)
    if missing:
        errors.append(missing)
    elif problem:
        warnings.append(f"{problem}: {NO_ROUTER}")
    else:
        try:
            router = LearnedRouter.load(find_artifact(config.router.artifact, config))
        except (OSError, ValueError, KeyError) as exc:
            errors.append(f"router.artifact {config.router.artifact!r}: cannot be loaded: {exc}")
        else:
            warnings += unseen_model_warnings(config.models, router.unseen(config.models), router.models)
    if config.cache.enabled and config.cache.semantic:
        try:
            Verifier.load(resolve_path(config, config.cache.verifier), threshold=config.cache.verifier_threshold)
        except ValueError as exc:
            errors.append(f"cache.verifier: {exc}")
    if config.learning.shadow.artifact:
        try:
            LearnedRouter.load(find_artifact(config.learning.shadow.artifact, config))
        except (OSError, ValueError, KeyError) as exc:
            errors.append(f"learning.shadow.artifact {config.learning.shadow.artifact!r}: {exc}")
    warnings += start_warnings(config, from_file)
    try:  # an address serve could not bind: resolved, not bound (the port may be free now and taken then)
        socket.getaddrinfo(host, port or None, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        errors.append(f"server.host {host}: serve cannot listen there ({getattr(exc, 'strerror', None) or exc})")
    if port:
        try:
            refuse_calling_itself(config, host, port)
        except ValueError as exc:
            errors.append(str(exc))
    return errors, warnings


def run(args: argparse.Namespace) -> int:
    from router.config import load_config
    from service.presets import build_preset_config
    from service.serve_command import default_config_path

    source = args.config or "the providers whose keys are set"
    config = load_config(args.config) if args.config else build_preset_config()
    if config is None:
        source, config = f"the simulated demo ({default_config_path()})", load_config(default_config_path())
    errors, warnings = findings(config, args.host or config.server.host, config.server.port if args.port is None else args.port,
                                from_file=bool(args.config))
    n_models, n_providers = len(config.models), len({m.provider for m in config.models})  # the unused get a note below
    print(f"{source}: {n_models} model{'s' * (n_models != 1)} on {n_providers} provider{'s' * (n_providers != 1)} "
          f"({', '.join(f'{m.name} via {m.provider}' for m in config.models)})")
    for line in errors:
        print(f"error: {line}")
    for line in warnings:
        print(f"warning: {line}")
    # Not a warning (--strict does not fail on it): a provider kept for later is harmless.
    for name in sorted(set(config.providers) - {m.provider for m in config.models}):
        print(f"note: providers.{name}: no model uses it")
    failed = bool(errors) or (args.strict and bool(warnings))
    print("serve would not start" if errors else "serve would start" + (", with the warnings above" if warnings else ""))
    return 2 if failed else 0
