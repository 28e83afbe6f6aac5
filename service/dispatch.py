"""The attempt loop: retries, backoff, failover and stream holding.

For each model of the chain (the chosen model, then the router's ranked fallbacks; for a
model named by the client, its configured `fallbacks` that the request's limits allow) the loop
skips models that cannot take the request (context window too small, circuit open, its
provider's key variable unset), calls the upstream, retries transient faults on the same model
with jittered exponential backoff (honouring `Retry-After` up to `reliability.max_retry_after_s`,
beyond which failing over is faster), and fails over on rate limits, 5xx, timeouts, connection faults, malformed
answers, context-length and model-not-found errors. When every model was rate limited and the
soonest is free again within `max_retry_after_s`, it waits for it and goes round once more.
A client error (400) is returned as is.

Streams are held until the first chunk that carries output (text, a tool call, a refusal, a
reasoning delta or a finish: service.sse.carries_output): a failure before it fails over
without the client noticing; after it the client owns a partial answer (its thinking counts)
and the stream ends with an explicit error event (see api_chat). A thinking model's stream
thus opens with its first reasoning delta, not minutes later with its first answer token.

A client that has left gets no further attempt, retry or failover (ClientGone), and a stream
it was waiting on is cut at once. A non-streamed call in flight is let finish: most providers
bill it all the same, and its answer may be cached for the SDK's retry.
"""
from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Awaitable, Callable, Mapping, TypeVar

import anyio

from router.config import Config, ModelSpec
from router.types import Constraints
from service.breaker import Claim
from service.errors import ApiError, key_missing, key_refused, over_tpm_everywhere, rate_limited
from service.live_state import KEY_MISSING, LiveState, refuses_key
from service.metrics import Metrics
from service.pipeline import RequestContext
from service.providers.base import Provider, UpstreamError
from service.request_summary import failures
from service.stream_deadlines import Paced, up_to_first_output

Sleep = Callable[[float], Awaitable[None]]
T = TypeVar("T")
log = logging.getLogger(__name__)
AUTH_LOG_EVERY_S = 60.0


class ClientGone(Exception):
    """The client closed its connection before a model answered: nothing more is tried for it."""


async def client_gone(ctx: RequestContext) -> bool:
    """Whether the request's client has closed its connection. Shielded: a request cancelled at
    the shutdown deadline asks it too, and the question must not be cancelled with it."""
    gone = ctx.extras.get("client_gone")
    if gone is None:
        return False
    with anyio.CancelScope(shield=True):
        return await gone()


async def _unless_client_leaves(ctx: RequestContext, attempt: Awaitable[T]) -> T:
    """`attempt`'s result, or ClientGone as soon as the client disconnects: the attempt is
    cancelled, which closes its upstream connection."""
    until_left = ctx.extras.get("until_client_leaves")
    if until_left is None:
        return await attempt
    with anyio.CancelScope() as scope:
        watcher = asyncio.ensure_future(_cancel_when_left(until_left, scope))
        try:
            return await attempt
        finally:
            watcher.cancel()
    raise ClientGone()


async def _cancel_when_left(until_left: Callable[[], Awaitable[None]], scope: anyio.CancelScope) -> None:
    await until_left()
    scope.cancel()


@dataclass
class OpenStream:
    """A stream that has produced its first output: the model, what was held back, the rest."""

    model: ModelSpec
    held: list[dict[str, Any]]
    rest: AsyncIterator[dict[str, Any]]
    started: float
    ttft_s: float
    attempt: dict[str, Any] = field(default_factory=dict)
    claim: Claim = field(default_factory=Claim)


def usage_tokens(usage: Mapping[str, Any] | None) -> tuple[int | None, int | None]:
    if not usage:
        return None, None
    return usage.get("prompt_tokens"), usage.get("completion_tokens")


def _rate_limited(attempt: Mapping[str, Any]) -> bool:
    """An attempt that failed, or a model skipped, because of a rate limit (upstream or its own)."""
    return attempt.get("kind") == "rate_limit" or attempt.get("reason") in ("rate_limited", "rate_window")


