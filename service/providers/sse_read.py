"""Reading an upstream's text/event-stream body: lines, then (event, data) pairs."""
from __future__ import annotations

from typing import AsyncIterator

import aiohttp


async def _lines(response: aiohttp.ClientResponse) -> AsyncIterator[str]:
    """The body's lines without their ends. Split here rather than with aiohttp's readline,
    which refuses a line past its read buffer's high-water mark (512 KiB in aiohttp 3.14): one
    SSE event can carry a whole answer or a tool call's arguments."""
    # The unfinished line's parts, joined once it ends: re-splitting all of it on every read took
    # quadratic time on a megabyte-long line sent in small writes (8 MiB in 1 KiB reads: 12 s).
    pending: list[bytes] = []
    async for block in response.content.iter_any():
        if b"\n" not in block:
            pending.append(block)
            continue
        first, *complete, rest = block.split(b"\n")
        for line in (b"".join([*pending, first]), *complete):
            yield _text(line.rstrip(b"\r"))
        pending = [rest]
    tail = b"".join(pending)
    if tail:
        yield _text(tail.rstrip(b"\r"))


async def iter_sse(response: aiohttp.ClientResponse) -> AsyncIterator[tuple[str | None, str]]:
    """(event, data) pairs of a text/event-stream body; multi-line data joined by newlines."""
    event: str | None = None
    data: list[str] = []
    async for line in _lines(response):
        if not line:
            if data:
                yield event, "\n".join(data)
            event, data = None, []
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if field == "event":
            event = value
        elif field == "data":
            data.append(value)
    if data:
        yield event, "\n".join(data)


def _text(line: bytes) -> str:
    """A line as text. A surrogate written as raw bytes (Java's and CESU-8's encoders do) is kept,
    for `service.json_text` to replace or, for a pair, join into its character, as a non-streamed
    answer's is; any other invalid UTF-8 becomes U+FFFD."""
    try:
        return line.decode("utf-8", "surrogatepass")
    except UnicodeDecodeError:
        return line.decode("utf-8", "replace")
