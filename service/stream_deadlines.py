"""Deadlines on an upstream's stream of chunks.

The connection's read timeout (a provider's `timeout_s`) is reset by any byte, keep-alive
comments included: OpenRouter sends `: OPENROUTER PROCESSING` while a provider is queued, and
a stuck one can send nothing else for as long as the client waits. These deadlines count
chunks, which comments never become.
"""
from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator

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


async def paced(upstream: AsyncIterator[dict[str, Any]], between_s: float) -> AsyncIterator[dict[str, Any]]:
    """The rest of a stream that has produced output, each chunk within `between_s` (a provider's
    `timeout_s`) of asking for it: the time the client takes to read one is not counted. Closing
    this closes `upstream`, so its connection goes back at once rather than when collected."""
    try:
        while True:
            try:
                async with asyncio.timeout(between_s):
                    chunk = await anext(upstream)
            except StopAsyncIteration:
                return
            except TimeoutError:
                raise UpstreamError("timeout", f"no chunk for {between_s:g} s (timeout_s), though the stream was kept open") from None
            yield chunk
    finally:
        await upstream.aclose()
