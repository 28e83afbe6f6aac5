"""Prompt-cache breakpoints for a Messages API request (docs/PROVIDERS.md "Prompt caching"), and the
system prompt's blocks, which end where a client put its own."""
from __future__ import annotations

from typing import Any

from router.request_view import content_text

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


def system_blocks(texts: list[tuple[str, Any]]) -> list[dict[str, Any]]:
    """The system prompt's text blocks, for (text, the client's cache_control or None) of each
    system turn: turns joined by blank lines into one block, split only after a client's
    breakpoint (which must end a block)."""
    blocks: list[dict[str, Any]] = []
    for text, mark in texts:
        if not text:
            continue
        if blocks and "cache_control" not in blocks[-1]:
            blocks[-1]["text"] += "\n\n" + text
        else:
            blocks.append({"type": "text", "text": text})
        if isinstance(mark, dict):
            blocks[-1]["cache_control"] = mark
    return blocks


def system_pieces(message: dict[str, Any]) -> list[tuple[str, Any]]:
    """A system turn as (text, the client's cache_control or None) pieces, split after each part
    the client marked: the part after a marked one ("Current time: 12:01") must stay out of the
    cached prefix, which it would change on every request. The turn's own mark ends its last piece."""
    content = message.get("content")
    pieces: list[tuple[str, Any]] = []
    start = 0
    parts = content if isinstance(content, list) else []
    for j, part in enumerate(parts):
        mark = part.get("cache_control") if isinstance(part, dict) else None
        if isinstance(mark, dict):
            pieces.append((content_text(parts[start:j + 1]), mark))
            start = j + 1
    rest = content_text(parts[start:]) if isinstance(content, list) else content_text(content)
    own = message.get("cache_control") if isinstance(message.get("cache_control"), dict) else None
    if rest or not pieces:
        pieces.append((rest, own))
    elif own is not None:
        pieces[-1] = (pieces[-1][0], own)
    return pieces
