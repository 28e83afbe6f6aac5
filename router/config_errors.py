"""Config errors in plain words: each names its key and line, says what goes there and, for an
unknown key, which key was meant.

pydantic's own messages speak of its types ("Input should be a valid frozenset", "a valid
dictionary or instance of ServerSection", "Extra inputs are not permitted"); `describe` turns
every error a YAML user can make into what to write instead. A value from the file is never
repeated in a message (it may be a key pasted where a variable's name goes).
"""
from __future__ import annotations

import difflib
import functools
import json
import re
import types
from typing import Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

DEFAULT_PROFILES = ("auto", "auto:cheap", "auto:best")

# What a mapping or a list looks like where one goes, by the key it goes under.
_EXAMPLES = {
    "models": "models: [{name: gpt-4o-mini, provider: openai, price: {input_per_1m: 0.15, output_per_1m: 0.6}}]",
    "providers": "providers: {openai: {kind: openai, base_url: https://api.openai.com/v1, api_key_env: OPENAI_API_KEY}}",
    "price": "price: {input_per_1m: 0.15, output_per_1m: 0.6}",
    "limits": "limits: {rpm: 500, tpm: 200000}",
    "tags": "tags: [local]",
    "capabilities": "capabilities: [tools, json]",
    "fallbacks": "fallbacks: [gpt-4o-mini]",
    "allowed_models": "allowed_models: [gpt-4o-mini]",
    "required_tags": "required_tags: [local]",
    "drop": "drop: [seed]",
    "keep_only": "keep_only: [max_tokens, temperature]",
    "rename": "rename: {max_completion_tokens: max_tokens}",
    "headers": "headers: {HTTP-Referer: https://example.com}",
    "request": "request: {drop: [seed]}",
    "profiles": "profiles: {auto: {willingness_to_pay: 0.01}}",
    "route_ttl_s": "route_ttl_s: {auto: 3600}",
    "router": "router: {default_profile: auto}",
    "reliability": "reliability: {max_retries: 2}",
    "cache": "cache: {ttl_s: 3600}",
    "server": "server: {port: 8080}",
    "learning": "learning: {bandit: {enabled: true}}",
    "bandit": "bandit: {enabled: true}",
    "shadow": "shadow: {artifact: models/candidate}",
}
# One entry of a list or mapping, by the key of the list or mapping.
_ENTRY_EXAMPLES = {
    "models": "{name: gpt-4o-mini, provider: openai, price: {input_per_1m: 0.15, output_per_1m: 0.6}}",
    "providers": "{kind: openai, base_url: https://api.openai.com/v1, api_key_env: OPENAI_API_KEY}",
    "profiles": "{willingness_to_pay: 0.01}",
}
# Keys of other gateways' configs (LiteLLM's mostly) that no spelling distance finds.
_OTHER_NAMES = {
    "api_base": "base_url",
    "model_name": "name",
    "model": "upstream",
    "rpm": "limits: {rpm: ...}",
    "tpm": "limits: {tpm: ...}",
    "input_cost_per_token": "price: {input_per_1m: ...} (USD per 1M tokens)",
    "output_cost_per_token": "price: {output_per_1m: ...} (USD per 1M tokens)",
    "timeout": "timeout_s",
}
_GOVERNANCE = ("there is no governance section: keys, budgets and alerts are set by environment variables "
               "(OPENCLAW_MASTER_KEY, ...) and the /admin API, not in this file (docs/GOVERNANCE.md)")
_API_KEY = ("API keys never go in this file: name the environment variable that holds the key instead, "
            "e.g. api_key_env: OPENAI_API_KEY")
_NEEDS_QUOTES = re.compile(r"^$|[\s\"'\x00-\x1f\x7f]")
_ENV_SYNTAX = re.compile(r"^\s*(?:\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?|os\.environ/([A-Za-z_][A-Za-z0-9_]*))\s*$")


class ConfigError(ValueError):
    """A configuration file that does not match the schema; the message names key and line."""


class BadReference(ValueError):
    """A value naming something the config does not define; `loc` is where it was written."""

    def __init__(self, loc: tuple, message: str):
        super().__init__(message)
        self.loc = loc


def env_syntax_name(value: Any) -> str | None:
    """The variable `${NAME}`, `$NAME` or LiteLLM's `os.environ/NAME` names, which this file
    does not expand; None for anything else."""
    match = _ENV_SYNTAX.match(value) if isinstance(value, str) else None
    return (match.group(1) or match.group(2)) if match else None


def unwrap(annotation: Any) -> Any:
    """`X | None` and `Annotated[X, ...]` as X."""
    while True:
        origin = get_origin(annotation)
        if origin in (Union, types.UnionType):
            rest = [a for a in get_args(annotation) if a is not type(None)]
            if len(rest) != 1:
                return annotation
            annotation = rest[0]
        elif origin is not None and hasattr(annotation, "__metadata__"):
            annotation = get_args(annotation)[0]
        else:
            return annotation


