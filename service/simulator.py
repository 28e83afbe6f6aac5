"""The simulated upstream: a real OpenAI-compatible HTTP server standing in for the 11 RouterBench models.

`openclaw-router serve` with no keys and no config routes over these models, so the whole
product (routing, streaming, failover, outcome log, retraining) runs on a laptop. Each model
has a time to first token, a throughput, a verbosity and a mean answer quality patterned on
RouterBench (quality: the mean correctness in the RouterBench subset; verbosity: the median
length of its MBPP answers; prices live in service/default_config.yaml). Latencies are early-2024
public API figures, scaled by `time_scale` (env OPENCLAW_SIM_TIME_SCALE) so tests run fast.

Answers are labelled ("[simulated <model>] ...") and deterministic per (model, prompt). Whether
an answer counts as good is drawn from a prompt difficulty shared by all models plus a per-model
draw, calibrated so each model's long-run good-answer rate equals its RouterBench quality; the
verdict is reported in the `x-simulated-good` header and the body's `simulated` field, giving the
learning loop a ground truth. With tools and a user turn last, the model calls a tool (the named
one, else the first) with arguments built from its JSON schema; after a `tool` turn it answers.
"""
from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import random
import time
from dataclasses import dataclass
from typing import Any, Callable

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from router.config import Config
from router.request_view import content_text, estimate_tokens
from service.providers.registry import SIMULATED_URL


@dataclass(frozen=True)
class SimModel:
    quality: float  # long-run rate of good answers (RouterBench mean correctness)
    ttft_s: float
    tps: float  # output tokens per second
    verbosity: int  # median output tokens of an open-ended answer
    context_window: int
    tools: bool


MODELS: dict[str, SimModel] = {
    "gpt-4-1106-preview": SimModel(0.879, 0.70, 25.0, 294, 128_000, True),
    "gpt-3.5-turbo-1106": SimModel(0.724, 0.35, 70.0, 146, 16_385, True),
    "claude-v1": SimModel(0.722, 0.90, 30.0, 145, 100_000, False),
    "claude-v2": SimModel(0.544, 1.10, 30.0, 220, 100_000, False),
    "claude-instant-v1": SimModel(0.669, 0.50, 80.0, 178, 100_000, False),
    "mixtral-8x7b-chat": SimModel(0.739, 0.30, 90.0, 250, 32_768, True),
    "mistral-7b-chat": SimModel(0.581, 0.20, 110.0, 206, 8_192, False),
    "llama-2-70b-chat": SimModel(0.614, 0.50, 40.0, 281, 4_096, False),
    "code-llama-instruct-34b-chat": SimModel(0.611, 0.40, 50.0, 112, 16_384, False),
    "Yi-34B-Chat": SimModel(0.771, 0.50, 40.0, 236, 4_096, False),
    "WizardLM-13B-V1.2": SimModel(0.568, 0.30, 70.0, 225, 4_096, False),
}

# Good iff DIFFICULTY_WEIGHT * difficulty(prompt) + (1 - DIFFICULTY_WEIGHT) * luck(model, prompt) < threshold:
# models agree on which prompts are hard, as real models do, without being perfectly nested.
DIFFICULTY_WEIGHT = 0.7

FILLER = (
    "this simulated answer stands in for the model's reply and carries no real content "
    "the router measured its latency cost and quality like any other upstream call"
).split()


