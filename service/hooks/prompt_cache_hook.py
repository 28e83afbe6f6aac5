"""How much of a request's prompt each model's provider holds in its prompt cache, so routing
prices that part at the cached rate on that model (`router.policy.prompt_cache_cost`).

An agent such as OpenClaw resends a 25-48 KB system prompt, a dozen tools and the whole
conversation on every turn. A provider that served a prompt keeps it cached for a few minutes
(Anthropic 5 minutes from the last read, OpenAI 5-10 minutes idle, Gemini's implicit cache a few
minutes), and the next turn, which starts with that whole prompt, reads it back at a fraction of
the price. A request is remembered as a chain of digests of its messages (one pass over the
request), and the next one finds, for each model, the longest start of its messages that model
served within `PROMPT_TTL_S`: the previous turn or tool-loop step of the same conversation ends
where an assistant message begins. What is remembered of a request is what the providers keep
of it as the adapters mark it (`RoutingRequest.cacheable_tokens`): the whole prompt once the
conversation has an assistant turn, and always its system prompt and tools, which the agent's
other conversations share. The memory is the session memory (service/session_memory.py): this
process's, and with `server.redis_url` every replica's, so a turn another replica served is
priced as held. Digests are per tenant, since a tenant is not to learn from prices what
another one sent.
"""
from __future__ import annotations

import hashlib
from dataclasses import replace
from typing import Any, Mapping

from router.outcome_log import answering_attempt
from router.types import RoutingRequest
from service.pipeline import RequestContext
from service.session_memory import LocalMemory, SessionMemory

# Shorter prompts are not looked up: OpenAI's, Gemini's and Anthropic's caches keep none (DeepSeek's
# cache of them goes unpriced). Each model's own minimum is its `price.cache_min_tokens`.
LOOKUP_MIN_TOKENS = 1024
RECENT_ENDS = 4  # the latest places an earlier request may have ended that are looked up


def _canonical(messages: list[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The messages as the cache sees them: system and developer turns first, since the Anthropic
    adapter sends every one of them in `system` ahead of the conversation (a system turn added
    half-way changes the start of what Anthropic cached; OpenAI's cache, which keeps it in place,
    is then priced as held no further than the tools, the cautious side)."""
    system = [m for m in messages if m.get("role") in ("system", "developer")]
    return system + [m for m in messages if m.get("role") not in ("system", "developer")]


def _content(content: Any) -> Any:
    """A message's content without the client's cache breakpoints: a client moving its breakpoint
    to the newest message each turn (Anthropic's advice) resends the previous one unmarked, and the
    provider still holds it."""
    if isinstance(content, list):
        return [{k: v for k, v in part.items() if k != "cache_control"} if isinstance(part, dict) else part for part in content]
    return content


def prompt_chain(tenant: str, body: Mapping[str, Any]) -> list[bytes]:
    """Digests of the request's successive starts, its messages in `_canonical` order: [0] its
    tools (and JSON schema, which the Anthropic adapter writes into the system prompt) alone, [i]
    those and its first i messages (0.13 ms for a 110 KB agent turn: each message is hashed once,
    onto the previous digest)."""
    tools = body.get("tools") or body.get("functions") or []
    digest = hashlib.sha256(f"{tenant}\0{tools}\0{body.get('response_format')}".encode("utf-8", "surrogatepass")).digest()
    chain = [digest]
    for m in _canonical(list(body.get("messages") or [])):
        text = (f"{m.get('role')}\0{_content(m.get('content'))}\0{m.get('tool_calls') or ''}\0"
                f"{m.get('tool_call_id') or ''}\0{m.get('name') or ''}")
        step = hashlib.sha256(digest)
        step.update(text.encode("utf-8", "surrogatepass"))
        digest = step.digest()
        chain.append(digest)
    return chain


def _system_turns(messages: list[Mapping[str, Any]]) -> int:
    return sum(1 for m in messages if m.get("role") in ("system", "developer"))


def _ends(messages: list[Mapping[str, Any]]) -> list[int]:
    """Where (in `_canonical` order) an earlier request of this conversation may have ended,
    shortest first: after the system turns, before each of the latest assistant messages (the
    previous turn or tool-loop step), and at the end (the same request again)."""
    ordered = _canonical(messages)
    before_answers = [i for i, m in enumerate(ordered) if m.get("role") == "assistant"][-RECENT_ENDS:]
    return sorted({_system_turns(messages), *before_answers, len(ordered)})


class PromptCacheHook:
    name = "prompt_cache"

    def __init__(self, memory: SessionMemory | None = None):
        self.memory = memory or LocalMemory(0.0)

    async def with_warm_tokens(self, tenant: str, routing: RoutingRequest,
                               body: Mapping[str, Any]) -> tuple[RoutingRequest, list[bytes] | None]:
        """`routing` with what each model's provider holds of it, and its chain (None for a prompt
        too short to look up)."""
        if routing.input_tokens < LOOKUP_MIN_TOKENS:
            return routing, None
        chain = prompt_chain(tenant, body)
        warm = await self.memory.held_prompts([chain[i].hex() for i in _ends(list(body.get("messages") or []))])
        return (replace(routing, warm_tokens=warm) if warm else routing), chain

    async def pre(self, ctx: RequestContext) -> dict[str, Any] | None:
        if ctx.profile is not None:  # a named model is not routed: nothing to price
            ctx.routing, ctx.extras["prompt_chain"] = await self.with_warm_tokens(ctx.tenant, ctx.routing, ctx.body)
        return None

    def finished(self, ctx: RequestContext) -> None:
        model, routing = ctx.answered_by, ctx.routing
        # Only an upstream call reads or writes the provider's cache: not a cache hit, not a
        # pre-hook's answer. A call that answered did, whatever became of its stream after.
        if routing.cacheable_tokens < LOOKUP_MIN_TOKENS or answering_attempt(ctx.attempts, model) is None:
            return
        messages = list(ctx.body.get("messages") or [])
        chain = ctx.extras.get("prompt_chain") or prompt_chain(ctx.tenant, ctx.body)
        kept = [(chain[_system_turns(messages)].hex(), routing.prefix_tokens)]
        if routing.cacheable_tokens > routing.prefix_tokens:
            kept.append((chain[-1].hex(), routing.cacheable_tokens))
        self.memory.prompt_served(kept, model)

    async def post(self, ctx: RequestContext) -> None:
        return None
