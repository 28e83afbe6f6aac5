"""Values the config schema refuses because `serve`, or every request, would fail on them later:
names left blank, URLs no client can open, header text no HTTP library sends. Each is an
annotated type (or a check over the whole file) so that router/config.py stays a readable list
of keys, and each error reaches the user as `key a.b.c: what is wrong`."""
from __future__ import annotations

import difflib
import re
from typing import TYPE_CHECKING, Annotated, Any, Iterable, Sequence
from urllib.parse import urlsplit

import yaml
from pydantic import AfterValidator

from router.config_errors import BadReference, env_syntax_name

if TYPE_CHECKING:
    from router.config import Config, ModelSpec

SIMULATED_URL = "simulated://"
# APIs that answer 400 (Mistral 422) to a message field they do not know, so to the thinking a client
# replays from another model: a `kind: openai` provider here drops it unless its request says keep
# (docs/CONFIG.md, request.reasoning_history). A leading dot matches any subdomain.
REFUSE_REPLAYED_REASONING = ("api.openai.com", ".openai.azure.com", "api.mistral.ai", "api.groq.com")
# RFC 9110 token: what h11 and httpx accept as a header name; anything else fails each request with a 500.
_HEADER_NAME = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
# Control characters but the tab, which a header value may hold.
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def _name(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty: write a name")
    return value


def _base_url(url: str) -> str:
    # Without a scheme or a host every call would fail as a connection error, and nothing says why.
    if env_syntax_name(url):
        raise ValueError("${...} and os.environ/... are not expanded in this file: write the URL itself")
    if url != url.strip() or any(c.isspace() for c in url):
        raise ValueError(f"{url!r} has spaces in it or around it: write the URL alone")
    if not url.startswith(("http://", "https://", SIMULATED_URL)):
        raise ValueError(f"{url!r} is not an http:// or https:// URL")
    if not url.startswith(SIMULATED_URL) and not urlsplit(url).hostname:
        raise ValueError(f"{url!r} names no host: write e.g. https://api.openai.com/v1")
    return url


def refuses_replayed_reasoning(url: str) -> bool:
    host = (urlsplit(url).hostname or "").rstrip(".")
    return any(host.endswith(h) if h.startswith(".") else host == h for h in REFUSE_REPLAYED_REASONING)


def _db_url(url: str) -> str:
    # What both the outcome log and the governance store open (service/governance/db.py, router/outcome_log.py).
    if not url.startswith(("sqlite://", "postgresql://", "postgres://")):
        raise ValueError("must start with sqlite:// or postgresql://, e.g. sqlite:///.openclaw/outcomes.sqlite")
    return url


def _redis_url(url: str) -> str:
    # The schemes redis-py's from_url takes; anything else stops serve at start.
    if not url.startswith(("redis://", "rediss://", "unix://")):
        raise ValueError("must be a redis://, rediss:// or unix:// URL, e.g. redis://localhost:6379/0")
    return url


def _header_name(name: str) -> str:
    if not _HEADER_NAME.match(name):
        raise ValueError("is not a header name (letters, digits and -_.!#$%&'*+^`|~; no spaces or control characters)")
    return name


def _header_value(value: str) -> str:
    if _CONTROL.search(value):
        raise ValueError("holds a line break or another control character, which no HTTP request can carry")
    return value


Name = Annotated[str, AfterValidator(_name)]
BaseUrl = Annotated[str, AfterValidator(_base_url)]
DbUrl = Annotated[str, AfterValidator(_db_url)]
RedisUrl = Annotated[str, AfterValidator(_redis_url)]
HeaderName = Annotated[str, AfterValidator(_header_name)]
HeaderValue = Annotated[str, AfterValidator(_header_value)]


def check_providers(config: "Config") -> None:
    """Checks between a provider's keys that name the key they blame."""
    for name, provider in config.providers.items():
        if provider.base_url.startswith(SIMULATED_URL) and provider.kind != "simulated":
            # serve replaces simulated:// with the simulator's address only for simulated providers.
            raise BadReference(("providers", name, "base_url"),
                               f"simulated:// is the built-in simulator's address, for a provider of kind: simulated, "
                               f"not {provider.kind!r}")


def undefined_provider(i: int, provider: str, providers: Iterable[str]) -> str:
    names = sorted(providers)
    close = difflib.get_close_matches(provider, names, n=1)
    return f"models[{i}].provider {provider!r} is not defined under providers: {names}" + (f" (did you mean {close[0]}?)" if close else "")


def undefined_providers(data: dict[str, Any]) -> list[BadReference]:
    """Each model's `provider` naming no provider, read from the file as written: Config checks
    references only once every key is valid, and a typo here is said with the schema's errors."""
    models, providers = data.get("models"), data.get("providers")
    if not isinstance(models, list) or not isinstance(providers, dict):
        return []
    # A blank name is the schema's error (must not be empty), said once.
    return [BadReference(("models", i, "provider"), undefined_provider(i, m["provider"], providers))
            for i, m in enumerate(models)
            if isinstance(m, dict) and isinstance(m.get("provider"), str) and m["provider"].strip() and m["provider"] not in providers]


def unseen_model_warnings(catalog: Sequence["ModelSpec"], unseen: Iterable[str], known: Sequence[str]) -> list[str]:
    """For each catalog model the router artifact has no training data for (`unseen`, by name),
    the fix: a `router_model` the artifact knows (`known`), named where one is close."""
    names = set(unseen)
    warnings = []
    for i, spec in enumerate(catalog):
        if spec.name not in names:
            continue
        what = f"has no model {spec.router_model!r}" if spec.router_model else f"has no training data for {spec.name}"
        close = difflib.get_close_matches(spec.predictor_name, known, n=1)
        fix = f"set router_model: {close[0]}" if close else "set router_model to a model the artifact knows"
        # Said plainly: the prior is the training data's mean quality for every prompt, so a model
        # priced below the known ones can win most `auto` traffic without any evidence for it.
        warnings.append(f"models[{i}].router_model: router.artifact {what}: it gets the unseen-model prior (P(good) = the "
                        f"training data's mean quality for every prompt, so at a low price it can take most auto traffic); "
                        f"{fix} to borrow its predictions")
    return warnings


def answer_timeout_warnings(config: "Config") -> list[str]:
    """For each provider a model uses whose file sets `timeout_s` below the answer wait but not
    `answer_timeout_s`: timeout_s no longer bounds a non-streamed call (it did before 600 s became
    the default), so a hung upstream is failed over only after answer_timeout_s. Said for files,
    whose timeout_s someone chose (the presets' and the demo's are defaults)."""
    used = {m.provider for m in config.models}
    return [f"providers.{name}.answer_timeout_s: not set, so a non-streamed call to {name} waits up to {p.answer_wait_s:g} s "
            f"for its answer before failing over (timeout_s: {p.timeout_s:g} bounds a stream's first byte and the gaps "
            "between its chunks); set answer_timeout_s to fail over from a hung upstream sooner"
            for name, p in config.providers.items()
            if name in used and p.kind != "simulated" and "timeout_s" in p.model_fields_set
            and p.answer_timeout_s is None and p.answer_wait_s > p.timeout_s]


def check_unique_keys(tree: yaml.Node | None) -> None:
    """A key written twice in one mapping (the second would silently win), named by its whole
    path. Walked without recursion, each node once: aliases share nodes, and a YAML nested deeper
    than Python's stack is reported by the composer, not here."""
    from router.config_errors import ConfigError, key_path

    todo: list[tuple[yaml.Node, tuple]] = [(tree, ())] if tree is not None else []
    seen_nodes: set[int] = set()
    while todo:
        node, path = todo.pop()
        if id(node) in seen_nodes:
            continue
        seen_nodes.add(id(node))
        if isinstance(node, yaml.SequenceNode):
            todo += [(item, path + (i,)) for i, item in enumerate(node.value)]
        elif isinstance(node, yaml.MappingNode):
            first: dict[tuple, int] = {}
            for key, value in node.value:
                if not isinstance(key, yaml.ScalarNode) or key.tag == "tag:yaml.org,2002:merge":
                    continue  # a key that is no plain name is the loader's error; `<<:` merges may override
                line = key.start_mark.line + 1
                if (key.tag, key.value) in first:
                    raise ConfigError(f"line {line}, key {key_path(path + (key.value,))}: written twice in one mapping "
                                      f"(first on line {first[key.tag, key.value]})")
                first[key.tag, key.value] = line
                todo.append((value, path + (key.value,)))
