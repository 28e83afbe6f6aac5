"""The one YAML configuration file: schema, validation and loading.

Every section is a pydantic model with `extra="forbid"`, so a misspelt key is an error
that names the key and its line in the file instead of being silently ignored. The
schema is documented field by field in docs/CONFIG.md.
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, Mapping

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator, model_validator

from router.config_checks import (BaseUrl, DbUrl, HeaderName, HeaderValue, Name, RedisUrl, check_providers,
                                  refuses_replayed_reasoning, undefined_provider, undefined_providers)
from router.config_errors import DEFAULT_PROFILES, BadReference, ConfigError, invalid, problem_at, validation_problems, yaml_hint
from router.config_yaml import YesNo, goes_here, kind_of, no_yes_no, quote_yes_no, read_yaml, syntax_error, takes_bool

Capability = Literal["tools", "json", "vision", "files", "audio", "logprobs"]
KEY_CIRCUIT_PREFIX = "provider:"  # names the breaker gives providers' key circuits (service/live_state.py)


class _Strict(BaseModel):
    # No infinities: `ttl_s: .inf` or `breaker_cooldown_s: .inf` pass every `gt=0` and break later.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _as_yaml_means_it(cls, value: Any, info: Any) -> Any:
        field = cls.model_fields[info.field_name]
        # YAML reads yes/no/on/off as booleans, which pydantic would take as 1 and 0:
        # `port: yes` must not start a server on port 1.
        if isinstance(value, bool) and not takes_bool(field.annotation):
            raise YesNo(value, *goes_here(info.field_name, field.annotation, value))
        # `cache:` with every key under it commented out is null: the section (mapping, list) as if not written.
        if value is None and not field.is_required() and kind_of(field.annotation):
            return field.get_default(call_default_factory=True)
        # `tags: local` is the one-tag list [local]; `tags: local, fast`, `local fast` or '' stay errors.
        if isinstance(value, str) and value.strip() and not any(c in value for c in ", ") and kind_of(field.annotation) == "strings":
            return [value]
        return value


class Price(_Strict):
    input_per_1m: float = Field(ge=0, description="USD per 1M input tokens")
    output_per_1m: float = Field(ge=0, description="USD per 1M output tokens")
    cached_input_per_1m: float | None = Field(
        default=None, ge=0, description="USD per 1M input tokens read from the provider's prompt cache; default: input_per_1m")
    cache_write_per_1m: float | None = Field(
        default=None, ge=0,
        description="USD per 1M input tokens written to the provider's prompt cache (Anthropic: 1.25x input); default: input_per_1m")
    cache_min_tokens: int = Field(default=1024, ge=0, description="the shortest prompt the provider caches (OpenAI, most Claude "
                                  "models: 1,024; Claude Haiku 4.5 and Gemini 2.5 Pro: 4,096)")

    def cost(self, input_tokens: float, output_tokens: float) -> float:
        return (input_tokens * self.input_per_1m + output_tokens * self.output_per_1m) / 1e6

    def usage_cost(self, usage: Mapping[str, Any]) -> float:
        """The cost of an OpenAI `usage` object: prompt tokens the provider read from its cache
        (`prompt_tokens_details.cached_tokens`) at the cached price, those it wrote to it
        (`cache_write_tokens`, OpenRouter's name, which the Anthropic adapter reports) at the write price."""
        prompt = float(usage.get("prompt_tokens") or 0)
        details = usage.get("prompt_tokens_details")
        details = details if isinstance(details, Mapping) else {}
        cached = min(float(details.get("cached_tokens") or 0), prompt)
        written = min(float(details.get("cache_write_tokens") or 0), prompt - cached)
        cached_price = self.input_per_1m if self.cached_input_per_1m is None else self.cached_input_per_1m
        write_price = self.input_per_1m if self.cache_write_per_1m is None else self.cache_write_per_1m
        return (self.cost(prompt - cached - written, usage.get("completion_tokens") or 0)
                + (cached * cached_price + written * write_price) / 1e6)


class Limits(_Strict):
    rpm: int | None = Field(default=None, gt=0)
    tpm: int | None = Field(default=None, gt=0)


class ModelSpec(_Strict):
    """One model a request can be routed to."""

    name: Name = Field(description="public name; clients may ask for it directly")
    provider: Name = Field(description="key into `providers`")
    upstream: str | None = Field(default=None, description="the provider's model id; defaults to `name`")
    router_model: str | None = Field(
        default=None,
        description="name of the model in the router artifact whose predictions this model uses; defaults to `name`",
    )
    price: Price
    context_window: int = Field(default=8192, gt=0)
    max_output_tokens: int = Field(default=4096, gt=0)
    capabilities: frozenset[Capability] = frozenset()
    tags: frozenset[str] = frozenset()
    limits: Limits = Limits()
    throughput_tps: float = Field(default=50.0, gt=0, description="output tokens/s until live data says otherwise")
    ttft_s: float = Field(default=0.5, ge=0, description="time to first token until live data says otherwise")
    fallbacks: tuple[str, ...] = Field(
        default=(),
        description="models a request naming this model fails over to, in order (routed requests fail over along the ranking)",
    )
    max_choices: int | None = Field(
        default=None, ge=1,
        description="the most choices (`n`) one request gets; none: as many as asked. 1 for anthropic and gemini "
                    "providers unless set: their APIs answer one",
    )

    def takes_choices(self, n: int) -> bool:
        """Whether one request here can get `n` choices (`max_choices`)."""
        return self.max_choices is None or n <= self.max_choices

    @property
    def upstream_name(self) -> str:
        return self.upstream or self.name

    @property
    def predictor_name(self) -> str:
        return self.router_model or self.name

    def most_billed(self, input_tokens: float, max_output_tokens: int | None, answers: int = 1) -> float:
        """The most a request can be billed here: its input, and every one of its answers at the
        output limit the model is sent (the model's own when the request sets none)."""
        return self.price.cost(input_tokens, (self.output_cap(max_output_tokens) or self.max_output_tokens) * answers)

    def output_cap(self, requested: int | None) -> int | None:
        """The output limit a request for `requested` tokens is sent with: lowered to this
        model's `max_output_tokens` (a router may pick a model with a smaller limit than the
        client had in mind, and the upstream refuses a larger one with a 400). A limit left at
        its default is not known to be the model's, so it lowers nothing."""
        if not requested:
            return None
        return min(requested, self.max_output_tokens) if "max_output_tokens" in self.model_fields_set else requested


ESSENTIAL_FIELDS = frozenset({"model", "messages", "stream"})  # what every chat-completions call needs
ONE_CHOICE_KINDS = frozenset({"anthropic", "gemini"})  # provider kinds whose APIs answer one choice per request


class RequestShape(_Strict):
    """How an OpenAI-compatible provider takes the client's body, which is otherwise passed
    through: some refuse fields OpenAI accepts (Mistral answers 422 to `max_completion_tokens`,
    `stream_options` and any field it does not know), and every OpenClaw request carries them."""

    rename: dict[str, str] = Field(default_factory=dict, description="top-level body fields sent under another name")
    drop: frozenset[str] = Field(default_factory=frozenset, description="top-level body fields never sent")
    keep_only: frozenset[str] | None = Field(
        default=None, description="the only top-level fields sent, after renaming (model, messages and stream always are); none: all")
    developer_role: Literal["developer", "system"] = Field(
        default="developer", description="the role `developer` turns are sent with")
    tool_call_ids: Literal["as_sent", "alnum9"] = Field(
        default="as_sent",
        description="alnum9: tool-call ids another provider made (a router switches models mid-conversation) are "
                    "rewritten to 9 letters and digits, alike in the call and its result (Mistral's rule)")
    # Clients replay the thinking the gateway answered with; a router may send that history to
    # another provider, and strict ones answer 400 to a message field they do not know.
    reasoning_history: Literal["keep", "drop"] = Field(
        default="keep", description="drop: messages' reasoning_content, reasoning and reasoning_details are not sent "
                                    "(OpenAI, Mistral, Groq refuse them); keep: sent as replayed (DeepSeek requires them back); "
                                    "default drop for those APIs' hosts (REFUSE_REPLAYED_REASONING), else keep")

    @model_validator(mode="after")
    def _renames_reach_the_upstream(self) -> "RequestShape":
        for source, target in self.rename.items():
            if source in ESSENTIAL_FIELDS or target in ESSENTIAL_FIELDS:
                raise ValueError(f"rename: {source!r} -> {target!r}: model, messages and stream are sent as they are")
            if target in self.drop or (self.keep_only is not None and target not in self.keep_only):
                raise ValueError(f"rename: {source!r} -> {target!r} would never be sent (dropped, or not in keep_only)")
        return self

    @property
    def is_identity(self) -> bool:
        return (not self.rename and not self.drop and self.keep_only is None and self.developer_role == "developer"
                and self.tool_call_ids == "as_sent" and self.reasoning_history == "keep")


DEFAULT_ANSWER_TIMEOUT_S = 600.0  # the OpenAI SDK's default wait for a whole answer


class ProviderSpec(_Strict):
    kind: Literal["openai", "anthropic", "gemini", "simulated"]
    base_url: BaseUrl = Field(description="http:// or https:// URL of the API root (simulated:// for the simulator)")
    # A key pasted here instead of its variable's name would be echoed in every error the
    # gateway logs ("environment variable sk-... is not set"): only a variable name passes.
    api_key_env: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
                                    description="name of the env var that holds the key; never the key")
    timeout_s: float = Field(default=60.0, gt=0, description="a stream's wait for its first byte and between two chunks")
    # A non-streamed answer sends no byte until it is whole: minutes for a long one. Waiting
    # timeout_s for it abandoned every answer longer than that and paid for it twice (the call
    # is billed, then failed over).
    answer_timeout_s: float | None = Field(
        default=None, gt=0, description=f"the longest wait for a whole non-streamed answer, and for a stream's first output; default the larger of "
                                        f"{DEFAULT_ANSWER_TIMEOUT_S:g} s (the OpenAI SDK's) and timeout_s")
    connect_timeout_s: float = Field(default=5.0, gt=0)
    max_connections: int = Field(default=100, gt=0)
    headers: dict[HeaderName, HeaderValue] = Field(default_factory=dict)
    request: RequestShape = Field(default_factory=RequestShape, description="body rewrites for an OpenAI-compatible provider")

    @model_validator(mode="before")
    @classmethod
    def _strict_apis_drop_replayed_reasoning(cls, data: Any) -> Any:
        # A provider written by hand for these APIs (not their preset) would be sent the thinking a
        # client replays from Claude or DeepSeek, and answer 400. A reasoning_history written wins.
        if not (isinstance(data, dict) and data.get("kind") == "openai" and isinstance(data.get("base_url"), str)
                and refuses_replayed_reasoning(data["base_url"])):
            return data
        shape = data.get("request")
        shape = shape.model_dump(exclude_unset=True) if isinstance(shape, RequestShape) else {} if shape is None else shape
        return {**data, "request": {"reasoning_history": "drop", **shape}} if isinstance(shape, dict) else data

    @model_validator(mode="after")
    def _shape_needs_a_passed_through_body(self) -> "ProviderSpec":
        # The Anthropic and Gemini adapters build their bodies field by field: nothing to rewrite.
        if not self.request.is_identity and self.kind != "openai":
            raise ValueError(f"request: only an `openai` provider's body is passed through and can be rewritten, not {self.kind!r}'s")
        if self.answer_timeout_s is not None and self.answer_timeout_s < self.timeout_s:
            raise ValueError(f"answer_timeout_s ({self.answer_timeout_s:g}) is shorter than timeout_s ({self.timeout_s:g}): a "
                             "whole non-streamed answer cannot come sooner than a stream's first byte")
        return self

    @property
    def answer_wait_s(self) -> float:
        """How long a non-streamed call may take, connecting included, and a stream until its first output."""
        return self.answer_timeout_s if self.answer_timeout_s is not None else max(DEFAULT_ANSWER_TIMEOUT_S, self.timeout_s)


