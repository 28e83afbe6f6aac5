"""The governance pipeline hook: authenticate, scope, rate-limit, budget (pre); reserve the
predicted cost once the router has decided (routed); settle to the real cost (post).

Refusals are OpenAI-style errors: 401 for a missing or unknown key, 403 for a revoked or
expired key, a model/profile outside the key's scope or, under a limit, a file the request
only refers to (its size unknown), 429 for RPM/TPM and `max_parallel_requests` (a slot of the
key's and its team's, held from admission until `finished`), 402 when a budget or cost ceiling
would be exceeded — the message names which one. Who the caller is and what the key may use is
decided by `auth.Authenticator`, shared with the other client endpoints.
"""
from __future__ import annotations

import asyncio
import logging
import time
import weakref
from dataclasses import dataclass, field, replace
from typing import Any

from router.config import ModelSpec
from router.request_view import output_limit
from service.dispatch import failover_chain
from service.errors import ApiError
from service.governance.auth import CACHE_MAX, CACHE_TTL_S
from service.governance.budgets import Budget, Line, Reservation, prompt_bytes, session_line
from service.governance.keys import VirtualKey, to_nusd
from service.governance.ratelimit import Slot
from service.governance.request_limits import key_rate_limited, output_allowance
from service.governance.runtime import Governance
from service.pipeline import RequestContext

log = logging.getLogger(__name__)

# Pauses between tries of a settle that failed: about half a minute in all, off the latency
# path (a post-hook), long enough for a database failover or a dropped pool connection.
SETTLE_RETRY_S = (0.5, 1.0, 2.0, 4.0, 8.0, 16.0)

# Prompt tokens are estimated from characters before the call (the prediction a named model is
# checked on; a reservation counts bytes instead, see `most`); the bill counts real tokens, with a
# few per message for roles and separators (OpenAI: ~4) and some for the reply priming.
INPUT_MARGIN = 1.25
TOKENS_PER_MESSAGE = 8
TOKENS_PER_REQUEST = 16
# How long a request whose budget is tied up by in-flight reservations waits for them to settle.
RESERVE_WAIT_S = 5.0
RESERVE_POLL_S = 0.05


@dataclass
class GovState:
    key: VirtualKey | None
    label: str
    lines: list[Line] = field(default_factory=list)
    session_id: str | None = None
    soft: list[str] = field(default_factory=list)  # budgets past their soft threshold
    reservation: Reservation | None = None
    predicted_nusd: int | None = None
    maximum_nusd: int | None = None
    room_nusd: int | None = None  # the tightest budget's free room (settled spend) when admitted
    counted_input: int = 0  # input tokens the rate limiter counted when it admitted the request
    allowance: int = 0  # and output tokens, in its minute `counted_minute`, until the answer says how many
    counted_minute: int = 0
    release: Any = None  # queues the request's parallel slots back when it is collected; `finished` detaches it


def _attachment_note(ctx: RequestContext) -> str:
    attached = ctx.routing.attachment_bytes
    return f" (its {attached:,} bytes of attached files and audio count at their worst case)" if attached else ""


def _usd(nusd: int) -> str:
    # To the nano-dollar the ledger counts in: a $0.00005 ceiling must not read as $0.0001.
    return f"${nusd / 1e9:.9f}".rstrip("0").rstrip(".") if nusd else "$0"


