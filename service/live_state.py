"""Live per-model health measured by the gateway, read by the router on every decision.

EWMA latency and time-to-first-token correct the router's predicted latency; the error rate,
the in-flight count, the circuit breaker and the RPM/TPM window decide whether a model is
`healthy` (eligible) right now.

A refused key is the provider entry's, not one model's: beside each model's circuit the breaker
holds one for each provider's key (under `key_circuit`'s name: in Redis too, so replicas share
it). Key refusals of any of the provider's models count toward it, and once it opens every one of
them is left out, so routed traffic goes straight to another provider instead of spending a call
on each model to learn the same thing. Its half-open probe is the next call to any of them: an
answer closes it, with the circuits those refusals opened (a fixed key fixes all the models); a
refusal re-opens it. A 403 stays the model's own (`refuses_key`).

A model whose provider's key variable is unset (`key_missing`) is not healthy either, but with a
reason of its own in the router's view (`snapshot`, `LiveStats.excluded`): no retry helps it, only the
operator setting the variable. It is read on every decision, so the model is eligible again on the
request after the variable is set.
"""
from __future__ import annotations

import math
import os
import threading
from dataclasses import dataclass, replace

from router.config import KEY_CIRCUIT_PREFIX, Config
from router.types import LiveStats
from service.breaker import CircuitBreaker, Claim, RateWindow, probe_lapse_s

ALPHA = 0.2  # weight of the newest observation: ~5 requests of memory, quick to notice a slowdown
KEY_MISSING = "key_missing"  # how the exclusion of a model whose key variable is unset begins
# How the exclusion of a model whose circuit its upstream's 404 model_not_found opened begins: the
# upstream does not know the model's name, which no wait mends (the circuit's probe still re-tries it).
UPSTREAM_UNKNOWN = "unknown upstream"
# A request with more input tokens than a model's TPM limit: no minute's window takes it, so it is
# no wait a retry outlasts (a routed request every model refuses so is a 413, as a named one is).
OVER_TPM = "over its tpm limit"


@dataclass
class _Model:
    latency_s: float | None = None
    ttft_s: float | None = None
    error_rate: float = 0.0
    in_flight: int = 0
    last_failure: str | None = None  # the kind of its latest failed call
    refused_key: bool = False  # its latest failure was its provider refusing the key


def key_circuit(provider: str) -> str:
    """The breaker's name for the circuit of a provider entry's key."""
    return f"{KEY_CIRCUIT_PREFIX}{provider}"


def refuses_key(kind: str, status: int | None) -> bool:
    """Whether a failure refuses the provider's key or account, so every model of the provider
    entry: a 401 or a classified account refusal (out of credit, billing off, a key not valid,
    its variable unset). Not a 403: a provider may deny one model (Anthropic's permission_error,
    a proxy's per-key model list) to a key that serves the others. Not a 402: OpenRouter answers
    one for a request whose output limit on a dear model the credit left cannot cover ("can only
    afford N tokens"), while its cheaper models still answer."""
    return kind == "auth" and status not in (402, 403)


def _ewma(old: float | None, new: float) -> float:
    return new if old is None else (1 - ALPHA) * old + ALPHA * new


