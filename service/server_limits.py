"""What one `serve` process bounds by itself, whatever stands in front of it (docs/DEPLOYMENT.md,
"Exposed beyond localhost"): how many client connections it holds, how long a request's head and
its body may take to arrive, and the open-file limit those connections count against.

uvicorn has no deadline for a request's head, and its `limit_concurrency` answers 503 only once a
head is complete: connections that never finish one (slowloris) were held for good, each an open
file, until accepting failed with "Too many open files" and real clients with it.
`guarded_protocol` adds both bounds to uvicorn's own HTTP protocol (`uvicorn.Config(http=...)`
takes a protocol class); `BodyDeadline` bounds the body, which only the app sees being read.
"""
from __future__ import annotations

import asyncio
import json
import logging
from http import HTTPStatus
from typing import Any

from service.errors import ApiError

log = logging.getLogger("openclaw.serve")

# Files the process holds besides client connections: stores, logs, the embedder, Redis.
FIXED_FILES = 128
REFUSED_LINGER_S = 1.0  # how long a connection past the cap may take to read its 503 and close
# A request's head (request line and headers) past this is refused with a 431: uvicorn's httptools
# parser takes headers of any size, so 200 MB of them had been read into memory, past
# max_body_bytes, by one request. Node's default is 16 KiB, nginx's 32 KiB; OpenAI's SDKs send ~1 KiB.
MAX_HEAD_BYTES = 64 * 1024
MAX_READ_BYTES = 256 * 1024  # the most one read of asyncio's transports returns
# Where a request's ASGI scope holds the refusal (an ApiError) the server wrote for it itself (a malformed body).
REFUSED_BY_SERVER = "openclaw.refused_by_server"


def _raw_response(error: ApiError) -> bytes:
    """`error` as the bytes of an HTTP/1.1 answer that closes its connection: written by the
    protocol itself, where no ASGI app runs."""
    body = json.dumps(error.body()).encode()
    extra = "".join(f"{name}: {value}\r\n" for name, value in error.headers.items())
    head = (f"HTTP/1.1 {error.status} {HTTPStatus(error.status).phrase}\r\ncontent-type: application/json\r\n"
            f"{extra}connection: close\r\ncontent-length: {len(body)}\r\n\r\n")
    return head.encode() + body


def open_file_limit() -> int | None:
    """Raise this process's soft open-file limit to its hard one (the soft one is often 1,024, and
    every client connection and every upstream connection is an open file) and return it; None
    where the system has no such limit (not Unix)."""
    try:
        import resource
    except ImportError:
        return None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    infinite = resource.RLIM_INFINITY
    if soft == infinite:
        return None
    target = hard if hard != infinite else 1 << 20
    if soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            log.info("open-file limit raised from %d to %d", soft, target)
            return target
        except (ValueError, OSError) as exc:  # macOS refuses more than kern.maxfilesperproc
            log.info("open-file limit %d (could not raise it to %d: %s)", soft, target, exc)
            return soft
    log.info("open-file limit %d", soft)
    return soft