def is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def type_at(root: type[BaseModel], loc: tuple) -> Any:
    """The declared type of the value at `loc` (a pydantic error location) under `root`; None
    where the schema has no such place."""
    annotation: Any = root
    for part in loc:
        annotation = unwrap(annotation)
        origin = get_origin(annotation)
        if is_model(annotation):
            field = annotation.model_fields.get(part) if isinstance(part, str) else None
            if field is None:
                return None
            annotation = field.annotation
        elif origin in (list, tuple, frozenset, set) and isinstance(part, int):
            annotation = get_args(annotation)[0]
        elif origin is dict:
            annotation = get_args(annotation)[1]
        else:
            return None
    return unwrap(annotation)


def keys_of(model: type[BaseModel]) -> list[str]:
    """The keys a section takes in the file (not the fields filled in by the loader)."""
    return [name for name, field in model.model_fields.items() if not field.exclude]


@functools.cache
def key_places(root: type[BaseModel]) -> dict[str, tuple[str, ...]]:
    """Where in the file each key name is valid, as paths walked from the schema itself, shallow
    first: `router.profiles`, `providers.<name>.base_url`, `models[].router_model`."""
    places: dict[str, list[str]] = {}
    todo: list[tuple[Any, str]] = [(root, "")]
    while todo:
        annotation, path = todo.pop(0)
        annotation = unwrap(annotation)
        origin = get_origin(annotation)
        if is_model(annotation):
            for key in keys_of(annotation):
                at = f"{path}.{key}" if path else key
                places.setdefault(key, []).append(at)
                todo.append((annotation.model_fields[key].annotation, at))
        elif origin in (list, tuple, frozenset, set):
            todo.append((get_args(annotation)[0], path + "[]"))
        elif origin is dict:
            todo.append((get_args(annotation)[1], path + ".<name>"))
    return {key: tuple(paths) for key, paths in places.items()}


def _belongs(paths: tuple[str, ...]) -> str:
    under = [f"under {parent}: ({path})" if (parent := path.rpartition(".")[0]) else f"at the top level ({path})"
             for path in paths]
    return "unknown key: it belongs " + " or ".join(under)


