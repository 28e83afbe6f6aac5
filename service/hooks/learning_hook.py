"""The learning loop inside the gateway: bandit exploration, implicit signals, shadow decisions.

* At route time (`routed`, before governance reserves budget on the decision) the bandit may
  swap the policy's choice for a close alternative; the decision carries the propensity, so
  the outcome log records it for off-policy evaluation.
* Implicit signals, recorded as feedback rows with `source="implicit"` and fed to the
  bandit as reward 0: an upstream error (every model of the chain failed), an empty answer,
  a truncated answer, and the client sending the same prompt again within
  `learning.regenerate_window_s` (which marks the *earlier* answer as unsatisfying). A plain
  successful answer says nothing about quality, so it is not turned into a reward.
* Shadow mode: after the client has its answer (post-hook, off the latency path), a
  candidate router decides the same request; the decision, and optionally the candidate
  model's own answer on a sampled share under a spend cap, go to `shadow_decisions`.
  Nothing here touches the response.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import random
import threading
import time
from dataclasses import replace
from typing import Any, Callable

import numpy as np

from router.bandit import BanditSettings, ContextualBandit
from router.cache.keys import request_keys
from router.config import Config
from router.feedback_log import ROUTER_CHOICE, SKIPPED_BY_CAP, Feedback, FeedbackStore, ShadowRecord, open_feedback_log
from router.outcome_log import failed_by_its_models, judges_chosen_model
from router.request_view import TEXT_PART_TYPES, content_text
from router.types import Constraints
from service.bandit_sync import BanditSync
from service.pipeline import RequestContext
from service.recent import Recent
from service.session_memory import LocalMemory, RedisMemory, SessionMemory, redis_client

log = logging.getLogger(__name__)
REJECTED_BELOW = 0.5  # feedback under this says the answer was bad: the cache drops it
RECENT = 100_000  # request ids remembered for feedback
SHADOW_INPUT_MARGIN = 1.25  # the prompt's token estimate can be short of the provider's count


def predictor_basis(router: Any) -> tuple[np.ndarray, np.ndarray] | None:
    """The router's own embedding basis (its predictor's PCA), the bandit's context."""
    predictor = getattr(router, "predictor", None)
    if predictor is None or getattr(predictor, "pca_proj", None) is None:
        return None
    return predictor.pca_mean, predictor.pca_proj


def _candidate(decision, model: str) -> dict[str, Any] | None:
    c = next((c for c in decision.candidates if c.model == model), None)
    if c is None:
        return None
    return {k: getattr(c, k) for k in ("model", "p_good", "p_good_std", "cost_usd", "latency_s", "utility", "excluded")}


def served_candidate(live, served: str, router_choice: str) -> dict[str, Any]:
    """The live decision's prediction for the model served, and the live router's own choice
    under ROUTER_CHOICE: they differ where the bandit explored or refined, a tool loop kept its
    turn's model, or a fallback answered. In the JSON of `live_candidate`, which every store
    already keeps, so no table changes; a row without it was logged before it was recorded."""
    return {**(_candidate(live, served) or {}), ROUTER_CHOICE: router_choice}


def _answer_text(response: dict[str, Any] | None) -> tuple[str, bool]:
    """Concatenated message text, and whether the answer made a tool call."""
    text, tools = [], False
    for choice in (response or {}).get("choices", []):
        message = choice.get("message") or {}
        text.append(message.get("content") or "")
        tools = tools or bool(message.get("tool_calls"))
    return "".join(text), tools


