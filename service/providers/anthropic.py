"""Anthropic Messages API adapter: OpenAI chat body → /v1/messages → OpenAI chat.completion.

Translated both ways: system prompt (all system/developer turns joined), messages (consecutive
same-role turns merged because Anthropic requires alternation; `role: "tool"` turns become
`tool_result` blocks in a user turn), tools and tool_choice, assistant tool_calls ↔ `tool_use`
blocks, images, stop sequences, usage, stop reasons, streaming events (message_start,
content_block_start/delta with text_delta and input_json_delta, message_delta, message_stop,
error) and errors (overloaded 529, 429 with retry-after, "prompt is too long").
"""
from __future__ import annotations

import hashlib
import json
import re
import time
from typing import Any, AsyncIterator

from router.config import ModelSpec
from router.request_view import content_text, estimate_tokens
from service.providers.answer_fields import as_int, as_object, as_text
from service.providers.base import Provider, UpstreamError, error_in_body, output_limit, parse_json_event, tool_arguments

ANTHROPIC_VERSION = "2023-06-01"

FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
    "model_context_window_exceeded": "length",  # cut off by the window: not a finished answer
}

JSON_INSTRUCTION = "Respond with a single valid JSON object and nothing else."


def _image_block(part: dict[str, Any]) -> dict[str, Any]:
    url = part["image_url"]["url"]  # shape checked by service/schemas.py
    if url.startswith("data:"):
        header, _, data = url.partition(",")
        media_type = header[5:].split(";")[0] or "image/png"
        return {"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}
    return {"type": "image", "source": {"type": "url", "url": url}}


def _content_blocks(content: Any) -> list[dict[str, Any]]:
    if content is None:
        return []
    # The Messages API refuses text blocks that are empty or only whitespace; OpenAI clients send
    # them beside tool calls.
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content.strip() else []
    blocks = []
    for part in content:
        if isinstance(part, dict) and part.get("type") == "image_url":
            blocks.append(_image_block(part))
        elif isinstance(part, dict) and part.get("type") == "text" and str(part.get("text", "")).strip():
            blocks.append({"type": "text", "text": str(part["text"])})
        elif isinstance(part, str) and part.strip():
            blocks.append({"type": "text", "text": part})
    return blocks


_TOOL_USE_ID = re.compile(r"[a-zA-Z0-9_-]+")


def tool_use_id(call_id: Any) -> str:
    """Anthropic takes tool-use ids of letters, digits, _ and - only. A conversation that another
    model began may carry others (Kimi's "functions.read_file:0"), and a router switches models
    mid-conversation: such an id is rewritten, the same way in the call and in its result."""
    call_id = str(call_id or "")
    if _TOOL_USE_ID.fullmatch(call_id):
        return call_id
    digest = hashlib.sha1(call_id.encode("utf-8")).hexdigest()[:12]
    return f"{re.sub(r'[^a-zA-Z0-9_-]', '_', call_id)[:40]}_{digest}"


def _message_blocks(message: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
    role = message.get("role")
    if role == "tool":
        result = {"type": "tool_result", "tool_use_id": tool_use_id(message.get("tool_call_id")), "content": content_text(message.get("content"))}
        return "user", [result]
    blocks = _content_blocks(message.get("content"))
    if role == "assistant":
        for call in message.get("tool_calls") or []:
            fn = call.get("function") or {}
            blocks.append({"type": "tool_use", "id": tool_use_id(call.get("id")), "name": fn.get("name", ""), "input": tool_arguments(fn.get("arguments"))})
        return "assistant", blocks
    return "user", blocks


def _tool_choice(choice: Any, parallel: Any) -> dict[str, Any] | None:
    if choice is None:
        result: dict[str, Any] | None = {"type": "auto"} if parallel is False else None
    elif choice == "auto":
        result = {"type": "auto"}
    elif choice == "none":
        return {"type": "none"}
    elif choice == "required":
        result = {"type": "any"}
    elif isinstance(choice, dict) and isinstance(choice.get("function"), dict):
        result = {"type": "tool", "name": choice["function"].get("name", "")}
    else:
        raise UpstreamError("bad_request", f"unsupported tool_choice {choice!r}")
    if result is not None and parallel is False:
        result["disable_parallel_tool_use"] = True
    return result


def to_anthropic(model: ModelSpec, body: dict[str, Any], stream: bool) -> dict[str, Any]:
    """The Messages API request for an OpenAI chat body."""
    system_parts: list[str] = []
    messages: list[dict[str, Any]] = []
    for message in body.get("messages") or []:
        if message.get("role") in ("system", "developer"):
            system_parts.append(content_text(message.get("content")))
            continue
        role, blocks = _message_blocks(message)
        if not blocks:
            continue
        if messages and messages[-1]["role"] == role:
            messages[-1]["content"].extend(blocks)
        else:
            messages.append({"role": role, "content": blocks})
    fmt = (body.get("response_format") or {}).get("type")
    if fmt == "json_object":
        system_parts.append(JSON_INSTRUCTION)
    elif fmt == "json_schema":
        schema = (body["response_format"].get("json_schema") or {}).get("schema")
        system_parts.append(f"{JSON_INSTRUCTION} It must match this JSON schema: {json.dumps(schema)}")
    payload: dict[str, Any] = {
        "model": model.upstream_name,
        "messages": messages,
        "max_tokens": output_limit(model, body) or _default_max_tokens(model, body),
    }
    if system_parts:
        payload["system"] = "\n\n".join(p for p in system_parts if p)
    # Anthropic takes temperature in [0, 1] (OpenAI: [0, 2]), and recent models refuse
    # temperature and top_p together: the temperature is kept, as the stronger request.
    if body.get("temperature") is not None:
        payload["temperature"] = min(float(body["temperature"]), 1.0)
    elif body.get("top_p") is not None:
        payload["top_p"] = body["top_p"]
    stop = body.get("stop")
    if stop:
        payload["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
    if body.get("tools"):
        payload["tools"] = [
            {
                "name": t["function"]["name"],
                "description": t["function"].get("description", ""),
                "input_schema": t["function"].get("parameters") or {"type": "object", "properties": {}},
            }
            for t in body["tools"]
            if t.get("type", "function") == "function"
        ]
    choice = _tool_choice(body.get("tool_choice"), body.get("parallel_tool_calls"))
    if choice is not None and body.get("tools"):
        payload["tool_choice"] = choice
    if body.get("user"):
        payload["metadata"] = {"user_id": str(body["user"])}
    if stream:
        payload["stream"] = True
    return payload


def _default_max_tokens(model: ModelSpec, body: dict[str, Any]) -> int:
    """Anthropic needs max_tokens: the model's output limit, but never more than the window leaves
    beside the prompt (input + max_tokens over the window is refused outright)."""
    room = model.context_window - estimate_tokens(json.dumps(body.get("messages") or [], default=str))
    return max(1, min(model.max_output_tokens, room))


def _usage(input_tokens: int, output_tokens: int, cached: int = 0) -> dict[str, Any]:
    usage: dict[str, Any] = {"prompt_tokens": input_tokens, "completion_tokens": output_tokens,
                             "total_tokens": input_tokens + output_tokens}
    if cached:
        usage["prompt_tokens_details"] = {"cached_tokens": cached}  # as OpenAI reports its own cache reads
    return usage


def _input_tokens(usage: dict[str, Any]) -> int:
    # Cached prompt tokens are still prompt tokens for the client's accounting.
    return sum(as_int(usage.get(k), k) for k in ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens"))


def _finish_reason(stop_reason: Any) -> str:
    return FINISH_REASONS.get(as_text(stop_reason, "stop_reason"), "stop")


def from_anthropic(model: ModelSpec, result: dict[str, Any]) -> dict[str, Any]:
    """The OpenAI chat.completion for a Messages API response."""
    blocks = result.get("content")
    if not isinstance(blocks, list):
        raise UpstreamError("malformed", "Messages response has no content list")
    blocks = [as_object(b, "a content block") for b in blocks]
    text = "".join(as_text(b.get("text"), "a text block's text") for b in blocks if b.get("type") == "text")
    tool_calls = [
        {"id": b.get("id", ""), "type": "function", "function": {"name": b.get("name", ""), "arguments": json.dumps(b.get("input") or {})}}
        for b in blocks
        if b.get("type") == "tool_use"
    ]
    message: dict[str, Any] = {"role": "assistant", "content": text if text or not tool_calls else None}
    if tool_calls:
        message["tool_calls"] = tool_calls
    usage = as_object(result.get("usage"), "usage")
    return {
        "id": result.get("id") or f"chatcmpl-{int(time.time() * 1000)}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model.name,
        "choices": [{"index": 0, "message": message, "finish_reason": _finish_reason(result.get("stop_reason"))}],
        "usage": _usage(_input_tokens(usage), as_int(usage.get("output_tokens"), "output_tokens"),
                        as_int(usage.get("cache_read_input_tokens"), "cache_read_input_tokens")),
    }


class AnthropicProvider(Provider):
    @property
    def messages_url(self) -> str:
        return f"{self.base_url}/messages" if self.base_url.endswith("/v1") else f"{self.base_url}/v1/messages"

    def _headers(self) -> dict[str, str]:
        headers = {"anthropic-version": ANTHROPIC_VERSION}
        key = self.api_key()
        if key:
            headers["x-api-key"] = key
        return headers

    async def complete(self, model: ModelSpec, body: dict[str, Any]) -> dict[str, Any]:
        result = await self._post_json(self.messages_url, to_anthropic(model, body, stream=False), self._headers())
        if not isinstance(result, dict):
            raise UpstreamError("malformed", "Messages response is not a JSON object")
        # A proxy in front of Anthropic may answer `{"error": ...}` without Anthropic's `type`.
        if result.get("type") == "error" or "error" in result:
            raise error_in_body(result, self._secrets())
        return from_anthropic(model, result)

    async def stream(self, model: ModelSpec, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        secrets = self._secrets()
        chunk_id = f"chatcmpl-{int(time.time() * 1000)}"
        created = int(time.time())
        tool_index: dict[int, int] = {}  # Anthropic content-block index → OpenAI tool_calls index
        no_arguments_yet: set[int] = set()  # tool calls whose input has not streamed a character yet
        input_tokens = output_tokens = cached = 0

        def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
            return {
                "id": chunk_id, "object": "chat.completion.chunk", "created": created, "model": model.name,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }

        def usage_chunk() -> dict[str, Any]:
            return {**chunk({}), "choices": [], "usage": _usage(input_tokens, output_tokens, cached)}

        payload = to_anthropic(model, body, stream=True)
        async for event_name, data in self._sse_events(self.messages_url, payload, self._headers()):
            event = parse_json_event(data, secrets)
            if not isinstance(event, dict):
                raise UpstreamError("malformed", "stream event is not a JSON object")
            kind = event.get("type", event_name)
            if kind == "message_start":
                message = as_object(event.get("message"), "message_start's message")
                chunk_id = message.get("id") or chunk_id
                usage = as_object(message.get("usage"), "usage")
                input_tokens = _input_tokens(usage)
                cached = as_int(usage.get("cache_read_input_tokens"), "cache_read_input_tokens")
                output_tokens = as_int(usage.get("output_tokens"), "output_tokens")
                yield chunk({"role": "assistant", "content": ""})
            elif kind == "content_block_start":
                block = as_object(event.get("content_block"), "content_block")
                if block.get("type") == "tool_use":
                    idx = tool_index[as_int(event.get("index"), "index")] = len(tool_index)
                    call = {"index": idx, "id": block.get("id", ""), "type": "function", "function": {"name": block.get("name", ""), "arguments": ""}}
                    no_arguments_yet.add(idx)
                    yield chunk({"tool_calls": [call]})
                elif block.get("type") == "text" and block.get("text"):
                    yield chunk({"content": as_text(block["text"], "a text block's text")})
            elif kind == "content_block_delta":
                delta = as_object(event.get("delta"), "content_block_delta's delta")
                if delta.get("type") == "text_delta":
                    yield chunk({"content": as_text(delta.get("text"), "a text_delta's text")})
                elif delta.get("type") == "input_json_delta":
                    idx = tool_index.get(as_int(event.get("index"), "index"))
                    if idx is None:
                        raise UpstreamError("malformed", "input_json_delta for a block that is not a tool_use")
                    partial = as_text(delta.get("partial_json"), "partial_json")
                    if partial:
                        no_arguments_yet.discard(idx)
                        yield chunk({"tool_calls": [{"index": idx, "function": {"arguments": partial}}]})
            elif kind == "content_block_stop":
                idx = tool_index.get(as_int(event.get("index"), "index"))
                if idx in no_arguments_yet:
                    # A tool without input streams no JSON at all; OpenAI clients parse the
                    # arguments, and "" is not JSON (the non-streamed answer says "{}").
                    no_arguments_yet.discard(idx)
                    yield chunk({"tool_calls": [{"index": idx, "function": {"arguments": "{}"}}]})
            elif kind == "message_delta":
                usage = as_object(event.get("usage"), "usage")
                output_tokens = as_int(usage.get("output_tokens"), "output_tokens") or output_tokens
                if usage.get("input_tokens") is not None:
                    input_tokens = _input_tokens(usage)
                    cached = as_int(usage.get("cache_read_input_tokens"), "cache_read_input_tokens") or cached
                stop = as_object(event.get("delta"), "message_delta's delta").get("stop_reason")
                if stop:
                    yield chunk({}, _finish_reason(stop))
                    # The usage here is final (only message_stop follows): the answer ends now, and
                    # a connection lost before message_stop still bills the upstream's own counts.
                    yield usage_chunk()
                    return
            elif kind == "message_stop":
                yield usage_chunk()
                return
            elif kind == "error":
                raise error_in_body(event, secrets)
        raise UpstreamError("connection", "Messages stream ended before message_stop")