def _unit(*parts: str) -> float:
    digest = hashlib.sha256("\x1f".join(parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def threshold(quality: float, a: float = DIFFICULTY_WEIGHT) -> float:
    """t with P(a*U1 + (1-a)*U2 < t) = quality for independent uniforms (inverse of a trapezoid CDF)."""
    b = 1.0 - a
    lo, hi = min(a, b), max(a, b)
    if quality <= lo / (2 * hi):
        return (2 * a * b * quality) ** 0.5
    if quality <= 1 - lo / (2 * hi):
        return quality * hi + lo / 2
    return 1 - (2 * a * b * (1 - quality)) ** 0.5


def is_good(model: str, prompt: str) -> tuple[bool, float]:
    """The deterministic verdict on `model`'s answer to `prompt`, and the prompt's difficulty."""
    difficulty = _unit("difficulty", prompt)
    score = DIFFICULTY_WEIGHT * difficulty + (1 - DIFFICULTY_WEIGHT) * _unit("luck", model, prompt)
    return score < threshold(MODELS[model].quality), difficulty


def _last_turn(messages: list[dict[str, Any]]) -> tuple[str, str]:
    for m in reversed(messages):
        if m.get("role") in ("user", "tool"):
            return m["role"], content_text(m.get("content"))
    return "user", ""


def _example(schema: dict[str, Any], name: str, prompt: str) -> Any:
    if schema.get("enum"):
        return schema["enum"][0]
    kind = schema.get("type")
    kind = kind[0] if isinstance(kind, list) else kind
    if kind == "object" or "properties" in schema:
        props = schema.get("properties") or {}
        keys = schema.get("required") or list(props)
        return {k: _example(props.get(k) or {}, k, prompt) for k in keys}
    if kind == "array":
        return [_example(schema.get("items") or {}, name, prompt)]
    if kind == "integer":
        return 1
    if kind == "number":
        return 1.0
    if kind == "boolean":
        return True
    return " ".join(prompt.split()[:8]) or name


def _tool_call(body: dict[str, Any], model: str, prompt: str) -> dict[str, Any] | None:
    tools = [t for t in body.get("tools") or [] if t.get("type", "function") == "function"]
    choice = body.get("tool_choice")
    if not tools or choice == "none" or not MODELS[model].tools:
        return None
    fn = tools[0]["function"]
    if isinstance(choice, dict) and isinstance(choice.get("function"), dict):
        fn = next((t["function"] for t in tools if t["function"]["name"] == choice["function"].get("name")), fn)
    args = _example(fn.get("parameters") or {"type": "object"}, fn["name"], prompt)
    call_id = "call_" + hashlib.sha256(f"{model}\x1f{prompt}".encode()).hexdigest()[:24]
    return {"id": call_id, "type": "function", "function": {"name": fn["name"], "arguments": json.dumps(args)}}


def _text(body: dict[str, Any], model: str, prompt: str, after_tool: bool, good: bool, n_tokens: int) -> str:
    rng = random.Random(f"{model}\x1f{prompt}")
    topic = " ".join(prompt.split()[:10])
    lead = "Based on the tool result" if after_tool else "Answer to"
    words = [f"[simulated {model}]", f"{lead}: \"{topic}\"", "—", "a good answer." if good else "a weak answer."]
    while estimate_tokens(" ".join(words)) < n_tokens:
        words.append(rng.choice(FILLER))
    text = " ".join(words)
    fmt = (body.get("response_format") or {}).get("type")
    if fmt in ("json_object", "json_schema"):
        return json.dumps({"simulated": True, "model": model, "answer": text})
    return text


def _output_tokens(sim: SimModel, model: str, prompt: str, body: dict[str, Any]) -> tuple[int, bool]:
    """How long the answer is (lognormal around the model's verbosity), and whether max_tokens cut it."""
    wanted = max(8, int(sim.verbosity * random.Random(f"len\x1f{model}\x1f{prompt}").lognormvariate(0.0, 0.5)))
    cap = body.get("max_completion_tokens") or body.get("max_tokens")
    if isinstance(cap, int) and 0 < cap < wanted:
        return cap, True
    return wanted, False


@dataclass
class Answer:
    text: str
    tool_call: dict[str, Any] | None
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str
    good: bool
    difficulty: float

    def usage(self, choices: int = 1) -> dict[str, int]:
        completion = self.completion_tokens * choices
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": completion,
                "total_tokens": self.prompt_tokens + completion}


def answer(model: str, body: dict[str, Any]) -> Answer:
    """The simulated answer of `model` to a chat body (no waiting)."""
    sim = MODELS[model]
    messages = body.get("messages") or []
    role, prompt = _last_turn(messages)
    prompt_tokens = estimate_tokens(json.dumps(messages)) + estimate_tokens(json.dumps(body.get("tools") or []))
    good, difficulty = is_good(model, prompt)
    call = _tool_call(body, model, prompt) if role == "user" else None
    if call is not None:
        return Answer("", call, prompt_tokens, estimate_tokens(call["function"]["arguments"]) + 8, "tool_calls", good, difficulty)
    n_tokens, truncated = _output_tokens(sim, model, prompt, body)
    text = _text(body, model, prompt, role == "tool", good, n_tokens)
    if truncated:
        text = text[: n_tokens * 4]
    return Answer(text, None, prompt_tokens, estimate_tokens(text), "length" if truncated else "stop", good, difficulty)


def _error(status: int, message: str, code: str, kind: str = "invalid_request_error") -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "param": None, "code": code}}, status_code=status,
                        headers={"x-simulated": "true"})


