"""A scriptable OpenAI-compatible upstream on a real 127.0.0.1 socket, for failover tests.

    from tests.fake_upstream import FakeUpstream, ok, rate_limit, server_error, hang, cut_stream

    with FakeUpstream() as up:                       # uvicorn in a thread, free port
        up.base_url                                  # "http://127.0.0.1:PORT/v1" — put it in a ProviderSpec
        up.script("m1", rate_limit(retry_after=1), ok("fine"))   # per-model queue, one reply per request
        up.default("m2", server_error())              # used whenever the model's queue is empty
        ... call it ...
        up.requests                                   # every request received, in order (Recorded)
        up.requests_for("m1")                         # just those whose body named model m1

Replies (each works for streaming and non-streaming requests unless noted):
  ok(text, tool_calls=None, delay_s=0, chunk_delay_s=0)  normal answer; tool_calls = [{"name", "arguments"}]
  rate_limit(retry_after=1)                          429 with a Retry-After header (seconds or HTTP-date str)
  server_error(status=500)                           5xx with an OpenAI error body
  hang(seconds=30)                                   no response headers for `seconds` (past a client timeout)
  cut_stream(after_chunks=2)                         stream: close the connection after N SSE events
                                                     (event 1 is the role chunk: after_chunks=1 cuts before any token)
  stall_stream(after_chunks=2, seconds=30)           stream: stop sending (read timeout) after N events
  keep_alive(seconds=30, every_s=0.2, after_chunks=1) stream: N events (1: the role chunk), then only SSE comments
                                                     (": OPENROUTER PROCESSING") for `seconds`, then the rest
  malformed_chunk(after_chunks=1)                    stream: N good events, then `data: {"choices": [` (invalid JSON)
  invalid_json()                                     200 whose body is not JSON (non-stream) / first event not JSON (stream)
  context_length()                                   400 code context_length_exceeded
  not_found()                                        404 code model_not_found
  error(status, message, code=None, type=..., headers=None)   any other error body

`WireServer` (below) serves verbatim replies of any wire format (Anthropic, Gemini) for adapter tests.

Unscripted models answer `ok()` with text "Hello from <model>.". Usage is always reported
(token counts = characters/4) and streams send the usage chunk when stream_options.include_usage.
"""
from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from service.asgi_thread import serve_in_thread


@dataclass(frozen=True)
class Reply:
    kind: str = "ok"  # ok | error | hang | cut | stall | keep_alive | malformed | invalid_json
    text: str | None = None
    tool_calls: tuple[dict[str, Any], ...] = ()
    status: int = 200
    body: dict[str, Any] | None = None
    headers: tuple[tuple[str, str], ...] = ()
    delay_s: float = 0.0
    chunk_delay_s: float = 0.0
    after_chunks: int = 0
    seconds: float = 0.0
    every_s: float = 0.0
    usage: bool = True  # False: a server that never reports usage (some llama.cpp and proxy builds)
    usage_fields: tuple[tuple[str, Any], ...] = ()  # more usage fields, as some providers add their own
    gate: Any = None  # a tests/stream_gate.Gate the answer waits at (after delay_s), to hold it as long as the test needs


def ok(text: str | None = None, tool_calls: list[dict[str, Any]] | None = None, delay_s: float = 0.0, chunk_delay_s: float = 0.0,
       usage: bool = True, usage_fields: dict[str, Any] | None = None, gate: Any = None) -> Reply:
    return Reply("ok", text=text, tool_calls=tuple(tool_calls or ()), delay_s=delay_s, chunk_delay_s=chunk_delay_s, usage=usage,
                 usage_fields=tuple((usage_fields or {}).items()), gate=gate)


def error(status: int, message: str, code: str | None = None, type: str = "api_error", headers: dict[str, str] | None = None) -> Reply:
    body = {"error": {"message": message, "type": type, "param": None, "code": code}}
    return Reply("error", status=status, body=body, headers=tuple((headers or {}).items()))


def rate_limit(retry_after: float | str | None = 1) -> Reply:
    headers = {} if retry_after is None else {"retry-after": str(retry_after)}
    return error(429, "Rate limit reached for requests", "rate_limit_exceeded", "requests", headers)