class LearningRuntime:
    """What the learning loop holds in one gateway process."""

    def __init__(self, config: Config, feedback: FeedbackStore | None, bandit: ContextualBandit | None,
                 shadow_router: Any = None, sync: BanditSync | None = None, memory: SessionMemory | None = None):
        self.config = config
        self.feedback_log = feedback
        self.bandit = bandit
        self.sync = sync  # shares the bandit's rewards with other replicas (learning.bandit.shared)
        self.shadow_router = shadow_router
        # tool loops' models and regenerable answers: in Redis when replicas share it
        self.memory = memory or LocalMemory(config.learning.regenerate_window_s)
        self.gateway: Any = None
        self.hook = LearningHook(self)
        self._recent: Recent[str, str] = Recent(RECENT)  # request id -> tenant (the client key's id)
        self._lock = threading.Lock()
        self.shadow_spend = 0.0
        self.rng = random.Random(config.learning.bandit.seed)  # samples the shadow calls
        # Shadow calls get connection pools of their own: queued behind them, live requests to
        # the same provider would wait (a slow candidate model changed the client's latency).
        self._shadow_providers: dict[str, Any] = {}
        self._tasks: set[asyncio.Task] = set()  # work beside the requests (shadow calls, implicit feedback)
        self._on_rejected: list[Callable[[str], None]] = []

    def on_rejected(self, callback: Callable[[str], None]) -> None:
        """Call `callback(request_id)` for every answer feedback judges bad (score < 0.5)."""
        self._on_rejected.append(callback)

    @classmethod
    def from_config(cls, config: Config, live_router: Any = None) -> "LearningRuntime":
        try:
            feedback = open_feedback_log(config.server.db)
        except ValueError as exc:
            log.warning("feedback is disabled: %s", exc)
            feedback = None
        try:
            b = config.learning.bandit
            bandit = None
            if b.enabled:
                basis = predictor_basis(live_router)
                settings = BanditSettings(explore_share=b.explore_share, new_model_explore_share=b.new_model_explore_share,
                                          extra_cost_share=b.extra_cost_share, budget_horizon=b.budget_horizon,
                                          utility_margin=b.utility_margin, total_cost_share=b.total_cost_share, seed=b.seed)
                bandit = ContextualBandit(settings, basis=basis)
            sync = memory = None
            if config.server.redis_url:
                from service.governance.redis_state import connect

                prefix = os.environ.get("OPENCLAW_REDIS_PREFIX", "openclaw")
                memory = RedisMemory(redis_client(config.server.redis_url), prefix, config.learning.regenerate_window_s)
                if bandit is not None and b.shared:
                    sync = BanditSync(bandit, connect(config.server.redis_url), prefix=prefix)
            shadow = None
            if config.learning.shadow.artifact:
                from router.engine import LearnedRouter, find_artifact

                try:
                    shadow = LearnedRouter.load(find_artifact(config.learning.shadow.artifact, config))
                except (OSError, ValueError, KeyError) as exc:  # named by its key, as `check` names it
                    raise ValueError(f"learning.shadow.artifact {config.learning.shadow.artifact!r}: {exc}") from None
        except BaseException:
            # A shadow artifact that does not load refuses the start: the feedback log opened
            # above must not keep its files open behind it.
            if feedback is not None:
                feedback.close()
            raise
        runtime = cls(config, feedback, bandit, shadow, sync, memory)
        if sync is not None:
            sync.on_feedback = runtime.judged
        return runtime

    def attach(self, gateway: Any) -> None:
        self.gateway = gateway
        if self.bandit is not None:
            gateway.router.on_swap(lambda new: self.bandit.rebase(predictor_basis(new)))

    # ---- request ids and feedback -----------------------------------------------------
    def remember(self, request_id: str, tenant: str) -> None:
        with self._lock:
            self._recent.put(request_id, tenant)

    def owner(self, request_id: str) -> str | None:
        """The tenant that made the request, if this process saw it or the outcome log has it
        (another replica, an earlier run); None for an unknown request."""
        with self._lock:
            if request_id in self._recent:
                return self._recent[request_id]
        outcome_log = getattr(self.gateway, "outcome_log", None)
        row = outcome_log.get(request_id) if outcome_log is not None else None
        return None if row is None else (row.get("tenant") or "default")

    def record(self, fb: Feedback) -> None:
        if self.feedback_log is not None:
            self.feedback_log.add_feedback(fb)
        self.learn(fb)

    def learn(self, fb: Feedback) -> None:
        """What a stored verdict teaches: the bandit (and through Redis the other replicas), the cache."""
        if self.sync is not None:
            self.sync.feedback(fb.request_id, fb.score)
        elif self.bandit is not None:
            self.bandit.feedback(fb.request_id, fb.score)
        self.judged(fb.request_id, fb.score)

    def judged(self, request_id: str, score: float) -> None:
        """Feedback this replica or another one took: a rejected answer leaves the cache."""
        if score < REJECTED_BELOW:
            for callback in self._on_rejected:
                callback(request_id)

    # ---- shadow -------------------------------------------------------------------------
    def shadow_decide(self, ctx: RequestContext):
        from router.policy import NoEligibleModel

        profile = self.config.router.profiles[ctx.profile]
        constraints = ctx.extras.get("constraints")
        kwargs = {"constraints": constraints} if constraints is not None else {}
        try:
            # The live decision's view of the models (health, measured latency): the two routers
            # are compared on the same moment, not the candidate on an idealised one.
            return self.shadow_router.route(ctx.routing, catalog=self.config.models, profile=profile,
                                            live=ctx.extras.get("live"), embedding=ctx.embedding, **kwargs)
        except NoEligibleModel:
            return None

    def spawn(self, work: Any) -> None:
        """Work beside the request, never in front of it: a shadow call does not hold back the
        outcome row (which feedback sent to another replica looks for), and a feedback store
        that is away does not hold back, or fail, the request whose repeat it records."""
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def record_implicit(self, fb: Feedback) -> None:
        try:
            self.record(fb)
        except Exception as exc:  # the store is away: the signal is lost, the gateway serves on
            log.warning("implicit feedback %s on %s was not recorded: %s", fb.signal, fb.request_id, exc)

    async def aclose(self, wait_s: float = 10.0) -> None:
        """Let work in flight finish (then cancel it), close the shadow's pools and the
        session memory."""
        if self._tasks:
            _, late = await asyncio.wait(set(self._tasks), timeout=wait_s)
            for task in late:
                task.cancel()
        for provider in self._shadow_providers.values():
            await provider.aclose()
        await asyncio.to_thread(self.memory.close)  # the last answers' writes land before the process goes

    def _shadow_provider(self, name: str) -> Any:
        from service.providers import build_provider

        live = self.gateway.providers.get(name) if self.gateway is not None else None
        if live is None:
            return None
        if name not in self._shadow_providers:
            self._shadow_providers[name] = build_provider(live.spec)
        return self._shadow_providers[name]

    async def shadow_call(self, ctx: RequestContext, rec: ShadowRecord) -> None:
        """Ask the candidate's model too, on the shadow's own budget; the client never sees it."""
        shadow = self.config.learning.shadow
        spec = self.config.model(rec.shadow_model)
        provider = self._shadow_provider(spec.provider)
        if provider is None:
            return
        # The cap holds whatever the answer costs: the most this call can be billed is reserved
        # (the prompt with a margin, the longest answer the request or the model allows), and
        # settled to the real cost after. Reserving the predicted cost let answers longer than
        # predicted, with calls in flight, spend 30x the cap.
        worst = spec.most_billed(ctx.routing.input_tokens * SHADOW_INPUT_MARGIN, ctx.routing.max_output_tokens, ctx.routing.answers)
        rec.call_reserved_usd = worst
        with self._lock:
            if self.shadow_spend + worst > shadow.max_call_cost_usd:
                # Kept apart from "not drawn": skips fall on the dearer models, so the calls made
                # alone would show the shadow's choices cheaper than they are (shadow-report says so).
                rec.call_status = SKIPPED_BY_CAP
                return
            self.shadow_spend += worst
        body = {k: v for k, v in ctx.body.items() if k not in ("stream", "stream_options")}
        started = time.perf_counter()
        rec.called = True
        try:
            answer = await provider.complete(spec, {**body, "model": spec.upstream_name})
        except Exception as exc:  # a failing shadow call is data, never an error for anyone
            rec.call_status = f"error: {type(exc).__name__}"
            with self._lock:  # it cost nothing: the reservation goes back to the cap
                self.shadow_spend -= worst
            return
        finally:
            rec.call_latency_s = time.perf_counter() - started
        usage = answer.get("usage") or {}
        rec.call_cost_usd = spec.price.usage_cost(usage)
        with self._lock:
            self.shadow_spend += rec.call_cost_usd - worst
        text, _ = _answer_text(answer)
        rec.call_status, rec.call_output_chars = "ok", len(text)


