"""The OpenAI-compatible adapter: OpenAI, Mistral, Groq, Together, DeepSeek, OpenRouter, vLLM,
Ollama, llama.cpp and the built-in simulator are all this class plus a base_url in config.

The client's body is passed through untouched (tools, tool_choice, `role: "tool"` messages,
response_format, max_tokens / max_completion_tokens...) except `model`, which becomes the
upstream id, and `stream_options.include_usage`, which is always requested on streams so the
gateway can bill and log every streamed answer; then the provider's `request` shape
(router.config.RequestShape) renames or drops the fields that provider refuses, the reasoning
of replayed assistant turns among them.
"""
from __future__ import annotations

import hashlib
import math
import re
import string
import time
from typing import Any, AsyncIterator, Callable

from router.config import ESSENTIAL_FIELDS, ModelSpec, RequestShape
from service import sse
from service.providers.answer_fields import as_object
from service.providers import envelope
from service.providers.base import Provider, UpstreamError, error_in_body, output_limit
from service.providers.reasoning import SIGNATURE_SEPARATOR, split_signature


def shaped(body: dict[str, Any], shape: RequestShape) -> dict[str, Any]:
    """The body as the provider takes it (its `request` shape): renamed, dropped and kept fields,
    and messages rewritten (developer role, tool-call ids, replayed reasoning)."""
    if shape.is_identity:
        return body
    # A field sent under its own name wins over one renamed onto it (max_tokens beside
    # max_completion_tokens carry the same cap by then); a null is no value (the SDK sends
    # `max_tokens: null` beside a real `max_completion_tokens`).
    out = {k: v for k, v in body.items() if k not in shape.rename and v is not None}
    for k, v in body.items():
        if k in shape.rename and v is not None:
            out.setdefault(shape.rename[k], v)
    out = {k: v for k, v in out.items()
           if k in ESSENTIAL_FIELDS or (k not in shape.drop and (shape.keep_only is None or k in shape.keep_only))}
    if shape.developer_role != "developer" and isinstance(out.get("messages"), list):
        out["messages"] = [{**m, "role": shape.developer_role} if isinstance(m, dict) and m.get("role") == "developer" else m
                           for m in out["messages"]]
    if shape.tool_call_ids == "alnum9" and isinstance(out.get("messages"), list):
        out["messages"] = [_with_ids(m, alnum9) for m in out["messages"]]
    if shape.reasoning_history == "drop" and isinstance(out.get("messages"), list):
        out["messages"] = [_unthought(m) for m in out["messages"]]
    return out


# The names a thinking model's answer carries its thinking under, which clients replay it with:
# reasoning_content (DeepSeek, vLLM, the gateway's for Claude), reasoning (Groq, OpenRouter,
# Ollama), reasoning_details (OpenRouter's structured blocks).
REPLAYED_REASONING = (*sse.REASONING_FIELDS, "reasoning_details")


def _unthought(message: Any) -> Any:
    """The message without the thinking a client replayed with it."""
    if not isinstance(message, dict) or not any(k in message for k in REPLAYED_REASONING):
        return message
    return {k: v for k, v in message.items() if k not in REPLAYED_REASONING}


_ALNUM9 = re.compile(r"[a-zA-Z0-9]{9}")
_BASE62 = string.digits + string.ascii_letters