class LiveState:
    def __init__(self, config: Config, breaker: CircuitBreaker | None = None, rates: RateWindow | None = None):
        rel = config.reliability
        self.limits = {m.name: m.limits for m in config.models}
        self.breaker = breaker or CircuitBreaker(rel.breaker_failures, rel.breaker_cooldown_s,
                                                 probe_lapse_s=probe_lapse_s(config))
        self.rates = rates or RateWindow()
        self._models: dict[str, _Model] = {m.name: _Model() for m in config.models}
        self._key_of = {m.name: key_circuit(m.provider) for m in config.models}
        self._key_env = {m.name: config.providers[m.provider].api_key_env for m in config.models}
        self._served: dict[str, list[str]] = {}  # a key circuit: the models it closes off
        for m in config.models:
            self._served.setdefault(self._key_of[m.name], []).append(m.name)
        self._lock = threading.Lock()

    def _m(self, model: str) -> _Model:
        return self._models.setdefault(model, _Model())

    def started(self, model: str, input_tokens: int) -> bool:
        """Count a call about to be made; False (and nothing counted) when the model's RPM/TPM
        window has no room left for it."""
        if not self.rates.add(model, input_tokens, limits=self.limits.get(model)):
            return False
        with self._lock:
            self._m(model).in_flight += 1
        return True

    def window_wait_s(self, model: str, input_tokens: int) -> float:
        """How long until the model's own RPM/TPM window takes a request of this size."""
        limits = self.limits.get(model)
        return self.rates.wait_s(model, limits, input_tokens) if limits is not None else 0.0

    def hold(self, model: str) -> None:
        """Count a call as in flight without counting a new request (a stream past its first token)."""
        with self._lock:
            self._m(model).in_flight += 1

    def finished(self, model: str) -> None:
        with self._lock:
            m = self._m(model)
            m.in_flight = max(0, m.in_flight - 1)

    def acquire(self, model: str) -> Claim | None:
        """Claim the right to call the model (None: not now): its provider's key circuit first
        (half-open, one caller probes it for all the provider's models), then its own."""
        key = self._key_of[model]
        outer = self.breaker.acquire(key)
        if outer is None:
            return None
        own = self.breaker.acquire(model)
        if own is None:
            self.breaker.release(key, outer)
            return None
        return own if outer.probe is None else replace(own, key_probe=outer.probe)

    def release(self, model: str, claim: Claim) -> None:
        """A call that ended without a verdict: the probes it held go to the next caller."""
        self.breaker.release(model, claim)
        if claim.key_probe is not None:
            self.breaker.release(self._key_of[model], Claim(claim.key_probe))

    def circuit(self, model: str) -> str:
        """The state of the model's circuit and its provider's key circuit together."""
        states = (self.breaker.state(model), self.breaker.state(self._key_of[model]))
        return next((s for s in ("open", "blocked", "half_open") if s in states), "closed")

    def available(self, model: str) -> bool:
        return self.circuit(model) in ("closed", "half_open")

    def reopens_in(self, model: str) -> float:
        """Seconds until the model and its provider's key circuit may be called again (0: now)."""
        return max(self.breaker.reopens_in(model), self.breaker.reopens_in(self._key_of[model]))

    def key_refused(self, model: str) -> bool:
        """The model's circuit is open because its provider refuses the key: the key circuit, or
        its own opened by its own refusals (a 403 among them)."""
        if self.breaker.state(self._key_of[model]) == "open":
            return True
        return self.breaker.state(model) == "open" and self.last_failure(model) == "auth"

    def key_missing(self, model: str) -> str | None:
        """The variable that should hold the model's key, when it is unset or blank now (read as
        the provider reads it, on every call): the model cannot be called at all."""
        name = self._key_env.get(model)
        return name if name and not (os.environ.get(name) or "").strip() else None

    def left_out_for_key(self, model: str) -> bool:
        """Left out for its refused key and nothing else: one also waiting out a Retry-After or
        its own RPM/TPM window is busy, worth the retry a 503 invites (it was that before the
        refusals opened the key circuit, and stays so after)."""
        limits = self.limits.get(model)
        busy = self.breaker.blocked_for(model) > 0 or (limits is not None and not self.rates.has_room(model, limits, 0))
        return not busy and self.key_refused(model)

    def answered(self, model: str) -> list[str]:
        """The model answered: its circuit closes, and its provider's key circuit with it. When that
        was not closed, the key works again: the circuits its refusals opened close too. The
        models whose circuits this closed."""
        key = self._key_of[model]
        recovers = self.breaker.state(key) != "closed"
        self.breaker.success(model)
        self.breaker.success(key)
        if not recovers:
            return [model]
        with self._lock:
            refused = [m for m in self._served[key] if m != model and self._m(m).refused_key]
        for m in refused:
            self.breaker.success(m)
        return [m for m in self._served[key] if self.breaker.state(m) in ("closed", "blocked")]

    def succeeded(self, model: str, latency_s: float | None, ttft_s: float | None, output_tokens: int) -> list[str]:
        """Record an answer; the models whose circuits it closed (`answered`)."""
        closed = self.answered(model)
        if output_tokens:
            self.rates.add(model, output_tokens, request=False)
        with self._lock:
            m = self._m(model)
            if latency_s is not None:
                m.latency_s = _ewma(m.latency_s, latency_s)
            if ttft_s is not None:
                m.ttft_s = _ewma(m.ttft_s, ttft_s)
            m.error_rate = _ewma(m.error_rate, 0.0)
        return closed

    def abandoned(self, model: str, claim: Claim, ttft_s: float, output_tokens: int) -> None:
        """A stream its client left after the first token: no verdict on the model and no
        latency sample, only the time to first token it showed."""
        self.release(model, claim)
        if output_tokens:
            self.rates.add(model, output_tokens, request=False)
        with self._lock:
            m = self._m(model)
            m.ttft_s = _ewma(m.ttft_s, ttft_s)

    def failed(self, model: str, claim: Claim, kind: str, retry_after_s: float | None = None,
               counts_against_model: bool = True, status: int | None = None) -> list[str]:
        """Record a failed attempt (an UpstreamError's `kind` and HTTP `status`); the models it
        closed off: the model when it opened its circuit, all its provider's when a refusal of the
        key (`refuses_key`) opened the key circuit."""
        if not counts_against_model:
            self.release(model, claim)
            return []
        key_refusal = refuses_key(kind, status)
        with self._lock:
            m = self._m(model)
            m.error_rate = _ewma(m.error_rate, 1.0)
            m.last_failure = kind
            m.refused_key = key_refusal
        # The model's own circuit counts a key refusal too: the circuit alert names the model
        # the upstream refused, once, not each model the key circuit closes off.
        closed = [model] if self.breaker.failure(model, retry_after_s, kind == "rate_limit") else []
        key = self._key_of[model]
        if key_refusal:
            if self.breaker.failure(key):
                return list(self._served[key])
        elif claim.key_probe is not None:
            self.breaker.release(key, Claim(claim.key_probe))  # a 403, a 5xx, a timeout: nothing of the key
        return closed

    def last_failure(self, model: str) -> str | None:
        with self._lock:
            return self._m(model).last_failure

    def stats(self, model: str, request_tokens: int = 0) -> LiveStats:
        with self._lock:
            m = self._m(model)
            latency, ttft, err, inflight = m.latency_s, m.ttft_s, m.error_rate, m.in_flight
        limits = self.limits.get(model)
        room = limits is None or self.rates.has_room(model, limits, request_tokens)
        return LiveStats(
            ewma_latency_s=latency,
            ewma_ttft_s=ttft,
            error_rate=err,
            in_flight=inflight,
            healthy=room and self.available(model),
        )

    def snapshot(self, request_tokens: int = 0) -> dict[str, LiveStats]:
        """Every model's live view for one decision (`request_tokens` checks the TPM headroom): its
        `stats`, or, while its key variable is unset (read now: set, it counts at once) or while the
        circuit its upstream's model_not_found opened is open, not healthy with that reason."""
        unset = {env for env in set(self._key_env.values()) if env and not (os.environ.get(env) or "").strip()}
        view: dict[str, LiveStats] = {}
        for name in list(self._models):
            s, env = self.stats(name, request_tokens), self._key_env.get(name)
            if env in unset:
                s = replace(s, healthy=False, excluded=f"{KEY_MISSING}: {env} not set")
            elif not s.healthy and self.window_wait_s(name, request_tokens) == math.inf:
                s = replace(s, healthy=False, excluded=f"{OVER_TPM}: {self.limits[name].tpm} tokens a minute, fewer than "
                            f"the request's {request_tokens} input tokens")
            elif not s.healthy and self.last_failure(name) == "not_found" and self.breaker.state(name) == "open":
                # Not "unhealthy": a request left with only this model is not told to retry in a second.
                s = replace(s, healthy=False, excluded=f"{UPSTREAM_UNKNOWN}: its upstream answered 404 model_not_found")
            view[name] = s
        return view

    def describe(self) -> dict[str, dict]:
        """JSON view for /healthz: a model whose key variable is unset is not healthy, with the
        `reason` (the router's view, `snapshot`, leaves it out of every decision)."""
        out = {}
        for name in list(self._models):
            s = self.stats(name)
            requests, tokens = self.rates.usage(name)
            missing = self.key_missing(name)
            out[name] = {
                "healthy": s.healthy and not missing,
                "circuit": self.circuit(name),
                "ewma_latency_s": s.ewma_latency_s,
                "ewma_ttft_s": s.ewma_ttft_s,
                "error_rate": round(s.error_rate, 4),
                "in_flight": s.in_flight,
                "requests_last_min": requests,
                "tokens_last_min": tokens,
            }
            if missing:
                out[name]["reason"] = f"{missing} not set"
        return out
