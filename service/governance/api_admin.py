"""Admin API under /admin, guarded by the master key from OPENCLAW_MASTER_KEY.

Keys: create (the secret is in that one response), list, get, update, revoke, rotate. Teams:
the limits set on a team as a whole (`max_parallel_requests`), listed and set.
Budgets: create, list with live usage and burn, update, delete. Reports: spend grouped by
key/team/project/user/model/day (JSON or CSV), month-end forecast, recent requests, alerts,
and one `dashboard` document for the /ui page. Every route checks the master key before it
reads a body, and reads at most `MAX_BODY` of it.
"""
from __future__ import annotations

import asyncio
import json
import math
import time
from typing import Annotated, Any, Literal, TypeVar

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictFloat, StrictInt, ValidationError

from service.errors import ApiError, invalid_body
from service.governance.attribution import DIMENSIONS
from service.governance.budgets import Budget, window
from service.governance.auth import require_admin
from service.governance.keys import UnknownKey, VirtualKey
from service.governance.runtime import Governance
from service.schemas import read_json_body


def _no_nul_in_url(request: Request) -> None:
    # PostgreSQL text refuses a NUL: a key id or a report filter holding one had been a 500 there
    # (and nothing on SQLite). No name or id the admin API knows has one.
    if "\x00" in request.scope["path"] or any("\x00" in k + v for k, v in request.query_params.multi_items()):
        raise ApiError(400, "the URL holds a NUL character (%00), which no name or id has", code="invalid_request")


router = APIRouter(prefix="/admin")


def governance_of(request: Request) -> Governance:
    gov = getattr(request.app.state, "governance", None)
    if gov is None:
        raise ApiError(404, "governance is not enabled on this gateway", code="not_found")
    return gov


def require_master(request: Request) -> Governance:
    require_admin(request)  # the key first: a caller without it learns nothing of how its URL was read
    _no_nul_in_url(request)
    return governance_of(request)


class _Body(BaseModel):
    # NaN and infinity, stored, break every later listing: read_json_body refuses them anywhere
    # in a body (Python's json reads them), these models in any number field whoever builds them.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


def _no_nul(value: str) -> str:
    if "\x00" in value:
        raise ValueError("must not contain a NUL character")  # PostgreSQL text columns refuse it
    return value


def _not_blank(value: str) -> str:
    # A blank team or project would be a group of its own that no report or budget names clearly.
    if not value.strip():
        raise ValueError("must not be blank; leave it out (or null) for none")
    return value


Name = Annotated[str, AfterValidator(_no_nul), AfterValidator(_not_blank)]


MAX_USD = 1e9  # $1e9 is 1e18 nano-USD, inside a signed 64-bit integer
MIN_USD = 1e-9  # one nano-USD, the unit amounts are stored in: less would be stored as 0
MAX_COUNT = 10**12
MAX_PARALLEL = 10**6  # far above any connection pool; a count, not a rate
MAX_TIME = 32_503_680_000.0  # the year 3000: an expiry past it is a unit mistake, not a date
# Amounts, times and shares are numbers: "5" had been taken for 5 where a count refused "10".
Number = StrictFloat


class KeyFields(_Body):
    team: Name | None = None
    project: Name | None = None
    user: Name | None = None
    allowed_models: list[str] | None = Field(default=None, min_length=1)  # [] would allow nothing: null is every model
    allowed_profiles: list[str] | None = None
    # Upper bounds keep amounts inside the stores' 64-bit integers (nano-USD; tokens per minute).
    rpm: StrictInt | None = Field(default=None, gt=0, le=MAX_COUNT)  # strict: `true` is no count
    tpm: StrictInt | None = Field(default=None, gt=0, le=MAX_COUNT)
    max_parallel_requests: StrictInt | None = Field(default=None, gt=0, le=MAX_PARALLEL)
    max_request_usd: Number | None = Field(default=None, gt=0, le=MAX_USD)
    max_session_usd: Number | None = Field(default=None, gt=0, le=MAX_USD)
    metadata: dict[str, Any] | None = None
    expires_at: Number | None = Field(default=None, gt=0, le=MAX_TIME, description="unix time after which the key stops working")
    expires_in_s: Number | None = Field(default=None, gt=0, le=MAX_TIME)