class Profile(_Strict):
    """A named routing profile (`auto`, `auto:cheap`, ...): sets the knob and default limits."""

    willingness_to_pay: float = Field(
        gt=0, description="USD the client pays for +1.0 expected quality (P(good answer)) on one request"
    )
    latency_weight: float = Field(default=0.0, ge=0, description="quality points given up per second of latency")
    max_cost_usd: float | None = Field(default=None, gt=0)
    max_latency_s: float | None = Field(default=None, gt=0)
    allowed_models: frozenset[str] | None = Field(default=None, min_length=1, description="None: every model")
    required_tags: frozenset[str] = frozenset()


class RouterSection(_Strict):
    artifact: str = Field(default="models/default", description="router artifact folder (relative to the config file or the package)")
    profiles: dict[str, Profile] = Field(
        default_factory=lambda: {
            "auto": Profile(willingness_to_pay=0.01),
            "auto:cheap": Profile(willingness_to_pay=0.0005),
            "auto:best": Profile(willingness_to_pay=10.0),
        }
    )
    default_profile: str = "auto"

    @model_validator(mode="after")
    def _default_profile_exists(self) -> "RouterSection":
        if self.default_profile not in self.profiles and "default_profile" not in self.model_fields_set:
            raise BadReference(("router", "profiles"),
                               f"profiles replaces the default profiles ({', '.join(DEFAULT_PROFILES)}) and defines no "
                               f"{self.default_profile!r}, the default profile: add an {self.default_profile!r} profile"
                               + (f", or set router.default_profile to one of {sorted(self.profiles)}" if self.profiles else ""))
        if self.default_profile not in self.profiles:
            raise BadReference(("router", "default_profile"),
                               f"default_profile {self.default_profile!r} is not one of profiles: {sorted(self.profiles)}")
        return self


