"""Server-sent events in OpenAI's chat-completion chunk format, both ways.

Encodes chunks for the client, recognises the first chunk that carries real output (the
point after which a failure can no longer be hidden by failing over; a reasoning delta is
output), turns a complete answer into chunks (cache hits streamed to a streaming client) and
assembles streamed chunks back into one chat.completion (what post-hooks and the outcome log see).
"""
from __future__ import annotations

import json
import time
from typing import Any

DONE = b"data: [DONE]\n\n"


def encode(obj: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode() + b"\n\n"


def error_event(message: str, type: str = "server_error", code: str | None = None) -> bytes:
    """An explicit in-band error: the OpenAI SDKs raise on a `data:` event holding `error`."""
    return encode({"error": {"message": message, "type": type, "code": code, "param": None}})


# The fields OpenAI-compatible upstreams stream a model's thinking in, and answer it in: DeepSeek
# and vLLM `reasoning_content`; Groq, OpenRouter and Ollama `reasoning` (OpenRouter adds a
# structured `reasoning_details` beside it).
REASONING_FIELDS = ("reasoning_content", "reasoning")


def thinks(delta: dict[str, Any]) -> bool:
    """Whether a delta carries some of the model's reasoning."""
    return any(isinstance(delta.get(f), str) and delta[f] for f in REASONING_FIELDS) or bool(delta.get("reasoning_details"))


def carries_output(chunk: dict[str, Any]) -> bool:
    """True once a chunk holds generated output or the end of generation (a role-only delta does
    not). Reasoning is output: a thinking model's first answer token may be a minute away, and
    meanwhile the client shows the thinking, and a load balancer's idle timeout sees bytes."""
    for choice in chunk.get("choices") or ():
        delta = choice.get("delta") or {}
        if delta.get("content") or delta.get("tool_calls") or delta.get("refusal") or delta.get("function_call"):
            return True
        if thinks(delta):
            return True
        if choice.get("finish_reason"):
            return True
    return False


def is_usage_only(chunk: dict[str, Any]) -> bool:
    return not chunk.get("choices") and chunk.get("usage") is not None


def completion_to_chunks(body: dict[str, Any]) -> list[dict[str, Any]]:
    """A complete chat.completion as the chunk sequence a streaming upstream would have sent."""
    base = {
        "id": body.get("id", "chatcmpl-cached"),
        "object": "chat.completion.chunk",
        "created": body.get("created", int(time.time())),
        "model": body.get("model", ""),
    }
    if body.get("system_fingerprint"):  # every chunk carries it, as OpenAI streams it
        base["system_fingerprint"] = body["system_fingerprint"]
    chunks: list[dict[str, Any]] = []
    for choice in body.get("choices") or ():
        idx = choice.get("index", 0)
        msg = choice.get("message") or {}

        def piece(delta: dict[str, Any], finish: str | None = None) -> None:
            # OpenAI's chunks always carry the logprobs key; a request asking for logprobs is never
            # served from the cache (router/cache/policy.py), so here it is always null.
            chunks.append({**base, "choices": [{"index": idx, "delta": delta, "logprobs": None, "finish_reason": finish}]})

        # A tool call's message has null content, and so has its first chunk (as OpenAI streams it).
        piece({"role": msg.get("role", "assistant"), "content": "" if msg.get("content") is not None else None})
        for name in REASONING_FIELDS:  # the thinking before the answer, as the upstream streamed it
            if isinstance(msg.get(name), str) and msg[name]:
                piece({name: msg[name]})
        if msg.get("content"):
            piece({"content": msg["content"]})
        if msg.get("refusal"):  # a model's refusal is its answer: streamed as OpenAI streams it
            piece({"refusal": msg["refusal"]})
        calls = msg.get("tool_calls") or []
        if calls:
            piece({"tool_calls": [{"index": i, **call} for i, call in enumerate(calls)]})
        piece({}, finish=choice.get("finish_reason") or "stop")
    if body.get("usage") is not None:
        chunks.append({**base, "choices": [], "usage": body["usage"]})
    return chunks


class Assembler:
    """Folds streamed chunks into the chat.completion they describe."""

    def __init__(self) -> None:
        self.id: str | None = None
        self.created: int | None = None
        self.model: str | None = None
        self.usage: dict[str, Any] | None = None
        self.system_fingerprint: str | None = None
        self._choices: dict[int, dict[str, Any]] = {}

    def add(self, chunk: dict[str, Any]) -> None:
        self.id = self.id or chunk.get("id")
        self.created = self.created or chunk.get("created")
        self.model = self.model or chunk.get("model")
        self.system_fingerprint = self.system_fingerprint or chunk.get("system_fingerprint")
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        for choice in chunk.get("choices") or ():
            self._add_choice(choice)

    def _add_choice(self, choice: dict[str, Any]) -> None:
        slot = self._choices.setdefault(
            choice.get("index", 0), {"role": "assistant", "content": [], "reasoning": {}, "refusal": [], "tool_calls": {}, "finish_reason": None}
        )
        delta = choice.get("delta") or {}
        if delta.get("role"):
            slot["role"] = delta["role"]
        if delta.get("content"):
            slot["content"].append(delta["content"])
        for name in REASONING_FIELDS:  # kept under the upstream's own name, as its unstreamed answer has it
            if isinstance(delta.get(name), str) and delta[name]:
                slot["reasoning"].setdefault(name, []).append(delta[name])
        if delta.get("refusal"):
            slot["refusal"].append(delta["refusal"])
        for call in delta.get("tool_calls") or ():
            entry = slot["tool_calls"].setdefault(call.get("index", 0), {"id": None, "type": "function", "name": [], "arguments": []})
            entry["id"] = call.get("id") or entry["id"]
            entry["type"] = call.get("type") or entry["type"]
            fn = call.get("function") or {}
            if fn.get("name"):
                entry["name"].append(fn["name"])
            if fn.get("arguments"):
                entry["arguments"].append(fn["arguments"])
        if choice.get("finish_reason"):
            slot["finish_reason"] = choice["finish_reason"]

    @property
    def finished(self) -> bool:
        return bool(self._choices) and all(c["finish_reason"] for c in self._choices.values())

    def completion(self) -> dict[str, Any]:
        choices = []
        for idx in sorted(self._choices):
            slot = self._choices[idx]
            message: dict[str, Any] = {"role": slot["role"], "content": "".join(slot["content"]) or None}
            message.update((name, "".join(parts)) for name, parts in slot["reasoning"].items())
            if slot["refusal"]:
                message["refusal"] = "".join(slot["refusal"])
            if slot["tool_calls"]:
                message["tool_calls"] = [
                    {"id": c["id"], "type": c["type"], "function": {"name": "".join(c["name"]), "arguments": "".join(c["arguments"])}}
                    for _, c in sorted(slot["tool_calls"].items())
                ]
            choices.append({"index": idx, "message": message, "finish_reason": slot["finish_reason"]})
        body: dict[str, Any] = {
            "id": self.id or "chatcmpl-stream",
            "object": "chat.completion",
            "created": self.created or int(time.time()),
            "model": self.model or "",
            "choices": choices,
        }
        if self.system_fingerprint:
            body["system_fingerprint"] = self.system_fingerprint
        if self.usage is not None:
            body["usage"] = self.usage
        return body