class KeyCreate(KeyFields):
    name: Name = Field(min_length=1, max_length=200)


class KeyUpdate(KeyFields):
    name: Name | None = Field(default=None, min_length=1, max_length=200)


class TeamLimits(_Body):
    max_parallel_requests: StrictInt | None = Field(gt=0, le=MAX_PARALLEL)  # required: null removes the cap


class Rotate(_Body):
    grace_s: Number = Field(default=0.0, ge=0, le=30 * 86400)


class BudgetCreate(_Body):
    scope: Literal["key", "team", "project"]
    scope_id: Name = Field(min_length=1)
    period: Literal["day", "month", "total"]
    limit_usd: Number = Field(ge=MIN_USD, le=MAX_USD)
    soft_threshold: Number = Field(default=0.8, gt=0, le=1)


class BudgetUpdate(_Body):
    limit_usd: Number | None = Field(default=None, ge=MIN_USD, le=MAX_USD)
    soft_threshold: Number | None = Field(default=None, gt=0, le=1)


MAX_BODY = 64 * 1024  # a key's create call with long scope lists and metadata fits many times over
B = TypeVar("B", bound=_Body)


async def _read_body(request: Request, model: type[B]) -> B:
    """The body as `model`. Routes call it after `require_master`: a body parameter would have
    FastAPI read and parse any size of body before the master key is checked."""
    return _validated(model, await read_json_body(request, MAX_BODY))


async def _read_optional_body(request: Request, model: type[B]) -> B:
    """`_read_body` for a call whose body may be left out, empty or `null` (`model`'s defaults apply)."""
    raw = await read_json_body(request, MAX_BODY, optional=True)
    return _validated(model, {} if raw is None else raw)


def _validated(model: type[B], raw: Any) -> B:
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise invalid_body(exc, list(model.model_fields)) from None


def _key_fields(gov: Governance, body: KeyFields, partial: bool) -> dict[str, Any]:
    data = body.model_dump(exclude_unset=partial, exclude_none=not partial)
    if "name" in data and data["name"] is None:
        raise ApiError(400, "a key's name cannot be removed", code="invalid_request", param="name")
    expires_in = data.pop("expires_in_s", None)
    if expires_in is not None:
        data["expires_at"] = time.time() + expires_in
        if data["expires_at"] > MAX_TIME:  # the bound expires_at itself is held to
            raise ApiError(400, f"expires_in_s: the key would expire after the year 3000 (unix time {MAX_TIME:.0f})",
                           code="invalid_request", param="expires_in_s")
    config = gov.config
    for m in data.get("allowed_models") or ():
        if m not in config.model_names:
            raise ApiError(400, f"allowed_models names unknown model {m!r}", code="model_not_found", param="allowed_models")
    for p in data.get("allowed_profiles") or ():
        if p not in config.router.profiles:
            raise ApiError(400, f"allowed_profiles names unknown profile {p!r}", code="invalid_request", param="allowed_profiles")
    return data


def _invalidate(request: Request) -> None:
    _dashboards(request).clear()  # the page shows a key or budget change at once
    for hook in request.app.state.gateway.pipeline.hooks:
        if hasattr(hook, "invalidate"):
            hook.invalidate()


async def _run(fn, *args, **kwargs):
    try:
        return await asyncio.to_thread(fn, *args, **kwargs)
    except (UnknownKey, LookupError) as exc:
        raise ApiError(404, f"no such object: {exc.args[0] if exc.args else ''}", code="not_found") from None
    except ValueError as exc:
        raise ApiError(400, str(exc), code="invalid_request") from None
    except _integrity_errors():  # e.g. two identical budgets created at once
        raise ApiError(409, "this conflicts with an existing object", code="conflict") from None


def _integrity_errors() -> tuple[type[Exception], ...]:
    import sqlite3

    try:
        import psycopg
    except ImportError:
        return (sqlite3.IntegrityError,)
    return (sqlite3.IntegrityError, psycopg.IntegrityError)


@router.post("/keys")
async def create_key(request: Request, gov: Governance = Depends(require_master)) -> JSONResponse:
    fields = _key_fields(gov, await _read_body(request, KeyCreate), partial=False)
    key, secret = await _run(gov.keys.create, fields.pop("name"), **fields)
    _invalidate(request)
    return JSONResponse({"key": key.to_dict(), "secret": secret,
                         "note": "store the secret now: it is not kept and cannot be shown again"}, status_code=201)