def _limits_text(limits: Constraints | None) -> str:
    """The request's own routing limits, written alike in every process (a replica's repeat
    reads another's key in Redis): "" for none."""
    if limits is None or limits == Constraints():
        return ""
    fields = {k: sorted(v) if isinstance(v, frozenset) else v for k, v in vars(limits).items()}
    return json.dumps(fields, sort_keys=True)


def repeat_key(ctx: RequestContext) -> str | None:
    """What makes a request a regeneration of an earlier one: the same request (route, tenant,
    every message, generation parameters: best-of-N with other seeds is not a repeat) ending in
    a user turn, under the same limits of its own. Agent clients resend the last user turn on
    every step of a tool loop, but with the tool calls and results after it: those steps are
    progress, not a regeneration."""
    messages = ctx.body.get("messages") or []
    if not messages or messages[-1].get("role") != "user":
        return None
    if "repeat_key" not in ctx.extras:
        keys = ctx.extras.get("cache_keys") or request_keys(ctx.body, ctx.profile or ctx.requested_model, ctx.tenant)
        # The cache may answer two end users of one key alike (it ignores `user`); their asking
        # the same is not one of them asking again. Nor is the same asked under other limits (a
        # model excluded, local only, a cost cap: the `router` field, `x-router-*` headers), which
        # the cache key leaves out: it asks for another answer, not a better one, and the cache
        # does not serve it from an answer its limits rule out.
        # Hashed: the client's `user` can be any length, and the key is kept for the window.
        asker = str(ctx.body.get("user") or "")
        limits = _limits_text(ctx.extras.get("request_limits"))
        if limits:
            asker += f"\0{limits}"
        ctx.extras["repeat_key"] = f"{keys.exact}\0{hashlib.sha256(asker.encode()).hexdigest()[:32]}"
    return ctx.extras["repeat_key"]