def _what(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return "a yes/no value"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "text"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return f"a {type(value).__name__}"


def _items(annotation: Any) -> str:
    item = unwrap(get_args(annotation)[0]) if get_args(annotation) else None
    if item is str:
        return " of strings"
    if get_origin(item) is Literal:
        return " out of " + ", ".join(str(a) for a in get_args(item))
    if is_model(item):
        return " of mappings"
    return ""


def _unknown_key(root: type[BaseModel], loc: tuple) -> str:
    key, where = loc[-1], loc[:-1]
    if not where and key == "governance":
        return f"unknown key: {_GOVERNANCE}"
    if key == "api_key" and len(where) == 2 and where[0] == "providers":
        return f"unknown key: {_API_KEY}"
    section = type_at(root, where)
    valid = keys_of(section) if is_model(section) else []
    other = _OTHER_NAMES.get(str(key), "")
    if other.split(":")[0] in valid:
        return f"unknown key: here it is {other}"
    # A key written at the wrong level (top-level `profiles`, a model's `base_url`) is no misspelling.
    elsewhere = key_places(root).get(str(key))
    if elsewhere:
        return _belongs(elsewhere)
    close = difflib.get_close_matches(str(key), valid, n=1)
    if close:
        return f"unknown key: did you mean {close[0]}?"
    return f"unknown key; the keys of {key_path(where) or 'the top level'} are: {', '.join(valid)}"


def describe(err: Any, loc: tuple, root: type[BaseModel]) -> str:
    """One pydantic error (`loc` cleaned of validator names) in the words of a YAML file."""
    kind, value, msg = err["type"], err.get("input"), err["msg"]
    # An entry of a list or mapping (models[0], providers.openai) is shown by its container's name.
    entry = bool(loc) and get_origin(type_at(root, loc[:-1])) in (list, tuple, frozenset, set, dict)
    name = next((p for p in reversed(loc[:-1] if entry else loc) if isinstance(p, str)), "")
    annotation = type_at(root, loc)
    if kind == "extra_forbidden":
        return _unknown_key(root, loc)
    if kind in ("value_error", "assertion_error"):
        return msg.removeprefix("Value error, ").removeprefix("Assertion failed, ")
    if kind == "missing":
        return "missing: this key is required"
    if kind == "invalid_key":
        return f"a key should be a name (text), not {_what(value)}"
    if kind in ("list_type", "tuple_type", "set_type", "frozen_set_type"):
        example = _EXAMPLES.get(name, "[a, b]") if not entry else "[a, b]"
        several = "; several go in brackets, [a, b], not a, b" if isinstance(value, str) and "," in value else ""
        return f"should be a list{_items(annotation)}, e.g. {example}; not {_what(value)}{several}"
    if kind in ("dict_type", "model_type", "model_attributes_type"):
        example = _ENTRY_EXAMPLES.get(name) if entry else _EXAMPLES.get(name)
        example = example or f"{name}: {{key: value}}"
        keys = f" (its keys: {', '.join(keys_of(annotation))})" if is_model(annotation) else ""
        return f"should be a mapping of keys{keys}, e.g. {example}; not {_what(value)}"
    if kind == "string_pattern_mismatch" and name == "api_key_env":
        variable = env_syntax_name(value)
        said = f"api_key_env: {variable}" if variable else "e.g. api_key_env: OPENAI_API_KEY"
        return (f"write the name of the environment variable that holds the key ({said}); "
                "${...} and os.environ/... are not expanded, and the key itself never goes in this file")
    if kind == "string_type":
        return f"should be text, not {_what(value)} (put quotes around a number or a yes/no value)"
    if kind in ("int_type", "int_parsing"):
        return f"should be a whole number (digits only, e.g. 128000 for 128k), not {_what(value)}"
    if kind == "int_from_float":
        return "should be a whole number, not a fraction"
    if kind in ("float_type", "float_parsing"):
        return f"should be a number (e.g. 0.5), not {_what(value)}"
    if kind in ("bool_type", "bool_parsing"):
        return f"should be true or false, not {_what(value)}"
    if kind == "literal_error" and isinstance(value, str):
        options = [str(a) for a in get_args(annotation)] if get_origin(annotation) is Literal else []
        close = difflib.get_close_matches(value, options, n=1)
        return msg + (f" (did you mean {close[0]}?)" if close else "")
    return msg


def yaml_hint(exc: yaml.YAMLError, text: str) -> str:
    """What to add to a YAML syntax error that `${VAR}` written inside `{...}` caused."""
    mark = getattr(exc, "problem_mark", None)
    lines = text.splitlines()
    if mark is None or mark.line >= len(lines) or "${" not in lines[mark.line]:
        return ""
    return ("\n(a ${...} inside {...} reads as a nested mapping; ${...} and os.environ/... are not expanded in this file: "
            "write the URL itself for base_url, the variable's name for api_key_env, e.g. api_key_env: OPENAI_API_KEY)")


def line_of(node: yaml.Node | None, loc: tuple[Any, ...]) -> int | None:
    """Walk the composed YAML tree along a pydantic error location to find its line."""
    line = node.start_mark.line + 1 if node is not None else None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            pair = next(((k, v) for k, v in node.value if k.value == str(part)), None)
            if pair is None:
                break
            key, node = pair
            line = key.start_mark.line + 1  # the key's line: a nested value starts on the next one
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            break
    return line


def key_path(loc: tuple) -> str:
    # A name that is empty or holds spaces, quotes or control characters is quoted, escapes shown.
    parts = (f"[{p}]" if isinstance(p, int) else json.dumps(p) if isinstance(p, str) and _NEEDS_QUOTES.search(p) else str(p)
             for p in loc)
    return ".".join(parts).replace(".[", "[")


def invalid(what: str, problems: list[str]) -> ConfigError:
    """One error for a file's problems, each on its own line naming its key and line, in the
    file's order (the schema's order of fields would send a reader up and down the file)."""
    def line(problem: str) -> int:
        at = re.match(r"line (\d+)", problem)
        return int(at.group(1)) if at else 0

    return ConfigError(f"{what}:\n  " + "\n  ".join(sorted(problems, key=line)))


def validation_problems(exc: ValidationError, tree: yaml.Node | None, root: type[BaseModel],
                        at: tuple = ()) -> list[str]:
    """`line N, key a.b[2].c: what is wrong` for each error of a validation; `at`: where in the
    file (`tree`) the validated `root` value sits, when it is one part of it."""
    problems = []
    for err in exc.errors():
        # `[key]`: the error is in a mapping's key (an empty provider name), which the key path names.
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and (p.startswith("function-") or p == "[key]")))
        cause = (err.get("ctx") or {}).get("error")
        if isinstance(cause, BadReference):
            loc = cause.loc
        problems.append(problem_at(tree, at + loc, describe(err, loc, root)))
    return problems


def problem_at(tree: yaml.Node | None, loc: tuple, message: str) -> str:
    """`line N, key a.b[2].c: message`, the line found in the file (`tree`)."""
    line = line_of(tree, loc)
    where = f"line {line}, " if line else ""
    return f"{where}key {key_path(loc) or '<top>'}: {message}"