@router.get("/keys")
async def list_keys(gov: Governance = Depends(require_master)) -> JSONResponse:
    keys = await _run(gov.keys.list)
    return JSONResponse({"data": [k.to_dict() for k in keys]})


@router.get("/keys/{key_id}")
async def get_key(key_id: str, gov: Governance = Depends(require_master)) -> JSONResponse:
    return JSONResponse((await _run(gov.keys.get, key_id)).to_dict())


@router.patch("/keys/{key_id}")
async def update_key(key_id: str, request: Request, gov: Governance = Depends(require_master)) -> JSONResponse:
    body = await _read_body(request, KeyUpdate)
    key = await _run(gov.keys.update, key_id, **_key_fields(gov, body, partial=True))
    _invalidate(request)
    return JSONResponse(key.to_dict())


@router.post("/keys/{key_id}/revoke")
async def revoke_key(key_id: str, request: Request, gov: Governance = Depends(require_master)) -> JSONResponse:
    key = await _run(gov.keys.revoke, key_id)
    _invalidate(request)
    return JSONResponse(key.to_dict())


@router.post("/keys/{key_id}/rotate")
async def rotate_key(key_id: str, request: Request, gov: Governance = Depends(require_master)) -> JSONResponse:
    body = await _read_optional_body(request, Rotate)
    key, secret = await _run(gov.keys.rotate, key_id, body.grace_s)
    _invalidate(request)
    return JSONResponse({"key": key.to_dict(), "secret": secret,
                         "note": "store the secret now: it is not kept and cannot be shown again"})


@router.get("/teams")
async def list_teams(gov: Governance = Depends(require_master)) -> JSONResponse:
    return JSONResponse({"data": await _run(gov.keys.team_limits)})


@router.put("/teams/{team:path}")
async def set_team(team: str, request: Request, gov: Governance = Depends(require_master)) -> JSONResponse:
    """A team's limits, replaced; a team is the `team` its keys carry, and may be set before them."""
    body = await _read_body(request, TeamLimits)
    if not team.strip() or "\x00" in team:
        raise ApiError(400, "a team name must be text, not blank, without NUL", code="invalid_request", param="team")
    limits = await _run(gov.keys.set_team_parallel, team, body.max_parallel_requests)
    _invalidate(request)
    keys = await _run(gov.keys.list, False)
    note = None if any(k.team == team for k in keys) else (
        f"no active key has the team {team!r} yet: the limit holds every key created or updated with \"team\": {json.dumps(team)}")
    return JSONResponse({**limits, **({"note": note} if note else {})})


def budget_report(gov: Governance, now: float | None = None) -> list[dict[str, Any]]:
    """Every budget with its current window's spend, reservations, share and burn."""
    now = time.time() if now is None else now
    budgets = gov.budgets.list()
    keys = gov.keys.list() if any(b.scope == "key" for b in budgets) else []
    lines = [b.line(now) for b in budgets]
    usage = gov.ledger.usage(lines) if lines else {}
    out = []
    for b, line in zip(budgets, lines):
        u = usage.get(line.counter)
        spent = (u.spent_nusd if u else 0) / 1e9
        reserved = (u.reserved_nusd if u else 0) / 1e9
        name, start, end = window(b.period, now)
        # Counted from the budget's creation where that falls inside the window (its spend is).
        counted_from = max(start, b.created_at)
        elapsed = (now - counted_from) / (end - counted_from) if end != float("inf") and now > counted_from else None
        out.append({
            **b.to_dict(), "label": _label(b, keys), "window": name, "spent_usd": spent, "reserved_usd": reserved,
            "share": spent / b.limit_usd,
            # Settled spend, as routing reads it: a reservation is a worst case that settles lower.
            "soft_limit_reached": spent >= b.soft_threshold * b.limit_usd,
            "projected_window_end_usd": spent / elapsed if elapsed else None,
        })
    return out


