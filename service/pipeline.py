"""The request pipeline: pre-hooks in order, post-hooks in reverse.

A pre-hook may short-circuit the request by returning a complete chat-completion body (a
cache hit, a budget refusal raised as an `ApiError`); the gateway then skips routing and the
upstream call, and streams that body as SSE if the client asked for a stream. Post-hooks
run after the client has its answer, off the latency path, and see the final outcome.

Optional stages sit between, for work that must be done before the client has its answer:
`routed(ctx)` (async) after the routing decision, `short_circuited(ctx)` (sync, no I/O) when a
pre-hook answered instead, and `finished(ctx)` (sync, no I/O) once the outcome is known.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Mapping, Protocol, Sequence

from router.types import Decision, RoutingRequest

log = logging.getLogger(__name__)


@dataclass
class RequestContext:
    request_id: str
    body: dict[str, Any]  # the validated chat-completions body as the client sent it
    routing: RoutingRequest
    headers: Mapping[str, str]
    stream: bool
    profile: str | None = None  # routing profile (`auto`, `auto:cheap`...) or None when a concrete model was named
    requested_model: str = "auto"
    tenant: str = "default"  # client key scope: cache isolation, budgets, attribution
    key_label: str | None = None
    decision: Decision | None = None
    embedding: Any = None  # the prompt embedding, computed once and shared by router and cache
    response: dict[str, Any] | None = None  # final chat.completion body (streams assembled)
    status: str = "pending"  # ok | error | cache_hit | truncated
    error: str | None = None
    cache_status: str = "miss"  # miss | hit | semantic-hit | bypass
    cache_similarity: float | None = None
    answered_by: str | None = None
    cost_usd: float = 0.0
    saved_cost_usd: float = 0.0
    attempts: list[dict[str, Any]] = field(default_factory=list)
    extras: dict[str, Any] = field(default_factory=dict)


class Hook(Protocol):
    name: str

    async def pre(self, ctx: RequestContext) -> dict[str, Any] | None:
        """Return a chat.completion body to answer the request without routing, else None."""

    async def post(self, ctx: RequestContext) -> None:
        """See the outcome; must not raise (errors are logged and swallowed)."""


class Pipeline:
    def __init__(self, hooks: Sequence[Hook] = ()):
        self.hooks = list(hooks)

    async def run_pre(self, ctx: RequestContext) -> dict[str, Any] | None:
        for hook in self.hooks:
            answer = await hook.pre(ctx)
            if answer is not None:
                return answer
        return None

    async def run_routed(self, ctx: RequestContext) -> None:
        """The optional `routed(ctx)` stage, in order: the decision is known, nothing is sent yet."""
        for hook in self.hooks:
            routed = getattr(hook, "routed", None)
            if routed is not None:
                await routed(ctx)

    def run_short_circuited(self, ctx: RequestContext) -> None:
        """The optional `short_circuited(ctx)` stage: a pre-hook answered, the response is not out yet."""
        self._run_sync("short_circuited", ctx)

    def run_finished(self, ctx: RequestContext) -> None:
        """The optional `finished(ctx)` stage: the outcome is known and the post-hooks are about
        to be scheduled; for a non-streamed answer the response is not out yet. For what
        feedback, which may come the moment the client has the answer, must find done."""
        self._run_sync("finished", ctx)

    def _run_sync(self, stage: str, ctx: RequestContext) -> None:
        for hook in self.hooks:
            step = getattr(hook, stage, None)
            if step is not None:
                step(ctx)

    async def run_post(self, ctx: RequestContext) -> None:
        for hook in reversed(self.hooks):
            try:
                await hook.post(ctx)
            except RuntimeError as exc:
                if "shutdown" not in str(exc):
                    log.exception("post-hook %s failed for request %s", hook.name, ctx.request_id)
                    continue
                # A forced exit (a second Ctrl-C) closed the thread pool under a request's last
                # steps: that is no bug to trace, and the hooks after it may still finish theirs.
                log.warning("post-hook %s of request %s cut short by the forced shutdown (%s)", hook.name, ctx.request_id, exc)
            except Exception:  # a broken post-hook must not lose the others' work
                log.exception("post-hook %s failed for request %s", hook.name, ctx.request_id)
