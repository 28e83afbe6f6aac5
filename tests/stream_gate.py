"""What the scripted streaming upstreams (tests/test_stream_reasoning.py, tests/test_anthropic_thinking.py)
share: a `Gate` the upstream waits at until the test opens it, so timing is read off the upstream's own
schedule rather than a wall clock, and `read`, what the openai SDK's client saw of a stream."""
from __future__ import annotations

import asyncio
import threading
from typing import Any


class Gate:
    """A point the upstream passes only once the test opens it, or after `timeout_s` (then
    `timed_out`): whether the client had what came before it while the upstream still waited."""

    def __init__(self, timeout_s: float = 5.0):
        self.event = threading.Event()
        self.timeout_s = timeout_s
        self.timed_out: bool | None = None

    def open(self) -> None:
        self.event.set()

    async def wait(self) -> None:
        """The upstream's side: wait to be opened, off its event loop."""
        self.timed_out = not await asyncio.to_thread(self.event.wait, self.timeout_s)


def read(stream: Any, field: str = "reasoning_content", on_thinking: Any = None) -> list[tuple[str, Any]]:
    """What the client saw, in order: ("thinking", text), ("answer", text), ("finish", reason), ("usage", usage)."""
    seen: list[tuple[str, Any]] = []
    for c in stream:
        for choice in c.choices:
            extra = choice.delta.model_extra or {}
            if extra.get(field):
                seen.append(("thinking", extra[field]))
                if on_thinking is not None:
                    on_thinking()
            if choice.delta.content:
                seen.append(("answer", choice.delta.content))
            if choice.finish_reason:
                seen.append(("finish", choice.finish_reason))
        if c.usage is not None:
            seen.append(("usage", (c.usage.prompt_tokens, c.usage.completion_tokens)))
    return seen
