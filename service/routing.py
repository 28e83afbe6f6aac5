"""From a chat request to a routing decision: model name resolution, per-request limits, the
hot-swappable router and the call into it.

`model` is either a routing profile (`auto`, `auto:cheap`, `auto:best`, any name under
`router.profiles`), which routes, or a catalog model name, which is honoured as named (no
routing, no failover to another model: the client asked for that model). Per-request limits
come from the body (`"router": {...}`, the SDK's `extra_body`) or `x-router-*` headers (each
body field's name with `-` for `_`; an unknown one is a 400, as an unknown body field is);
the body wins when both are given.
"""
from __future__ import annotations

import functools
import math
import os
import threading
from typing import TYPE_CHECKING, Any, Callable, Mapping, Protocol, Sequence

import numpy as np

from router.config import Config, ModelSpec, Profile
from router.request_view import output_limit
from router.types import Constraints, Decision, LiveStats, RoutingRequest
from service.errors import (
    ApiError, bad_request, did_you_mean, key_missing, key_refused, model_not_found, over_tpm_everywhere, rate_limited,
)
from service.live_state import KEY_MISSING, OVER_TPM
from service.schemas import RouterOptions

if TYPE_CHECKING:
    from service.gateway import Gateway

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


class Router(Protocol):
    def route(self, request: RoutingRequest, *, catalog: list[ModelSpec], profile: Profile,
              constraints: Constraints, live: Mapping[str, LiveStats] | None,
              embedding: np.ndarray | None) -> Decision: ...


def artifact_of(router: Router | None) -> str | None:
    """The folder a learned router was loaded from, absolute (the outcome log records it, so
    `retrain` knows which router made the logged decisions); None for another kind of router."""
    path = getattr(router, "path", None)
    return None if path is None else _absolute(str(path))


def proxies_of(router: Router | None, catalog: Sequence[ModelSpec]) -> dict[str, str]:
    """The catalog models a learned router predicts through another model's name (`router_model`,
    until retraining learns their own), by public name: the outcome log records them, so that
    retraining and shadow reports replay the same predictions (the live router's choices, had
    they been judged with the unseen-model prior for these, were not its own)."""
    artifact_name = getattr(router, "artifact_name", None)
    if artifact_name is None:
        return {}
    return {spec.name: name for spec in catalog if (name := artifact_name(spec)) != spec.name}


@functools.lru_cache(maxsize=16)
def _absolute(path: str) -> str:
    return os.path.abspath(path)  # once per artifact, not on every routed request


class RouterSlot:
    """The live router, replaceable while serving: `swap` is atomic (one reference store), so
    a request keeps the router it started with and the next one gets the new router."""

    def __init__(self, router: Router | None = None):
        self._current = router
        self._lock = threading.Lock()
        self._on_swap: list[Callable[[Router], None]] = []

    @property
    def current(self) -> Router | None:
        return self._current

    def on_swap(self, callback: Callable[[Router], None]) -> None:
        """Call `callback(new)` after every swap (state derived from the router follows it)."""
        self._on_swap.append(callback)

    def swap(self, new: Router) -> Router | None:
        with self._lock:
            old, self._current = self._current, new
        for callback in self._on_swap:
            callback(new)
        return old


def resolve_model(name: str, config: Config, usable: Callable[[str], bool] = lambda _: True) -> str | None:
    """The routing profile `name` selects, or None for a concrete catalog model. An unknown name's
    404 suggests the profiles and models `usable` lets the caller use."""
    if name in config.router.profiles:
        return name
    if name in config.model_names:
        return None
    raise model_not_found(name, [n for n in (*config.router.profiles, *config.model_names) if usable(n)])


def _header_list(name: str, value: str) -> list[str] | None:
    """A comma-separated header; one naming nothing (", ") is no limit, as an empty one is."""
    items = [v.strip() for v in value.split(",") if v.strip()]
    return items or None