def _new_budget(gov: Governance, body: BudgetCreate) -> tuple[Budget, str | None]:
    """Create a budget, and a note when it names a team or project no key carries yet. A key
    budget's scope_id must be an existing key's id (404 otherwise: it would never be charged); a
    team or project budget may come before its keys, as operators set budgets up before issuing
    keys, and holds every key given that team or project later. A second budget of the same scope
    and period is a 409."""
    keys = gov.keys.list()
    if body.scope == "key" and not any(k.id == body.scope_id for k in keys):
        named = [k.id for k in keys if k.name == body.scope_id]
        hint = f"; the key named {body.scope_id!r} has the id {named[0]}" if len(named) == 1 else ""
        raise ApiError(404, f"no key has the id {body.scope_id!r}: a key budget's scope_id is the key's id "
                       f"(GET /admin/keys){hint}", code="not_found", param="scope_id")
    try:
        budget = gov.budgets.create(body.scope, body.scope_id, body.period, body.limit_usd, body.soft_threshold)
    except ValueError:
        same = next((b for b in gov.budgets.list()
                     if (b.scope, b.scope_id, b.period) == (body.scope, body.scope_id, body.period)), None)
        if same is None:
            raise
        raise ApiError(409, f"the {_label(same, keys)} exists already ({same.id}): change its limit with "
                       f"PATCH /admin/budgets/{same.id}", code="conflict") from None
    if body.scope == "key" or any(getattr(k, body.scope) == body.scope_id for k in keys):
        return budget, None
    # Said, not refused: the budget is meant for keys to come, but a misspelt name would hold none.
    return budget, (f"no key has the {body.scope} {body.scope_id!r} yet: the budget holds every key created or "
                    f"updated with \"{body.scope}\": {json.dumps(body.scope_id)}")


def _label(budget: Budget, keys: list[VirtualKey]) -> str:
    key = next((k for k in keys if k.id == budget.scope_id), None) if budget.scope == "key" else None
    return key.budget_label(budget.period) if key is not None else budget.label


@router.post("/budgets")
async def create_budget(request: Request, gov: Governance = Depends(require_master)) -> JSONResponse:
    body = await _read_body(request, BudgetCreate)
    budget, note = await _run(_new_budget, gov, body)
    _invalidate(request)
    return JSONResponse({**budget.to_dict(), **({"note": note} if note else {})}, status_code=201)


@router.get("/budgets")
async def list_budgets(gov: Governance = Depends(require_master)) -> JSONResponse:
    return JSONResponse({"data": await _run(budget_report, gov)})


@router.patch("/budgets/{budget_id}")
async def update_budget(budget_id: str, request: Request, gov: Governance = Depends(require_master)) -> JSONResponse:
    body = await _read_body(request, BudgetUpdate)
    for field in ("limit_usd", "soft_threshold"):  # a null had been a 200 that changed nothing
        if field in body.model_fields_set and getattr(body, field) is None:
            raise ApiError(400, f"a budget's {field} cannot be removed; DELETE the budget to lift it", code="invalid_request",
                           param=field)
    budget = await _run(gov.budgets.update, budget_id, body.limit_usd, body.soft_threshold)
    _invalidate(request)
    return JSONResponse(budget.to_dict())


@router.delete("/budgets/{budget_id}")
async def delete_budget(budget_id: str, request: Request, gov: Governance = Depends(require_master)) -> JSONResponse:
    await _run(gov.budgets.delete, budget_id)
    _invalidate(request)
    return JSONResponse({"deleted": budget_id})


def _report_args(request: Request) -> tuple[list[str], float | None, float | None, dict[str, str]]:
    q = request.query_params
    # Each dimension once: repeated, it was a duplicate column, and thousands of them a 500.
    group_by = list(dict.fromkeys(g.strip() for g in q.get("group_by", "key").split(",") if g.strip()))
    unknown = [g for g in group_by if g not in DIMENSIONS]
    if unknown:
        raise ApiError(400, f"group_by must be among {', '.join(DIMENSIONS)}, got {', '.join(unknown[:5])}",
                       code="invalid_request", param="group_by")

    def number(name: str) -> float | None:
        try:
            value = float(q[name]) if name in q else None
        except ValueError:
            value = math.nan
        if value is not None and not math.isfinite(value):
            raise ApiError(400, f"{name} must be a unix timestamp", code="invalid_request", param=name)
        return value

    filters = {d: q[d] for d in ("key", "team", "project", "user", "model", "day") if d in q}
    return group_by, number("since"), number("until"), filters


