"""The headers every chat answer carries: `x-request-id`, `x-cache`, `x-router-model`,
`x-router-profile`, `x-router-reason` and what hooks add (rate-limit counts, a budget's state).
Header values must be printable ASCII and short, so a reason is made safe and cut between its
parts (docs/CONFIG.md)."""
from __future__ import annotations

import re

from service.pipeline import RequestContext

_SAFE_HEADER = re.compile(r"[^\x20-\x7e]")


def _header(value: str, limit: int = 400) -> str:
    """`value` as a header of at most `limit` bytes. A longer one is cut at a `; ` or `, ` outside
    parentheses (never inside a model's name) and ends ` (+N more)`, N the parts left out; the full
    text stays in the outcome log's `reason` and in `POST /v1/route`'s answer."""
    text = _SAFE_HEADER.sub("?", value)
    if len(text) <= limit:
        return text
    cuts, depth = [], 0
    for i, ch in enumerate(text):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth = max(0, depth - 1)
        elif depth == 0 and text.startswith(("; ", ", "), i):
            cuts.append(i)
    for kept, at in reversed(list(enumerate(cuts, 1))):
        marker = f" (+{len(cuts) + 1 - kept} more)"
        if at + len(marker) <= limit:
            return text[:at] + marker
    # No part fits whole: cut at a word's end so that no name is left half-written.
    head = text[:limit - 4]
    return (head[:head.rfind(" ")] if " " in head else head) + " ..."


def response_headers(ctx: RequestContext) -> dict[str, str]:
    headers = {"x-request-id": ctx.request_id}
    # Only what a cache saw has a verdict: not a request refused before it (a key's limit, a bad body).
    if ctx.extras.get("cache_consulted") or ctx.cache_status in ("hit", "semantic-hit"):
        headers["x-cache"] = cache_header(ctx)
    if ctx.answered_by:
        headers["x-router-model"] = ctx.answered_by
    if ctx.profile:
        headers["x-router-profile"] = ctx.profile
    if ctx.extras.get("reason"):
        headers["x-router-reason"] = _header(ctx.extras["reason"])
    headers.update(ctx.extras.get("response_headers") or {})
    return headers


def cache_header(ctx: RequestContext) -> str:
    """`hit`, `semantic-hit; similarity=0.972` or `miss` (a request that bypassed the cache is a
    miss to the client; the outcome log keeps `bypass`). Three decimals, as `x-router-reason` has:
    at two, a 0.998 would read 1.00, an identical question."""
    if ctx.cache_status == "semantic-hit" and ctx.cache_similarity is not None:
        return f"semantic-hit; similarity={ctx.cache_similarity:.3f}"
    return ctx.cache_status if ctx.cache_status in ("hit", "semantic-hit") else "miss"
