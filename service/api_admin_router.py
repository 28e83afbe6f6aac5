"""`POST /admin/router/reload {"path": DIR}`: load a router artifact and swap it in, no restart;
`GET /admin/router/bandit`: what the exploring bandit has learned.

Loading happens off the event loop; the swap is one reference store (`RouterSlot.swap`),
so a request in flight keeps the router it started with and the next one gets the new one:
none is lost or fails. Guard: with `OPENCLAW_MASTER_KEY` set, the master key is required as
`Authorization: Bearer <key>`; without it, only clients on the loopback interface may reload.
"""
from __future__ import annotations

import asyncio
import hmac
import os

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from service.errors import ApiError, bad_request
from service.schemas import read_json_body

router = APIRouter()
LOOPBACK = {"127.0.0.1", "::1", "localhost"}


def require_admin(request: Request) -> None:
    master = os.environ.get("OPENCLAW_MASTER_KEY")
    if not master:
        host = request.client.host if request.client else ""
        if host not in LOOPBACK:
            raise ApiError(403, "Router reload from another host needs OPENCLAW_MASTER_KEY to be set.", code="admin_disabled")
        return
    auth = request.headers.get("authorization", "")
    scheme, _, secret = auth.partition(" ")
    if scheme.lower() != "bearer" or not secret:
        raise ApiError(401, "Router reload needs the master key as 'Authorization: Bearer <key>'.", code="missing_api_key")
    if not hmac.compare_digest(secret.strip().encode(), master.encode()):
        raise ApiError(401, "Incorrect master key provided.", code="invalid_api_key")


@router.post("/admin/router/reload")
async def reload_router(request: Request) -> JSONResponse:
    require_admin(request)
    raw = await read_json_body(request, 64 * 1024)
    path = raw.get("path") if isinstance(raw, dict) else None
    if not isinstance(path, str) or not path:
        raise bad_request("give the router artifact folder as {\"path\": \"models/NAME\"}", param="path")
    from router.engine import LearnedRouter

    try:
        new = await asyncio.to_thread(LearnedRouter.load, path)
    except (FileNotFoundError, ValueError) as exc:
        raise bad_request(f"cannot load router artifact: {exc}", code="invalid_artifact", param="path") from None
    gw = request.app.state.gateway
    old = gw.router.swap(new)
    return JSONResponse({"object": "router.reload", "path": path, "models": new.models,
                         "previous": str(getattr(old, "path", None)) if old is not None else None})


@router.get("/admin/router/bandit")
async def bandit_state(request: Request) -> JSONResponse:
    """What the exploring bandit has learned so far: per model, evidence, mean correction, resets."""
    require_admin(request)
    learning = getattr(request.app.state, "learning", None)
    if learning is None or learning.bandit is None:
        raise ApiError(404, "the bandit is not enabled (learning.bandit.enabled)", code="bandit_disabled")
    return JSONResponse({"object": "router.bandit", **learning.bandit.stats()})