@router.get("/spend")
async def spend(request: Request, gov: Governance = Depends(require_master)) -> JSONResponse:
    group_by, since, until, filters = _report_args(request)
    return JSONResponse({"group_by": group_by, "data": await _run(gov.attribution.spend, group_by, since, until, filters)})


@router.get("/spend.csv")
async def spend_csv(request: Request, gov: Governance = Depends(require_master)) -> Response:
    group_by, since, until, filters = _report_args(request)
    text = await _run(gov.attribution.csv, group_by, since, until, filters)
    return Response(text, media_type="text/csv",
                    headers={"content-disposition": f'attachment; filename="spend-by-{"-".join(group_by)}.csv"'})


@router.get("/forecast")
async def forecast(gov: Governance = Depends(require_master)) -> JSONResponse:
    return JSONResponse(await _run(gov.attribution.forecast))


@router.get("/requests")
async def recent_requests(limit: int = 50, gov: Governance = Depends(require_master)) -> JSONResponse:
    return JSONResponse({"data": await _run(gov.attribution.recent, max(1, min(limit, 1000)))})


@router.get("/alerts")
async def recent_alerts(gov: Governance = Depends(require_master)) -> JSONResponse:
    return JSONResponse({"data": await _run(gov.alerts.recent)})


def dashboard_document(gov: Governance, since_s: float = 7 * 86400) -> dict[str, Any]:
    since = time.time() - since_s
    return {
        "generated_at": time.time(),
        "summary": gov.attribution.summary(since),
        "spend_by_model": gov.attribution.timeseries("model", since),
        "spend_by_key": gov.attribution.timeseries("key", since),
        "routing": gov.attribution.spend(["model"], since),
        "budgets": budget_report(gov),
        "forecast": gov.attribution.forecast(),
        "recent": gov.attribution.recent(25),
        "alerts": gov.alerts.recent(10),
    }


DASHBOARD_TTL_S = 5.0  # a third of the page's 15 s poll: several open tabs cost one build


class _Build:
    def __init__(self, task: asyncio.Future) -> None:
        self.task = task
        self.done_at = math.inf
        task.add_done_callback(self._done)

    def _done(self, _: asyncio.Future) -> None:
        self.done_at = time.monotonic()

    def usable(self) -> bool:
        """Still being built, or built without error less than `DASHBOARD_TTL_S` ago."""
        if not self.task.done():
            return True
        if self.task.cancelled() or self.task.exception() is not None:
            return False
        return time.monotonic() - self.done_at < DASHBOARD_TTL_S


class DashboardCache:
    """The dashboard document per `since_s`, built once for every poll within `DASHBOARD_TTL_S`
    of its completion, and once for polls that arrive while it is being built: at a million
    spend rows a build reads the log for seconds."""

    MAX_ENTRIES = 16

    def __init__(self) -> None:
        self._builds: dict[float, _Build] = {}

    def clear(self) -> None:
        self._builds.clear()

    async def get(self, gov: Governance, since_s: float) -> dict[str, Any]:
        build = self._builds.get(since_s)
        if build is None or not build.usable():
            if len(self._builds) >= self.MAX_ENTRIES:
                self._builds.clear()
            build = self._builds[since_s] = _Build(asyncio.ensure_future(_run(dashboard_document, gov, since_s)))
        # Shielded: a poller that gives up does not cancel the build the others wait for.
        return await asyncio.shield(build.task)


def _dashboards(request: Request) -> DashboardCache:
    state = request.app.state
    if getattr(state, "governance_dashboards", None) is None:
        state.governance_dashboards = DashboardCache()
    return state.governance_dashboards


@router.get("/dashboard")
async def dashboard(request: Request, gov: Governance = Depends(require_master)) -> JSONResponse:
    try:
        since_s = float(request.query_params.get("since_s", 7 * 86400))
    except ValueError:
        since_s = math.nan
    if not math.isfinite(since_s):
        raise ApiError(400, "since_s must be a number of seconds", code="invalid_request", param="since_s")
    return JSONResponse(await _dashboards(request).get(gov, since_s))