def server_error(status: int = 500) -> Reply:
    return error(status, "The server had an error while processing your request.", None, "server_error")


def context_length() -> Reply:
    return error(400, "This model's maximum context length is 8192 tokens. However, your messages resulted in 9000 tokens.",
                 "context_length_exceeded", "invalid_request_error")


def not_found() -> Reply:
    return error(404, "The model does not exist or you do not have access to it.", "model_not_found", "invalid_request_error")


def hang(seconds: float = 30.0) -> Reply:
    return Reply("hang", seconds=seconds)


def cut_stream(after_chunks: int = 2) -> Reply:
    return Reply("cut", after_chunks=after_chunks)


def stall_stream(after_chunks: int = 2, seconds: float = 30.0) -> Reply:
    return Reply("stall", after_chunks=after_chunks, seconds=seconds)


def keep_alive(seconds: float = 30.0, every_s: float = 0.2, after_chunks: int = 1) -> Reply:
    return Reply("keep_alive", after_chunks=after_chunks, seconds=seconds, every_s=every_s)


def malformed_chunk(after_chunks: int = 1) -> Reply:
    return Reply("malformed", after_chunks=after_chunks)


def invalid_json() -> Reply:
    return Reply("invalid_json")


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: Any
    model: str | None = field(default=None)


class _CutConnection(Exception):
    """Raised inside the app to make the server drop the connection mid-body."""


def _not_a_planned_cut(record: logging.LogRecord) -> bool:
    return not (record.exc_info and isinstance(record.exc_info[1], _CutConnection))


# uvicorn logs every exception that escapes an app; the cuts are the fake's job, not failures.
logging.getLogger("uvicorn.error").addFilter(_not_a_planned_cut)


