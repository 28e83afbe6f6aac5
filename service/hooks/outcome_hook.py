"""Writes one outcome-log record per request, from the finished request context.

Listed after the learning and governance hooks and before the cache (service/app.py), so its
post-hook sees what the cache set and does not wait for governance's settle; the key label and
tenant come from governance's pre-hook. The write only journals and enqueues: the background writer
of the outcome log does the I/O.
"""
from __future__ import annotations

import hashlib
import logging
from typing import Any, Literal

import numpy as np

from router.features import request_features
from router.outcome_log import OutcomeLog, OutcomeRecord
from service.pipeline import RequestContext

log = logging.getLogger(__name__)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def prompt_text(ctx: RequestContext) -> str:
    """The routed text (last user turn) beside the system prompt, as the router saw them."""
    routing = ctx.routing
    return f"{routing.system_text}\n\n{routing.text}" if routing.system_text else routing.text


def _chosen(ctx: RequestContext) -> str | None:
    """The router's choice; for a named model, the model named (unless the request was refused)."""
    if ctx.decision:
        return ctx.decision.model
    return ctx.requested_model if ctx.profile is None and ctx.status != "rejected" else None


class OutcomeHook:
    name = "outcome_log"

    def __init__(self, log: OutcomeLog, prompt_storage: Literal["none", "hash", "full"], simulated: frozenset[str] = frozenset()):
        self.log = log
        self.prompt_storage = prompt_storage
        self.simulated = simulated

    async def pre(self, ctx: RequestContext) -> dict[str, Any] | None:
        return None

    async def post(self, ctx: RequestContext) -> None:
        try:
            record = self.record(ctx)
        except Exception as exc:
            # Something in the request the record could not take (a bug, an odd value): the row is
            # still written, with what accounting needs, so spend and request counts stay whole.
            log.exception("request %s: its full outcome record failed; writing the essentials", ctx.request_id)
            record = self.essentials(ctx, exc)
        self.log.write(record)

    def essentials(self, ctx: RequestContext, exc: Exception) -> OutcomeRecord:
        usage = ctx.extras.get("usage") or {}
        return OutcomeRecord(
            request_id=ctx.request_id, ts=ctx.extras.get("received_at") or 0.0, key_label=ctx.key_label, tenant=ctx.tenant,
            requested_model=ctx.requested_model, profile=ctx.profile, stream=ctx.stream,
            chosen_model=_chosen(ctx), answered_model=ctx.answered_by,
            input_tokens=usage.get("prompt_tokens"), output_tokens=usage.get("completion_tokens"),
            cost_usd=ctx.cost_usd, saved_cost_usd=ctx.saved_cost_usd, status=ctx.status, cache_status=ctx.cache_status,
            simulated=ctx.answered_by in self.simulated, error=f"outcome record incomplete: {type(exc).__name__}",
            extras={k: v for k, v in ctx.extras.items() if k == "usage_estimated" and v is not None},
        )

    def record(self, ctx: RequestContext) -> OutcomeRecord:
        extras = ctx.extras
        usage = extras.get("usage") or {}
        decision = ctx.decision
        embedding = None if ctx.embedding is None else np.asarray(ctx.embedding, dtype=np.float32)
        text = prompt_text(ctx)
        # A request refused before routing (no valid key, an invalid body) has its row but no text:
        # its body is not kept, so no one fills the log with prompts without a key.
        store_prompt = self.prompt_storage != "none" and bool(text)
        # Without an embedding the text is all there is to fingerprint; with `none` not even a digest
        # of it is kept (a digest of a short prompt can be checked against guesses).
        features = embedding.tobytes() if embedding is not None else (ctx.routing.text.encode() if store_prompt else None)
        attempts = list(ctx.attempts)
        return OutcomeRecord(
            request_id=ctx.request_id,
            ts=extras.get("received_at") or 0.0,
            key_label=ctx.key_label,
            tenant=ctx.tenant,
            requested_model=ctx.requested_model,
            profile=ctx.profile,
            stream=ctx.stream,
            features_hash=_sha256(features)[:32] if features is not None else None,
            prompt=text if self.prompt_storage == "full" and store_prompt else None,
            prompt_hash=_sha256(text.encode()) if store_prompt else None,
            embedding=embedding.tobytes() if (embedding is not None and store_prompt) else None,
            input_tokens_est=ctx.routing.input_tokens,
            candidates=[c.__dict__ for c in decision.candidates] if decision else None,
            reason=extras.get("reason"),
            knob=decision.knob if decision else None,
            chosen_model=_chosen(ctx),
            propensity=decision.propensity if decision else None,
            answered_model=ctx.answered_by,
            fallback_chain=list(dict.fromkeys(a["model"] for a in attempts if a["status"] != "skipped")),
            attempts=attempts,
            ttft_s=extras.get("ttft_s"),
            latency_s=extras.get("latency_s"),
            input_tokens=usage.get("prompt_tokens"),
            output_tokens=usage.get("completion_tokens"),
            cost_usd=ctx.cost_usd,
            saved_cost_usd=ctx.saved_cost_usd,
            status=ctx.status,
            # Capped: some errors repeat the request's own input (an unknown model's name).
            error=ctx.error[:500] if ctx.error else None,
            cache_status=ctx.cache_status,
            cache_similarity=ctx.cache_similarity,
            simulated=ctx.answered_by in self.simulated,
            extras=self._extras(ctx, store_prompt and embedding is not None),
        )

    @staticmethod
    def _extras(ctx: RequestContext, with_features: bool) -> dict[str, Any]:
        kept = {k: v for k, v in ctx.extras.items()
                if k in ("client_request_id", "usage_estimated", "http_status", "cache_entry", "router", "predicted_as", "upstream_id")
                and v is not None}
        if with_features:
            # The cheap features the router saw (turns, tools, ... not just the text): retraining and
            # off-policy evaluation rebuild the live feature row from these and the stored embedding,
            # so they work with prompt_storage "hash" too.
            kept["features"] = [round(float(v), 6) for v in request_features([ctx.routing])[0]]
        return kept
