"""Prompt-cache breakpoints for a Messages API request (docs/PROVIDERS.md "Prompt caching")."""
from __future__ import annotations

from typing import Any

# Anthropic refuses a request with more than 4 cache breakpoints.
MAX_CACHE_BREAKPOINTS = 4


def mark_cache_breakpoints(payload: dict[str, Any]) -> None:
    """Prompt-cache breakpoints, so that a conversation's next turn reads its prefix from the cache
    (at a tenth of the input price) instead of paying for it again: agents resend a long system
    prompt, a dozen tools and the whole history every turn. The client's own breakpoints come
    first (its first four, the most Anthropic takes); the free ones go, in this order, on the last
    message's last block, the system prompt, the last tool, and the last block of the message
    before the last assistant message. The system prompt and the tools are a prefix other
    conversations share. The history is written at 1.25 times the input price, so it is marked
    only where a later turn will read it back: in a conversation that already has an assistant
    turn, not in a one-shot request. The last mark is where the previous turn's history mark was:
    Anthropic looks back at most 20 blocks from a breakpoint for an earlier entry, and an agent
    step of ten or more parallel tool calls with their results adds about that many. Anthropic
    wants no 1-hour breakpoint after a 5-minute one, so none of these 5-minute ones goes before a
    client's 1-hour one."""
    tools, system, messages = payload.get("tools") or [], payload.get("system") or [], payload["messages"]
    blocks = [*tools, *system, *(b for m in messages for b in m["content"])]
    marked = [i for i, b in enumerate(blocks) if "cache_control" in b]
    for i in marked[MAX_CACHE_BREAKPOINTS:]:
        del blocks[i]["cache_control"]
    marked = marked[:MAX_CACHE_BREAKPOINTS]
    after = max((i for i in marked if blocks[i]["cache_control"].get("ttl") == "1h"), default=-1)
    assistants = [k for k, m in enumerate(messages) if m["role"] == "assistant"]
    history = bool(assistants) and assistants[0] < len(messages) - 1  # a later turn will read it back
    start = len(tools) + len(system)
    candidates = [len(blocks) - 1] if history else []
    # A client that marked its system prompt chose where its stable part ends: a mark of ours on the
    # last system block (after the client's, often a changing time) would spend a breakpoint on it.
    candidates += [start - 1] if system and not any("cache_control" in b for b in system) else []
    candidates += [len(tools) - 1] if tools else []
    if history and assistants[-1] > 0:
        candidates.append(start + sum(len(m["content"]) for m in messages[:assistants[-1]]) - 1)
    free = MAX_CACHE_BREAKPOINTS - len(marked)
    for i in candidates:
        if free and i > after and "cache_control" not in blocks[i]:
            blocks[i]["cache_control"] = {"type": "ephemeral"}
            free -= 1