def _turn_digest(ctx: RequestContext) -> bytes:
    """One user turn: the tenant and the conversation up to and including its last user message,
    which every step of an agent's tool loop repeats. The whole history, not the last message
    alone: two sessions of one agent that both sent "continue" had shared one turn, and one
    session's tool loop was moved to the model of the other's. Kept on the request: its draw,
    its model and its record each need it, and an agent's history is tens of kilobytes."""
    if "turn" not in ctx.extras:
        messages = [m for m in ctx.body.get("messages") or [] if isinstance(m, dict)]
        last_user = max((i for i, m in enumerate(messages) if m.get("role") == "user"), default=-1)
        digest = hashlib.sha256(f"{ctx.tenant}\0".encode())
        for m in messages[:last_user + 1]:
            digest.update(_turn_part(m).encode("utf-8", "replace"))
        ctx.extras["turn"] = digest.digest()
    return ctx.extras["turn"]


def _turn_part(message: dict[str, Any]) -> str:
    """What a message adds to its turn: its role, text, other parts' payloads (another picture is
    another question), tool calls and tool-call id; not a part's `cache_control`, which a client
    moves to the newest message on every step. Of a system turn whose client marked a part, only
    up to the mark: what follows it (the time of day) changes on every step of one turn."""
    content = message.get("content")
    if isinstance(content, list):
        if message.get("role") in ("system", "developer"):
            marks = [j for j, p in enumerate(content) if isinstance(p, dict) and isinstance(p.get("cache_control"), dict)]
            content = content[:marks[-1] + 1] if marks else content
        others = [p.get(p.get("type")) for p in content if isinstance(p, dict) and p.get("type") not in TEXT_PART_TYPES]
    else:
        others = []
    calls = message.get("tool_calls")
    extra = json.dumps([others, calls], sort_keys=True, default=str) if others or calls else ""
    return f"{message.get('role')}\0{content_text(content)}\0{extra}\0{message.get('tool_call_id') or ''}\1"


