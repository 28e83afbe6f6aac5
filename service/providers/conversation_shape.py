"""Conversation shapes OpenAI takes and Anthropic or Gemini refuse, and the choices both adapters
make for them alike:

- a prompt given only as system or developer turns (single-prompt tools, evals): the system text
  is sent as the user turn, since both refuse a request without one ("at least one message is
  required", "contents is not specified");
- a conversation whose first turn after the system prompt is the assistant's (a chat UI's
  greeting): a user turn of OPENING_USER_TEXT goes before it, as both want the user to speak
  first;
- a last user turn that is blank (" "): it is sent as OPENING_USER_TEXT, not left out, which would
  end the conversation on the assistant's turn: a prefill Anthropic continues instead of answering
  (and with no other turn, a request both refuse);
- tool calls and results in the history of a request that sends no tools (an agent's final
  "summarise" turn): Anthropic refuses tool_use and tool_result blocks unless tools are defined,
  and Gemini documents function calls in a history only beside their declarations, so the tools
  the history called are declared by name (HISTORY_TOOL_DESCRIPTION, any arguments) and the tool
  choice is `none`, which keeps the answer text as the client asked; the history itself is sent
  as it is, calls and results paired as the model made them.
"""
from __future__ import annotations

import re
from typing import Any, Iterable

OPENING_USER_TEXT = "."

# Declared when none of the history's tool names is one the provider takes as a tool's name.
PLACEHOLDER_TOOL = "history_tool"
# A declared tool's description (Gemini's declarations want one): what the model may know of it.
HISTORY_TOOL_DESCRIPTION = "A tool called earlier in this conversation; not available now."


def history_tool_names(names: Iterable[Any], pattern: re.Pattern[str]) -> list[str]:
    """The tool names the history called, once each in first-call order, those `pattern` (the
    provider's rule for a tool's name) takes; PLACEHOLDER_TOOL when none is left."""
    kept = [n for n in dict.fromkeys(str(n) for n in names) if pattern.fullmatch(n)]
    return kept or [PLACEHOLDER_TOOL]


def last_turn(body: dict[str, Any]) -> int:
    """The index of the conversation's last message that is not a system or developer turn (both
    adapters lift those out of the conversation); -1 for none."""
    messages = body.get("messages") or []
    return max((i for i, m in enumerate(messages) if m.get("role") not in ("system", "developer")), default=-1)
