"""The simulated upstream: a real OpenAI-compatible HTTP server standing in for the 11 RouterBench models.

`openclaw-router serve` with no keys and no config routes over these models, so the whole
product (routing, streaming, failover, outcome log, retraining) runs on a laptop. What each model
answers, and whether the answer is good, is service/simulated_answers.py; this module serves it
with the model's latency (early-2024 public API figures, scaled by `time_scale`, env
OPENCLAW_SIM_TIME_SCALE, so tests run fast) in OpenAI's wire shapes, streamed or not. The verdict is
reported in the `x-simulated-good` header and the body's `simulated` field, giving the learning loop
a ground truth. Client input OpenAI would refuse is answered 400, never 500: the gateway counts an
upstream 500 against the model.
"""
from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import random
import time
from typing import Any, Callable

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from router.config import Config
from router.request_view import estimate_tokens
from service.errors import ApiError
from service.providers.registry import SIMULATED_URL
from service.schemas import validate_chat
from service.simulated_answers import MODELS, Answer, answer, request_problem, words

FINGERPRINT = "fp_simulated"  # OpenAI's system_fingerprint names its backend configuration; the simulator has one


def _error(status: int, message: str, code: str, kind: str = "invalid_request_error", param: str | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": code}}, status_code=status,
                        headers={"x-simulated": "true"})


def env_time_scale() -> float:
    text = os.environ.get("OPENCLAW_SIM_TIME_SCALE", "1.0")
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"OPENCLAW_SIM_TIME_SCALE={text!r} is not a number (a latency multiplier: 1 as recorded, "
                         "0 at once)") from None