def failover_chain(config: Config, ctx: RequestContext) -> list[str]:
    """The models a request may be answered by, in order. A routed request fails over along the
    router's ranking (every one of them already passed the hard constraints; the dispatcher
    stops after `reliability.max_fallbacks` failovers that were not rate limits); a named model
    along its configured `fallbacks`, skipping those the request's limits or needs rule out
    (a local-only request never fails over to a cloud model)."""
    # Set by governance: models whose worst case the request's reservation or the key's
    # per-request ceiling does not cover.
    unaffordable = ctx.extras.get("unaffordable", frozenset())
    if ctx.decision is not None:
        return [ctx.decision.model, *(m for m in ctx.decision.fallbacks() if m not in unaffordable)]
    try:
        named = config.model(ctx.requested_model)
    except KeyError:
        return [ctx.requested_model]
    limits: Constraints = ctx.extras.get("constraints") or Constraints()

    def within_limits(spec: ModelSpec) -> bool:
        # Lower bounds (the prompt alone, the first token alone): a fallback is left out only
        # when it certainly breaks the request's cap.
        if limits.max_cost_usd is not None and spec.price.cost(ctx.routing.input_tokens, 0) > limits.max_cost_usd:
            return False
        return limits.max_latency_s is None or spec.ttft_s <= limits.max_latency_s

    allowed = [
        f for f in named.fallbacks
        if limits.in_scope(f, config.model(f).tags) and set(ctx.routing.needs) <= set(config.model(f).capabilities)
        and config.model(f).takes_choices(ctx.routing.answers)
        and within_limits(config.model(f)) and f not in unaffordable
    ]
    return [named.name, *allowed]


@dataclass
class _Tries:
    """What one request's attempts have learnt so far, across laps of the chain."""

    errors: list[UpstreamError] = field(default_factory=list)
    smallest_failed_window: int | None = None
    # Models called that failed other than by a rate limit. A 429 or a model skipped while
    # rate limited costs no time, and OpenClaw retries a 429 for minutes instead of failing
    # over: a routed request goes on down the ranking while any model is not rate limited.
    failed: int = 0


