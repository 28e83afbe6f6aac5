"""GET /v1/models, POST /v1/route (the decision alone), GET (or HEAD) /healthz and /metrics.

With governance on, `/v1/models` and `/v1/route` take the same client keys as chat
(`service.governance.auth`): a key sees only what it may name (`allows_model`/`allows_profile`)
and routes only among the models its scope lets a route reach (`routes_to`: a key limited to
profiles names no model, yet its profiles route over the catalog); `/v1/route` counts against
the key's requests per minute. `/metrics` takes the metrics token (or the master key) once
`OPENCLAW_METRICS_TOKEN` is set, and no key otherwise.
"""
from __future__ import annotations

import time
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.concurrency import run_in_threadpool

from router.config import Config
from router.request_view import view_chat_request
from service.api_admin_router import serving_artifact
from service.errors import ApiError, bad_request
from service.gateway import Gateway
from service.governance.auth import (OPEN, Caller, allows_model, allows_profile, client_caller, require_metrics_token,
                                     routes_to)
from service.governance.request_limits import admit_call
from service.hooks.prompt_cache_hook import PromptCacheHook
from service.routing import build_constraints, decide_for, resolve_model
from service.schemas import read_json_body, validate_chat

router = APIRouter()
_STARTED = int(time.time())


# HEAD wherever GET (RFC 9110): a load balancer's probe of the models list is no 405.
@router.api_route("/v1/models", methods=["GET", "HEAD"])
async def list_models(request: Request) -> JSONResponse:
    return JSONResponse({"object": "list", "data": await _visible_models(request)})


@router.api_route("/v1/models/{model_id:path}", methods=["GET", "HEAD"])
async def retrieve_model(request: Request, model_id: str) -> JSONResponse:
    """OpenAI's `models.retrieve`: one entry of the list, or a 404 in OpenAI's shape."""
    found = next((m for m in await _visible_models(request) if m["id"] == model_id), None)
    if found is None:
        raise ApiError(404, f"The model '{model_id}' does not exist or you do not have access to it.",
                       code="model_not_found", param="model")
    return JSONResponse(found)


def resolve_visible(name: str, config: Config, caller: Caller | None) -> str | None:
    """`resolve_model` for this caller: an unknown name's 404 suggests what the key may use, as
    `/v1/models` lists it, not names the key would be refused (a hint, not a secret: a scoped
    key naming a model outside its scope is told 403 `model_not_allowed`)."""
    key = caller.key if caller is not None else None
    return resolve_model(name, config, lambda n: allows_profile(key, n) if n in config.router.profiles else allows_model(key, n))


async def _visible_models(request: Request) -> list[dict]:
    """The routing profiles and models the caller's key may use, as `/v1/models` lists them."""
    gw: Gateway = request.app.state.gateway
    caller = await client_caller(request.app.state, request.headers)
    key = caller.key if caller is not None else None
    config = gw.config
    data = [
        {
            "id": name,
            "object": "model",
            "created": _STARTED,
            "owned_by": "openclaw-router",
            "openclaw": {
                "type": "profile",
                "willingness_to_pay": profile.willingness_to_pay,
                "latency_weight": profile.latency_weight,
                "default": name == config.router.default_profile,
            },
        }
        for name, profile in config.router.profiles.items()
        if allows_profile(key, name)
    ]
    for spec in config.models:
        if not allows_model(key, spec.name):
            continue
        data.append({
            "id": spec.name,
            "object": "model",
            "created": _STARTED,
            "owned_by": spec.provider,
            "openclaw": {
                "type": "model",
                "simulated": spec.name in gw.simulated,
                "provider_kind": config.providers[spec.provider].kind,
                "upstream": spec.upstream_name,
                "context_window": spec.context_window,
                "max_output_tokens": spec.max_output_tokens,
                "capabilities": sorted(spec.capabilities),
                "tags": sorted(spec.tags),
                "price_per_1m": {"input": spec.price.input_per_1m, "output": spec.price.output_per_1m},
            },
        })
    return data


@router.post("/v1/route")
async def route_only(request: Request) -> JSONResponse:
    """What the router would do with this chat body, without calling any model."""
    gw: Gateway = request.app.state.gateway
    caller = await client_caller(request.app.state, request.headers)
    await admit_call(request.app.state, caller)
    raw = await read_json_body(request, gw.config.server.max_body_bytes)
    parsed = validate_chat(raw)
    model = parsed.model or gw.config.router.default_profile
    profile = resolve_visible(model, gw.config, caller)
    if profile is None:
        raise bad_request(f"{model!r} is a model, not a routing profile: nothing to decide", code="not_a_profile", param="model")
    constraints = build_constraints(parsed.router, request.headers, gw.config)
    if caller is not None:
        constraints = request.app.state.governance.auth.scope(caller.key, profile, model, constraints)
    routing = view_chat_request(raw, gw.config.declared_capabilities)
    prompt_cache = next((h for h in gw.pipeline.hooks if isinstance(h, PromptCacheHook)), None)
    if prompt_cache is not None:  # priced as the same request would be
        routing, _ = await prompt_cache.with_warm_tokens((caller or OPEN).tenant, routing, raw)
    router_now = gw.router.current
    embedding = await run_in_threadpool(gw.embed, routing.text) if (router_now is not None and routing.text) else None
    decision = await run_in_threadpool(  # as chat decides (the same errors: a 429, a refused key's 502)
        decide_for, gw, router_now, routing, raw, profile=profile, constraints=constraints,
        live=gw.live.snapshot(routing.input_tokens), embedding=embedding,
    )
    shown = decision.to_dict()
    key = caller.key if caller is not None else None
    # What the profile may not route to for the key, the ranking does not show either (the reason and
    # an unroutable request's error name only models inside the request's scope: router.policy).
    shown["candidates"] = [c for c in shown["candidates"] if routes_to(key, c["model"])]
    return JSONResponse({
        **shown,
        "profile": profile,
        "fallbacks": decision.fallbacks(),
        "request": {"input_tokens": routing.input_tokens, "needs": sorted(routing.needs), "n_turns": routing.n_turns,
                    "prefix_tokens": routing.prefix_tokens, "cacheable_tokens": routing.cacheable_tokens,
                    "cached_tokens": dict(routing.warm_tokens)},
    })


@router.api_route("/healthz", methods=["GET", "HEAD"])  # HEAD: load balancers and probes that read no body
async def healthz(request: Request) -> JSONResponse:
    gw: Gateway = request.app.state.gateway
    models = gw.live.describe()
    healthy = sum(1 for m in models.values() if m["healthy"])
    artifact = serving_artifact(gw.router.current)
    # Always a 200 (a probe's restarts would not bring back a provider); "degraded" as soon as a
    # model cannot be called, so a key variable missing from a model's provider shows at once.
    return JSONResponse({
        "status": "ok" if healthy == len(models) else "degraded",
        "router_loaded": gw.router.current is not None,
        # Which router serves, after reloads too: its folder's name and training time, not the full
        # path, which this unauthenticated endpoint would show anyone (GET /admin/router has it).
        "router_artifact": {"name": Path(artifact["path"]).name, "trained_at": artifact["trained_at"]} if artifact else None,
        "healthy_models": healthy,
        "simulated_models": sorted(gw.simulated),
        "models": models,
    })


@router.api_route("/metrics", methods=["GET", "HEAD"])
async def metrics(request: Request) -> Response:
    require_metrics_token(request.app.state, request.headers)
    gw: Gateway = request.app.state.gateway
    return Response(gw.metrics.render(), media_type=CONTENT_TYPE_LATEST)
