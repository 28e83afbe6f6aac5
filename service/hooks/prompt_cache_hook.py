"""Which models' providers hold a request's prompt prefix (its system prompt and tools) in their
prompt cache, so routing prices that prefix at the cached rate on them and at the list (or
cache-write) rate elsewhere (`router.policy.prompt_cache_cost`).

An agent such as OpenClaw resends a 25-48 KB system prompt and a dozen tools on every turn. Each
provider caches that prefix after serving it, for a few minutes: Anthropic 5 minutes from the
last read, OpenAI 5-10 minutes idle, Gemini's implicit cache a few minutes. A model that served
the prefix within `WARM_S` is taken to still hold it. The memory is this process's own: a
replica that has not served a prefix prices it at the list rate, as it would without this hook.
Keys are hashes per tenant, since a tenant is not to learn from prices what another one sent.
"""
from __future__ import annotations

import json
import threading
import time
from dataclasses import replace
from typing import Any, Mapping

from router.policy import MIN_CACHED_PREFIX_TOKENS
from router.types import RoutingRequest
from service.pipeline import RequestContext
from service.recent import Recent

WARM_S = 300.0  # the shortest of the providers' cache lifetimes
RECENT = 10_000  # prefixes remembered; agents share a few, one-shot clients send none this long


def prefix_key(tenant: str, routing: RoutingRequest, body: Mapping[str, Any]) -> int:
    """What every turn of the conversation starts with, for the caller's tenant, as Python's own
    64-bit string hash: the memory never leaves the process, and SHA-256 took twice as long on
    an OpenClaw turn (0.2 ms; a collision would only misprice one prefix)."""
    tools = body.get("tools") or body.get("functions") or []
    return hash((tenant, routing.system_text, json.dumps(tools, ensure_ascii=False, default=str)))


class PromptCacheHook:
    name = "prompt_cache"

    def __init__(self, warm_s: float = WARM_S, size: int = RECENT):
        self.warm_s = warm_s
        self._served: Recent[int, dict[str, float]] = Recent(size)  # prefix -> model -> when last served
        self._lock = threading.Lock()

    def with_warm_models(self, tenant: str, routing: RoutingRequest, body: Mapping[str, Any]) -> tuple[RoutingRequest, int | None]:
        """`routing` with the models that served its prefix for `tenant` within `warm_s`, and the
        prefix's key (None for a prefix too short for any provider to cache)."""
        if routing.prefix_tokens < MIN_CACHED_PREFIX_TOKENS:
            return routing, None
        key = prefix_key(tenant, routing, body)
        now = time.monotonic()
        with self._lock:
            served = self._served.get(key) or {}
            warm = frozenset(m for m, at in served.items() if now - at < self.warm_s)
        return (replace(routing, warm_models=warm) if warm else routing), key

    async def pre(self, ctx: RequestContext) -> dict[str, Any] | None:
        if ctx.profile is not None:
            ctx.routing, ctx.extras["prefix_key"] = self.with_warm_models(ctx.tenant, ctx.routing, ctx.body)
        return None

    def finished(self, ctx: RequestContext) -> None:
        model = ctx.answered_by
        # Only an upstream call reads or writes the provider's cache: not a cache hit, not a
        # pre-hook's answer. A call that answered did, whatever became of its stream after.
        if model is None or ctx.routing.prefix_tokens < MIN_CACHED_PREFIX_TOKENS or not any(
                a.get("model") == model and a.get("status") == "ok" for a in ctx.attempts):
            return
        key = ctx.extras.get("prefix_key") or prefix_key(ctx.tenant, ctx.routing, ctx.body)
        with self._lock:
            served = dict(self._served.get(key) or {})
            served[model] = time.monotonic()
            self._served.put(key, served)

    async def post(self, ctx: RequestContext) -> None:
        return None