def connection_cap(configured: int | None, files: int | None) -> int:
    """server.max_connections, or by default half of what the open-file limit leaves beside the
    process's own files: each request in progress holds a client connection and an upstream one."""
    room = None if files is None else max(16, (files - FIXED_FILES) // 2)
    if configured is None:
        return room if room is not None else 4096
    if room is not None and configured > files - FIXED_FILES:
        log.warning("server.max_connections %d is above what the open-file limit (%d) leaves for connections: accepting "
                    "may fail with 'Too many open files' before it is reached", configured, files)
    return configured


def guarded_protocol(max_connections: int, header_timeout_s: float) -> type:
    """uvicorn's HTTP protocol (httptools, else h11) with two bounds: a connection past
    `max_connections` gets a 503 and is closed as soon as it is accepted, and a request's head must
    be complete within `header_timeout_s` of its connection opening or of the previous answer on
    it, else a 408 and the connection is closed. A connection on which no byte of a request has
    come by then (idle after an answer, or opened ahead of use) is closed without one: a request
    its client sends just as it closes would read an unasked 408 as its answer. uvicorn's own 5 s
    keep-alive timeout may close an idle one sooner."""
    from uvicorn.protocols.http.auto import AutoHTTPProtocol

    busy = ApiError(503, "the gateway holds as many client connections as it takes at once "
                    f"({max_connections}, server.max_connections); retry shortly", code="too_many_connections",
                    headers={"retry-after": "1"})
    late = _raw_response(ApiError(408, f"the request's head did not arrive within {header_timeout_s:g} s "
                                  "(server.header_timeout_s)", code="request_timeout"))
    too_big = ApiError(431, f"the request's head (its request line and headers) is over {MAX_HEAD_BYTES} bytes",
                       code="request_header_fields_too_large")

    class GuardedProtocol(AutoHTTPProtocol):  # type: ignore[misc, valid-type]
        _head_timer: asyncio.TimerHandle | None = None
        _refused = False
        _head_begun = False  # a byte of the awaited request has come
        # A head is measured between the parser's start of a request and the end of its headers
        # (pipelined requests too; not the rest of a body uvicorn discards after an early 401 or
        # 413): exactly, by its request line and headers, when it ends; meanwhile by the reads that
        # left it open, which httptools buffers whole (one header of 200 MB reaches no callback
        # before its end). A read may begin with the body before the head, hence the slack.
        _in_head = False
        _head_size = 0
        _head_reads = 0
        _oversized = False
        # After the head, until the message ends: the bytes that are not body (a chunk's size line,
        # the trailer fields httptools buffers as it does headers), since the last chunk's start.
        _in_body = False
        _framing = 0
        _body_seen = 0
        _after_answer: ApiError | None = None  # a refusal of a pipelined request, sent after the answer in progress

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            if len(self.connections) > max_connections:
                self._refuse(busy)
                return
            self._arm()

        def _refuse(self, answer: ApiError) -> None:
            # Answered, then its request read and dropped until the client closes (at most
            # REFUSED_LINGER_S): closing on unread data would reset the connection, answer and all.
            self._disarm()
            self._refused = True
            self.transport.write(_raw_response(answer))
            if self.transport.can_write_eof():
                self.transport.write_eof()
            self._head_timer = self.loop.call_later(REFUSED_LINGER_S, self.transport.close)

        # httptools' callbacks; the h11 fallback has uvicorn's h11_max_incomplete_event_size instead.
        def on_message_begin(self) -> None:
            self._in_head, self._head_size, self._head_reads = True, 0, 0
            super().on_message_begin()

        def on_url(self, url: bytes) -> None:
            self._head_size += len(url)
            super().on_url(url)

        def on_header(self, name: bytes, value: bytes) -> None:
            self._head_size += len(name) + len(value) + 4  # ": " and the line break
            super().on_header(name, value)

        def on_headers_complete(self) -> None:
            self._in_head = False
            if self._head_size > MAX_HEAD_BYTES:
                # Raised out of the parser, which stops: uvicorn answers it with send_400_response.
                self._oversized = True
                raise ValueError("request head too large")
            super().on_headers_complete()
            self._in_body, self._framing = True, 0

        def on_body(self, body: bytes) -> None:
            self._body_seen += len(body)
            super().on_body(body)

        def on_chunk_header(self) -> None:
            self._framing = 0

        def on_message_complete(self) -> None:
            self._in_body = False
            super().on_message_complete()

        def data_received(self, data: bytes) -> None:
            if self._refused:
                return
            # The rest of a body uvicorn discards after an early answer is no next request begun:
            # its connection, idle after it, is closed at the deadline without an unasked 408.
            self._head_begun = self._head_begun or (bool(data) and not self._in_body)
            self._body_seen = 0
            super().data_received(data)
            if self._in_head:
                self._head_reads += len(data)
                over = self._head_reads > MAX_HEAD_BYTES + MAX_READ_BYTES
            elif self._in_body:  # a trailer section of any size had been taken, slowly, on the event loop
                self._framing += len(data) - self._body_seen
                over = self._framing > MAX_HEAD_BYTES + MAX_READ_BYTES
            else:
                over = False
            if over and not self.transport.is_closing():
                self._refuse_head(too_big)

        def send_400_response(self, msg: str) -> None:
            # uvicorn's is plain text; every other refusal of the gateway is OpenAI's JSON error.
            self._refuse_head(too_big if self._oversized else
                              ApiError(400, f"not a valid HTTP/1.1 request: {msg}", code="invalid_http"))

        def on_response_complete(self) -> None:
            queued = bool(getattr(self, "pipeline", ()))
            super().on_response_complete()  # starts the next request queued behind it, if any
            if self._after_answer is not None:
                if not queued:  # every request before the refused one is answered
                    self._refuse(self._after_answer)
                return
            self._arm()

        def _refuse_head(self, answer: ApiError) -> None:
            """Refuse the request being parsed: at once when nothing before it awaits its answer,
            else after those answers, as HTTP/1.1 answers in order (what follows it is dropped
            meanwhile). uvicorn's `cycle` is the request parsed last: a head refused has none of
            its own, so a cycle with its whole body is one before it; one still reading its body
            is the refused request, queued behind another (`pipeline`) or the one in progress."""
            if self._refused:
                return  # one read may fail the parser and pass a bound: the request is refused once
            cycle = self.cycle
            if cycle is None or cycle.response_complete:
                self._refuse(answer)
                return
            if cycle.more_body:
                queued = [entry for entry in getattr(self, "pipeline", ()) if entry[0] is cycle]
                if not queued:
                    # The request in progress (its body malformed or its trailers too long): its
                    # handler, waiting for the body, is told the connection is gone and what it was
                    # answered, so it writes nothing after this answer and logs it as refused.
                    cycle.scope[REFUSED_BY_SERVER] = answer
                    cycle.disconnected = True
                    cycle.message_event.set()
                    self._refuse(answer)
                    return
                self.pipeline.remove(queued[0])  # it will not run
            self._refused, self._after_answer = True, answer

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            self._disarm()
            self._head_begun = False
            if not self.transport.is_closing():
                self._head_timer = self.loop.call_later(header_timeout_s, self._head_late)

        def _disarm(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_late(self) -> None:
            self._head_timer = None
            if self.cycle is not None and not self.cycle.response_complete:
                return  # its head came in time and it is being answered; the answer arms the next deadline
            if not self.transport.is_closing():
                if self._head_begun:
                    self.transport.write(late)
                self.transport.close()

    return GuardedProtocol


class BodyDeadline:
    """ASGI middleware: a request's body must have arrived within `seconds` of its head, else the
    app reading it gets a 408 `request_timeout` (answered as any refusal, the connection closed
    after it). Reads after the body (waiting for a disconnect) and requests whose answer has
    started are not bounded. A slow upload that keeps sending within the deadline is not cut."""

    def __init__(self, app: Any, seconds: float):
        self.app = app
        self.seconds = seconds

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        deadline = asyncio.get_running_loop().time() + self.seconds
        done = answered = False

        async def bounded_receive() -> Any:
            nonlocal done
            if done or answered:
                return await receive()
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                done = True
                raise ApiError(408, f"the request body did not arrive within {self.seconds:g} s of its head "
                               "(server.body_timeout_s)", code="request_timeout", headers={"connection": "close"}) from None
            done = message["type"] != "http.request" or not message.get("more_body", False)
            return message

        async def watched_send(message: Any) -> None:
            nonlocal answered
            answered = answered or message["type"] == "http.response.start"
            await send(message)

        await self.app(scope, bounded_receive, watched_send)