def turn_rng(ctx: RequestContext) -> np.random.Generator:
    """The exploration draw for one user turn: every step of an agent's tool loop gets the same
    draw; different turns draw independently."""
    return np.random.default_rng(int.from_bytes(_turn_digest(ctx)[:8], "big"))


def continues_turn(ctx: RequestContext) -> bool:
    """A tool-loop step: something (the model's tool calls, their results) follows the last user message."""
    messages = ctx.body.get("messages") or []
    return bool(messages) and messages[-1].get("role") != "user" and any(m.get("role") == "user" for m in messages)


class LearningHook:
    name = "learning"

    def __init__(self, runtime: LearningRuntime):
        self.rt = runtime

    async def pre(self, ctx: RequestContext) -> dict[str, Any] | None:
        return None

    async def routed(self, ctx: RequestContext) -> None:
        rt = self.rt
        rt.remember(ctx.request_id, ctx.tenant)
        key = repeat_key(ctx)
        previous = await rt.memory.take_repeat(key) if key is not None else None
        # A repeat the cache would have answered had the earlier answer's store (off the latency
        # path) finished in time is not the client asking for another answer.
        if previous is not None and not ctx.extras.get("cache_store_pending"):
            rt.spawn(asyncio.to_thread(rt.record_implicit, Feedback(previous, 0.0, source="implicit", signal="regenerated")))
        if ctx.decision is not None:
            # What the shadow report compares the candidate with: the live router's own choice,
            # before the bandit re-decides it and before a tool loop's step is kept on its turn's model.
            ctx.extras["router_choice"] = ctx.decision.model
        if rt.bandit is not None and ctx.decision is not None:
            ctx.decision = rt.bandit.choose_for(ctx.decision, ctx.embedding, request_id=ctx.request_id,
                                                rng=turn_rng(ctx))
        if ctx.decision is not None and continues_turn(ctx):
            self._keep_the_turns_model(ctx, await rt.memory.find_turn(_turn_digest(ctx).hex()))

    def _keep_the_turns_model(self, ctx: RequestContext, seen: tuple[str, float] | None) -> None:
        """Every step of a tool loop goes to the model the loop is on while it can take it: the
        ranking moves as the history grows (a longer prompt costs more on a dearer model), and a
        switch half-way hands a task to a model that did not plan it (and loses the provider's
        prompt cache). A window too small, an open circuit or a request limit still move it."""
        decision = ctx.decision
        if seen is None:
            return
        turn_model, propensity = seen
        if turn_model == decision.model:
            # The step's own draw agrees, but the turn's draw set the model (had it drawn another, the
            # step would be on that one): the step's own probability is not the action's, and
            # `finished` would store it as the turn's for every later step.
            if propensity != decision.propensity:
                ctx.decision = replace(decision, propensity=propensity,
                                       reason=f"{turn_model}: the model this turn's tool loop is on (drawn for the turn "
                                              f"with p={propensity:.2f}; this step's own draw agreed)")
            return
        if not any(c.model == turn_model and c.excluded is None for c in decision.candidates):
            return
        if self.rt.bandit is not None:
            self.rt.bandit.forget(ctx.request_id)  # its draw was for another model
        # The step's model is the turn's draw: logged with that draw's probability, for OPE.
        ctx.decision = replace(decision, model=turn_model, propensity=propensity,
                               reason=f"{turn_model}: the model this turn's tool loop is on (this step alone would go "
                                      f"to {decision.model})")

    def finished(self, ctx: RequestContext) -> None:
        rt = self.rt
        key = repeat_key(ctx) if ctx.status in ("ok", "cache_hit") else None
        if key is not None:
            # Before the client has the answer, as the post-hooks would be too late for a repeat
            # sent the moment it arrives (a script, an agent's retry). `ok` means delivered: a
            # non-streamed answer's client was still there, a stream's last chunk is out; a client
            # that left is `client_closed`, a stream cut short `truncated`, neither one regenerable.
            rt.memory.answered(key, ctx.request_id)
        if ctx.decision is not None and ctx.status == "ok" and ctx.answered_by == ctx.decision.model:
            # Before the client has the answer: its next tool-loop step finds the model, and the
            # probability it was drawn with. A fallback that answered was never drawn, so it is not
            # the turn's model: the next step draws afresh (and keeps whatever answers it).
            rt.memory.turn_answered(_turn_digest(ctx).hex(), ctx.answered_by, ctx.decision.propensity)
        if rt.bandit is not None and ctx.decision is not None \
                and not judges_chosen_model(ctx.status, ctx.decision.model, ctx.answered_by, ctx.attempts):
            # A fallback answered (or the chosen model was never called, or refused the request as
            # its own fault): no reward, explicit or implicit, is about the model chosen. The bandit
            # leaves the decision out, as offline evaluation does, before the client can rate it;
            # the feedback log still keeps every signal for retraining.
            rt.bandit.forget(ctx.request_id)

    def short_circuited(self, ctx: RequestContext) -> None:
        # A cache hit never reaches `routed`, and post-hooks run after the client has the
        # answer: a client that rates it at once must find its request id already.
        self.rt.remember(ctx.request_id, ctx.tenant)

    async def post(self, ctx: RequestContext) -> None:
        rt = self.rt
        if ctx.status == "rejected":  # invalid, refused before routing: nothing to rate
            return
        rt.remember(ctx.request_id, ctx.tenant)
        if rt.bandit is not None and ctx.decision is not None and ctx.status == "ok" and ctx.answered_by:
            answered = _candidate(ctx.decision, ctx.answered_by)
            if answered is not None:
                rt.bandit.observe_cost(ctx.answered_by, answered["cost_usd"], ctx.cost_usd)
        if ctx.decision is not None and ctx.cache_status in ("miss", "bypass"):
            signal = self.implicit_signal(ctx)
            if signal is not None:
                await asyncio.to_thread(rt.record_implicit, Feedback(ctx.request_id, 0.0, source="implicit", signal=signal))
        if rt.shadow_router is not None and ctx.decision is not None and rt.feedback_log is not None:
            rt.spawn(self.shadow(ctx))

    @staticmethod
    def implicit_signal(ctx: RequestContext) -> str | None:
        if failed_by_its_models(ctx.status, ctx.attempts):
            return "error"
        if ctx.status == "truncated":
            return "truncated"
        if ctx.status == "ok":
            text, tools = _answer_text(ctx.response)
            if not text.strip() and not tools:
                return "empty"
        return None

    async def shadow(self, ctx: RequestContext) -> None:
        rt = self.rt
        decision = await asyncio.to_thread(rt.shadow_decide, ctx)
        if decision is None:
            return
        live = ctx.decision
        # The model that answered: a fallback where the chosen one failed; the chosen one where
        # every model failed (its implicit error is recorded against it).
        served = ctx.answered_by or live.model
        rec = ShadowRecord(
            request_id=ctx.request_id, profile=ctx.profile, live_model=served, shadow_model=decision.model,
            live_candidate=served_candidate(live, served, ctx.extras.get("router_choice", live.model)),
            shadow_candidate=_candidate(decision, decision.model) or {},
            shadow_on_live_choice=_candidate(decision, served), shadow_propensity=decision.propensity,
        )
        share = rt.config.learning.shadow.call_share
        # Drawn where the candidate's model is not the one served (not where it differs from the
        # live router's own choice): only there does its answer observe what the log lacks.
        if share > 0 and decision.model != served and rt.rng.random() < share:
            await rt.shadow_call(ctx, rec)
        await asyncio.to_thread(rt.feedback_log.add_shadow, rec)