class GovernanceHook:
    name = "governance"

    def __init__(self, gov: Governance):
        self.gov = gov
        self.auth = gov.auth
        self._budgets: dict[str, tuple[float, list[Budget]]] = {}
        self._teams: dict[str, tuple[float, int | None]] = {}

    def invalidate(self) -> None:
        """Keys, budgets or team limits changed in this process: forget what is cached."""
        self.auth.invalidate()
        self._budgets = {}
        self._teams = {}

    def _applicable(self, key: VirtualKey | None) -> list[Budget]:
        if key is None:
            return []
        hit = self._budgets.get(key.id)
        if hit is not None and time.monotonic() - hit[0] < CACHE_TTL_S:
            return hit[1]
        budgets = self.gov.budgets.applicable(key)
        if len(self._budgets) >= CACHE_MAX:
            self._budgets = {}
        self._budgets[key.id] = (time.monotonic(), budgets)
        return budgets

    def _refuse(self, status: int, message: str, code: str, reason: str, headers: dict[str, str] | None = None) -> ApiError:
        return self.auth.refuse(status, message, code, reason, headers)

    # ---- pre: who is asking, may they, and how close are their budgets -------------------

    async def pre(self, ctx: RequestContext) -> dict[str, Any] | None:
        # The chat endpoint identified the caller before reading the body.
        caller = ctx.extras["caller"]
        if caller.key is None:
            if caller.kind == "master":
                ctx.key_label = "master"
            ctx.extras["governance"] = GovState(None, caller.label)
            return None
        key = caller.key
        ctx.tenant, ctx.key_label = caller.tenant, key.name
        state = GovState(key, key.name)
        ctx.extras["governance"] = state
        ctx.extras["constraints"] = self.auth.scope(key, ctx.profile, ctx.requested_model, ctx.extras["constraints"])
        await asyncio.to_thread(self._admit, ctx, state)  # one worker hop for the rate limits and the budgets
        return None

    def _admit(self, ctx: RequestContext, state: GovState) -> None:
        key = state.key
        if ctx.routing.unsized_attachments and self._has_limits(key):
            # No worst case can be reserved for content of unknown size, and clients cannot have
            # uploaded it through the gateway (it has no /v1/files): refuse rather than guess.
            raise self._refuse(403, f"Key '{key.name}' has a budget, a cost ceiling or a token rate limit, so every input "
                               "must be sized before the call: this request has a file or audio part that refers to its "
                               "content (a `file_id` or a URL) instead of carrying it, and the gateway cannot know its size. "
                               "Send the content inline (`file.file_data`, `input_audio.data`).",
                               "unsized_attachment", "unsized_attachment")
        self._hold_slots(ctx, state)  # first: a request it refuses takes nothing from the key's minute
        tokens, allowance = ctx.routing.input_tokens, 0
        if key.tpm is not None:
            allowance = self._allowance(ctx, key, tokens)
        check = self.gov.limiter.admit(key.id, key.rpm, key.tpm, tokens + allowance)
        if check.refused is not None:
            raise key_rate_limited(self.auth, key, check)
        if headers := check.headers():  # the limiter's counts are at hand: say what is left, as OpenAI does
            ctx.extras.setdefault("response_headers", {}).update(headers)
        state.counted_input, state.allowance, state.counted_minute = tokens, allowance, check.minute
        self._budget_lines(ctx, state)

    def _team_parallel(self, team: str | None) -> int | None:
        if team is None:
            return None
        hit = self._teams.get(team)
        if hit is None or time.monotonic() - hit[0] >= CACHE_TTL_S:
            if len(self._teams) >= CACHE_MAX:
                self._teams = {}
            hit = self._teams[team] = (time.monotonic(), self.gov.keys.team_parallel(team))
        return hit[1]

    def _hold_slots(self, ctx: RequestContext, state: GovState) -> None:
        """A slot of the key's `max_parallel_requests` and of its team's, or a 429 naming the full one.
        Held until the request ends (`finished`): a stream until its last chunk, whatever ends it."""
        key = state.key
        team = self._team_parallel(key.team)
        slots = [Slot("key", key.id, key.max_parallel_requests)] if key.max_parallel_requests is not None else []
        slots += [Slot("team", key.team, team)] if team is not None else []
        if not slots:
            return
        held = self.gov.limiter.hold(slots)
        if held.lease is None:
            whose = f"key '{key.name}'" if held.refused.scope == "key" else f"team '{held.refused.id}'"
            raise self._refuse(429, f"Parallel request limit of {whose} reached: {held.in_flight} requests in progress, "
                               f"max_parallel_requests is {held.refused.limit}; retry once one of them has finished.",
                               "parallel_requests_limit_exceeded", "parallel", {"retry-after": "1"})
        # Also when the context is collected without `finished` (a response never started): no slot is lost for
        # good. Only queued then: the collector may run it in a thread that holds the limiter's lock.
        state.release = weakref.finalize(ctx, self.gov.limiter.release_later, held.lease)
        state.release.atexit = False
        if ctx.extras.get("finished"):  # ended (the shutdown deadline) while this ran in its worker thread
            self.finished(ctx)

    def finished(self, ctx: RequestContext) -> None:
        state: GovState | None = ctx.extras.get("governance")
        # At most once, whoever calls it: a detached finalizer no longer runs, a finalizer run is no longer detached.
        if state is not None and state.release is not None and (held := state.release.detach()) is not None:
            self.gov.limiter.release(*held[2])

    def _allowance(self, ctx: RequestContext, key: VirtualKey, tokens: int) -> int:
        """The output tokens the key's TPM counts for the request at admission (`output_allowance`);
        413 when no minute could ever admit it. Counting only the input let a burst of long answers
        run a minute to twice its limit before any of them settled."""
        allowance = output_allowance(self.gov.config, ctx)
        if tokens + allowance > key.tpm:
            # No minute will ever have room for it: a 429 would have the client retry in vain.
            answers = ctx.routing.answers
            asked = (f" and the {allowance} output tokens its `{output_limit(ctx.body)[1]}` allows"
                     f"{f' (for its {answers} answers)' if answers > 1 else ''}") if allowance else ""
            raise self._refuse(413, f"This request's ~{tokens} input tokens{asked} exceed the {key.tpm} tokens per "
                               f"minute of key '{key.name}'.", "request_too_large", "tpm")
        return allowance

    def _has_limits(self, key: VirtualKey) -> bool:
        """Whether anything of this key's caps the tokens or the money one request may use."""
        return (key.tpm is not None or key.max_request_usd is not None or key.max_session_usd is not None
                or bool(self._applicable(key)))

    def _budget_lines(self, ctx: RequestContext, state: GovState) -> None:
        key = state.key
        now = time.time()
        budgets = self._applicable(key)
        lines = [replace(b.line(now), label=key.budget_label(b.period)) if b.scope == "key" else b.line(now)
                 for b in budgets]
        session_id = ctx.body.get("prompt_cache_key") or ctx.headers.get("x-session-id")
        # A NUL cannot be stored in a PostgreSQL text column: the whole settle would roll back.
        session_id = str(session_id or "").replace("\x00", "")[:200]
        if session_id:
            state.session_id = session_id
            soft = min((b.soft_threshold for b in budgets), default=0.8)
            line = session_line(key, state.session_id, soft)
            if line is not None:
                lines.append(line)
        state.lines = lines
        if not lines:
            self._tighten(ctx, key, None, False)
            return
        usage = self.gov.ledger.usage(lines)
        for line in lines:
            # Settled spend decides here: in-flight reservations are worst cases that settle lower.
            spent = usage[line.counter].spent_nusd if line.counter in usage else 0
            room = line.limit_nusd - spent
            if room <= 0:
                raise self._refuse(402, f"Budget exceeded: the {line.label} ({_usd(line.limit_nusd)}) is used up.",
                                   "budget_exceeded", "budget")
            if state.room_nusd is None or room < state.room_nusd:
                state.room_nusd, tightest = room, line
            if spent >= line.soft_threshold * line.limit_nusd:
                state.soft.append(line.label)
        self._tighten(ctx, key, state.room_nusd, bool(state.soft), tightest.label)

    def _tighten(self, ctx: RequestContext, key: VirtualKey | None, headroom_nusd: int | None, soft: bool,
                 label: str = "") -> None:
        """Cap the router's per-request cost by what is left, and go cheaper past a soft threshold."""
        constraints = ctx.extras["constraints"]
        caps = [c for c in (constraints.max_cost_usd, key.max_request_usd if key else None,
                            headroom_nusd / 1e9 if headroom_nusd is not None else None) if c is not None]
        if caps:
            constraints = replace(constraints, max_cost_usd=min(caps))
        ctx.extras["constraints"] = constraints
        refusal = None
        if headroom_nusd is not None and min(caps) == headroom_nusd / 1e9:
            refusal = (f"Budget exceeded: the {label} has only {_usd(headroom_nusd)} left, less than the predicted cost "
                       f"of any model allowed for this request{_attachment_note(ctx)}.", "budget_exceeded", "budget")
        elif key is not None and key.max_request_usd is not None and min(caps) == key.max_request_usd:
            refusal = (f"Request cost ceiling: every model allowed for this request is predicted to cost more than the "
                       f"per-request ceiling of {_usd(to_nusd(key.max_request_usd))} of key '{key.name}'{_attachment_note(ctx)}.",
                       "request_cost_ceiling", "request_ceiling")
        if refusal is not None:
            limit = min(caps)

            def explain(exc: ApiError) -> ApiError | None:
                # Every model was too dear for the binding limit: a 402 that names it, as a named model
                # gets. Not where the profile routed (its soft-limit shift included) caps cost lower itself.
                profile = self.gov.config.router.profiles.get(ctx.profile) if ctx.profile else None
                if exc.code != "no_eligible_model" or "predicted cost" not in exc.message or (
                        profile is not None and profile.max_cost_usd is not None and profile.max_cost_usd < limit):
                    return None
                return self._refuse(402, *refusal)

            ctx.extras["explain_unroutable"] = explain
        if soft and ctx.profile is not None:
            cheaper = self._cheapest_profile(key, ctx.profile)
            if cheaper != ctx.profile:
                ctx.extras.setdefault("response_headers", {})["x-router-budget"] = f"soft-limit: routed {cheaper} instead of {ctx.profile}"
                ctx.extras["budget_shift"] = {"from": ctx.profile, "to": cheaper}
                ctx.profile = cheaper
                if self.gov.metrics is not None:
                    self.gov.metrics.soft_shifts.labels(key.name if key else "anonymous").inc()

    def _cheapest_profile(self, key: VirtualKey | None, current: str) -> str:
        profiles = self.gov.config.router.profiles
        allowed = [p for p in profiles if key is None or key.allowed_profiles is None or p in key.allowed_profiles]
        best = min(allowed, key=lambda p: profiles[p].willingness_to_pay, default=current)
        return best if profiles[best].willingness_to_pay < profiles[current].willingness_to_pay else current

    # ---- routed: the decision is known, reserve before any upstream call ------------------

    @staticmethod
    def most(ctx: RequestContext, spec: ModelSpec, estimated: bool = False) -> float:
        """The most `spec` may bill for this request: its text at one token per UTF-8 byte (no
        tokenizer makes more, however densely a prompt tokenizes), never more than the model's
        context window (a longer prompt is refused, not billed). What a reservation holds.
        `estimated`: its text at the router's estimate with a margin instead: a named model's
        prediction, which the per-request ceiling and the budgets' free room are checked on."""
        messages = ctx.body.get("messages") or ()
        overhead = TOKENS_PER_MESSAGE * len(messages) + TOKENS_PER_REQUEST + ctx.routing.attachment_tokens_within(spec.context_window)
        if estimated:
            return spec.most_billed(ctx.routing.input_tokens * INPUT_MARGIN + overhead, ctx.routing.max_output_tokens,
                                    ctx.routing.answers)
        text = ctx.extras.get("prompt_bytes")
        if text is None:
            text = ctx.extras["prompt_bytes"] = prompt_bytes(ctx.body) + ctx.routing.image_tokens
        return spec.most_billed(min(text + overhead, spec.context_window), ctx.routing.max_output_tokens, ctx.routing.answers)

    def _chain(self, ctx: RequestContext) -> tuple[list[str], list[str]]:
        """The request's failover chain, and the part of it a reservation covers: a routed
        request's model and the next `max_fallbacks`, a named model and all its fallbacks."""
        chain = failover_chain(self.gov.config, ctx)
        return chain, chain[: 1 + self.gov.config.reliability.max_fallbacks] if ctx.decision is not None else chain

    def estimate(self, ctx: RequestContext, chains: tuple[list[str], list[str]] | None = None) -> tuple[int, int]:
        """(predicted, maximum) cost in nano-USD of what this request may be billed. A routed
        request reserves for its model and the next `max_fallbacks` of the ranking; it may fail
        over further (past rate-limited models) only to models that reservation covers.
        `chains`: `_chain(ctx)`, when the caller has it already."""
        specs = {m.name: m for m in self.gov.config.models}
        chain, covered = chains or self._chain(ctx)
        worst = max((self.most(ctx, specs[m]) for m in covered if m in specs), default=0.0)
        dearer = {m for m in chain[len(covered):] if m in specs and self.most(ctx, specs[m]) > worst}
        if dearer:
            ctx.extras["unaffordable"] = ctx.extras.get("unaffordable", frozenset()) | dearer
        decision = ctx.decision
        if decision is None:
            named = specs.get(ctx.requested_model)
            predicted = self.most(ctx, named, estimated=True) if named else worst
        else:
            chosen = next((c for c in decision.candidates if c.model == decision.model), None)
            # Every one of `n` answers is priced in, and the attachments at their worst case (router.policy).
            predicted = chosen.cost_usd if chosen is not None else worst
        return to_nusd(predicted) or 0, to_nusd(max(worst, predicted)) or 0

    def _cap_output(self, ctx: RequestContext, covered: list[str]) -> None:
        """A request that sets no output limit would be billed for whatever the upstream writes,
        while a reservation can only count each model's `max_output_tokens`: under a budget it is
        sent the largest of those among the models it may use (`covered`), so it cannot cost
        more than was reserved, or than the key's per-request ceiling was checked against."""
        specs = {m.name: m for m in self.gov.config.models}
        cap = max((specs[m].max_output_tokens for m in covered if m in specs), default=None)
        if cap is not None:
            ctx.body["max_tokens"] = cap
            ctx.routing = replace(ctx.routing, max_output_tokens=cap)

    def _keep_fallbacks_under_ceiling(self, ctx: RequestContext, ceiling_usd: float) -> None:
        """A named model passes the key's per-request ceiling and its budgets' free room on its prediction;
        its fallbacks must pass them so too, or failing over would bill what naming them is refused for."""
        specs = {m.name: m for m in self.gov.config.models}
        chain = failover_chain(self.gov.config, ctx)
        ctx.extras["unaffordable"] = frozenset(m for m in chain[1:] if m in specs
                                               and self.most(ctx, specs[m], estimated=True) > ceiling_usd)

    async def routed(self, ctx: RequestContext) -> None:
        state: GovState | None = ctx.extras.get("governance")
        if state is None:
            return
        key = state.key
        room = state.room_nusd / 1e9 if state.room_nusd is not None else None
        ceilings = [c for c in (key.max_request_usd if key else None, room) if c is not None]
        if ceilings and ctx.decision is None:
            self._keep_fallbacks_under_ceiling(ctx, min(ceilings))
        chains = self._chain(ctx)  # the output cap below changes no model's place in it
        ceiling = key is not None and key.max_request_usd is not None
        if (state.lines or ceiling) and ctx.routing.max_output_tokens is None:
            # A ceiling checked on a model's maximum output must be sent that maximum too.
            self._cap_output(ctx, chains[1])
        predicted, maximum = self.estimate(ctx, chains)
        state.predicted_nusd, state.maximum_nusd = predicted, maximum
        if key is not None and key.max_request_usd is not None and predicted > to_nusd(key.max_request_usd):
            raise self._refuse(402, f"Request cost ceiling: this request is predicted to cost {_usd(predicted)}, above the "
                               f"per-request ceiling of {_usd(to_nusd(key.max_request_usd))} of key '{key.name}'"
                               f"{_attachment_note(ctx)}.", "request_cost_ceiling", "request_ceiling")
        if not state.lines:
            return
        waited = 0.0
        while True:
            res = await asyncio.to_thread(self.gov.ledger.reserve, state.lines, predicted, maximum)
            if res.ok:
                state.reservation = res
                return
            line, room = res.refused, res.headroom_nusd or 0
            usage = await asyncio.to_thread(self.gov.ledger.usage, [line])
            settled_room = line.limit_nusd - usage[line.counter].spent_nusd if line.counter in usage else line.limit_nusd
            if settled_room < predicted or settled_room <= 0:
                raise self._refuse(402, f"Budget exceeded: the {line.label} ({_usd(line.limit_nusd)}) has "
                                   f"{_usd(max(settled_room, 0))} left; this request is predicted to cost {_usd(predicted)}.",
                                   "budget_exceeded", "budget")
            # The budget would fit this request once in-flight requests settle (their reservations
            # are worst cases): wait for them a little, then ask the client to retry.
            if waited >= RESERVE_WAIT_S:
                raise self._refuse(429, f"The {line.label} is tied up by requests in flight ({_usd(max(room, 0))} free "
                                   "until they settle); retry in a second.", "budget_busy", "budget_busy",
                                   {"retry-after": "1"})
            await asyncio.sleep(RESERVE_POLL_S)
            waited += RESERVE_POLL_S

    # ---- post: settle to the real cost, attribute, alert ---------------------------------

    async def post(self, ctx: RequestContext) -> None:
        state: GovState | None = ctx.extras.get("governance")
        if state is None:
            return
        row = self.spend_row(ctx, state)
        res = state.reservation
        uncounted = self._uncounted_tokens(state, row)
        # Before the settle, so that the key's next request is admitted against the real count.
        if state.key is not None and uncounted > 0:
            await asyncio.to_thread(self.gov.limiter.add_tokens, state.key.id, uncounted)
        elif state.key is not None and uncounted < 0:
            await asyncio.to_thread(self.gov.limiter.refund_tokens, state.key.id, -uncounted, state.counted_minute)
        self._warn_above_maximum(state, row)
        await self._settle(res.id if res else "", row, [ln.counter for ln in state.lines] if res else [])
        if self.gov.metrics is not None:
            self.gov.metrics.record(row)
        alerts = await asyncio.to_thread(self._alerts, ctx, state)
        await self.gov.alerts.deliver(alerts)
        await asyncio.to_thread(self.gov.maybe_sweep)

    async def _settle(self, reservation_id: str, row: dict[str, Any], counters: list[str]) -> None:
        """Settle, trying again while the store is away (a database restarting, a dropped
        connection): given up, the spend row is lost and the reservation is held until the stale
        sweep releases it at $0. A retry cannot count twice (the ledgers' `settle`)."""
        for pause in (*SETTLE_RETRY_S, None):
            try:
                await asyncio.to_thread(self.gov.ledger.settle, reservation_id, row["cost_nusd"], row, counters)
                return
            except Exception as exc:
                if pause is None:
                    raise
                log.warning("governance: settling request %s failed (%s); trying again in %.1f s",
                            row["request_id"], exc, pause)
                await asyncio.sleep(pause)

    @staticmethod
    def _uncounted_tokens(state: GovState, row: dict[str, Any]) -> int:
        """Tokens the request used that its key's TPM has not counted yet: the output beyond its
        allowance, and the prompt the upstream billed beyond what admission estimated
        (attachments, a tokenizer that splits finer); negative when the answer left part of its
        allowance unused (a request that failed or was refused after admission, all of it). A
        prompt smaller than estimated stays counted at the estimate."""
        prompt, output = row["input_tokens"] or 0, row["output_tokens"] or 0
        return int(output) - state.allowance + max(int(prompt) - state.counted_input, 0)

    @staticmethod
    def _warn_above_maximum(state: GovState, row: dict[str, Any]) -> None:
        """A settled cost above the request's maximum means the estimate the reservation and the
        key's ceiling relied on was wrong (a partial reservation may settle above itself, up to
        the maximum: that the budget guarantee allows for)."""
        key, maximum = state.key, state.maximum_nusd
        if key is None or maximum is None or row["cost_nusd"] <= maximum:
            return
        if state.reservation is None and key.max_request_usd is None:
            return  # nothing relied on the estimate
        reserved = state.reservation.amount_nusd if state.reservation else 0
        log.warning("governance: request %s of key '%s' (%s) settled at %s, above its maximum of %s (%s reserved, "
                    "%s predicted; %s prompt tokens billed): the estimate it was reserved on was too low", row["request_id"], key.name,
                    key.id, _usd(row["cost_nusd"]), _usd(maximum), _usd(reserved), _usd(state.predicted_nusd or 0),
                    row["input_tokens"])

    def spend_row(self, ctx: RequestContext, state: GovState) -> dict[str, Any]:
        key, extras = state.key, ctx.extras
        usage = extras.get("usage") or {}
        ts = extras.get("received_at") or time.time()
        # A 4xx is the request refused (a limit, a budget, an invalid request), not the service
        # failing: the dashboard's error rate counts only `error`.
        status = "refused" if ctx.status == "error" and 400 <= extras.get("http_status", 500) < 500 else ctx.status
        return {
            "request_id": ctx.request_id,
            "ts": ts,
            "day": time.strftime("%Y-%m-%d", time.gmtime(ts)),
            "key_id": key.id if key else None,
            "key_name": key.name if key else state.label,
            "team": key.team if key else None,
            "project": key.project if key else None,
            "user_tag": key.user if key else None,
            "session_id": state.session_id,
            "model": ctx.answered_by or ctx.extras.get("abandoned_on"),  # the model that billed it
            "profile": ctx.profile,
            "status": status,
            "cache_status": ctx.cache_status,
            "cost_nusd": to_nusd(ctx.cost_usd) or 0,
            "predicted_nusd": state.predicted_nusd,
            "reserved_nusd": state.reservation.amount_nusd if state.reservation else None,
            "input_tokens": usage.get("prompt_tokens"),
            "output_tokens": usage.get("completion_tokens"),
            "latency_s": extras.get("latency_s"),
            "ttft_s": extras.get("ttft_s"),
            "reason": (ctx.error if ctx.status == "error" else extras.get("reason") or "")[:500],
        }

    def _alerts(self, ctx: RequestContext, state: GovState) -> list:
        alerts = self.gov.alerts
        fired = []
        budget_lines = [ln for ln in state.lines if ln.budget_id is not None]
        if budget_lines and ctx.cost_usd > 0:
            fired += alerts.budget_alerts(budget_lines, self.gov.ledger.usage(budget_lines))
        for model in dict.fromkeys(a["model"] for a in ctx.attempts if a.get("status") in ("ok", "error")):
            failed = any(a["model"] == model and a["status"] == "error" for a in ctx.attempts)
            fired += alerts.request_outcome(model, failed)
        breaker = self.gov.breaker
        if breaker is not None:
            for model in dict.fromkeys(a["model"] for a in ctx.attempts):
                last = next((a for a in reversed(ctx.attempts) if a["model"] == model and a["status"] == "error"), None)
                cause = f"{last['kind']}: {last.get('message', '')}" if last else None
                fired += alerts.circuit_state(model, breaker.state(model), cause)
        return fired
