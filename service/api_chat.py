"""POST /v1/chat/completions: validate, run pre-hooks, route, dispatch, answer, then
post-hooks off the latency path.

Pre-hooks may set `ctx.extras["constraints"]` (tighter limits) or `ctx.profile` (e.g. a
cheaper profile as a budget runs low) before the decision; a hook with a `routed(ctx)`
coroutine sees the decision before any upstream call and may refuse it by raising ApiError.
"""
from __future__ import annotations

import asyncio
import functools
import logging
import time
import uuid
from typing import Any, AsyncIterator, Awaitable, Callable

import anyio
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect
from starlette.types import Receive

from router.config import ModelSpec
from router.request_view import view_chat_request
from service import sse
from service.api_info import resolve_visible
from service.dispatch import ClientGone, OpenStream, client_gone, usage_tokens
from service.errors import ApiError, bad_request, logged_internal_error
from service.gateway import Gateway
from service.governance.auth import client_caller
from service.pipeline import RequestContext
from service.providers.base import UpstreamError
from service.request_summary import metrics_model, reason
from service.routing import artifact_of, build_constraints, decide_for, proxies_of, refuse_outside_limits
from service.response_headers import response_headers
from service.schemas import OFF_LOOP_BYTES, judge_chat, read_body
from service.server_limits import REFUSED_BY_SERVER
from service.usage_fill import counts_both, estimated_usage, usage_or_estimate

log = logging.getLogger(__name__)
router = APIRouter()


def _check_choices(spec: Any, n: Any) -> None:
    """A named model whose API answers fewer choices than asked would silently return fewer."""
    if isinstance(n, int) and not spec.takes_choices(n):
        raise bad_request(f"model {spec.name} answers at most {spec.max_choices} choice(s) per request; n={n} was asked "
                          f"(ask for `auto` to be routed to a model that answers {n})", param="n")