class ReliabilitySection(_Strict):
    max_retries: int = Field(default=1, ge=0, description="retries on the same model before failing over")
    backoff_base_s: float = Field(default=0.2, ge=0)
    backoff_max_s: float = Field(default=2.0, ge=0)
    max_retry_after_s: float = Field(default=2.0, ge=0, description="longest Retry-After honoured before failing over instead")
    max_fallbacks: int = Field(default=3, ge=0)
    breaker_failures: int = Field(default=5, gt=0, description="consecutive failures that open a model's circuit")
    breaker_cooldown_s: float = Field(default=30.0, gt=0)


class CacheSection(_Strict):
    enabled: bool = True
    path: str | None = Field(default=None, description="folder for the persistent cache; None keeps it in memory")
    ttl_s: float = Field(default=86400.0, gt=0)
    max_entries: int = Field(default=100_000, gt=0)
    max_bytes: int = Field(default=128 * 2**20, gt=0,
                           description="memory the entries may hold (estimated; answers count only without `path`), "
                                       "past which the least recently used are evicted")
    semantic: bool = True
    cache_tool_calls: bool = False
    cache_nonzero_temperature: bool = False
    route_ttl_s: dict[str, Annotated[float, BeforeValidator(no_yes_no), Field(gt=0)]] = Field(
        default_factory=dict, description="TTL per routing profile or model name, overriding ttl_s")
    verifier: str = Field(default="models/cache_verifier", description="semantic-cache verifier artifact folder")
    verifier_threshold: float | None = Field(
        default=None, gt=0, lt=1, description="override of the verifier's shipped threshold (higher: fewer, safer semantic hits)"
    )


