"""The response cache in the request pipeline: the pre-hook looks up, the post-hook stores.

A hit answers without routing or an upstream call; the gateway renders it as JSON or SSE.
The answer's usage reports zero tokens (nothing was sent upstream); what the original
answer cost is counted as saved (`ctx.saved_cost_usd`: metrics and the outcome log), and
the gateway's `x-cache` header shows the `cache_status` and similarity set here. A broken
cache never fails a request: errors are logged and the request goes upstream.
"""
from __future__ import annotations

import asyncio
import copy
import logging
import threading
import time
from typing import Any, Callable, Mapping

import numpy as np

from router.cache.cache import Hit, ResponseCache
from router.cache.entry import Entry
from router.cache.keys import RequestKeys, request_keys
from router.cache.policy import cache_control, request_cacheable, response_cacheable
from router.cache.verifier import Verifier
from router.config import CacheSection, Config, resolve_path
from router.types import Constraints
from service.pipeline import RequestContext
from service.recent import Recent

log = logging.getLogger(__name__)
ZERO_USAGE = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0, "cost": 0.0}
REMEMBERED_ANSWERS = 100_000  # request ids whose cache entry feedback can still drop, and rejections not yet stored
# How long a lookup waits for the same request's answer to be stored: a store is milliseconds (the
# embedder is loaded at start-up), more only when the disk or the index is slow; past this the
# request goes upstream.
PENDING_STORE_WAIT_S = 5.0


def _default_embed(text: str) -> np.ndarray:
    from router.embedding import embed_request_text

    return embed_request_text(text)


def open_cache(config: Config) -> ResponseCache:
    """The cache a config describes; relative paths are relative to the config file."""
    section = config.cache
    verifier = None
    # A refused start names the key to mend, as `check` does.
    if section.semantic:
        try:
            verifier = Verifier.load(resolve_path(config, section.verifier), threshold=section.verifier_threshold)
        except ValueError as exc:
            raise ValueError(f"cache.verifier: {exc}") from None
    path = resolve_path(config, section.path, created=True) if section.path else None
    try:
        return ResponseCache(
            path,
            ttl_s=section.ttl_s,
            route_ttl_s=section.route_ttl_s,
            max_entries=section.max_entries,
            max_bytes=section.max_bytes,
            semantic=section.semantic,
            verifier=verifier,
        )
    except (OSError, ValueError) as exc:
        if path is None:
            raise
        raise ValueError(f"cache.path {section.path!r}: {exc}") from None


def render_hit(hit: Hit) -> dict[str, Any]:
    """The cached chat.completion as a fresh answer: the time now, zero upstream usage (the
    gateway gives it the request's id)."""
    body = copy.deepcopy(hit.response)
    body["created"] = int(time.time())
    body["usage"] = dict(ZERO_USAGE)
    return body