@router.post("/v1/chat/completions")
async def chat_completions(request: Request) -> Response:
    gw: Gateway = request.app.state.gateway
    received, started = time.time(), time.perf_counter()
    # The answer's `id` (every chunk's, a cached answer's) is this id, also sent as x-request-id:
    # the id an SDK user holds (`reply.id`) is the one POST /v1/feedback takes.
    request_id = f"chatcmpl-{uuid.uuid4().hex}"
    gw.in_flight.add(request_id)  # until finish(): shutdown waits for it
    raw: Any = None
    caller = None
    try:
        # The key first: a caller without one learns nothing from how its body is judged, and an
        # unknown model's 404 lists only what its key may use. The governance pre-hook takes the
        # caller from here (a key's lookup is a worker-thread hop) and scopes the request.
        caller = await client_caller(request.app.state, request.headers)
        data = await read_body(request, gw.config.server.max_body_bytes)
        # A large body is judged off the event loop: inline, it held up every other request.
        raw, parsed = await run_in_threadpool(judge_chat, data) if len(data) > OFF_LOOP_BYTES else judge_chat(data)
        if isinstance(parsed, ApiError):
            raise parsed
        model = parsed.model or gw.config.router.default_profile
        profile = resolve_visible(model, gw.config, caller)
        constraints = build_constraints(parsed.router, request.headers, gw.config)
        if profile is None:
            _check_choices(gw.config.model(model), raw.get("n"))
    except ApiError as exc:
        return _refused(gw, request, request_id, received, started, raw, caller, exc, "rejected")
    except asyncio.CancelledError:  # the shutdown deadline passed while its body was still coming in
        return _refused(gw, request, request_id, received, started, raw, caller, _shutting_down(), "error")
    except ClientDisconnect:
        refusal = request.scope.get(REFUSED_BY_SERVER)
        if refusal is not None:  # the server refused its body itself (malformed): logged as that refusal
            return _refused(gw, request, request_id, received, started, raw, caller, refusal, "rejected")
        # The client left before its body arrived: its doing, not a fault of ours to trace.
        log.info("request %s: the client closed the connection before its body arrived", request_id)
        left = ApiError(499, "the client closed the connection before the request body arrived", code="client_closed")
        return _refused(gw, request, request_id, received, started, raw, caller, left, "client_closed")
    except Exception as exc:  # the key store away (a 503), or our bug (a 500): either way with its log row
        error = logged_internal_error(exc, f"request {request_id} failed before routing")
        return _refused(gw, request, request_id, received, started, raw, caller, error, "error", f"internal: {type(exc).__name__}")
    # `tools: []` is no tools, and beside no tools `tool_choice` (validation lets only "none" by)
    # and `parallel_tool_calls` ask nothing: OpenAI refuses all three, agent SDKs send them.
    toolless = not raw.get("tools") and not raw.get("functions")
    idle = {"router", "tool_choice", "parallel_tool_calls"} if toolless else {"router"}
    body = {k: v for k, v in raw.items() if k not in idle and not (k == "tools" and not v)}
    ctx = RequestContext(
        request_id=request_id,
        body=body,
        routing=view_chat_request(body, gw.config.declared_capabilities),
        headers=request.headers,
        stream=parsed.stream,
        profile=profile,
        requested_model=model,
    )
    # `request_limits` stays what the client asked for; `constraints` is tightened by pre-hooks (a key's scope).
    ctx.extras.update(received_at=received, started=started, constraints=constraints, request_limits=constraints, caller=caller,
                      client_gone=request.is_disconnected, until_client_leaves=functools.partial(_until_disconnected, request.receive))
    if request.headers.get("x-request-id"):
        ctx.extras["client_request_id"] = request.headers["x-request-id"][:128]
    try:
        return await _handle(gw, ctx)
    except asyncio.CancelledError:
        return await _cut_by_shutdown(gw, ctx)
    except ClientGone:
        return _closed_by_client(gw, ctx)
    except ApiError as exc:
        ctx.status, ctx.error = "error", exc.message
        ctx.extras["http_status"] = exc.status
        finish(gw, ctx)
        return exc.response(response_headers(ctx))
    except Exception as exc:  # our bug (a 500) or a store away (a 503): the request still gets its log row
        error = logged_internal_error(exc, f"request {ctx.request_id} failed in the gateway")
        ctx.status, ctx.error = "error", f"internal: {type(exc).__name__}"
        ctx.extras["http_status"] = error.status
        finish(gw, ctx)
        return error.response(response_headers(ctx))


def _shutting_down() -> ApiError:
    return ApiError(503, "the gateway shut down before the answer was ready; retry the request", code="shutting_down")


def _closed_by_client(gw: Gateway, ctx: RequestContext) -> Response:
    ctx.status = "client_closed"
    finish(gw, ctx)
    return Response(status_code=499, headers=response_headers(ctx))  # nginx's "client closed request"; nobody reads it


async def _cut_by_shutdown(gw: Gateway, ctx: RequestContext) -> Response:
    """uvicorn cancels every request still running at its shutdown deadline (server.shutdown_grace_s):
    it ends here, answered and logged, instead of vanishing with the process. An answer already
    in hand (the cut came while asking whether its client was still there) is delivered."""
    if await client_gone(ctx):
        return _closed_by_client(gw, ctx)
    if ctx.response is not None:
        ctx.status = "ok"
        response = JSONResponse(ctx.response, headers=response_headers(ctx))
    else:
        error = _shutting_down()
        ctx.status, ctx.error = "error", f"shutdown: {error.message}"
        ctx.extras["http_status"] = error.status
        response = error.response(response_headers(ctx))
    finish(gw, ctx)
    return response


async def _until_disconnected(receive: Receive) -> None:
    """Returns once the client has closed its connection. With the body read, the server has
    nothing else to deliver until then."""
    while (await receive())["type"] != "http.disconnect":
        pass


async def _delivered_status(ctx: RequestContext) -> str:
    """`ok`, or `client_closed` when the client left before the answer reached it (an SDK's
    read timeout, then its retry): uvicorn drops what is written to a closed connection without
    a word, and its retry is no regeneration of an answer it never had."""
    return "client_closed" if await client_gone(ctx) else "ok"