def _choices(body: dict[str, Any]) -> int | None:
    n = body.get("n", 1)
    if n is None:
        return 1
    return n if isinstance(n, int) and not isinstance(n, bool) and 1 <= n <= 128 else None


class Simulator:
    def __init__(self, time_scale: float | None = None, error_rate: float = 0.0):
        scale = time_scale if time_scale is not None else float(os.environ.get("OPENCLAW_SIM_TIME_SCALE", "1.0"))
        self.time_scale = max(0.0, scale)
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
        except ValueError:
            return _error(400, "request body is not valid JSON", "invalid_json")
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list) or not body["messages"]:
            return _error(400, "'messages' must be a non-empty list", "invalid_messages")
        model = body.get("model")
        if model not in MODELS:
            return _error(404, f"The model '{model}' does not exist (simulated upstream)", "model_not_found")
        n = _choices(body)
        if n is None:
            return _error(400, "'n' must be an integer from 1 to 128", "invalid_value")
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
        message: dict[str, Any] = {"role": "assistant", "content": result.text or None}
        if result.tool_call:
            message["tool_calls"] = [result.tool_call]
        return JSONResponse({
            "id": _completion_id(), "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": i, "message": message, "finish_reason": result.finish_reason} for i in range(n)],
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
                  usage: dict[str, int] | None = None) -> bytes:
            chunk: dict[str, Any] = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                                     "choices": [] if delta is None else [{"index": index, "delta": delta, "finish_reason": finish}]}
            if usage is not None:
                chunk["usage"] = usage
            return b"data: " + json.dumps(chunk).encode() + b"\n\n"

        start, ttft = time.monotonic(), self._ttft(model)
        await self._sleep(ttft)
        for i in range(n):
            yield event({"role": "assistant", "content": ""}, i)
        per_token = 1.0 / MODELS[model].tps
        emitted = 0
        for delta, tokens in _stream_pieces(result):
            emitted += tokens
            # Pace against the clock so many small sleeps do not add up to more than the target.
            wait = start + (ttft + emitted * per_token) * self.time_scale - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            for i in range(n):
                yield event(delta, i)
        for i in range(n):
            yield event({}, i, result.finish_reason)
        if include_usage:
            yield event(None, usage=result.usage(n))
        yield b"data: [DONE]\n\n"


def _stream_pieces(result: Answer) -> list[tuple[dict[str, Any], int]]:
    """Deltas with their token counts: words of the text, or a tool call split in fragments."""
    if result.tool_call:
        call, args = result.tool_call, result.tool_call["function"]["arguments"]
        head = {"tool_calls": [{"index": 0, "id": call["id"], "type": "function",
                                "function": {"name": call["function"]["name"], "arguments": ""}}]}
        frags = [args[i:i + 16] for i in range(0, len(args), 16)]
        return [(head, 1)] + [({"tool_calls": [{"index": 0, "function": {"arguments": f}}]}, estimate_tokens(f)) for f in frags]
    words = result.text.split(" ")
    return [({"content": w if i == 0 else " " + w}, estimate_tokens(w) or 1) for i, w in enumerate(words)]


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