def _header_float(name: str, value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise bad_request(f"header {name} must be a number, got {value!r}", param=name) from None
    if not 0 < number < math.inf:  # as the body's field: "inf" is no limit to set
        raise bad_request(f"header {name} must be a positive finite number, got {value!r}", param=name)
    return number


def _header_bool(name: str, value: str) -> bool:
    if value.strip().lower() in _TRUE:
        return True
    if value.strip().lower() in _FALSE:
        return False
    raise bad_request(f"header {name} must be true or false, got {value!r}", param=name)


# Each body field under its own name (`_` as `-`), and the shorter names the headers had first.
HEADER_FIELDS = {
    **{f"x-router-{name.replace('_', '-')}": name for name in RouterOptions.model_fields},
    "x-router-max-cost": "max_cost_usd",
    "x-router-max-latency": "max_latency_s",
}
_PARSE: dict[str, Callable[[str, str], Any]] = {
    "max_cost_usd": _header_float, "max_latency_s": _header_float, "allowed_models": _header_list,
    "excluded_models": _header_list, "required_tags": _header_list, "local_only": _header_bool,
}
# What the gateway sets on its answers (api_chat, the governance hook): sent back, they limit nothing.
_RESPONSE_HEADERS = frozenset({"x-router-model", "x-router-reason", "x-router-profile", "x-router-budget"})


def _unknown_header(name: str) -> ApiError:
    """A header the gateway would otherwise ignore: a misspelt cap would silently not apply."""
    valid = ", ".join(HEADER_FIELDS)
    if name in _RESPONSE_HEADERS:
        return bad_request(f"header {name} is one the gateway sets on its answers, not a request limit; the x-router-* "
                           f"request headers are {valid}", code="unknown_parameter", param=name)
    return bad_request(f"unknown header {name}{did_you_mean(name, HEADER_FIELDS)}; the x-router-* request headers are {valid}",
                       code="unknown_parameter", param=name)


def _header_values(headers: Mapping[str, str], name: str) -> list[str]:
    """Every value a header was sent with, the empty ones left out: a header sent twice is one
    list (RFC 9110), and its first value alone had dropped a limit without a word."""
    getlist = getattr(headers, "getlist", None)
    values = getlist(name) if getlist is not None else [headers[name]]
    return [v for v in values if v.strip()]


def options_from_headers(headers: Mapping[str, str]) -> RouterOptions:
    given: dict[str, tuple[str, str]] = {}  # a RouterOptions field: (the header naming it, its value)
    for raw_name in dict.fromkeys(headers.keys()):
        name = raw_name.lower()
        if not name.startswith("x-router-"):
            continue
        field = HEADER_FIELDS.get(name)
        if field is None:
            raise _unknown_header(name)
        values = _header_values(headers, raw_name)
        if not values:
            continue  # empty, whatever its kind: no limit (a templated client's unset variable), nor a second spelling
        if field in given and given[field][0] != name:
            raise bad_request(f"headers {given[field][0]} and {name} set the same limit: send one", param=name)
        if _PARSE[field] is _header_list:
            given[field] = (name, ",".join(values))
        elif len({v.strip() for v in values}) > 1:
            raise bad_request(f"header {name} was sent with {len(values)} different values: send one", param=name)
        else:
            given[field] = (name, values[0])
    return RouterOptions(**{field: _PARSE[field](name, value) for field, (name, value) in given.items()})


def build_constraints(body_options: RouterOptions | None, headers: Mapping[str, str], config: Config) -> Constraints:
    merged: dict[str, Any] = options_from_headers(headers).model_dump(exclude_none=True)
    if body_options is not None:
        merged.update(body_options.model_dump(exclude_none=True))
    known = set(config.model_names)
    for key in ("allowed_models", "excluded_models"):
        unknown = [m for m in merged.get(key) or () if m not in known]
        if unknown:
            raise bad_request(f"router.{key} names unknown models: {', '.join(unknown)}", code="model_not_found", param=f"router.{key}")
    tags = set(merged.get("required_tags") or ())
    if merged.get("local_only"):
        tags.add("local")
    allowed = merged.get("allowed_models")
    return Constraints(
        allowed_models=frozenset(allowed) if allowed is not None else None,
        excluded_models=frozenset(merged.get("excluded_models") or ()),
        required_tags=frozenset(tags),
        max_cost_usd=merged.get("max_cost_usd"),
        max_latency_s=merged.get("max_latency_s"),
    )


def refuse_outside_limits(spec: ModelSpec, limits: Constraints, request: RoutingRequest) -> None:
    """A model the client names is called as asked, but not against the request's own limits:
    `local_only` beside a model without the tag sent the prompt off the machine with a 200. Cost
    and latency are checked on their lower bounds (the prompt alone, the first token), as the
    named model's fallbacks are (service.dispatch.failover_chain)."""
    why = []
    if not limits.in_scope(spec.name, spec.tags):
        missing = sorted(limits.required_tags - spec.tags)
        why.append(f"it lacks the tag(s) {', '.join(missing)} the request requires" if missing
                   else "the request's allowed_models or excluded_models leave it out")
    if limits.max_cost_usd is not None and spec.price.cost(request.input_tokens, 0) > limits.max_cost_usd:
        why.append(f"its prompt alone costs more than the request's max_cost_usd ({limits.max_cost_usd:g})")
    if limits.max_latency_s is not None and spec.ttft_s > limits.max_latency_s:
        why.append(f"its time to first token ({spec.ttft_s:g} s) is over the request's max_latency_s ({limits.max_latency_s:g})")
    if why:
        raise bad_request(f"model {spec.name} is ruled out by this request's own limits: {'; '.join(why)}. Name "
                          "another model, or ask for a routing profile such as auto", code="model_not_allowed", param="model")


def decide(router: Router | None, request: RoutingRequest, *, config: Config, profile: str,
           constraints: Constraints, live: Mapping[str, LiveStats], embedding: np.ndarray | None,
           blocked_for: Callable[[str], float] | None = None, key_refused_by: Callable[[str], bool] | None = None,
           reopens_in: Callable[[str], float] | None = None, output_field: str = "max_tokens") -> Decision:
    """Route one request; an impossible request is a 4xx, an unhealthy catalog a 503, or a 429
    when every model it could use is waiting out its upstream's Retry-After or its own RPM/TPM
    window (`blocked_for`), a 413 when its input is over the TPM limit of every one, or a
    502 when every one's circuit opened on its provider refusing the key (`key_refused_by`) or its
    key variable is unset (`KEY_MISSING`). The 503's Retry-After is when the first of them may be
    called again (`reopens_in`: the cooldown of an open circuit)."""
    from router.policy import NoEligibleModel

    if router is None:
        raise ApiError(503, "no router artifact is loaded: name a model instead of a profile, or configure router.artifact",
                       code="router_unavailable")
    try:
        return router.route(request, catalog=config.models, profile=config.router.profiles[profile],
                            constraints=constraints, live=live, embedding=embedding)
    except NoEligibleModel as exc:
        # The policy checks health after every limit of the request: a model named here would be
        # eligible but for it, so a request its own limits rule out everywhere never gets the 503.
        unhealthy = [c.model for c in exc.candidates if (c.excluded or "").startswith("unhealthy")]
        # Only the policy's reason names them: a model out of the request's scope says that instead.
        keyless = [c.model for c in exc.candidates if (c.excluded or "").startswith(KEY_MISSING)]
        if unhealthy:
            waits = [blocked_for(m) for m in unhealthy] if blocked_for is not None else []
            if waits and all(waits):
                raise rate_limited(f"every eligible model is rate limited (by its upstream or by its configured rpm/tpm "
                                   f"limit): {exc}", waits) from None
            if key_refused_by is not None and all(key_refused_by(m) for m in unhealthy):
                raise key_refused(unhealthy, config, keyless) from None
            wait = min(reopens_in(m) for m in unhealthy) if reopens_in is not None else 0.0
            raise ApiError(503, f"no eligible model is available right now: {exc}", code="no_model_available",
                           headers={"retry-after": str(max(1, math.ceil(wait)))}) from None
        if keyless:  # the operator's to fix, as when the dispatcher skips a named model for it
            raise key_missing(keyless, config) from None
        reasons = [c.excluded or "" for c in exc.candidates]
        if any(why.startswith(OVER_TPM) for why in reasons) and all(why.startswith(_OUT_OF_SCOPE + (OVER_TPM,)) for why in reasons):
            raise over_tpm_everywhere(request.input_tokens) from None  # as for a named model: no retry helps
        too_long = [c.model for c, why in zip(exc.candidates, reasons) if why.startswith("context window")]
        if too_long and all(why.startswith(_OUT_OF_SCOPE + ("context window",)) for why in reasons):
            # What agent clients look for to compact the conversation (OpenAI's code and wording),
            # not a generic refusal.
            largest = max(config.model(m).context_window for m in too_long)
            asked = request.max_output_tokens
            if asked is not None and request.input_tokens + min(asked, 1024) <= largest:
                # The messages fit with room for an answer; the output limit asked for does not:
                # compacting would not help.
                raise ApiError(400, f"The largest context window among the models this request may use is {largest} "
                               f"tokens; its messages come to about {request.input_tokens} tokens, which leaves less "
                               f"than the {asked} output tokens asked for. Lower {output_field}.",
                               code="invalid_value", param=output_field) from None
            raise ApiError(400, f"This request's maximum context length is {largest} tokens (the largest window among "
                           f"the models it may use); its messages come to about {request.input_tokens} tokens, which "
                           "leaves no room for an answer. Please reduce the length of the messages.",
                           code="context_length_exceeded", param="messages") from None
        raise ApiError(400, str(exc), code="no_eligible_model") from None


def decide_for(gw: Gateway, router: Router | None, request: RoutingRequest, body: Mapping[str, Any], *, profile: str,
               constraints: Constraints, live: Mapping[str, LiveStats], embedding: np.ndarray | None) -> Decision:
    """`decide` as the gateway decides a chat body, with what its live state knows (the models
    waiting out a Retry-After, the providers refusing their key) and the output-limit field the
    body used. Chat and `/v1/route` both decide through this, so a refusal is the same on both."""
    def waits_for(model: str) -> float:
        # An upstream's Retry-After, or the model's own RPM/TPM window: either way a 429 with the
        # wait, not a 503 to retry every second for a minute.
        return max(gw.live.breaker.blocked_for(model), gw.live.window_wait_s(model, request.input_tokens))

    return decide(router, request, config=gw.config, profile=profile, constraints=constraints, live=live,
                  embedding=embedding, blocked_for=waits_for, key_refused_by=gw.live.left_out_for_key,
                  reopens_in=gw.live.reopens_in, output_field=output_limit(body)[1])


# Exclusions by the request's own scope and needs: beside them, a window too small for every model
# left is the request's length, nothing else.
_OUT_OF_SCOPE = ("not in allowed models", "excluded by request", "lacks capability", "lacks tag")
