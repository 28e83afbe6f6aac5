"""How much of a request's prompt each model's provider holds in its prompt cache, so routing
prices that part at the cached rate on that model (`router.policy.prompt_cache_cost`).

An agent such as OpenClaw resends a 25-48 KB system prompt, a dozen tools and the whole
conversation on every turn. A provider that served a prompt keeps it cached for a few minutes
(Anthropic 5 minutes from the last read, OpenAI 5-10 minutes idle, Gemini's implicit cache a few
minutes), and the next turn, which starts with that whole prompt, reads it back at a fraction of
the price. What a model served is remembered as a chain of hashes of the messages (one pass over
the request): the next request finds, for each model, the longest start of its messages that
model served within `WARM_S`. What is remembered of a request is what the providers keep of it
as the adapters mark it (`RoutingRequest.cacheable_tokens`): the whole prompt once the
conversation has an assistant turn, else its system prompt and tools, which other conversations
of the same agent share. The memory is this process's own: a replica that has not served a
prompt prices it at the list rate, as it would without this hook. Keys are hashes per tenant,
since a tenant is not to learn from prices what another one sent.
"""
from __future__ import annotations

import threading
import time
from dataclasses import replace
from typing import Any, Mapping, Sequence

from router.policy import MIN_CACHED_PREFIX_TOKENS
from router.types import RoutingRequest
from service.pipeline import RequestContext
from service.recent import Recent

WARM_S = 300.0  # the shortest of the providers' cache lifetimes
RECENT = 20_000  # prompts remembered: one per answered agent step, the oldest forgotten first


def prompt_chain(tenant: str, body: Mapping[str, Any]) -> list[int]:
    """Hashes of the request's successive starts: [0] its tools alone, [i] its tools and first i
    messages. Python's own 64-bit string hash: the memory never leaves the process, each string's
    hash is computed once (0.1 ms for a 110 KB agent turn, where SHA-256 over a JSON dump took
    several times that), and a collision would only misprice one request."""
    tools = body.get("tools") or body.get("functions") or []
    h = hash((tenant, str(tools)))
    chain = [h]
    for m in body.get("messages") or []:
        content = m.get("content")
        calls = m.get("tool_calls")
        h = hash((h, m.get("role"), content if isinstance(content, str) else str(content),
                  str(calls) if calls else None, m.get("tool_call_id"), m.get("name")))
        chain.append(h)
    return chain


def _leading_system(body: Mapping[str, Any]) -> int:
    """How many messages the conversation starts with that are system or developer turns."""
    n = 0
    for m in body.get("messages") or []:
        if m.get("role") not in ("system", "developer"):
            break
        n += 1
    return n


class PromptCacheHook:
    name = "prompt_cache"

    def __init__(self, warm_s: float = WARM_S, size: int = RECENT):
        self.warm_s = warm_s
        self._served: Recent[int, dict[str, tuple[float, int]]] = Recent(size)  # start -> model -> (when, tokens)
        self._lock = threading.Lock()

    def warm_tokens(self, chain: Sequence[int]) -> dict[str, int]:
        """For each model that served a start of these messages within `warm_s`, the tokens of the
        longest one it served."""
        now = time.monotonic()
        found: dict[str, int] = {}
        with self._lock:
            for h in reversed(chain):
                for model, (at, tokens) in (self._served.get(h) or {}).items():
                    if model not in found and now - at < self.warm_s:
                        found[model] = tokens
        return found

    def with_warm_tokens(self, tenant: str, routing: RoutingRequest, body: Mapping[str, Any]) -> tuple[RoutingRequest, list[int] | None]:
        """`routing` with what each model's provider holds of it, and its chain (None for a prompt
        too short for any provider to cache)."""
        if routing.input_tokens < MIN_CACHED_PREFIX_TOKENS:
            return routing, None
        chain = prompt_chain(tenant, body)
        warm = self.warm_tokens(chain)
        return (replace(routing, warm_tokens=warm) if warm else routing), chain

    async def pre(self, ctx: RequestContext) -> dict[str, Any] | None:
        ctx.routing, ctx.extras["prompt_chain"] = self.with_warm_tokens(ctx.tenant, ctx.routing, ctx.body)
        return None

    def finished(self, ctx: RequestContext) -> None:
        model, routing = ctx.answered_by, ctx.routing
        # Only an upstream call reads or writes the provider's cache: not a cache hit, not a
        # pre-hook's answer. A call that answered did, whatever became of its stream after.
        if model is None or routing.cacheable_tokens < MIN_CACHED_PREFIX_TOKENS or not any(
                a.get("model") == model and a.get("status") == "ok" for a in ctx.attempts):
            return
        chain = ctx.extras.get("prompt_chain") or prompt_chain(ctx.tenant, ctx.body)
        kept = [(chain[_leading_system(ctx.body)], routing.prefix_tokens)]  # shared by the agent's conversations
        if routing.cacheable_tokens > routing.prefix_tokens:
            kept.append((chain[-1], routing.cacheable_tokens))
        now = time.monotonic()
        with self._lock:
            for h, tokens in kept:
                served = dict(self._served.get(h) or {})
                served[model] = (now, tokens)
                self._served.put(h, served)

    async def post(self, ctx: RequestContext) -> None:
        return None