class ServerSection(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    db: DbUrl = Field(default="sqlite:///.openclaw/outcomes.sqlite", description="outcome log URL (sqlite:///path or postgresql://...)")
    prompt_storage: Literal["none", "hash", "full"] = "hash"
    max_body_bytes: int = Field(default=8 * 1024 * 1024, gt=0)
    redis_url: RedisUrl | None = None
    # Under the 10 s docker stop and the 30 s Kubernetes give a container before SIGKILL,
    # leaving time to finish the requests cut at the deadline and close the stores.
    shutdown_grace_s: float = Field(default=8.0, ge=0, description="on SIGTERM, how long requests in flight may run before they are cut")
    retention_days: int | None = Field(default=None, ge=1,
                                       description="delete outcome, feedback and shadow rows older than this many days; null keeps them all")
    # Bounds of the `serve` process itself (service/server_limits.py); a proxy in front may bound more.
    max_connections: int | None = Field(default=None, ge=1, description="most client connections at once, 503 past it; "
                                        "null: half of what the open-file limit leaves")
    header_timeout_s: float = Field(default=10.0, gt=0, description="a request's head must arrive within this, or 408")
    body_timeout_s: float = Field(default=60.0, gt=0, description="its body within this of its head, or 408")


class BanditSection(_Strict):
    """Exploration on top of the learned router (router/bandit.py)."""

    enabled: bool = Field(default=False, description="explore with the contextual bandit and log propensities")
    explore_share: float = Field(default=0.02, ge=0, le=1,
                                 description="most of the traffic given a non-greedy model the predictor knows")
    new_model_explore_share: float = Field(
        default=0.05, ge=0, le=1,
        description="most of the traffic given a non-greedy model the router was not trained on (until it has 100 rewards)",
    )
    extra_cost_share: float = Field(default=0.04, ge=0, description="most extra spend of exploring, as a share of the greedy choices' spend")
    utility_margin: float = Field(default=0.02, ge=0, description="explore models whose optimistic utility is this close to the best")
    budget_horizon: float = Field(default=1000.0, ge=1, description="decisions over which the exploration and spend caps hold")
    total_cost_share: float | None = Field(
        default=0.04, ge=0,
        description="most extra spend (at the prices calls turn out to have) of exploring plus refining learned corrections, "
                    "over the predictor's own choice told of detected changes and new models; null: no cap",
    )
    shared: bool = Field(default=False, description="share what the bandit learns with the other replicas over server.redis_url")
    seed: int = Field(default=0, ge=0)


class ShadowSection(_Strict):
    """A candidate router deciding beside the live one; it never changes what the client gets."""

    artifact: str | None = Field(default=None, description="candidate router artifact folder; None disables shadow mode")
    call_share: float = Field(default=0.0, ge=0, le=1, description="share of requests on which the candidate's model is also called")
    max_call_cost_usd: float = Field(default=1.0, ge=0, description="total spend cap for shadow calls per gateway process")


class LearningSection(_Strict):
    bandit: BanditSection = BanditSection()
    shadow: ShadowSection = ShadowSection()
    regenerate_window_s: float = Field(default=120.0, ge=0, description="same prompt again within this window = the first answer failed")


class Config(_Strict):
    models: list[ModelSpec]
    providers: dict[Name, ProviderSpec]
    router: RouterSection = RouterSection()
    reliability: ReliabilitySection = ReliabilitySection()
    cache: CacheSection = CacheSection()
    server: ServerSection = ServerSection()
    learning: LearningSection = LearningSection()
    source: str | None = Field(default=None, exclude=True, description="path of the file this was read from")

    @field_validator("models")
    @classmethod
    def _unique_names(cls, models: list[ModelSpec]) -> list[ModelSpec]:
        seen: set[str] = set()
        for i, m in enumerate(models):
            if m.name in seen or m.name.startswith(KEY_CIRCUIT_PREFIX):
                why = "appears twice" if m.name in seen else f"is reserved: {KEY_CIRCUIT_PREFIX}<entry> names a provider key's circuit"
                raise BadReference(("models", i, "name"), f"model name {m.name!r} {why}")
            seen.add(m.name)
        if not models:
            raise ValueError("at least one model is required")
        return models

    @model_validator(mode="before")
    @classmethod
    def _one_choice_providers(cls, data: Any) -> Any:
        # Anthropic's Messages API and the Gemini adapter answer one choice per request: a request
        # for `n` of them routed there would silently get one.
        if not isinstance(data, dict) or not isinstance(data.get("models"), list) or not isinstance(data.get("providers"), dict):
            return data

        kinds = {name: spec["kind"] for name, spec in data["providers"].items() if isinstance(spec, dict) and isinstance(spec.get("kind"), str)}
        return {**data, "models": [
            {**m, "max_choices": 1} if isinstance(m, dict) and m.get("max_choices") is None and isinstance(m.get("provider"), str)
            and kinds.get(m["provider"]) in ONE_CHOICE_KINDS
            else m
            for m in data["models"]
        ]}

    @model_validator(mode="after")
    def _references_exist(self) -> "Config":
        check_providers(self)
        names_in_order = self.model_names
        names = set(names_in_order)
        for i, m in enumerate(self.models):
            if m.provider not in self.providers:
                raise BadReference(("models", i, "provider"), undefined_provider(i, m.provider, self.providers))
            for f in m.fallbacks:
                if f not in names or f == m.name:
                    raise BadReference(("models", i, "fallbacks"),
                                       f"models[{i}].fallbacks names {f!r}, which is not another model of the catalog")
        tags = {t for m in self.models for t in m.tags}
        for name, profile in self.router.profiles.items():
            # Typos here would make the profile refuse every request, or hide a model.
            if name in names and "profiles" not in self.router.model_fields_set:
                i = names_in_order.index(name)
                raise BadReference(("models", i, "name"),
                                   f"models[{i}].name {name!r} is the name of a default routing profile "
                                   f"({', '.join(DEFAULT_PROFILES)}): requests for it would be routed, never sent to this "
                                   "model; rename the model (or define router.profiles without it)")
            if name in names:
                raise BadReference(("router", "profiles", name),
                                   f"router.profiles.{name} has a model's name: requests for that model would be routed instead")
            for m in profile.allowed_models or ():
                if m not in names:
                    raise BadReference(("router", "profiles", name, "allowed_models"),
                                       f"router.profiles.{name}.allowed_models names {m!r}, which is not a model of the catalog")
            for t in profile.required_tags - tags:
                raise BadReference(("router", "profiles", name, "required_tags"),
                                   f"router.profiles.{name}.required_tags names {t!r}, a tag no model of the catalog has")
        for key in self.cache.route_ttl_s:
            if key not in names and key not in self.router.profiles:
                raise BadReference(("cache", "route_ttl_s", key),
                                   f"cache.route_ttl_s names {key!r}, which is neither a routing profile nor a model")
        if self.learning.bandit.shared and not self.server.redis_url:
            raise BadReference(("learning", "bandit", "shared"),
                               "learning.bandit.shared needs server.redis_url (the replicas share what they learn over Redis)")
        return self

    def model(self, name: str) -> ModelSpec:
        for m in self.models:
            if m.name == name:
                return m
        raise KeyError(name)

    @property
    def model_names(self) -> list[str]:
        return [m.name for m in self.models]

    @property
    def declared_capabilities(self) -> frozenset[str]:
        """Every capability some model of the catalog has."""
        return frozenset().union(*(m.capabilities for m in self.models))


def parse_config(text: str, source: str = "<string>") -> Config:
    try:
        tree, data = read_yaml(text)
    except yaml.YAMLError as exc:
        raise ConfigError(" ".join(filter(None, (syntax_error(exc, text, source), yaml_hint(exc, text).strip())))) from None
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    except RecursionError:  # lists or mappings nested hundreds deep: PyYAML's composer recurses
        raise ConfigError(f"{source}: config nested too deeply") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping with keys models, providers, ...")
    # docker-compose's convention: top-level `x-...` keys hold anchors the rest of the file reuses.
    data = {k: v for k, v in data.items() if not (isinstance(k, str) and k.startswith("x-"))}
    try:
        return Config.model_validate({**data, "source": source})
    except ValidationError as exc:
        quote_yes_no(exc, tree)
        problems = validation_problems(exc, tree, Config)
        # Once the rest is valid the schema finds the first of these itself: each is said once.
        problems += [p for ref in undefined_providers(data) if (p := problem_at(tree, ref.loc, str(ref))) not in problems]
        raise invalid(f"{source}: invalid configuration", problems) from None


def load_config(path: str | Path) -> Config:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        line = exc.object[:exc.start].count(b"\n") + 1
        raise ConfigError(f"cannot read config {path}: not UTF-8 text ({exc.reason} at byte {exc.start}, line {line})") from None
    return parse_config(text, str(path))


def resolve_sqlite_url(config: Config, url: str) -> str:
    """A relative `sqlite:///` path written in a config file is relative to that file, as the
    cache folder is: started from another directory, the same config must open the same log
    (and the same governance keys), not an empty one beside the working directory."""
    prefix = "sqlite:///"
    if not url.startswith(prefix) or url[len(prefix):] in ("", ":memory:"):
        return url
    return prefix + str(resolve_path(config, url[len(prefix):], created=True))


def resolve_path(config: Config, value: str, created: bool = False) -> Path:
    """Relative paths in a config file are relative to that file, else to the working directory.
    A path the gateway creates (`created`, e.g. the cache folder) is always relative to the file,
    so that the same config finds the same folder from any working directory."""
    p = Path(value).expanduser()
    if p.is_absolute():
        return p
    if config.source and Path(config.source).exists():
        candidate = Path(config.source).parent / p
        if created or candidate.exists():
            return candidate
    return p