class Simulator:
    def __init__(self, time_scale: float | None = None, error_rate: float = 0.0):
        self.time_scale = max(0.0, time_scale if time_scale is not None else env_time_scale())
        self.error_rate = error_rate
        self._rng = random.Random()
        self.app = Starlette(routes=[
            Route("/v1/chat/completions", self.chat, methods=["POST"]),
            Route("/v1/models", self.models, methods=["GET"]),
            Route("/healthz", self.health, methods=["GET"]),
        ])

    async def health(self, request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok", "simulated": True})

    async def models(self, request: Request) -> JSONResponse:
        data = [{"id": name, "object": "model", "owned_by": "simulated", "created": 0} for name in MODELS]
        return JSONResponse({"object": "list", "data": data})

    async def chat(self, request: Request) -> Any:
        try:
            body = json.loads(await request.body())
        except (ValueError, RecursionError):
            return _error(400, "request body is not valid JSON", "invalid_json")
        try:
            validate_chat(body)  # what OpenAI refuses, in the gateway's words: the simulator stands in for it
        except ApiError as exc:
            return _error(400, exc.message, exc.code or "invalid_value", param=exc.param)
        model = body.get("model")
        if model not in MODELS:
            return _error(404, f"The model '{model}' does not exist (simulated upstream)", "model_not_found")
        n = body.get("n") or 1
        problem = request_problem(body)
        if problem is not None:
            message, code, param = problem
            return _error(400, message, code, param=param)
        if self.error_rate and self._rng.random() < self.error_rate:
            return _error(503, f"simulated overload of {model}", "overloaded", "server_error")
        result = answer(model, body)
        if result.prompt_tokens > MODELS[model].context_window:
            return _error(400, f"This model's maximum context length is {MODELS[model].context_window} tokens. "
                          f"However, your messages resulted in {result.prompt_tokens} tokens.", "context_length_exceeded")
        headers = {"x-simulated": "true", "x-simulated-good": str(result.good).lower()}
        if body.get("stream"):
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            return StreamingResponse(self._events(model, result, n, include_usage), media_type="text/event-stream", headers=headers)
        # The answer depends on the model and the prompt only, so n choices are n copies of it.
        await self._sleep(self._ttft(model) + result.completion_tokens / MODELS[model].tps)
        message: dict[str, Any] = {"role": "assistant", "content": None if result.tool_call else result.text}
        if result.tool_call and result.legacy_function:
            message["function_call"] = result.tool_call["function"]
        elif result.tool_call:
            message["tool_calls"] = [result.tool_call]
        logprobs = None if result.logprobs is None else {"content": result.logprobs or None, "refusal": None}
        return JSONResponse({
            "id": _completion_id(), "object": "chat.completion", "created": int(time.time()), "model": model,
            "system_fingerprint": FINGERPRINT,
            "choices": [{"index": i, "message": message, "logprobs": logprobs, "finish_reason": result.finish_reason}
                        for i in range(n)],
            "usage": result.usage(n),
            "simulated": {"good": result.good, "difficulty": round(result.difficulty, 4), "quality": MODELS[model].quality},
        }, headers=headers)

    def _ttft(self, model: str) -> float:
        # ±30% jitter (not seeded by the prompt) so repeated calls vary like real ones.
        return MODELS[model].ttft_s * (0.7 + 0.6 * self._rng.random())

    async def _sleep(self, seconds: float) -> None:
        if seconds * self.time_scale > 0:
            await asyncio.sleep(seconds * self.time_scale)

    async def _events(self, model: str, result: Answer, n: int, include_usage: bool) -> Any:
        cid, created = _completion_id(), int(time.time())

        def event(delta: dict[str, Any] | None, index: int = 0, finish: str | None = None,
                  usage: dict[str, int] | None = None, logprobs: dict[str, Any] | None = None) -> bytes:
            choices = [] if delta is None else [{"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}]
            chunk: dict[str, Any] = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                                     "system_fingerprint": FINGERPRINT, "choices": choices}
            if usage is not None:
                chunk["usage"] = usage
            return b"data: " + json.dumps(chunk).encode() + b"\n\n"

        start, ttft = time.monotonic(), self._ttft(model)
        await self._sleep(ttft)
        for i in range(n):
            # OpenAI opens a call with null content, so the SDK's accumulated message has content None as unstreamed.
            yield event({"role": "assistant", "content": None if result.tool_call else ""}, i)
        per_token = 1.0 / MODELS[model].tps
        emitted = 0
        for k, (delta, tokens) in enumerate(_stream_pieces(result)):
            emitted += tokens
            # Pace against the clock so many small sleeps do not add up to more than the target.
            wait = start + (ttft + emitted * per_token) * self.time_scale - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            logprobs = {"content": [result.logprobs[k]], "refusal": None} if result.logprobs else None
            for i in range(n):
                yield event(delta, i, logprobs=logprobs)
        for i in range(n):
            yield event({}, i, result.finish_reason)
        if include_usage:
            yield event(None, usage=result.usage(n))
        yield b"data: [DONE]\n\n"


def _stream_pieces(result: Answer) -> list[tuple[dict[str, Any], int]]:
    """Deltas with their token counts: words of the text, or a call split in fragments."""
    if result.tool_call:
        call, args = result.tool_call, result.tool_call["function"]["arguments"]
        frags = [args[i:i + 16] for i in range(0, len(args), 16)]
        if result.legacy_function:
            head: dict[str, Any] = {"function_call": {"name": call["function"]["name"], "arguments": ""}}
            return [(head, 1)] + [({"function_call": {"arguments": f}}, estimate_tokens(f)) for f in frags]
        head = {"tool_calls": [{"index": 0, "id": call["id"], "type": "function",
                                "function": {"name": call["function"]["name"], "arguments": ""}}]}
        return [(head, 1)] + [({"tool_calls": [{"index": 0, "function": {"arguments": f}}]}, estimate_tokens(f)) for f in frags]
    return [({"content": w}, estimate_tokens(w) or 1) for w in words(result.text)]


def _completion_id() -> str:
    return "chatcmpl-sim" + hashlib.sha256(f"{time.time_ns()}{random.random()}".encode()).hexdigest()[:20]


def start_simulator(host: str = "127.0.0.1", port: int = 0, time_scale: float | None = None,
                    error_rate: float = 0.0) -> tuple[str, Callable[[], None]]:
    """Serve the simulator in a background thread; return (its OpenAI base URL ending in /v1, stop)."""
    from service.asgi_thread import serve_in_thread

    root, stop = serve_in_thread(Simulator(time_scale, error_rate).app, host, port)
    return f"{root}/v1", stop


def attach_simulator(config: Config, host: str = "127.0.0.1", time_scale: float | None = None) -> tuple[Config, Callable[[], None] | None]:
    """Start one simulator for the config's `simulated` providers whose base_url is `simulated://`,
    and return the config with those URLs replaced (and the stop function; None if none was needed)."""
    pending = {n for n, p in config.providers.items() if p.kind == "simulated" and p.base_url.startswith(SIMULATED_URL)}
    if not pending:
        return config, None
    for i, m in enumerate(config.models):
        if m.provider in pending and m.upstream_name not in MODELS:
            # Every request to it would be a 404 from the simulator: say so at start-up.
            raise ValueError(f"{config.source or 'config'}: models[{i}] ({m.name}): the simulator serves no model "
                             f"{m.upstream_name!r}; set `upstream` to one of {sorted(MODELS)}")
    url, stop = start_simulator(host, 0, time_scale)
    providers = {n: p.model_copy(update={"base_url": url}) if n in pending else p for n, p in config.providers.items()}
    return config.model_copy(update={"providers": providers}), stop


def main(argv: list[str] | None = None) -> int:
    import uvicorn

    parser = argparse.ArgumentParser(description="simulated OpenAI-compatible upstream (11 RouterBench models)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--time-scale", type=float, default=None, help="latency multiplier (default env OPENCLAW_SIM_TIME_SCALE or 1)")
    parser.add_argument("--error-rate", type=float, default=0.0, help="fraction of requests answered 503")
    args = parser.parse_args(argv)
    uvicorn.run(Simulator(args.time_scale, args.error_rate).app, host=args.host, port=args.port, log_level="info")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
