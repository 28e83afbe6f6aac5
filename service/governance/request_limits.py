"""The key's requests-per-minute limit on client calls that route nothing and spend no tokens
(`POST /v1/route`, `POST /v1/feedback`): they count against the same minute as the key's chat
requests and are refused with the same 429, built here for both (`GovernanceHook` admits chat
requests, with their tokens: `output_allowance` is what a chat request's answer counts at
admission, before anyone knows how long it will be)."""
from __future__ import annotations

import asyncio
from typing import Any

from router.config import Config, ModelSpec
from router.types import Constraints
from service.dispatch import failover_chain
from service.errors import ApiError
from service.governance.auth import Caller
from service.governance.keys import VirtualKey
from service.governance.ratelimit import RateCheck
from service.pipeline import RequestContext


def _answerers(config: Config, ctx: RequestContext) -> list[ModelSpec]:
    """Every model that may answer the request, before the router has decided: a named model
    and its fallbacks, or each model inside the request's limits (its key's scope) that has
    what the request needs."""
    if ctx.profile is None:
        specs = {m.name: m for m in config.models}
        return [specs[m] for m in failover_chain(config, ctx) if m in specs]
    limits: Constraints = ctx.extras.get("constraints") or Constraints()
    needs = set(ctx.routing.needs)
    return [m for m in config.models if limits.in_scope(m.name, m.tags) and needs <= set(m.capabilities)
            and m.takes_choices(ctx.routing.answers)]


def output_allowance(config: Config, ctx: RequestContext) -> int:
    """The output tokens a key's TPM counts for a request when it admits it, as OpenAI's limiter
    counts `max_tokens`: its `max_tokens` / `max_completion_tokens` (as each model that may answer
    is sent it) for every one of its `n` answers. A request that sets neither counts its input
    alone, as OpenAI's does, and its output once it settles: counting a model's whole
    `max_output_tokens` would let a small TPM run one such request at a time."""
    asked, answers = ctx.routing.max_output_tokens, ctx.routing.answers
    if not asked:
        return 0
    return max((m.output_cap(asked) or asked for m in _answerers(config, ctx)), default=asked) * answers


def key_rate_limited(auth: Any, key: VirtualKey, check: RateCheck) -> ApiError:
    """The 429 for a key whose minute is full (`check.refused`: "rpm" or "tpm"). `retry-after` is
    when the window next has room for this request: a client (the OpenAI SDK honours it up to a
    minute) that retries sooner would only be refused again."""
    verdict = str(check.refused)
    limit = key.rpm if verdict == "rpm" else key.tpm
    wait = check.retry_after_s()
    return auth.refuse(429, f"Rate limit of key '{key.name}' reached: {limit} {verdict.upper()}; "
                       f"the sliding minute has room for this request again in {wait} s.",
                       f"{verdict}_limit_exceeded", verdict, {"retry-after": str(wait), **check.headers()})


async def admit_call(app_state: Any, caller: Caller | None) -> None:
    """Count one call against its key's RPM; 429 `rpm_limit_exceeded` when the minute is full."""
    key = caller.key if caller is not None else None
    if key is None or key.rpm is None:
        return
    gov = app_state.governance
    # No tokens, so the key's TPM is no business of these calls.
    check = await asyncio.to_thread(gov.limiter.admit, key.id, key.rpm, None, 0)
    if check.refused is not None:
        raise key_rate_limited(gov.auth, key, check)
