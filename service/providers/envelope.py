"""The OpenAI chat envelope the adapters answer in, and the upstream stream events they read: one
place, so every adapter's answer has the same keys in the same order as OpenAI's own."""
from __future__ import annotations

import time
from typing import Any

from service import json_text
from service.providers.base import UpstreamError, scrub


def parse_json_event(data: str, secrets: tuple[str | None, ...] = ()) -> dict[str, Any]:
    """A streamed event's data, which every upstream sends as a JSON object."""
    try:
        event = json_text.loads(data)
    except ValueError:
        # Scrubbed before the cut: a key the cut splits would no longer match.
        raise UpstreamError("malformed", f"invalid JSON in stream event: {scrub(data, secrets)[:200]!r}") from None
    if not isinstance(event, dict):
        raise UpstreamError("malformed", "stream event is not a JSON object")
    return event


def completion(response_id: str | None, model: str, text: str, tool_calls: list[dict[str, Any]], *,
               finish_reason: str, usage: dict[str, Any], **choice_fields: Any) -> dict[str, Any]:
    """A chat.completion of one choice; `choice_fields` (logprobs) stand between its message and
    its finish_reason, as OpenAI orders them."""
    message: dict[str, Any] = {"role": "assistant", "content": text if text or not tool_calls else None}
    if tool_calls:
        message["tool_calls"] = tool_calls
    return {
        "id": response_id or f"chatcmpl-{int(time.time() * 1000)}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": message, **choice_fields, "finish_reason": finish_reason}],
        "usage": usage,
    }


def stream_head(model: str) -> dict[str, Any]:
    """The fields every chunk of one streamed answer shares; an adapter replaces the id with the
    upstream's once it is told it."""
    return {"id": f"chatcmpl-{int(time.time() * 1000)}", "object": "chat.completion.chunk", "created": int(time.time()),
            "model": model}


def chunk(head: dict[str, Any], delta: dict[str, Any], finish_reason: str | None = None, index: int = 0) -> dict[str, Any]:
    return {**head, "choices": [{"index": index, "delta": delta, "finish_reason": finish_reason}]}


def usage_chunk(head: dict[str, Any], usage: dict[str, Any]) -> dict[str, Any]:
    """The last chunk, as OpenAI sends it with `stream_options.include_usage`: no choices."""
    return {**head, "choices": [], "usage": usage}


def prompt_usage(usage: dict[str, Any]) -> dict[str, Any]:
    """A usage's prompt counts without the output's, sent as soon as an upstream tells them.
    Lacking an output count, the gateway neither passes it on as the answer's usage nor bills it
    as whole: a stream cut after it is billed at these counts, its output estimated
    (`usage_or_estimate`)."""
    return {k: v for k, v in usage.items() if k not in ("completion_tokens", "total_tokens")}
