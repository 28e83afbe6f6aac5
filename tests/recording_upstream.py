"""A fake upstream on 127.0.0.1 that records every request body and answers it as a subclass says
(`answer`): the transport the tests' API-specific fakes share."""
from __future__ import annotations

import json
import threading
from typing import Any

from service.asgi_thread import serve_in_thread
from tests.fake_upstream import read_body


class RecordingUpstream:
    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def __enter__(self) -> "RecordingUpstream":
        self.url, self._stop = serve_in_thread(self._app)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop()

    async def _app(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = json.loads(await read_body(receive))
        with self._lock:
            self.bodies.append(body)
        await self.answer(body, send)

    async def answer(self, body: dict[str, Any], send: Any) -> None:
        raise NotImplementedError


async def reply(send: Any, status: int, payload: Any, content_type: str = "application/json") -> None:
    """One whole response: `payload` as JSON, or as it is when it is bytes."""
    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", content_type.encode())]})
    await send({"type": "http.response.body", "body": data})
