"""How a finished chat request is described: its routing reason with the failures before the
answer (`x-router-reason`, the outcome log's `reason`) and the model `/metrics` counts it under."""
from __future__ import annotations

from typing import Container

from service.pipeline import RequestContext


def reason(ctx: RequestContext) -> str:
    if ctx.decision:
        base = ctx.decision.reason
    else:  # a profile with no decision was refused before the router decided (a key's limit, a budget)
        base = f"{ctx.requested_model}: not routed" if ctx.profile else f"{ctx.requested_model}: requested by name"
    failed = [a for a in ctx.attempts if a["status"] != "ok"]
    if ctx.answered_by and failed:
        # The same model answering after its own failures was retried, not fallen back to; a model
        # named by the client was requested, not routed.
        how = "retried after" if all(a["model"] == ctx.answered_by for a in failed) else "fallback after"
        return f"{ctx.answered_by}: {how} {failures(failed)}; {'routed' if ctx.decision else 'requested'}: {base}"
    return base


def failures(failed: list[dict]) -> str:
    """`m1 (server x2, timeout), m2 (rate_limit)`: each model once, in the order tried, its
    failures counted (a retry on the same model repeated its name). ASCII, for the header; the
    all-failed error message says the same."""
    by_model: dict[str, dict[str, int]] = {}
    for a in failed:
        kinds = by_model.setdefault(a["model"], {})
        kind = a.get("kind") or a.get("reason") or a["status"]
        kinds[kind] = kinds.get(kind, 0) + 1
    return ", ".join(f"{model} ({', '.join(k if n == 1 else f'{k} x{n}' for k, n in kinds.items())})"
                     for model, kinds in by_model.items())


def metrics_model(ctx: RequestContext, catalog: Container[str]) -> str:
    """The model a request is counted under: the one that answered; for one that failed, the last
    one called (not one only skipped), or the catalog model it named; "none" for one that reached
    no model (a label is never a name the client made up: each is a time series)."""
    if ctx.answered_by:
        return ctx.answered_by
    called = [a["model"] for a in ctx.attempts if a.get("status") != "skipped"]  # a skip never reached its model
    if called:
        return called[-1]
    if ctx.profile is None and ctx.requested_model in catalog:
        return ctx.requested_model
    return "none"
