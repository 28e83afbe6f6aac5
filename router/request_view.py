"""Turn an OpenAI-style chat request into the `RoutingRequest` the router decides on.

What gets embedded is the last user turn. Agent clients such as OpenClaw send a 25-48 KB
system prompt and the whole history on every turn; embedding that would make every request
look alike (the system prompt dominates the vector) and cost ~10x more to encode. The
system prompt and earlier turns still count: they set `input_tokens` (hence cost and
context-window checks), `n_turns` and `has_tools`.
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping

from router.types import RoutingRequest

CHARS_PER_TOKEN = 4  # the usual English average; good enough for pricing and context checks


def content_text(content: Any) -> str:
    """Flatten an OpenAI message `content` (string or list of parts) to its text."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, Mapping) and part.get("type") == "text":
                parts.append(str(part.get("text", "")))
            elif isinstance(part, str):
                parts.append(part)
        return "\n".join(parts)
    return str(content)


# What a provider bills an image as: OpenAI's fixed 85 tokens for `detail: low`, and 765 for a
# 1024x1024 picture at the default detail (Anthropic's ~1,600 for a large one is of that order).
IMAGE_TOKENS = {"low": 85}
IMAGE_TOKENS_DEFAULT = 765


def image_tokens(messages: Iterable[Mapping[str, Any]]) -> int:
    """Input tokens the images of a conversation cost (an agent replays them every turn)."""
    total = 0
    for m in messages:
        content = m.get("content")
        for part in content if isinstance(content, list) else ():
            if isinstance(part, Mapping) and part.get("type") in ("image_url", "input_image"):
                detail = (part.get("image_url") or {}).get("detail") if isinstance(part.get("image_url"), Mapping) else None
                total += IMAGE_TOKENS.get(detail, IMAGE_TOKENS_DEFAULT)
    return total


def estimate_tokens(text: str) -> int:
    return (len(text) + CHARS_PER_TOKEN - 1) // CHARS_PER_TOKEN


def view_chat_request(body: Mapping[str, Any]) -> RoutingRequest:
    """The routing view of a chat-completions body (assumed already schema-checked)."""
    messages = list(body.get("messages") or [])
    tools = body.get("tools") or []
    last_user = ""
    system_parts = []
    total_chars = 0
    for m in messages:
        text = content_text(m.get("content"))
        total_chars += len(text)
        for call in m.get("tool_calls") or []:
            fn = call.get("function") or {}
            total_chars += len(str(fn.get("name", ""))) + len(str(fn.get("arguments", "")))
        role = m.get("role")
        if role == "user":
            last_user = text
        elif role in ("system", "developer"):
            system_parts.append(text)
    for t in tools:
        total_chars += len(str(t))
    needs = set()
    if tools:
        needs.add("tools")
    fmt = body.get("response_format") or {}
    if isinstance(fmt, Mapping) and fmt.get("type") in ("json_object", "json_schema"):
        needs.add("json")
    images = image_tokens(messages)
    if images:
        needs.add("vision")
    max_out = body.get("max_completion_tokens") or body.get("max_tokens")
    n_turns = sum(1 for m in messages if m.get("role") == "user")
    if not last_user and messages:
        # No text in the last user turn (an image alone): route on the latest user text there is,
        # never on the system prompt, an answer or a tool result.
        last_user = next((t for m in reversed(messages) if m.get("role") == "user" and (t := content_text(m.get("content")))), "")
    return RoutingRequest(
        text=last_user,
        input_tokens=(total_chars + CHARS_PER_TOKEN - 1) // CHARS_PER_TOKEN + images,
        n_turns=max(n_turns, 1),
        has_tools=bool(tools),
        needs=frozenset(needs),
        max_output_tokens=int(max_out) if isinstance(max_out, int) else None,
        system_text="\n".join(system_parts),
    )


def view_prompt(text: str) -> RoutingRequest:
    """The routing view of a bare prompt, as in the offline datasets."""
    return RoutingRequest(text=text, input_tokens=estimate_tokens(text))