def _tokens(text: str) -> int:
    return max(1, len(text) // 4)


async def read_body(receive: Any) -> bytes:
    """The whole request body of an ASGI HTTP request."""
    raw = b""
    while True:
        message = await receive()
        raw += message.get("body", b"")
        if not message.get("more_body"):
            return raw


class FakeUpstream:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queues: dict[str, list[Reply]] = {}
        self._defaults: dict[str, Reply] = {}
        self.requests: list[Recorded] = []
        self._url: str | None = None
        self._stop = None
        self._stopping = threading.Event()

    # -- scripting -------------------------------------------------------------------------
    def script(self, model: str, *replies: Reply) -> "FakeUpstream":
        with self._lock:
            self._queues.setdefault(model, []).extend(replies)
        return self

    def default(self, model: str, reply: Reply) -> "FakeUpstream":
        with self._lock:
            self._defaults[model] = reply
        return self

    def requests_for(self, model: str) -> list[Recorded]:
        with self._lock:
            return [r for r in self.requests if r.model == model]

    def reset(self) -> None:
        with self._lock:
            self._queues.clear()
            self._defaults.clear()
            self.requests.clear()

    def _next(self, model: str) -> Reply:
        with self._lock:
            queue = self._queues.get(model)
            if queue:
                return queue.pop(0)
            return self._defaults.get(model, ok())

    # -- lifecycle -------------------------------------------------------------------------
    @property
    def url(self) -> str:
        assert self._url is not None, "FakeUpstream is not started"
        return self._url

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def start(self) -> "FakeUpstream":
        self._url, self._stop = serve_in_thread(self._app)
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._stop is not None:
            self._stop()
            self._stop = None

    def __enter__(self) -> "FakeUpstream":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- the ASGI app ----------------------------------------------------------------------
    async def _sleep(self, seconds: float) -> None:
        """Sleep that ends early when the server stops, so hung requests never block shutdown."""
        end = time.monotonic() + seconds
        while not self._stopping.is_set() and time.monotonic() < end:
            await asyncio.sleep(min(0.05, end - time.monotonic()))

    async def _app(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        raw = await read_body(receive)
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode("utf-8", "replace")
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        model = body.get("model") if isinstance(body, dict) else None
        with self._lock:
            self.requests.append(Recorded(scope["method"], scope["path"], headers, body, model))
        if scope["path"].endswith("/models") and scope["method"] == "GET":
            with self._lock:
                names = sorted(set(self._queues) | set(self._defaults))
            await _send_json(send, 200, {"object": "list", "data": [{"id": n, "object": "model", "owned_by": "fake"} for n in names]})
            return
        if not scope["path"].endswith("/chat/completions") or not isinstance(body, dict):
            await _send_json(send, 404 if isinstance(body, dict) else 400, {"error": {"message": "unknown route or body", "type": "invalid_request_error", "code": None}})
            return
        reply = self._next(model or "")
        if reply.kind == "hang":
            await self._sleep(reply.seconds)
            await _send_json(send, 504, {"error": {"message": "hung", "type": "server_error", "code": None}})
            return
        if reply.kind == "error":
            await _send_json(send, reply.status, reply.body or {}, reply.headers)
            return
        await self._sleep(reply.delay_s)
        if reply.gate is not None:
            await reply.gate.wait()
        if body.get("stream"):
            await self._stream(send, body, reply)
        elif reply.kind == "invalid_json":
            await _send_raw(send, 200, b'{"id": "chatcmpl-x", "choices": [', "application/json")
        else:
            await _send_json(send, 200, _completion(body, reply))

    async def _stream(self, send: Any, body: dict[str, Any], reply: Reply) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        events = _chunks(body, reply)
        for i, event in enumerate(events):
            if reply.kind in ("cut", "stall", "malformed") and i == reply.after_chunks:
                if reply.kind == "cut":
                    raise _CutConnection("fake upstream cut the stream")
                if reply.kind == "stall":
                    await self._sleep(reply.seconds)
                    raise _CutConnection("fake upstream stalled the stream")
                await send({"type": "http.response.body", "body": b'data: {"choices": [\n\n', "more_body": True})
                break
            if reply.kind == "keep_alive" and i == reply.after_chunks:
                # OpenRouter's while a provider is queued: bytes that keep the connection alive, no output.
                until = time.monotonic() + reply.seconds
                while time.monotonic() < until:
                    await send({"type": "http.response.body", "body": b": OPENROUTER PROCESSING\n\n", "more_body": True})
                    await self._sleep(reply.every_s)
            if reply.kind == "invalid_json" and i == 0:
                await send({"type": "http.response.body", "body": b"data: not json at all\n\n", "more_body": True})
                break
            if i > 0:
                await self._sleep(reply.chunk_delay_s)
            await send({"type": "http.response.body", "body": event, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


def _answer(body: dict[str, Any], reply: Reply) -> tuple[str, list[dict[str, Any]]]:
    calls = [
        {"id": f"call_{i}_{c['name']}", "type": "function",
         "function": {"name": c["name"], "arguments": c["arguments"] if isinstance(c["arguments"], str) else json.dumps(c["arguments"])}}
        for i, c in enumerate(reply.tool_calls)
    ]
    text = reply.text if reply.text is not None else ("" if calls else f"Hello from {body.get('model')}.")
    return text, calls


def _usage(body: dict[str, Any], text: str, calls: list[dict[str, Any]], reply: Reply) -> dict[str, Any]:
    prompt = _tokens(json.dumps(body.get("messages", [])))
    completion = _tokens(text + "".join(c["function"]["arguments"] for c in calls))
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion, **dict(reply.usage_fields)}


FINGERPRINT = "fp_fake"  # on every answer and chunk, as OpenAI sends it


def _completion(body: dict[str, Any], reply: Reply) -> dict[str, Any]:
    text, calls = _answer(body, reply)
    message: dict[str, Any] = {"role": "assistant", "content": text or None}
    if calls:
        message["tool_calls"] = calls
    return {
        "id": "chatcmpl-fake", "object": "chat.completion", "created": int(time.time()), "model": body.get("model"),
        "system_fingerprint": FINGERPRINT, "choices": [{"index": 0, "message": message, "finish_reason": "tool_calls" if calls else "stop"}],
        **({"usage": _usage(body, text, calls, reply)} if reply.usage else {}),
    }


def _chunks(body: dict[str, Any], reply: Reply) -> list[bytes]:
    text, calls = _answer(body, reply)

    def event(delta: dict[str, Any] | None, finish: str | None = None, usage: dict[str, Any] | None = None) -> bytes:
        chunk: dict[str, Any] = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": int(time.time()), "model": body.get("model"),
                                 "system_fingerprint": FINGERPRINT, "choices": [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]}
        if usage is not None:
            chunk["usage"] = usage
        return f"data: {json.dumps(chunk)}\n\n".encode()

    events = [event({"role": "assistant", "content": ""})]
    words = text.split(" ")
    events += [event({"content": w if i == 0 else " " + w}) for i, w in enumerate(words) if text]
    for i, call in enumerate(calls):
        args = call["function"]["arguments"]
        half = len(args) // 2
        events.append(event({"tool_calls": [{"index": i, "id": call["id"], "type": "function", "function": {"name": call["function"]["name"], "arguments": args[:half]}}]}))
        events.append(event({"tool_calls": [{"index": i, "function": {"arguments": args[half:]}}]}))
    events.append(event({}, "tool_calls" if calls else "stop"))
    if (body.get("stream_options") or {}).get("include_usage") and reply.usage:
        events.append(event(None, usage=_usage(body, text, calls, reply)))
    events.append(b"data: [DONE]\n\n")
    return events


async def _send_raw(send: Any, status: int, payload: bytes, content_type: str, headers: tuple[tuple[str, str], ...] = ()) -> None:
    raw_headers = [(b"content-type", content_type.encode()), (b"content-length", str(len(payload)).encode())]
    raw_headers += [(k.encode(), v.encode()) for k, v in headers]
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": payload})


async def _send_json(send: Any, status: int, payload: Any, headers: tuple[tuple[str, str], ...] = ()) -> None:
    await _send_raw(send, status, json.dumps(payload).encode(), "application/json", headers)


@dataclass(frozen=True)
class WireReply:
    status: int = 200
    json_body: Any = None
    sse: tuple[tuple[str | None, Any], ...] | None = None  # (event name, data) pairs; data dicts are JSON-encoded
    headers: tuple[tuple[str, str], ...] = ()
    cut: bool = False  # drop the connection after the SSE events instead of ending the body


class WireServer:
    """A fake upstream of any wire format (Anthropic Messages, Gemini...): each request gets the next
    queued `WireReply` verbatim, so a test states exactly what the provider sends and asserts the
    adapter's translation. Records requests (with `query`) like `FakeUpstream`.

        with WireServer() as srv:
            srv.reply(json_body={...}) ; srv.reply_sse([("message_start", {...}), ...])
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queue: list[WireReply] = []
        self.requests: list[Recorded] = []
        self._stop = None
        self.url = ""

    def reply(self, json_body: Any = None, status: int = 200, headers: dict[str, str] | None = None) -> "WireServer":
        with self._lock:
            self._queue.append(WireReply(status, json_body, None, tuple((headers or {}).items())))
        return self

    def reply_sse(self, events: list[tuple[str | None, Any]], cut: bool = False) -> "WireServer":
        with self._lock:
            self._queue.append(WireReply(200, None, tuple(events), (), cut))
        return self

    def __enter__(self) -> "WireServer":
        self.url, self._stop = serve_in_thread(self._app)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._stop is not None:
            self._stop()

    async def _app(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        raw = await read_body(receive)
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        path = scope["path"] + (f"?{scope['query_string'].decode()}" if scope["query_string"] else "")
        body = json.loads(raw) if raw else None
        with self._lock:
            self.requests.append(Recorded(scope["method"], path, headers, body, (body or {}).get("model") if isinstance(body, dict) else None))
            reply = self._queue.pop(0) if self._queue else WireReply(500, {"error": {"message": "no reply queued"}})
        if reply.sse is None:
            await _send_json(send, reply.status, reply.json_body, reply.headers)
            return
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        for name, data in reply.sse:
            text = data if isinstance(data, str) else json.dumps(data)
            frame = (f"event: {name}\n" if name else "") + f"data: {text}\n\n"
            # surrogatepass: a str event may carry surrogates, sent as the raw bytes Java's encoders write
            await send({"type": "http.response.body", "body": frame.encode("utf-8", "surrogatepass"), "more_body": True})
        if reply.cut:
            raise _CutConnection("wire server cut the stream")
        await send({"type": "http.response.body", "body": b"", "more_body": False})
