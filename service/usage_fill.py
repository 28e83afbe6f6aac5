"""A request's token usage where its upstream did not count all of it: the gateway's estimate,
kept below whatever counts the upstream did report (one count, its details, its total)."""
from __future__ import annotations

from typing import Any, Callable

from router.config import ModelSpec
from router.request_view import estimate_tokens
from service import sse
from service.pipeline import RequestContext


def estimated_usage(ctx: RequestContext, response: dict[str, Any], spec: ModelSpec | None) -> dict[str, int]:
    """Usage from our own token estimates: the request's input, its inline files and audio at
    the worst case governance reserved for them (within `spec`'s window: router.request_view),
    and every choice's text, reasoning and tool-call arguments (an answer that is only a tool call
    is not free, nor is a stream cut while the model was thinking: providers bill reasoning as output)."""
    out = ""
    for choice in response.get("choices") or ():
        message = choice.get("message") or {}
        out += message.get("content") or ""
        out += "".join(message[name] for name in sse.REASONING_FIELDS if isinstance(message.get(name), str))
        out += "".join(str((c.get("function") or {}).get("arguments") or "") for c in message.get("tool_calls") or ())
    attached = ctx.routing.attachment_tokens_within(spec.context_window) if spec is not None else ctx.routing.attachment_tokens
    prompt, completion = ctx.routing.input_tokens + attached, estimate_tokens(out)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def counts_both(usage: Any) -> bool:
    return isinstance(usage, dict) and _is_count(usage.get("prompt_tokens")) and _is_count(usage.get("completion_tokens"))


def usage_or_estimate(reported: Any, estimate: Callable[[], dict[str, int]]) -> tuple[dict[str, Any], bool]:
    """(usage, whether estimated): the upstream's usage where it counts both input and output;
    else `estimate()`, keeping what the upstream did report (one of the counts, its details, its
    own cost): a server that counts only its output, reasoning included, knows that count best."""
    if counts_both(reported):
        return reported, False
    guess = estimate()
    if not isinstance(reported, dict):
        return guess, True
    merged = {**guess, **{k: v for k, v in reported.items() if v is not None and (k not in guess or _is_count(v))}}
    total = reported.get("total_tokens")
    if _is_count(total):
        # The upstream's total is a count too: the estimate only splits it (input first, as the
        # request's size is the better known part), so the bill keeps the upstream's sum.
        if _is_count(reported.get("completion_tokens")):
            merged["prompt_tokens"] = max(total - merged["completion_tokens"], 0)
        else:
            merged["prompt_tokens"] = min(merged["prompt_tokens"], total)
            merged["completion_tokens"] = total - merged["prompt_tokens"]
    merged["total_tokens"] = merged["prompt_tokens"] + merged["completion_tokens"]
    return merged, True
