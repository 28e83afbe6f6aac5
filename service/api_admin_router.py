"""`POST /admin/router/reload {"path": DIR}`: load a router artifact and swap it in, no restart;
`GET /admin/router`: which artifact serves; `GET /admin/router/bandit`: what the exploring bandit
has learned. With `server.redis_url`, the other replicas follow a reload (service/router_follow.py).

Loading happens off the event loop; the swap is one reference store (`RouterSlot.swap`),
so a request in flight keeps the router it started with and the next one gets the new one:
none is lost or fails. Guard: the one admin rule (`service.governance.auth.require_admin`):
the master key as `Authorization: Bearer <key>`; without a master key, 403 `admin_disabled`.
"""
from __future__ import annotations

import asyncio
import logging

from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from service.errors import ApiError, bad_request
from service.governance.auth import require_admin
from service.schemas import read_json_body

router = APIRouter()
log = logging.getLogger(__name__)
# The learning.bandit settings that cap exploration, each beside the share of that name it caps.
BANDIT_CAPS = ("explore_share", "new_model_explore_share", "extra_cost_share", "total_cost_share")


def serving_artifact(current) -> dict | None:
    """The artifact a router was loaded from: its absolute folder and when it was trained (the
    manifest's `trained_at`, the nearest thing to a version the gateway knows); None without one."""
    path = getattr(current, "path", None)
    if path is None:
        return None
    return {"path": str(Path(path).resolve()), "trained_at": (getattr(current, "manifest", None) or {}).get("trained_at")}


@router.post("/admin/router/reload")
async def reload_router(request: Request) -> JSONResponse:
    require_admin(request)
    raw = await read_json_body(request, 64 * 1024)
    path = raw.get("path") if isinstance(raw, dict) else None
    if not isinstance(path, str) or not path:
        raise bad_request("give the router artifact folder as {\"path\": \"models/NAME\"}", param="path")
    from router.engine import LearnedRouter, find_artifact

    gw = request.app.state.gateway
    found = find_artifact(path, gw.config)
    try:
        new = await asyncio.to_thread(LearnedRouter.load, found)
    except Exception as exc:  # a damaged folder fails in many ways (missing booster, odd manifest): the old router stays
        raise bad_request(f"cannot load router artifact: {type(exc).__name__}: {exc}", code="invalid_artifact",
                          param="path") from None
    old = gw.router.swap(new)
    # The gateway's own record of what serves from now on: a reload by `retrain --gateway` or by
    # hand otherwise left no trace here.
    now = serving_artifact(new)
    log.info("router reloaded: now serving %s (trained %s, %d models); was %s", now["path"], now["trained_at"] or "at an "
             "unknown time", len(new.models), (serving_artifact(old) or {}).get("path", "no router"))
    follower = getattr(request.app.state, "router_follower", None)
    if follower is not None:  # the other replicas follow (service/router_follow.py)
        await asyncio.to_thread(follower.promote, str(found.resolve()))
    return JSONResponse({"object": "router.reload", "path": path, "models": new.models,
                         "previous": str(getattr(old, "path", None)) if old is not None else None,
                         "replicas_follow": follower is not None})


@router.get("/admin/router")
async def router_state(request: Request) -> JSONResponse:
    """Which router artifact serves now (null where none is loaded), and its models."""
    require_admin(request)
    current = request.app.state.gateway.router.current
    return JSONResponse({"object": "router", "artifact": serving_artifact(current),
                         "models": list(current.models) if current is not None else []})


@router.get("/admin/router/bandit")
async def bandit_state(request: Request) -> JSONResponse:
    """What the exploring bandit has learned so far: per model, evidence, mean correction, resets;
    its shares and spend against `caps`, the configured values of the caps of the same names."""
    require_admin(request)
    learning = getattr(request.app.state, "learning", None)
    if learning is None or learning.bandit is None:
        raise ApiError(404, "the bandit is not enabled (learning.bandit.enabled)", code="bandit_disabled")
    caps = {name: getattr(learning.bandit.settings, name) for name in BANDIT_CAPS}
    return JSONResponse({"object": "router.bandit", **learning.bandit.stats(), "caps": caps})