def _embed_and_decide(gw: Gateway, router_now: Any, ctx: RequestContext, live: Any) -> Any:
    # One worker-thread hop for both steps (each hop costs a thread wake-up and a GIL hand-off);
    # the semantic cache's pre-hook has embedded the text already when it looked it up.
    if ctx.embedding is None and ctx.routing.text and router_now is not None:
        ctx.embedding = gw.embed(ctx.routing.text)
    return decide_for(gw, router_now, ctx.routing, ctx.body, profile=ctx.profile,
                      constraints=ctx.extras["constraints"], live=live, embedding=ctx.embedding)


def _refused(gw: Gateway, request: Request, request_id: str, received: float, started: float, raw: Any, caller: Any,
             exc: ApiError, status: str, error: str | None = None) -> Response:
    """A request that ends before routing still has its id and its outcome row (not its content),
    filed under its key when the key was known."""
    asked = raw.get("model") if isinstance(raw, dict) and isinstance(raw.get("model"), str) else ""
    ctx = RequestContext(request_id=request_id, body={}, routing=view_chat_request({}), headers=request.headers,
                         stream=False, profile=None, requested_model=asked[:200], status=status, error=error or exc.message)
    if caller is not None and caller.kind != "open":  # as the governance pre-hook files them
        ctx.tenant, ctx.key_label = caller.tenant, caller.label
    ctx.extras.update(received_at=received, started=started, http_status=exc.status, reason="refused before routing")
    finish(gw, ctx)
    return exc.response(response_headers(ctx))


async def _handle(gw: Gateway, ctx: RequestContext) -> Response:
    router_now = gw.router.current
    answer = await gw.pipeline.run_pre(ctx)
    if answer is not None:
        return _short_circuit(gw, ctx, answer)
    if ctx.profile is None:  # after the pre-hooks: a cached answer costs nothing (the cache checks its
        # model against these limits itself), and a refusal is filed under the caller's key
        refuse_outside_limits(gw.config.model(ctx.requested_model), ctx.extras["request_limits"], ctx.routing)
    else:
        t0 = time.perf_counter()
        try:
            # The live view is read here, on the event loop that updates it.
            live = gw.live.snapshot(ctx.routing.input_tokens)
            ctx.extras["live"] = live  # a shadow router decides later on the same view of the models
            ctx.decision = await run_in_threadpool(_embed_and_decide, gw, router_now, ctx, live)
        except ApiError as exc:
            ctx.extras["reason"] = f"{ctx.requested_model}: no eligible model"
            # A pre-hook that tightened the constraints (a budget cap) may explain the refusal better.
            explain = ctx.extras.get("explain_unroutable")
            better = explain(exc) if explain is not None else None
            if better is not None:
                raise better from None
            raise
        router_path = artifact_of(router_now)
        if router_path is not None:
            ctx.extras["router"] = router_path
            ctx.extras["predicted_as"] = proxies_of(router_now, gw.config.models) or None
        gw.metrics.routing_seconds.observe(time.perf_counter() - t0)
    await gw.pipeline.run_routed(ctx)
    if ctx.profile is not None and ctx.decision is not None:
        # After the routed hooks: the bandit's draw or a tool loop's kept model is the choice that is
        # called, not the router's own pick before them (which the outcome log keeps as router_choice).
        gw.metrics.choices.labels(ctx.decision.model, ctx.profile).inc()
    if ctx.stream:
        return await _stream(gw, ctx)
    answer = await gw.dispatcher.complete(ctx, ctx.body)
    # An upstream that reports no usage, or not both counts: the client gets, and is billed at, the
    # estimate a streamed answer gets (every choice, tool-call arguments included) for what it lacks.
    answer["usage"], estimated = usage_or_estimate(
        answer.get("usage"), lambda: estimated_usage(ctx, answer, gw.dispatcher.specs.get(ctx.answered_by or "")))
    if estimated:
        ctx.extras["usage_estimated"] = True
    answer["usage"] = with_cost(answer["usage"], gw.dispatcher.specs.get(ctx.answered_by or ""))
    ctx.extras["upstream_id"] = answer.get("id")  # the provider's own id, for its logs and support
    answer["id"] = ctx.request_id
    ctx.response = answer
    ctx.status = await _delivered_status(ctx)  # billed all the same
    ctx.extras["reason"] = reason(ctx)
    response = JSONResponse(answer, headers=response_headers(ctx))  # before finish: an unencodable answer is one error
    finish(gw, ctx)
    return response


