"""Deadlines on an upstream's stream of chunks.

The connection's read timeout (a provider's `timeout_s`) is reset by any byte, keep-alive
comments included: OpenRouter sends `: OPENROUTER PROCESSING` while a provider is queued, and
a stuck one can send nothing else for as long as the client waits. These deadlines count
chunks, which comments never become.
"""
from __future__ import annotations

import asyncio
from typing import Any, AsyncGenerator, AsyncIterator

from service.providers.base import UpstreamError
from service.sse import carries_output


async def up_to_first_output(upstream: AsyncIterator[dict[str, Any]], within_s: float) -> list[dict[str, Any]]:
    """The chunks up to and including the first that carries output, within `within_s` in all
    (a provider's `answer_timeout_s`); the rest stays unread."""
    held: list[dict[str, Any]] = []
    try:
        async with asyncio.timeout(within_s):
            async for chunk in upstream:
                held.append(chunk)
                if carries_output(chunk):
                    return held
    except TimeoutError:
        raise UpstreamError("timeout", f"no output within {within_s:g} s (answer_timeout_s), though the stream was kept open") from None
    raise UpstreamError("malformed", "the stream ended without any output")


class Paced:
    """The rest of a stream that has produced output, each chunk within `between_s` (a provider's
    `timeout_s`) of asking for it: the time the client takes to read one is not counted. A class,
    not a generator: `aclose` closes `upstream` even when nothing was read (a client gone before
    the answer began), where an unstarted generator's `finally` never runs."""

    def __init__(self, upstream: AsyncGenerator[dict[str, Any], None], between_s: float):
        self.upstream, self.between_s = upstream, between_s

    def __aiter__(self) -> "Paced":
        return self

    async def __anext__(self) -> dict[str, Any]:
        try:
            async with asyncio.timeout(self.between_s):
                return await anext(self.upstream)
        except TimeoutError:
            raise UpstreamError("timeout", f"no chunk for {self.between_s:g} s (timeout_s), though the stream was kept open") from None

    async def aclose(self) -> None:
        await self.upstream.aclose()