class Dispatcher:
    def __init__(
        self,
        config: Config,
        providers: Mapping[str, Provider],
        live: LiveState,
        metrics: Metrics,
        sleep: Sleep = asyncio.sleep,
    ):
        self.config = config
        self.rel = config.reliability
        self.specs = {m.name: m for m in config.models}
        self.providers = providers
        self.live = live
        self.metrics = metrics
        self._sleep = sleep
        self._auth_logged: dict[tuple[str, str], tuple[float, str | None]] = {}

    # -- the chain -------------------------------------------------------------------------
    def chain(self, ctx: RequestContext) -> list[str]:
        return failover_chain(self.config, ctx)

    def _fits(self, spec: ModelSpec, ctx: RequestContext, smallest_failed_window: int | None) -> bool:
        # The output limit as this model will be sent it, as the policy counted it.
        needed = ctx.routing.input_tokens + (spec.output_cap(ctx.routing.max_output_tokens) or 0)
        if smallest_failed_window is not None and spec.context_window <= smallest_failed_window:
            return False
        return needed <= spec.context_window

    def _backoff(self, retry: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return retry_after + 0.001  # just past the block: a wake-up on its last tick found the model blocked and gave up
        ceiling = min(self.rel.backoff_max_s, self.rel.backoff_base_s * (2**retry))
        return ceiling * random.uniform(0.5, 1.0)

    def _record(self, ctx: RequestContext, model: str, status: str, **info: Any) -> dict[str, Any]:
        entry = {"model": model, "status": status, **{k: v for k, v in info.items() if v is not None}}
        ctx.attempts.append(entry)
        return entry

    def _on_error(self, ctx: RequestContext, spec: ModelSpec, err: UpstreamError, started: float, retry: int,
                  claim: Claim) -> None:
        self._record(
            ctx, spec.name, "error", kind=err.kind, http_status=err.status, message=err.message[:300],
            latency_s=round(time.perf_counter() - started, 4), retry=retry, retry_after_s=err.retry_after,
        )
        self.metrics.attempts.labels(spec.name, err.kind).inc()
        key_refusal = refuses_key(err.kind, err.status)
        if err.kind == "auth":
            self._log_refusal(spec, err, key_refusal)
        # A 400 or an oversized prompt says nothing about the model's health.
        blames_model = err.kind not in ("bad_request", "unsupported", "context_length")
        retry_after = err.retry_after if err.kind == "rate_limit" else None
        closed = self.live.failed(spec.name, claim, err.kind, retry_after, counts_against_model=blames_model, status=err.status)
        if key_refusal and len(closed) > 1:  # the provider's key circuit opened, not only the model's
            log.warning("provider %s refuses the gateway's key: its models %s are left out; one call probes the key "
                        "after %gs", spec.provider, ", ".join(closed), self.rel.breaker_cooldown_s)
        self._circuits(closed, 1)

    def _log_refusal(self, spec: ModelSpec, err: UpstreamError, key_refusal: bool) -> None:
        """The client is told that the key is refused; the operator reads why here: once a minute a
        provider for its key (every model of it is refused alike), a model for a 403, and at once
        when the reason changes (the variable fixed, the upstream still refuses the key)."""
        gate = ("provider", spec.provider) if key_refusal else ("model", spec.name)
        at, said = self._auth_logged.get(gate, (-AUTH_LOG_EVERY_S, None))
        if time.monotonic() - at >= AUTH_LOG_EVERY_S or said != err.message:
            self._auth_logged[gate] = (time.monotonic(), err.message)
            who = f"provider {spec.provider} (model {spec.name})" if key_refusal else f"model {spec.name}"
            log.warning("%s: %s", who, err.message)

    def _log_key_missing(self, spec: ModelSpec, variable: str) -> None:
        self._log_refusal(spec, UpstreamError("auth", f"environment variable {variable} is not set"), True)

    def _log_left_out_keyless(self, ctx: RequestContext) -> None:
        """The models the router left out for their unset key variable, logged as a skipped one is:
        routed traffic still tells the operator which variable is missing."""
        for c in ctx.decision.candidates:
            missing = (c.excluded or "").startswith(KEY_MISSING) and self.live.key_missing(c.model)
            if missing:
                self._log_key_missing(self.specs[c.model], missing)

    def _circuits(self, models: list[str], is_open: int) -> None:
        for model in models:
            self.metrics.circuit_open.labels(model).set(is_open)

    def _only_refused_keys(self, ctx: RequestContext) -> bool:
        """Every model a routed request tried refused the key, is skipped for the refusals that
        opened its circuit or has no key set, and none the router left out is merely rate limited
        or busy: such a one is worth the retry a 503 invites (one left out for its unset key is not)."""
        tried = all(a.get("kind") == "auth" or a.get("reason") == "key_missing"
                    or (a.get("reason") == "circuit_open" and self.live.left_out_for_key(a["model"])) for a in ctx.attempts)
        busy = [c.model for c in ctx.decision.candidates
                if (c.excluded or "").startswith("unhealthy") and not self.live.left_out_for_key(c.model)]
        return tried and not busy

    def _should_retry(self, err: UpstreamError, retry: int) -> bool:
        if not err.retryable or err.kind == "timeout" or retry >= self.rel.max_retries:
            return False  # a timeout already cost the full timeout: the next model is the faster bet
        return err.retry_after is None or err.retry_after <= self.rel.max_retry_after_s

    def _short_wait(self, attempts: list[dict[str, Any]]) -> float | None:
        """When every model tried was rate limited and the soonest is free again within
        `max_retry_after_s`: that wait, to go round the chain once more rather than answer 429
        (an upstream's 429 with a Retry-After of a few hundred ms blocks that model for every
        request meanwhile, and a burst finds all of them blocked at once)."""
        if not attempts or not all(_rate_limited(a) for a in attempts):
            return None
        waits = [a["retry_after_s"] for a in attempts if a.get("retry_after_s")]
        return min(waits) if waits and min(waits) <= self.rel.max_retry_after_s else None

    def _give_up(self, ctx: RequestContext, errors: list[UpstreamError], chain: list[str]) -> ApiError:
        routed = ctx.decision is not None
        limited = [a for a in ctx.attempts if _rate_limited(a)]
        if not errors:
            if all(a.get("reason") == "context_window" for a in ctx.attempts):
                return ApiError(400, "the request is longer than the context window of every eligible model",
                                code="context_length_exceeded", param="messages")
            if all(a.get("reason") in ("context_window", "over_tpm") for a in ctx.attempts):
                return over_tpm_everywhere(ctx.routing.input_tokens)
        elif all(e.status == 413 and e.kind != "context_length" for e in errors):
            # An HTTP 413 is the body's size in bytes (Anthropic's 32 MB), not the prompt's tokens: a
            # smaller attachment helps where a model with a bigger window would not.
            return ApiError(413, f"the request is larger than the upstream accepts: {errors[-1].message}",
                            code="request_too_large", param="messages")
        elif all(e.kind == "context_length" for e in errors):
            return ApiError(400, f"the request does not fit the context window: {errors[-1].message}",
                            code="context_length_exceeded", param="messages")
        elif all(e.kind == "unsupported" for e in errors):
            return ApiError(400, f"no eligible model takes the request as sent: {errors[-1].message}",
                            code=errors[-1].code or "unsupported_parameter", param=errors[-1].param)
        who = chain[0] if len(chain) == 1 else f"{chain[0]} and its fallbacks"
        # Rate limited: the client is told so, with the upstream's own wait (OpenClaw retries a 429
        # for minutes; a 503 with a made-up wait sends it elsewhere). A named model whose fallbacks
        # failed otherwise is still rate limited; a routed request when every model it tried is.
        named_limited = [a for a in limited if a["model"] == chain[0]] if not routed else []
        if named_limited or (routed and limited and len(limited) == len(ctx.attempts)):
            fallbacks = "; its fallbacks failed too" if len(chain) > 1 else ""
            # Its own configured window (never called) or the upstream's 429.
            by = "its configured rpm/tpm limit" if all(a.get("reason") == "rate_window" for a in named_limited) else "upstream"
            return rate_limited(f"model {chain[0]} is rate limited by {by}{fallbacks}" if not routed else
                                f"every eligible model is rate limited (tried {', '.join(chain)})",
                                [a["retry_after_s"] for a in limited if a.get("retry_after_s")])
        # A named model its upstream does not know is the 404 OpenClaw fails over on at once; as
        # a 502 the SDKs retry it, and each retry calls the upstream again for nothing. Once its
        # 404s have opened its circuit it is skipped, and still unknown upstream.
        named = [a for a in ctx.attempts if not routed and a["model"] == chain[0]]
        failed = [a for a in named if a["status"] == "error"]
        # Skipped for its open circuit only: what opened it (its own failures, or its provider's key circuit).
        skipped_for = None if failed or not named or any(a.get("reason") != "circuit_open" for a in named) else (
            "auth" if self.live.key_refused(chain[0]) else self.live.last_failure(chain[0]))
        unknown = all(a["kind"] == "not_found" for a in failed) if failed else skipped_for == "not_found"
        if unknown:
            fallbacks = "; its fallbacks failed too" if len(chain) > 1 else ""
            why = f": {failed[-1].get('message', '')}" if failed else " (its upstream answered 404 model_not_found)"
            return ApiError(404, f"model {chain[0]} is not available upstream{why}{fallbacks}", code="model_not_found", param="model")
        # A key the upstream refuses, or none set, is the operator's to fix: a 503 "retry shortly"
        # would have the SDKs and OpenClaw retry for minutes, against a circuit its refusals opened.
        if any(a.get("reason") == "key_missing" for a in named):
            return key_missing([chain[0]], self.config)
        if any(a["kind"] == "auth" for a in failed) or skipped_for == "auth":
            return key_refused([chain[0]], self.config)
        # A routed request's keyless models are left out by the router, not skipped here: named all the same.
        keyless = [c.model for c in ctx.decision.candidates if (c.excluded or "").startswith(KEY_MISSING)] if routed else []
        missing = list(dict.fromkeys([*(a["model"] for a in ctx.attempts if a.get("reason") == "key_missing"), *keyless]))
        if routed and (errors or missing) and self._only_refused_keys(ctx):
            refused = list(dict.fromkeys(a["model"] for a in ctx.attempts if a.get("reason") != "key_missing"))
            return key_refused(refused, self.config, missing) if refused else key_missing(missing, self.config)
        if not errors:
            # Every model was skipped: told when the first may be called again, not "1" while its
            # circuit stays open for its whole cooldown (a client honouring it burnt its retries).
            wait = min((self.live.reopens_in(m) for m in chain), default=0.0)
            return ApiError(503, f"no eligible model is available right now (tried {', '.join(chain)}); retry shortly",
                            code="no_model_available", headers={"retry-after": str(max(1, math.ceil(wait)))})
        last = errors[-1]
        if not routed and last.kind == "timeout":
            return ApiError(504, f"model {who} timed out", code="upstream_timeout")
        return ApiError(502 if not routed else 503, f"no model could answer ({failures(ctx.attempts)})", code="upstream_error")

    async def _attempts(self, ctx: RequestContext, call: Callable[[ModelSpec, int, Claim], Awaitable[Any]]) -> Any:
        """Run `call(spec, retry, claim)` along the chain until one returns; raise ApiError when none does."""
        chain = self.chain(ctx)
        if ctx.decision is not None:
            self._log_left_out_keyless(ctx)
        tries = _Tries()
        for lap in range(2):
            first = len(ctx.attempts)
            answered, answer = await self._lap(ctx, call, chain, tries)
            if answered:
                return answer
            wait = self._short_wait(ctx.attempts[first:]) if lap == 0 else None
            if wait is None:
                break
            await self._sleep(wait + 0.001)  # just past the block: a wake-up on its last tick would skip the model again
        raise self._give_up(ctx, tries.errors, chain)

    async def _lap(self, ctx: RequestContext, call: Callable[[ModelSpec, int, Claim], Awaitable[Any]], chain: list[str],
                   tries: "_Tries") -> tuple[bool, Any]:
        """One pass down the chain: (True, answer) from the first model that answers."""
        routed = ctx.decision is not None
        for position, name in enumerate(chain):
            if routed and tries.failed > self.rel.max_fallbacks:
                break
            # No failover for an answer nobody waits for. (Not asked before the first call, which
            # follows the decision at once: asking costs a few turns of the event loop.)
            if ctx.attempts and await client_gone(ctx):
                raise ClientGone()
            spec = self.specs[name]
            # A named model is tried whatever its window; what stands in for it must fit.
            if (routed or position > 0) and not self._fits(spec, ctx, tries.smallest_failed_window):
                self._record(ctx, name, "skipped", reason="context_window")
                continue
            missing = self.live.key_missing(name)
            if missing:
                # No call can succeed, nor tell anything of the model or its key: no circuit counts it,
                # nor does it use up the routed request's failovers.
                self._log_key_missing(spec, missing)
                self._record(ctx, name, "skipped", reason="key_missing")
                continue
            claim = self.live.acquire(name)
            if not claim:
                wait = self.live.breaker.blocked_for(name)  # the upstream's Retry-After, or a circuit its 429s opened
                self._record(ctx, name, "skipped", reason="rate_limited" if wait else "circuit_open",
                             retry_after_s=round(wait, 3) if wait else None)
                continue
            for retry in range(self.rel.max_retries + 1):
                started = time.perf_counter()
                if not self.live.started(name, ctx.routing.input_tokens):
                    # Its RPM/TPM window filled since the decision (concurrent requests): next model.
                    self.live.release(name, claim)
                    wait = self.live.window_wait_s(name, ctx.routing.input_tokens)
                    if wait == math.inf:  # more input tokens than its TPM limit: waiting never helps
                        self._record(ctx, name, "skipped", reason="over_tpm")
                    else:
                        self._record(ctx, name, "skipped", reason="rate_window", retry_after_s=round(wait, 3) if wait else None)
                    break
                try:
                    return True, await call(spec, retry, claim)
                except UpstreamError as err:
                    failure = err
                except (ClientGone, asyncio.CancelledError) as cut:
                    # The client left, or the shutdown deadline cut the call: no verdict on the
                    # model, but the provider read the prompt, so it is billed.
                    self._record(ctx, name, "abandoned", reason="client_left" if isinstance(cut, ClientGone) else "cancelled",
                                 retry=retry, latency_s=round(time.perf_counter() - started, 4))
                    ctx.extras["abandoned_on"] = name
                    self.metrics.attempts.labels(name, "abandoned").inc()
                    self.live.release(name, claim)
                    raise
                except BaseException:
                    self.live.release(name, claim)
                    raise
                finally:
                    self.live.finished(name)
                self._on_error(ctx, spec, failure, started, retry, claim)
                tries.errors.append(failure)
                if not failure.failover or (failure.kind == "unsupported" and not routed):
                    # The client's own fault: it gets the upstream's code and param where it gave them. A
                    # status written as a code ("400", a proxy's) says nothing the status does not.
                    too_large = failure.status == 413 and failure.kind != "context_length"
                    fallback = ("request_too_large" if too_large else
                                "unsupported_parameter" if failure.kind == "unsupported" else "upstream_bad_request")
                    code = failure.code if failure.code and failure.code != str(failure.status) else fallback
                    # An adapter's own refusal (nothing was sent) is not the upstream's.
                    said = "the upstream rejected the request" if failure.from_upstream else f"{name} cannot take the request"
                    raise ApiError(413 if too_large else 400, f"{said}: {failure.message}", code=code,
                                   param=failure.param)
                if failure.kind == "context_length":
                    tries.smallest_failed_window = max(tries.smallest_failed_window or 0, spec.context_window)
                if not self._should_retry(failure, retry) or self.live.circuit(name) == "open":
                    tries.failed += failure.kind != "rate_limit"
                    if position + 1 < len(chain) and not (routed and tries.failed > self.rel.max_fallbacks):
                        self.metrics.fallbacks.labels(name, failure.kind).inc()
                    break
                await self._sleep(self._backoff(retry, failure.retry_after))
                if await client_gone(ctx):
                    raise ClientGone()
                claim = self.live.acquire(name)
                if not claim:
                    tries.failed += failure.kind != "rate_limit"
                    break
        return False, None

    # -- non-streaming -----------------------------------------------------------------------
    async def complete(self, ctx: RequestContext, body: dict[str, Any]) -> dict[str, Any]:
        async def call(spec: ModelSpec, retry: int, claim: Claim) -> dict[str, Any]:
            started = time.perf_counter()
            answer = await self.providers[spec.provider].complete(spec, body)
            latency = time.perf_counter() - started
            _, out_tokens = usage_tokens(answer.get("usage"))
            self._circuits(self.live.succeeded(spec.name, latency, None, out_tokens or 0), 0)
            self.metrics.attempts.labels(spec.name, "ok").inc()
            self._record(ctx, spec.name, "ok", latency_s=round(latency, 4), retry=retry)
            ctx.answered_by = spec.name
            return answer

        return await self._attempts(ctx, call)

    # -- streaming ---------------------------------------------------------------------------
    async def open_stream(self, ctx: RequestContext, body: dict[str, Any]) -> OpenStream:
        """Fail over until a model has produced output; the caller streams the rest."""

        async def call(spec: ModelSpec, retry: int, claim: Claim) -> OpenStream:
            started = time.perf_counter()
            upstream = self.providers[spec.provider].stream(spec, body)
            waits = self.config.providers[spec.provider]
            try:
                held = await _unless_client_leaves(ctx, up_to_first_output(upstream, waits.answer_wait_s))
            except BaseException:
                await upstream.aclose()
                raise
            ttft = time.perf_counter() - started
            if claim.probe or claim.key_probe:
                # The model answers: the circuits close now, not when a long answer ends (the
                # probe would lapse meanwhile and a second one go through).
                self._circuits(self.live.answered(spec.name), 0)
            entry = self._record(ctx, spec.name, "ok", ttft_s=round(ttft, 4), retry=retry)
            ctx.answered_by = spec.name
            # In flight until the stream ends: the caller calls `close_stream`.
            self.live.hold(spec.name)
            return OpenStream(spec, held, Paced(upstream, waits.timeout_s), started, ttft, entry, claim)

        return await self._attempts(ctx, call)

    def close_stream(self, stream: OpenStream, error: UpstreamError | None, output_tokens: int, completed: bool) -> None:
        """Account for a stream that has ended after its first output: `completed`, failed
        (`error`), or neither (its client left)."""
        name = stream.model.name
        latency = time.perf_counter() - stream.started
        self.live.finished(name)
        stream.attempt["latency_s"] = round(latency, 4)
        if error is not None:
            stream.attempt.update(status="error", kind=error.kind, message=error.message[:300])
            self.metrics.attempts.labels(name, error.kind).inc()
            self._circuits(self.live.failed(name, stream.claim, error.kind, status=error.status), 1)
        elif completed:
            self._circuits(self.live.succeeded(name, latency, stream.ttft_s, output_tokens), 0)
            self.metrics.attempts.labels(name, "ok").inc()
        else:
            # The time until the client left says nothing of the model's speed: a slow model
            # whose users press stop would pass for a fast one.
            self.live.abandoned(name, stream.claim, stream.ttft_s, output_tokens)
            self.metrics.attempts.labels(name, "abandoned").inc()