def alnum9(call_id: Any) -> str:
    """A tool-call id as 9 letters and digits: kept if it is one, else derived from it, so a call
    and its result still pair up."""
    call_id = str(call_id or "")
    if _ALNUM9.fullmatch(call_id):
        return call_id
    n = int.from_bytes(hashlib.sha1(call_id.encode("utf-8")).digest()[:8], "big")
    return "".join(_BASE62[(n // 62 ** i) % 62] for i in range(9))


def _with_ids(message: Any, fn: Callable[[Any], str]) -> Any:
    """The message with `fn` applied to its tool-call ids: a tool result's, each call's."""
    if not isinstance(message, dict):
        return message
    if message.get("role") == "tool" and "tool_call_id" in message:
        return {**message, "tool_call_id": fn(message["tool_call_id"])}
    calls = message.get("tool_calls")
    if isinstance(calls, list):
        return {**message, "tool_calls": [{**c, "id": fn(c.get("id"))} if isinstance(c, dict) else c for c in calls]}
    return message


def unsigned(call_id: Any) -> str:
    """A tool-call id without the Gemini thought signature it may carry (OpenAI refuses ids over
    40 characters: the history of a conversation that moved here from Gemini 3)."""
    return split_signature(str(call_id or ""))[0]


def _signed(messages: list[Any]) -> bool:
    return any(isinstance(m, dict) and (SIGNATURE_SEPARATOR in str(m.get("tool_call_id", "")) or any(
        isinstance(c, dict) and SIGNATURE_SEPARATOR in str(c.get("id", "")) for c in m.get("tool_calls") or ()))
        for m in messages)


class OpenAICompatProvider(Provider):
    def _headers(self) -> dict[str, str]:
        key = self.api_key()
        return {"Authorization": f"Bearer {key}"} if key else {}

    def _payload(self, model: ModelSpec, body: dict[str, Any], stream: bool) -> dict[str, Any]:
        payload = {**body, "model": model.upstream_name, "stream": stream}
        messages = body.get("messages")
        if isinstance(messages, list) and _signed(messages):  # rebuilt only when a signature is there
            payload["messages"] = [_with_ids(m, unsigned) for m in messages]
        cap = output_limit(model, body)
        for key in ("max_completion_tokens", "max_tokens"):
            if payload.get(key):
                payload[key] = cap
        if stream:
            payload["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
        else:
            payload.pop("stream_options", None)
        return shaped(payload, self.spec.request)

    async def complete(self, model: ModelSpec, body: dict[str, Any]) -> dict[str, Any]:
        url = f"{self.base_url}/chat/completions"
        result = await self._post_json(url, self._payload(model, body, stream=False), self._headers())
        if not isinstance(result, dict):
            raise UpstreamError("malformed", "response is not a JSON object")
        if result.get("error") is not None:  # some servers send `"error": null` beside a good answer
            raise error_in_body(result, self._secrets())
        choices = result.get("choices")
        if not isinstance(choices, list) or not choices \
                or not all(isinstance(c, dict) and isinstance(c.get("message"), dict) for c in choices):
            raise UpstreamError("malformed", "response has no choices with a message")
        _unless_ended_in_error(result)
        _as_openai_writes_it(result)
        for choice in choices:  # an answer the upstream ended without saying why: finished, as streamed
            if not choice.get("finish_reason"):
                choice["finish_reason"] = finish_reason_of(choice["message"])
        _with_cached_tokens(as_object(result.get("usage"), "usage"))  # read by the gateway to bill the answer
        result["model"] = model.name
        result.setdefault("object", "chat.completion")
        return result

    async def stream(self, model: ModelSpec, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        url = f"{self.base_url}/chat/completions"
        secrets = self._secrets()
        ending = _Ending()
        opened_at = int(time.time())
        try:
            async for _, data in self._sse_events(url, self._payload(model, body, stream=True), self._headers()):
                if data.strip() == "[DONE]":
                    # The upstream's explicit end: an answer it never gave a finish_reason is finished
                    # all the same, as the same answer unstreamed is (`complete`).
                    for chunk in ending.done():
                        yield chunk
                    return
                chunk = envelope.parse_json_event(data, secrets)
                if chunk.get("error") is not None:
                    raise error_in_body(chunk, secrets)
                choices = chunk.get("choices") or []  # `null` on a usage-only chunk, as on OpenAI's `[]`
                if not isinstance(choices, list) or not all(isinstance(c, dict) and isinstance(c.get("delta") or {}, dict) for c in choices):
                    raise UpstreamError("malformed", "stream chunk has no choices list of objects with a delta")
                if not choices and chunk.get("usage") is None:
                    # Azure's first chunk (its prompt filter's results, `object: ""`, `created: 0`):
                    # nothing a client reads, and no valid chunk; OpenAI sends no choices only with usage.
                    continue
                chunk["choices"] = choices  # clients index it: never null
                # Read by the gateway to bill the answer; counts it lacks are estimated there (`usage_or_estimate`).
                _with_cached_tokens(as_object(chunk.get("usage"), "usage"))
                _unless_ended_in_error(chunk)
                _as_openai_writes_it(chunk)
                chunk["model"] = model.name
                chunk["object"] = "chat.completion.chunk"
                if not isinstance(chunk.get("created"), int) or chunk["created"] <= 0:
                    chunk["created"] = opened_at
                for out in ending.add(chunk):
                    yield out
        except UpstreamError:
            if ending.finished:  # cut after the answer's end, before [DONE]: its usage still bills it
                for chunk in ending.cut():
                    yield chunk
            raise
        for chunk in ending.cut():  # its usage, if it sent one, still bills the answer
            yield chunk
        if not ending.finished:
            # A connection that closes before [DONE] and before any finish_reason was cut mid-answer.
            raise UpstreamError("connection", "stream ended before the answer finished")


def finish_reason_of(message: Any) -> str:
    """The finish_reason of an answer (a message, or a streamed delta) its upstream ended without
    one: a tool call's, or "stop"."""
    if isinstance(message, dict) and message.get("tool_calls"):
        return "tool_calls"
    return "function_call" if isinstance(message, dict) and message.get("function_call") else "stop"


class _Ending:
    """How a stream's choices end. A choice with output that the upstream leaves without a
    finish_reason gets one at [DONE] (`done`), in a chunk of its own. The usage-only chunk is held
    until the stream ends, wherever the upstream put it (some send it before the finish chunk):
    it is the last chunk, as OpenAI orders them and clients read it."""

    def __init__(self) -> None:
        self.open: dict[Any, str] = {}  # choice index with output and no finish_reason yet → its inferred one
        self.finished = False  # some choice ended with a finish_reason
        self.last: dict[str, Any] = {}
        self.usage: dict[str, Any] | None = None  # the latest usage-only chunk, held back

    def add(self, chunk: dict[str, Any]) -> list[dict[str, Any]]:
        choices = chunk["choices"] if isinstance(chunk.get("choices"), list) else []
        if not choices and chunk.get("usage") is not None:
            self.usage = chunk
            return []
        self.last = chunk
        for c in choices:
            delta = c.get("delta") or {}
            index = c.get("index", 0)
            if c.get("finish_reason"):
                self.finished = True
                self.open.pop(index, None)
            elif delta.get("tool_calls") or delta.get("function_call"):
                self.open[index] = finish_reason_of(delta)
            elif delta.get("content") or delta.get("refusal") or sse.thinks(delta):
                self.open.setdefault(index, "stop")
        return [chunk]

    def cut(self) -> list[dict[str, Any]]:
        """The held usage chunk, where one is: the stream has ended."""
        held, self.usage = self.usage, None
        return [held] if held is not None else []

    def done(self) -> list[dict[str, Any]]:
        base = {k: self.last[k] for k in ("id", "object", "created", "model") if k in self.last}
        ends = [envelope.chunk(base, {}, reason, index=i) for i, reason in self.open.items()]
        self.open = {}
        return ends + self.cut()


# Servers built on other engines name their stop reasons their own way; typed clients (Go's, Rust's
# SDKs) take only OpenAI's values.
_FINISH_REASONS = {"eos": "stop", "eos_token": "stop", "stop_sequence": "stop", "end_turn": "stop",
                   "max_tokens": "length", "model_length": "length"}


def _unless_ended_in_error(answer: dict[str, Any]) -> None:
    """OpenRouter ends an answer with finish_reason "error" when its provider fails: a failure
    like any other, to fail over from before any output reached the client, and never an answer
    that finished (it had been served as one: an empty answer, logged `ok`, learnt from as good)."""
    if any(choice.get("finish_reason") == "error" for choice in answer.get("choices") or ()):
        raise UpstreamError("server", 'the upstream ended its answer with finish_reason "error"')


def _as_openai_writes_it(answer: dict[str, Any]) -> None:
    """OpenAI's types where a server strays from them: `created` an integer (some send a float),
    finish reasons from OpenAI's set."""
    created = answer.get("created")
    if isinstance(created, float) and math.isfinite(created):
        answer["created"] = int(created)
    for choice in answer.get("choices") or ():
        reason = choice.get("finish_reason")
        if isinstance(reason, str) and reason in _FINISH_REASONS:
            choice["finish_reason"] = _FINISH_REASONS[reason]


def _with_cached_tokens(usage: dict[str, Any]) -> None:
    """DeepSeek reports its prompt-cache hits as `prompt_cache_hit_tokens`, not OpenAI's
    `prompt_tokens_details.cached_tokens`, which the gateway bills at the cached price and clients
    read: copied there when the provider gave no count of its own."""
    hit = usage.get("prompt_cache_hit_tokens")
    if not isinstance(hit, int) or isinstance(hit, bool):
        return
    details = usage.get("prompt_tokens_details")
    if not isinstance(details, dict):
        details = usage["prompt_tokens_details"] = {}
    details.setdefault("cached_tokens", hit)