def _short_circuit(gw: Gateway, ctx: RequestContext, answer: dict[str, Any]) -> Response:
    """A pre-hook answered (a cache hit): no routing, no upstream call, same wire format."""
    answer["id"] = ctx.request_id
    ctx.response = answer
    ctx.answered_by = ctx.answered_by or answer.get("model")
    if ctx.status == "pending":
        ctx.status = "cache_hit"
    ctx.extras.setdefault("reason", f"answered by pre-hook ({ctx.cache_status})")
    gw.pipeline.run_short_circuited(ctx)
    headers = response_headers(ctx)
    finish(gw, ctx)
    if not ctx.stream:
        return JSONResponse(answer, headers=headers)
    chunks = sse.completion_to_chunks(answer)
    if not _wants_usage(ctx):
        chunks = [c for c in chunks if not sse.is_usage_only(c)]
    payload = b"".join(sse.encode(c) for c in chunks) + sse.DONE
    return Response(payload, media_type="text/event-stream", headers=headers)


def _wants_usage(ctx: RequestContext) -> bool:
    return bool((ctx.body.get("stream_options") or {}).get("include_usage"))


def with_cost(usage: dict[str, Any], spec: ModelSpec | None) -> dict[str, Any]:
    """The usage object with `cost`, what the answer is billed in USD at the catalog's prices
    (OpenRouter's field): the client sees per answer what the gateway bills and budgets count."""
    return usage if spec is None else {**usage, "cost": round(spec.price.usage_cost(usage), 10)}


def _client_chunk(chunk: dict[str, Any], include_usage: bool, answer_id: str, spec: ModelSpec) -> dict[str, Any] | None:
    """The chunk as the client asked for it, under the answer's id: usage (with its cost) only
    when it set stream_options.include_usage (the gateway always asks the upstream for usage, to
    bill and log streamed answers), and then in its own chunk with no choices, as OpenAI sends it:
    a Mistral or vLLM upstream puts it on the finish chunk, and `_ending` sends it after."""
    if sse.is_usage_only(chunk):
        # One that lacks a count is sent by `_ending` instead, completed from the estimate.
        return {**chunk, "id": answer_id, "usage": with_cost(chunk["usage"], spec)} if include_usage and counts_both(chunk["usage"]) else None
    out = {**chunk, "id": answer_id}
    out.pop("usage", None)
    return out


async def _stream(gw: Gateway, ctx: RequestContext) -> Response:
    # The response, headers and all, starts with the first output (a thinking model's first
    # reasoning delta), and every chunk after it is passed on as it comes.
    opened = await gw.dispatcher.open_stream(ctx, ctx.body)
    ctx.extras["reason"] = reason(ctx)
    return _Stream(ctx, _events(gw, ctx, opened), lambda: _close_stream(gw, ctx, opened, sse.Assembler(), None),
                   media_type="text/event-stream", headers=response_headers(ctx))