class CacheHook:
    name = "cache"

    def __init__(self, cache: ResponseCache, section: CacheSection, embed: Callable[[str], np.ndarray] = _default_embed,
                 *, model_tags: Mapping[str, frozenset[str]]):
        self.cache = cache
        self.section = section
        self.embed = embed
        self.model_tags = dict(model_tags)  # the catalog: an answer of a model not in it is not served
        # request id -> id of the entry that request stored or was served: feedback that rejects
        # an answer drops that entry (`rejected`). Also in the outcome row (`cache_entry`), for
        # feedback that comes after a restart: `logged_entry` reads it there.
        self._answers: Recent[str, tuple[int, float]] = Recent(REMEMBERED_ANSWERS)
        # Rejected before the post-hook stored the answer: dropped as soon as it is.
        self._rejected: Recent[str, None] = Recent(REMEMBERED_ANSWERS)
        self._answers_lock = threading.Lock()
        self.logged_entry: Callable[[str], Any] | None = None
        # exact key -> set once the answer given under it is stored (or not): from `finished`,
        # before the client has it, to the end of the post-hook that stores it.
        self._pending: dict[str, asyncio.Event] = {}

    def _answered(self, ctx: RequestContext, entry: Entry) -> None:
        ctx.extras["cache_entry"] = [entry.id, entry.created]
        with self._answers_lock:
            early = ctx.request_id in self._rejected
            if early:
                del self._rejected[ctx.request_id]
            else:
                self._answers.put(ctx.request_id, (entry.id, entry.created))
        if early:  # the client rejected the answer before it was stored: it goes at once
            self.cache.forget(entry.id, entry.created)

    def rejected(self, request_id: str) -> None:
        """The answer to `request_id` was judged bad (thumbs down, an empty answer, the same asked
        again with `Cache-Control: no-cache`): never serve it again."""
        with self._answers_lock:
            entry = self._answers.pop(request_id, None)
        if entry is None and self.logged_entry is not None:
            entry = self.logged_entry(request_id)
        if entry is None:
            with self._answers_lock:
                self._rejected.put(request_id, None)
        elif self.cache.forget(*entry):
            log.info("cache: dropped the answer to %s, which feedback rejected", request_id)

    @classmethod
    def from_config(cls, config: Config) -> "CacheHook":
        return cls(open_cache(config), config.cache, model_tags={m.name: m.tags for m in config.models})

    def _permitted(self, model: str, limits: Constraints | None) -> bool:
        """Whether the model that produced a cached answer is still in the catalog and within the
        request's own limits: a request that excludes a model, or needs a local one, must not get
        that model's answer, nor anyone a model the operator has taken out."""
        if model not in self.model_tags:
            return False
        return limits is None or limits.in_scope(model, self.model_tags[model])

    @staticmethod
    def _route(ctx: RequestContext) -> str:
        return ctx.profile or ctx.requested_model

    async def pre(self, ctx: RequestContext) -> dict[str, Any] | None:
        ctx.extras["cache_consulted"] = True
        control = cache_control(ctx.headers)
        refused = request_cacheable(ctx.body, self.section.cache_nonzero_temperature)
        # An answer given under the request's own routing limits (local only, a model list, a cost
        # cap) is not stored: the key holds no limits, so it would answer every request without them.
        # A key's scope is no such limit: the tenant in the key is the key itself.
        limited = ctx.extras.get("request_limits", Constraints()) != Constraints()
        ctx.extras["cache_write"] = control.write and refused is None and not limited
        if refused is not None:
            ctx.cache_status = "bypass"
            return None
        # Keyed on the body as the client sent it, before later pre-hooks change it (a key's
        # ceiling caps max_tokens): a `no-cache` refresh stored under the changed body had been
        # found by no later request.
        keys = request_keys(ctx.body, self._route(ctx), ctx.tenant)
        ctx.extras["cache_keys"] = keys
        if not control.read:
            ctx.cache_status = "bypass"
            return None
        pending = self._pending.get(keys.exact)
        if pending is not None:
            # The same request was just answered and its answer is being stored, off the latency
            # path: a repeat sent the moment the answer arrived gets it from the cache, as it would
            # a moment later, instead of a miss that the learning hook would count as a regeneration.
            try:
                await asyncio.wait_for(pending.wait(), PENDING_STORE_WAIT_S)
            except asyncio.TimeoutError:
                ctx.extras["cache_store_pending"] = True  # a miss all the same, but no rejection
        try:
            exact, semantic = self.cache.may_hit(keys)
            hit = await asyncio.to_thread(self._lookup, ctx, keys, semantic) if exact or semantic else None
        except Exception:
            log.exception("cache lookup failed for request %s; answering from upstream", ctx.request_id)
            return None
        if hit is not None and not self._permitted(hit.entry.model, ctx.extras.get("constraints")):
            hit = None
        if hit is None:
            ctx.cache_status = "miss"
            return None
        self._answered(ctx, hit.entry)
        ctx.cache_status = hit.kind
        ctx.cache_similarity = round(hit.similarity, 4)
        ctx.saved_cost_usd = hit.entry.cost_usd
        ctx.answered_by = hit.entry.model
        ctx.extras["reason"] = f"cache {hit.kind} (similarity {hit.similarity:.3f}, verifier {hit.probability:.3f})"
        return render_hit(hit)

    def _lookup(self, ctx: RequestContext, keys: RequestKeys, semantic: bool) -> Hit | None:
        # Embedding and lookup in one worker-thread hop; the router reuses the embedding.
        vector = None
        if semantic:
            if ctx.embedding is None:
                ctx.embedding = self.embed(ctx.routing.text)
            vector = ctx.embedding
        return self.cache.lookup(keys, vector, semantic=semantic)

    def finished(self, ctx: RequestContext) -> None:
        """Whether the answer will be stored, decided in the same step as the learning hook
        remembers it for regenerations: a repeat never finds the one without the other."""
        if ctx.cache_status in ("hit", "semantic-hit") or not ctx.extras.get("cache_write"):
            return
        refused = response_cacheable(ctx.response, ctx.status, self.section.cache_tool_calls)
        if refused is not None:
            log.debug("not caching request %s: %s", ctx.request_id, refused)
            return
        keys = ctx.extras.get("cache_keys") or request_keys(ctx.body, self._route(ctx), ctx.tenant)
        ctx.extras["cache_keys"] = keys
        ctx.extras["cache_pending"] = self._pending[keys.exact] = asyncio.Event()

    async def post(self, ctx: RequestContext) -> None:
        pending = ctx.extras.get("cache_pending")
        if pending is None:
            return
        keys = ctx.extras["cache_keys"]
        try:
            await self._store(ctx, keys)
        finally:
            pending.set()
            if self._pending.get(keys.exact) is pending:  # not a later answer's under the same key
                del self._pending[keys.exact]

    async def _store(self, ctx: RequestContext, keys: RequestKeys) -> None:
        vector = None
        if self.cache.stores_vector(keys):
            if ctx.embedding is None:
                ctx.embedding = await asyncio.to_thread(self.embed, ctx.routing.text)
            vector = ctx.embedding
        entry = await asyncio.to_thread(
            self.cache.put,
            keys,
            tenant=ctx.tenant,
            route=self._route(ctx),
            response=ctx.response,
            model=ctx.answered_by or str(ctx.response.get("model", "")),
            cost_usd=ctx.cost_usd,
            vector=vector,
        )
        self._answered(ctx, entry)

    def close(self) -> None:
        self.cache.close()