class _Stream(StreamingResponse):
    """A stream uvicorn cancels at its shutdown deadline gets its ending from `_events` (an error
    event, the request logged and billed); the cancellation has done its work there. Raised on,
    uvicorn would log it as "Exception in ASGI application" with a traceback, one per open stream
    on every deploy."""

    def __init__(self, ctx: RequestContext, content: AsyncIterator[bytes], unsent: Callable[[], Awaitable[None]],
                 **kwargs: Any):
        super().__init__(content, **kwargs)
        self._ctx = ctx
        self._unsent = unsent

    async def __call__(self, scope: Any, receive: Receive, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        except asyncio.CancelledError:
            if not self._ctx.extras.get("cut_at_shutdown"):
                raise
        finally:
            # A client that left before the response began (its start raised) leaves `_events`
            # never started, so its own ending never runs: the upstream stream would stay open,
            # the request in flight, unlogged and unbilled.
            if not self._ctx.extras.get("stream_began"):
                self._ctx.extras["stream_began"] = True
                self._ctx.status = "client_closed"
                await self._unsent()


async def _events(gw: Gateway, ctx: RequestContext, opened: OpenStream) -> AsyncIterator[bytes]:
    ctx.extras["stream_began"] = True
    include_usage = _wants_usage(ctx)
    assembler = sse.Assembler()
    failure: UpstreamError | None = None
    ctx.status = "client_closed"  # until the stream reaches its end one way or the other
    usage_sent = False

    def emit(chunk: dict[str, Any]) -> bytes | None:
        nonlocal usage_sent
        assembler.add(chunk)
        out = _client_chunk(chunk, include_usage, ctx.request_id, opened.model)
        if out is None:
            return None
        usage_sent = usage_sent or sse.is_usage_only(out)
        if "ttft_s" not in ctx.extras and sse.carries_output(chunk):
            ctx.extras["ttft_s"] = round(time.perf_counter() - ctx.extras["started"], 4)
        return sse.encode(out)

    try:
        for chunk in opened.held:
            data = emit(chunk)
            if data is not None:
                yield data
        async for chunk in opened.rest:
            data = emit(chunk)
            if data is not None:
                yield data
        if not assembler.finished:
            raise UpstreamError("connection", "the stream ended before the answer finished")
        ctx.status = await _delivered_status(ctx)
        for data in _ending(ctx, assembler, opened, include_usage and not usage_sent):
            yield data
    except UpstreamError as exc:
        if assembler.finished:
            # The connection dropped after the answer's last chunk (before the usage chunk or
            # [DONE]): the client has the whole answer and the model did its job.
            ctx.status = await _delivered_status(ctx)
            for data in _ending(ctx, assembler, opened, include_usage and not usage_sent):
                yield data
            return
        # The client already holds part of the answer: say so explicitly, never end cleanly.
        failure = exc
        ctx.status, ctx.error = "truncated", f"{exc.kind}: {exc.message}"
        yield sse.error_event(f"the upstream model {opened.model.name} failed mid-answer ({exc.kind}): {exc.message}",
                              "upstream_error", "stream_interrupted")
    except Exception as exc:  # our bug, not the upstream's: still never a silent end
        log.exception("stream %s failed in the gateway", ctx.request_id)
        ctx.status, ctx.error = "error", f"internal: {type(exc).__name__}"
        yield sse.error_event("internal error in the router while streaming", "server_error", "internal_error")
    except asyncio.CancelledError:
        # Starlette cancels the stream of a client that left; uvicorn every request still open at
        # its shutdown deadline. A client still reading gets the end an upstream failure gets.
        if await client_gone(ctx):
            raise
        ctx.extras["cut_at_shutdown"] = True
        for data in _cut_ending(ctx, assembler, opened, include_usage and not usage_sent):
            yield data
    finally:
        await _close_stream(gw, ctx, opened, assembler, failure)


async def _close_stream(gw: Gateway, ctx: RequestContext, opened: OpenStream, assembler: sse.Assembler,
                        failure: UpstreamError | None) -> None:
    """A stream's end, whichever way it came: the upstream stream closed, the answer as far as it
    went recorded, the model's health told, the request finished (billed and logged)."""
    with anyio.CancelScope(shield=True):
        await opened.rest.aclose()
    ctx.response = assembler.completion()
    ctx.extras["upstream_id"] = assembler.id
    out_tokens = usage_tokens(assembler.usage)[1]
    try:
        gw.dispatcher.close_stream(opened, failure, out_tokens or 0, completed=assembler.finished)
    finally:  # the answer was given: whatever the model's health bookkeeping met, it is billed and logged
        finish(gw, ctx)


def _ending(ctx: RequestContext, assembler: sse.Assembler, opened: OpenStream, usage_owed: bool) -> list[bytes]:
    """What ends a finished answer: the usage chunk the client asked for and has not had yet
    (the upstream's, when it came on a chunk with choices; where the upstream sent none, as some
    llama.cpp and proxy builds do and a connection may drop just before it, our estimate, the one
    the request is billed at); then [DONE]."""
    if not usage_owed:
        return [sse.DONE]
    usage = {"id": ctx.request_id, "object": "chat.completion.chunk",
             "created": assembler.created or int(time.time()), "model": assembler.model or opened.model.name,
             "choices": [], "usage": with_cost(usage_or_estimate(
                 assembler.usage, lambda: estimated_usage(ctx, assembler.completion(), opened.model))[0], opened.model)}
    if assembler.system_fingerprint:  # as on every chunk before it
        usage["system_fingerprint"] = assembler.system_fingerprint
    return [sse.encode(usage), sse.DONE]


def _cut_ending(ctx: RequestContext, assembler: sse.Assembler, opened: OpenStream, usage_owed: bool) -> list[bytes]:
    """How a stream the shutdown deadline cut ends: as a finished answer when it is one (the
    upstream had yet to send its usage or [DONE]), else with an explicit error event."""
    if assembler.finished:
        ctx.status = "ok"
        return _ending(ctx, assembler, opened, usage_owed)
    ctx.status, ctx.error = "truncated", "shutdown: the gateway shut down mid-answer"
    return [sse.error_event(f"the gateway shut down mid-answer from {opened.model.name}; the answer is incomplete",
                            "server_error", "stream_interrupted")]


def finish(gw: Gateway, ctx: RequestContext) -> None:
    """Settle usage, cost and metrics, then hand the context to the post-hooks in the background
    (once per request, whatever path ends it)."""
    extras = ctx.extras
    if extras.get("finished"):
        return
    extras["finished"] = True
    gw.in_flight.discard(ctx.request_id)
    extras["latency_s"] = round(time.perf_counter() - extras["started"], 4)
    extras.setdefault("reason", reason(ctx))
    billed = ctx.status in ("ok", "truncated", "client_closed")
    usage = (ctx.response or {}).get("usage") if billed else None
    # A call cut before its answer (its client left, the shutdown deadline passed) was still sent,
    # prompt and all: billed as an answer of no output, or a client that always leaves early
    # would spend nothing.
    spec = gw.dispatcher.specs.get(ctx.answered_by or extras.get("abandoned_on") or "")
    if spec is not None and (billed or extras.get("abandoned_on")):
        # No usage from the upstream (a cut stream, a server that omits it): bill our estimate.
        usage, estimated = usage_or_estimate(usage, lambda: estimated_usage(ctx, ctx.response or {}, spec))
        if estimated:
            extras["usage_estimated"] = True
        ctx.cost_usd = spec.price.usage_cost(usage)
        extras["usage"] = usage
        model = spec.name
        gw.metrics.tokens.labels(model, "input").inc(usage.get("prompt_tokens") or 0)
        gw.metrics.tokens.labels(model, "output").inc(usage.get("completion_tokens") or 0)
        gw.metrics.cost.labels(model).inc(ctx.cost_usd)
    model_label = metrics_model(ctx, gw.dispatcher.specs)
    gw.metrics.requests.labels(model_label, ctx.profile or "none", ctx.status).inc()
    gw.metrics.latency.labels(model_label, str(ctx.stream).lower()).observe(extras["latency_s"])
    if extras.get("ttft_s") is not None:
        gw.metrics.ttft.labels(model_label).observe(extras["ttft_s"])
    if extras.get("cache_consulted"):  # a request refused before the cache (a bad key) is no miss
        gw.metrics.cache.labels(ctx.cache_status).inc()
    if ctx.saved_cost_usd:
        gw.metrics.saved_cost.inc(ctx.saved_cost_usd)
    gw.pipeline.run_finished(ctx)
    gw.spawn(gw.pipeline.run_post(ctx))
